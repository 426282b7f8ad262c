//! Alert webhooks: `POST /hooks/alertmanager` (Alertmanager's webhook payload, version 4)
//! and `POST /hooks/grafana` (Grafana unified alerting's webhook contact point, the same
//! shape plus `values`). The token comes as `?token=` or `Authorization: Bearer` (both tools
//! can send a bearer credential). One notification becomes one message that reads like an
//! alert, not like JSON: a title such as `[FIRING:2] HighCPU`, then the firing and the
//! resolved alerts, each with its labels (those all alerts share listed once), summary,
//! description and other annotations, start time and link. Severity (`severity` or
//! `priority` label) sets the urgency of a firing notification. The answer is `/send`'s.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::super::AppState;
use super::super::auth::find_token;
use super::super::send::{Submission, answer, parse_query, submit};
use crate::domain::Urgency;
use crate::error::ApiError;

/// Room left for the alert list: a storm of hundreds of alerts becomes the first ones and
/// a count, not a 413 that Alertmanager would retry forever.
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Alertmanager's webhook payload; Grafana's is the same with a few more fields.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(default)]
    status: String,
    #[serde(default)]
    receiver: String,
    #[serde(default)]
    group_labels: BTreeMap<String, String>,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    external_url: String,
    #[serde(default)]
    truncated_alerts: u64,
    #[serde(default)]
    alerts: Vec<Alert>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(default)]
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
    /// Grafana: the query values that fired, by reference id.
    #[serde(default)]
    values: Option<BTreeMap<String, Value>>,
    /// Grafana: links to the panel and dashboard, and to silence the alert.
    #[serde(default, rename = "panelURL")]
    panel_url: String,
    #[serde(default, rename = "silenceURL")]
    silence_url: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Query {
    token: Option<String>,
    channel: Option<String>,
}

/// Which tool sent the payload: the wording of a few lines differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Alertmanager,
    Grafana,
}

pub async fn alertmanager(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    hook(state, query, headers, body, Source::Alertmanager).await
}

pub async fn grafana(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    hook(state, query, headers, body, Source::Grafana).await
}

async fn hook(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    source: Source,
) -> Response {
    let result = async {
        let query: Query = parse_query(query.as_deref())?;
        let body = body.map_err(ApiError::from_body)?;
        let not_a_payload = |why: String| {
            ApiError::BadRequest(format!(
                "the body is not {} webhook payload: {why}",
                match source {
                    Source::Alertmanager => "an Alertmanager",
                    Source::Grafana => "a Grafana alerting",
                }
            ))
        };
        let notification: Notification =
            serde_json::from_slice(&body).map_err(|err| not_a_payload(err.to_string()))?;
        if notification.alerts.is_empty() {
            return Err(not_a_payload("it lists no alerts".into()));
        }
        let token = find_token(&headers, &[query.token.as_deref()]);
        let (title, content) = render(&notification, source, state.utc_offset);
        let accepted = submit(
            &state,
            Submission {
                token,
                title: Some(title),
                content: Some(content),
                channel: query.channel,
                urgency: urgency(&notification),
                endpoint: match source {
                    Source::Alertmanager => crate::metrics::Endpoint::Alertmanager,
                    Source::Grafana => crate::metrics::Endpoint::Grafana,
                },
                ..Submission::default()
            },
        )
        .await?;
        Ok::<_, ApiError>(answer(&accepted))
    }
    .await;
    match result {
        Ok(Json(accepted)) => Json(accepted).into_response(),
        Err(err) => err.into_response(),
    }
}

fn is_firing(status: &str) -> bool {
    !status.eq_ignore_ascii_case("resolved")
}

/// A firing notification's urgency from its severity; a resolved one is normal.
fn urgency(n: &Notification) -> Urgency {
    if !is_firing(&n.status) {
        return Urgency::Normal;
    }
    let severity = |labels: &BTreeMap<String, String>| {
        labels
            .get("severity")
            .or_else(|| labels.get("priority"))
            .map(|s| s.trim().to_ascii_lowercase())
    };
    let mut levels = n
        .alerts
        .iter()
        .filter(|a| is_firing(&a.status))
        .filter_map(|a| severity(&a.labels))
        .chain(severity(&n.common_labels));
    let rank = |s: &str| match s {
        "critical" | "crit" | "emergency" | "fatal" | "page" | "p1" | "disaster" => 3,
        "error" | "high" | "major" | "warning" | "warn" | "p2" => 2,
        "info" | "low" | "none" | "minor" | "p4" | "p5" => 0,
        _ => 1,
    };
    match levels.try_fold(0, |max, s| Some(rank(&s).max(max))) {
        Some(3) => Urgency::Urgent,
        Some(2) => Urgency::High,
        _ => Urgency::Normal,
    }
}

/// The title and text of one notification.
fn render(n: &Notification, source: Source, utc_offset: i32) -> (String, String) {
    let firing: Vec<&Alert> = n.alerts.iter().filter(|a| is_firing(&a.status)).collect();
    let resolved: Vec<&Alert> = n.alerts.iter().filter(|a| !is_firing(&a.status)).collect();
    let name = n
        .group_labels
        .get("alertname")
        .or_else(|| n.common_labels.get("alertname"))
        .cloned()
        .or_else(|| {
            // Not grouped by name, but every alert has the same one.
            let mut names = n.alerts.iter().map(|a| a.labels.get("alertname"));
            let first = names.next().flatten()?;
            names.all(|name| name == Some(first)).then(|| first.clone())
        })
        .or_else(|| {
            // Grouped by other labels: name the group by their values.
            let values: Vec<&str> = n.group_labels.values().map(String::as_str).collect();
            (!values.is_empty()).then(|| values.join(" "))
        })
        .unwrap_or_else(|| n.receiver.clone());
    let state = if is_firing(&n.status) {
        format!("FIRING:{}", firing.len())
    } else {
        "RESOLVED".to_owned()
    };
    let title = format!("[{state}] {name}").trim().to_owned();

    let mut text = String::new();
    // Labels every alert shares are listed once, not on each alert.
    let common: BTreeMap<&str, &str> = n
        .common_labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname" || n.alerts.len() > 1)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut skipped = 0usize;
    for (heading, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(text, "{heading} ({}):", alerts.len());
        for alert in alerts.iter() {
            let entry = render_alert(alert, &common, source, utc_offset);
            if text.len() + entry.len() > MAX_TEXT_BYTES {
                skipped += 1;
                continue;
            }
            text.push_str(&entry);
        }
        text.push('\n');
    }
    if skipped > 0 {
        let _ = writeln!(text, "… and {skipped} more not shown here.");
    }
    if n.truncated_alerts > 0 {
        let _ = writeln!(
            text,
            "… and {} more that {} left out of this notification.",
            n.truncated_alerts,
            match source {
                Source::Alertmanager => "Alertmanager",
                Source::Grafana => "Grafana",
            }
        );
    }
    if !common.is_empty() {
        let _ = writeln!(text, "Labels: {}", join_labels(common.iter()));
    }
    for (key, value) in &n.common_annotations {
        if n.alerts.len() > 1 {
            let _ = writeln!(text, "{key}: {value}");
        }
    }
    if !n.external_url.is_empty() {
        let _ = writeln!(text, "{}", n.external_url);
    }
    (title, text.trim_end().to_owned())
}

fn render_alert(
    alert: &Alert,
    common: &BTreeMap<&str, &str>,
    source: Source,
    utc_offset: i32,
) -> String {
    let mut entry = String::new();
    let name = alert
        .labels
        .get("alertname")
        .map_or("alert", String::as_str);
    let own: Vec<(&String, &String)> = alert
        .labels
        .iter()
        .filter(|(k, v)| k.as_str() != "alertname" && common.get(k.as_str()) != Some(&v.as_str()))
        .collect();
    let _ = write!(entry, "• {name}");
    if !own.is_empty() {
        let _ = write!(entry, " ({})", join_labels(own.into_iter()));
    }
    entry.push('\n');
    // The annotations people write for humans first, the rest after.
    let ordered = ["summary", "description", "message"];
    let annotations = ordered
        .iter()
        .filter_map(|k| alert.annotations.get_key_value(*k))
        .chain(
            alert
                .annotations
                .iter()
                .filter(|(k, _)| !ordered.contains(&k.as_str())),
        );
    for (key, value) in annotations {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if ordered.contains(&key.as_str()) {
            let _ = writeln!(entry, "  {}", value.replace('\n', "\n  "));
        } else {
            let _ = writeln!(entry, "  {key}: {}", value.replace('\n', "\n  "));
        }
    }
    if let Some(values) = alert.values.as_ref().filter(|v| !v.is_empty()) {
        let listed: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(entry, "  values: {}", listed.join(", "));
    }
    if is_firing(&alert.status) {
        if let Some(at) = local_time(&alert.starts_at, utc_offset) {
            let _ = writeln!(entry, "  since {at}");
        }
    } else if let Some(at) = local_time(&alert.ends_at, utc_offset) {
        let _ = writeln!(entry, "  resolved {at}");
    }
    let link = match source {
        Source::Grafana if !alert.panel_url.is_empty() => &alert.panel_url,
        _ => &alert.generator_url,
    };
    if !link.is_empty() {
        let _ = writeln!(entry, "  {link}");
    }
    if source == Source::Grafana && is_firing(&alert.status) && !alert.silence_url.is_empty() {
        let _ = writeln!(entry, "  silence: {}", alert.silence_url);
    }
    entry
}

fn join_labels<'a>(
    labels: impl Iterator<Item = (impl AsRef<str> + 'a, impl AsRef<str> + 'a)>,
) -> String {
    labels
        .map(|(k, v)| format!("{}={}", k.as_ref(), v.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An RFC 3339 time as `2024-05-01 18:04:05 (UTC+8)` in the configured offset; nothing for
/// Go's zero time (`0001-01-01…`, an alert that has not ended) or an unreadable value.
fn local_time(rfc3339: &str, utc_offset: i32) -> Option<String> {
    let at = parse_with_offset(rfc3339.trim())
        .or_else(|| humantime::parse_rfc3339_weak(rfc3339.trim()).ok())?;
    if at < std::time::UNIX_EPOCH + Duration::from_secs(86_400) {
        return None;
    }
    let shifted = if utc_offset >= 0 {
        at + Duration::from_secs(u64::from(utc_offset.unsigned_abs()))
    } else {
        at.checked_sub(Duration::from_secs(u64::from(utc_offset.unsigned_abs())))?
    };
    let stamp = humantime::format_rfc3339_seconds(shifted).to_string();
    let stamp = stamp.trim_end_matches('Z').replace('T', " ");
    let hours = f64::from(utc_offset) / 3600.0;
    Some(if utc_offset == 0 {
        format!("{stamp} UTC")
    } else {
        format!("{stamp} (UTC{hours:+})")
    })
}

/// `2021-10-12T09:51:03.157076+02:00`: humantime reads only UTC stamps (and would take this
/// one for UTC), Grafana sends local ones.
fn parse_with_offset(s: &str) -> Option<std::time::SystemTime> {
    let split = s.len().checked_sub(6)?;
    let (stamp, offset) = (s.get(..split)?, s.get(split..)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1i64,
        b'-' => -1,
        _ => return None,
    };
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    let local = humantime::parse_rfc3339_weak(stamp).ok()?;
    let seconds = sign * (hours * 3600 + minutes * 60);
    let delta = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        local.checked_sub(delta)
    } else {
        local.checked_add(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example payload from Alertmanager's documentation (webhook_config), with two
    /// alerts of one group.
    const ALERTMANAGER: &str = r#"{
      "version": "4",
      "groupKey": "{}:{alertname=\"InstanceDown\"}",
      "truncatedAlerts": 0,
      "status": "firing",
      "receiver": "pushbot",
      "groupLabels": {"alertname": "InstanceDown"},
      "commonLabels": {"alertname": "InstanceDown", "job": "node", "severity": "critical"},
      "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "alerts": [
        {"status": "firing",
         "labels": {"alertname": "InstanceDown", "instance": "db-1:9100", "job": "node", "severity": "critical"},
         "annotations": {"summary": "db-1 is down", "description": "db-1:9100 has been down for more than 5 minutes."},
         "startsAt": "2026-11-27T02:00:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0", "fingerprint": "a1"},
        {"status": "firing",
         "labels": {"alertname": "InstanceDown", "instance": "db-2:9100", "job": "node", "severity": "critical"},
         "annotations": {"summary": "db-2 is down", "runbook_url": "https://wiki/runbooks/down"},
         "startsAt": "2026-11-27T02:01:30Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0", "fingerprint": "a2"}
      ]
    }"#;

    #[test]
    fn an_alertmanager_notification_reads_like_an_alert() {
        let n: Notification = serde_json::from_str(ALERTMANAGER).unwrap();
        let (title, text) = render(&n, Source::Alertmanager, 8 * 3600);
        assert_eq!(title, "[FIRING:2] InstanceDown");
        assert_eq!(
            text,
            "Firing (2):\n\
             • InstanceDown (instance=db-1:9100)\n  db-1 is down\n  \
             db-1:9100 has been down for more than 5 minutes.\n  \
             since 2026-11-27 10:00:00 (UTC+8)\n  http://prometheus:9090/graph?g0.expr=up+%3D%3D+0\n\
             • InstanceDown (instance=db-2:9100)\n  db-2 is down\n  \
             runbook_url: https://wiki/runbooks/down\n  since 2026-11-27 10:01:30 (UTC+8)\n  \
             http://prometheus:9090/graph?g0.expr=up+%3D%3D+0\n\n\
             Labels: alertname=InstanceDown, job=node, severity=critical\n\
             http://alertmanager:9093"
        );
        assert_eq!(urgency(&n), Urgency::Urgent);
    }

    #[test]
    fn a_resolved_notification_is_normal_and_says_when() {
        let json = ALERTMANAGER
            .replace("\"status\": \"firing\"", "\"status\": \"resolved\"")
            .replace("0001-01-01T00:00:00Z", "2026-11-27T02:30:00Z");
        let n: Notification = serde_json::from_str(&json).unwrap();
        let (title, text) = render(&n, Source::Alertmanager, 0);
        assert_eq!(title, "[RESOLVED] InstanceDown");
        assert!(text.starts_with("Resolved (2):\n"), "{text}");
        assert!(text.contains("resolved 2026-11-27 02:30:00 UTC"), "{text}");
        assert!(!text.contains("since"), "{text}");
        assert_eq!(urgency(&n), Urgency::Normal);
    }

    #[test]
    fn a_storm_is_cut_to_a_readable_size_with_a_count() {
        let mut n: Notification = serde_json::from_str(ALERTMANAGER).unwrap();
        let alert = serde_json::to_string(&serde_json::json!({
            "status": "firing",
            "labels": {"alertname": "InstanceDown", "instance": "x"},
            "annotations": {"description": "d".repeat(300)},
        }))
        .unwrap();
        for _ in 0..500 {
            n.alerts.push(serde_json::from_str(&alert).unwrap());
        }
        n.truncated_alerts = 7;
        let (title, text) = render(&n, Source::Alertmanager, 0);
        assert_eq!(title, "[FIRING:502] InstanceDown");
        assert!(text.len() < MAX_TEXT_BYTES + 1024, "{}", text.len());
        assert!(text.contains("more not shown here."), "{text}");
        assert!(
            text.contains("… and 7 more that Alertmanager left out"),
            "{text}"
        );
    }

    #[test]
    fn grafana_times_with_offsets_and_values() {
        assert_eq!(
            local_time("2021-10-12T09:51:03.157076+02:00", 0).as_deref(),
            Some("2021-10-12 07:51:03 UTC")
        );
        assert_eq!(local_time("0001-01-01T00:00:00Z", 0), None);
        assert_eq!(local_time("yesterday", 0), None);
        assert_eq!(
            local_time("2021-10-12T07:51:03Z", -5 * 3600 - 1800).as_deref(),
            Some("2021-10-12 02:21:03 (UTC-5.5)")
        );
    }

    #[test]
    fn severity_sets_the_urgency_of_a_firing_notification() {
        let with = |severity: &str| Notification {
            status: "firing".into(),
            common_labels: [("severity".to_owned(), severity.to_owned())].into(),
            ..Notification::default()
        };
        assert_eq!(urgency(&with("critical")), Urgency::Urgent);
        assert_eq!(urgency(&with("warning")), Urgency::High);
        assert_eq!(urgency(&with("info")), Urgency::Normal);
        assert_eq!(urgency(&Notification::default()), Urgency::Normal);
    }
}
