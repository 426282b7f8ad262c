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

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::super::AppState;
use super::super::auth::find_token;
use super::super::send::{MAX_TITLE_BYTES, Submission, answer, parse_query, submit};
use crate::domain::Urgency;
use crate::error::ApiError;
use crate::render::cut::{cut, excerpt};

/// Most text one notification becomes, below `server.max_content_bytes`: a storm of hundreds
/// of alerts becomes the first ones and a count, not a 413 that Alertmanager would retry
/// forever.
const MAX_TEXT_BYTES: usize = 16 * 1024;
/// An alert's name on its own line (the title has its own limit).
const MAX_NAME_BYTES: usize = 256;
/// An alert's own labels, listed on its first line.
const MAX_LABELS_BYTES: usize = 512;
/// Each part of the closing lines: the shared labels, the shared annotations, the link.
const MAX_COMMON_PART_BYTES: usize = 1024;
/// A shared annotation's share of its part is never cut below this.
const MIN_ANNOTATION_BYTES: usize = 128;
/// An alert's share of the list is never cut below this (its name and labels, the start of
/// its text): in a storm, later alerts are counted instead.
const MIN_ENTRY_BYTES: usize = 1024;
/// A time shown as given because it cannot be converted.
const MAX_TIME_BYTES: usize = 64;
/// Room kept for the headings and the "… and N more" lines.
const RESERVED_BYTES: usize = 160;

/// The limits the message must fit, so that `submit` never refuses what a webhook sends:
/// a refusal is a lost alert (and Alertmanager retries a 5xx forever).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// For the title, less the room the urgency marker takes.
    title: usize,
    content: usize,
}

impl Limits {
    fn new(max_content_bytes: usize, urgency: Urgency) -> Self {
        let marker = urgency.mark("x").len() - 1;
        Self {
            title: MAX_TITLE_BYTES.saturating_sub(marker),
            content: max_content_bytes,
        }
    }
}

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
pub enum Source {
    Alertmanager,
    Grafana,
}

impl Source {
    /// "an Alertmanager" (webhook payload).
    fn payload(self) -> &'static str {
        match self {
            Self::Alertmanager => "an Alertmanager",
            Self::Grafana => "a Grafana alerting",
        }
    }
}

/// An alert webhook's error: `/send`'s own shape (these routes answer as `/send` does).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The body is not the tool's JSON payload.
    #[error("the body is not {} webhook payload: {error}", tool.payload())]
    NotAPayload {
        tool: Source,
        error: serde_json::Error,
    },
    #[error("the body is not {} webhook payload: it lists no alerts", tool.payload())]
    NoAlerts { tool: Source },
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(err) => err.into_response(),
            refused => ApiError::BadRequest(refused.to_string()).into_response(),
        }
    }
}

pub async fn alertmanager(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    hook(state, query, headers, body, Source::Alertmanager).await
}

pub async fn grafana(
    state: State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    hook(state, query, headers, body, Source::Grafana).await
}

async fn hook(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    tool: Source,
) -> Result<Response, HookError> {
    let query: Query = parse_query(query.as_deref())?;
    let body = body.map_err(ApiError::from_body)?;
    let notification: Notification =
        serde_json::from_slice(&body).map_err(|error| HookError::NotAPayload { tool, error })?;
    if notification.alerts.is_empty() {
        return Err(HookError::NoAlerts { tool });
    }
    let token = find_token(&headers, &[query.token.as_deref()]);
    let urgency = urgency(&notification);
    let limits = Limits::new(state.max_content_bytes, urgency);
    let (title, content) = render(&notification, tool, state.utc_offset, limits);
    let accepted = submit(
        &state,
        Submission {
            token,
            title: Some(title),
            content: Some(content),
            channel: query.channel,
            urgency,
            endpoint: match tool {
                Source::Alertmanager => crate::metrics::Endpoint::Alertmanager,
                Source::Grafana => crate::metrics::Endpoint::Grafana,
            },
            ack: asks_ack(&notification, &state.ack.severities).then_some(crate::store::AckAsk {
                escalate_after: None,
            }),
            ..Submission::default()
        },
    )
    .await?;
    Ok(answer(&accepted).into_response())
}

fn is_firing(status: &str) -> bool {
    !status.eq_ignore_ascii_case("resolved")
}

/// The `severity` (or `priority`) labels of a notification's firing alerts, and its common
/// one, lower-cased; none when it is resolved.
fn firing_severities(n: &Notification) -> Vec<String> {
    if !is_firing(&n.status) {
        return Vec::new();
    }
    let severity = |labels: &BTreeMap<String, String>| {
        labels
            .get("severity")
            .or_else(|| labels.get("priority"))
            .map(|s| s.trim().to_ascii_lowercase())
    };
    n.alerts
        .iter()
        .filter(|a| is_firing(&a.status))
        .filter_map(|a| severity(&a.labels))
        .chain(severity(&n.common_labels))
        .collect()
}

/// Whether a notification asks to be acknowledged: a firing alert's severity is one of
/// `ack.severities`.
fn asks_ack(n: &Notification, severities: &[String]) -> bool {
    firing_severities(n).iter().any(|s| {
        severities
            .iter()
            .any(|wanted| wanted.trim().eq_ignore_ascii_case(s))
    })
}

/// A firing notification's urgency from its severity; a resolved one is normal.
fn urgency(n: &Notification) -> Urgency {
    let mut levels = firing_severities(n).into_iter();
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

/// The title and text of one notification, within `limits`: the one place that cuts. The
/// title is cut to its limit; every alert keeps its name, its labels and the start of its
/// text (a fair share of the room, at least [`MIN_ENTRY_BYTES`]); what does not fit is
/// counted; the shared labels and annotations and the link are bounded too.
fn render(n: &Notification, source: Source, utc_offset: i32, limits: Limits) -> (String, String) {
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
    let title = excerpt(format!("[{state}] {name}").trim(), limits.title);

    // Labels every alert shares are listed once, not on each alert.
    let common: BTreeMap<&str, &str> = n
        .common_labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname" || n.alerts.len() > 1)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let content_limit = limits.content.min(MAX_TEXT_BYTES);
    // The closing lines first: the alert list gets the room they leave.
    let part_limit = MAX_COMMON_PART_BYTES.min(content_limit / 8);
    let mut closing = String::new();
    if !common.is_empty() {
        let labels = format!("Labels: {}", join_labels(common.iter()));
        let _ = writeln!(closing, "{}", excerpt(&labels, part_limit));
    }
    if n.alerts.len() > 1 && !n.common_annotations.is_empty() {
        // Like the alert list: each a fair share, so one huge annotation hides no other.
        let share = (part_limit / n.common_annotations.len()).max(MIN_ANNOTATION_BYTES);
        let mut shared = String::new();
        for (key, value) in &n.common_annotations {
            let line = format!("{key}: {}", value.trim());
            let _ = writeln!(shared, "{}", excerpt(&line, share));
        }
        let _ = writeln!(closing, "{}", excerpt(shared.trim_end(), part_limit));
    }
    if !n.external_url.is_empty() {
        let _ = writeln!(closing, "{}", excerpt(n.external_url.trim(), part_limit));
    }

    let budget = content_limit.saturating_sub(closing.len() + RESERVED_BYTES);
    let mut text = String::new();
    let mut left = n.alerts.len();
    let mut skipped = 0usize;
    let mut shown = false;
    for (heading, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(text, "{heading} ({}):", alerts.len());
        for alert in alerts.iter() {
            let room = budget.saturating_sub(text.len());
            let share = (room / left.max(1)).max(MIN_ENTRY_BYTES);
            left = left.saturating_sub(1);
            let entry = render_alert(alert, &common, source, utc_offset, share);
            if entry.len() <= room {
                text.push_str(&entry);
            } else if !shown {
                // A small limit: the first alert still shows what fits.
                let _ = writeln!(text, "{}", excerpt(entry.trim_end(), room));
            } else {
                skipped += 1;
                continue;
            }
            shown = true;
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
    text.push_str(&closing);
    (title, excerpt(text.trim_end(), limits.content))
}

/// One alert in at most `limit` bytes: its name and own labels (bounded), then as much of
/// its text, values, times and links as fits.
fn render_alert(
    alert: &Alert,
    common: &BTreeMap<&str, &str>,
    source: Source,
    utc_offset: i32,
    limit: usize,
) -> String {
    let name = alert
        .labels
        .get("alertname")
        .map_or("alert", String::as_str);
    let own: Vec<(&String, &String)> = alert
        .labels
        .iter()
        .filter(|(k, v)| k.as_str() != "alertname" && common.get(k.as_str()) != Some(&v.as_str()))
        .collect();
    let mut head = format!("• {}", excerpt(name.trim(), MAX_NAME_BYTES));
    if !own.is_empty() {
        let labels = join_labels(own.into_iter());
        let _ = write!(head, " ({})", excerpt(&labels, MAX_LABELS_BYTES));
    }
    head.push('\n');
    let mut body = String::new();
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
            let _ = writeln!(body, "  {}", value.replace('\n', "\n  "));
        } else {
            let _ = writeln!(body, "  {key}: {}", value.replace('\n', "\n  "));
        }
    }
    if let Some(values) = alert.values.as_ref().filter(|v| !v.is_empty()) {
        let listed: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(body, "  values: {}", listed.join(", "));
    }
    if is_firing(&alert.status) {
        if let Some(at) = local_time(&alert.starts_at, utc_offset) {
            let _ = writeln!(body, "  since {at}");
        }
    } else if let Some(at) = local_time(&alert.ends_at, utc_offset) {
        let _ = writeln!(body, "  resolved {at}");
    }
    let link = match source {
        Source::Grafana if !alert.panel_url.is_empty() => &alert.panel_url,
        _ => &alert.generator_url,
    };
    if !link.is_empty() {
        let _ = writeln!(body, "  {link}");
    }
    if source == Source::Grafana && is_firing(&alert.status) && !alert.silence_url.is_empty() {
        let _ = writeln!(body, "  silence: {}", alert.silence_url);
    }
    if head.len() + body.len() <= limit {
        head.push_str(&body);
        return head;
    }
    if head.len() >= limit {
        return format!("{}\n", excerpt(head.trim_end(), limit.saturating_sub(1)));
    }
    let room = limit - head.len() - 1;
    let _ = writeln!(head, "{}", excerpt(body.trim_end(), room));
    head
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
/// Go's zero time (`0001-01-01…`, an alert that has not ended) or an unreadable value; as
/// given (bounded) when the shifted time cannot be written (past the year 9999).
fn local_time(rfc3339: &str, utc_offset: i32) -> Option<String> {
    let given = rfc3339.trim();
    let at = parse_with_offset(given).or_else(|| humantime::parse_rfc3339_weak(given).ok())?;
    if at < std::time::UNIX_EPOCH + Duration::from_secs(86_400) {
        return None;
    }
    let delta = Duration::from_secs(u64::from(utc_offset.unsigned_abs()));
    let shifted = if utc_offset >= 0 {
        at.checked_add(delta)
    } else {
        at.checked_sub(delta)
    };
    let mut stamp = String::new();
    let written = shifted.is_some_and(|shifted| {
        write!(stamp, "{}", humantime::format_rfc3339_seconds(shifted)).is_ok()
    });
    if !written {
        return Some(cut(given, MAX_TIME_BYTES).to_owned());
    }
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

    /// The default `server.max_content_bytes`, a normal title.
    const LIMITS: Limits = Limits {
        title: MAX_TITLE_BYTES,
        content: 64 * 1024,
    };

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
        let (title, text) = render(&n, Source::Alertmanager, 8 * 3600, LIMITS);
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
        let (title, text) = render(&n, Source::Alertmanager, 0, LIMITS);
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
        let (title, text) = render(&n, Source::Alertmanager, 0, LIMITS);
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
    fn a_time_past_9999_once_shifted_is_shown_as_given() {
        let end = "9999-12-31T23:59:59Z";
        assert_eq!(local_time(end, 8 * 3600).as_deref(), Some(end));
        assert_eq!(
            local_time(end, 0).as_deref(),
            Some("9999-12-31 23:59:59 UTC")
        );
        assert_eq!(
            local_time(end, -3600).as_deref(),
            Some("9999-12-31 22:59:59 (UTC-1)")
        );
    }

    fn one_alert(name: &str, labels: &[(&str, &str)], description: &str) -> Alert {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("alertname".into(), name.into());
        Alert {
            status: "firing".into(),
            labels: all,
            annotations: [("description".to_owned(), description.to_owned())].into(),
            starts_at: "2026-11-27T02:00:00Z".into(),
            ..Alert::default()
        }
    }

    fn notification(alerts: Vec<Alert>) -> Notification {
        Notification {
            status: "firing".into(),
            receiver: "pushbot".into(),
            alerts,
            ..Notification::default()
        }
    }

    #[test]
    fn one_alert_with_a_huge_text_keeps_its_name_labels_and_the_start_of_its_text() {
        let description = format!("Start of the story. {}", "x".repeat(17 * 1024));
        let n = notification(vec![one_alert(
            "BigOne",
            &[("instance", "db-1")],
            &description,
        )]);
        let (title, text) = render(&n, Source::Alertmanager, 0, LIMITS);
        assert_eq!(title, "[FIRING:1] BigOne");
        assert!(text.len() <= MAX_TEXT_BYTES, "{}", text.len());
        assert!(text.contains("• BigOne (instance=db-1)"), "{text}");
        assert!(text.contains("Start of the story. xxx"), "{text}");
        assert!(!text.contains("not shown"), "{text}");
    }

    #[test]
    fn a_long_alertname_is_cut_in_the_title_and_kept_in_the_text() {
        let name = "N".repeat(1100);
        let n = notification(vec![one_alert(&name, &[], "d")]);
        for urgency in [Urgency::Normal, Urgency::Urgent] {
            let limits = Limits::new(64 * 1024, urgency);
            let (title, text) = render(&n, Source::Grafana, 0, limits);
            assert!(title.starts_with("[FIRING:1] NNN"), "{title}");
            assert!(title.ends_with('…'), "{title}");
            assert!(urgency.mark(&title).len() <= MAX_TITLE_BYTES, "{title}");
            assert!(text.contains("• NNNN"), "{text}");
        }
    }

    #[test]
    fn huge_common_annotations_leave_room_for_every_alert() {
        let mut n = notification(vec![
            one_alert("First", &[("i", "1")], "one"),
            one_alert("Second", &[("i", "2")], "two"),
        ]);
        n.common_annotations = [
            ("a_first".to_owned(), "f".repeat(70 * 1024)),
            ("runbook".to_owned(), "r".repeat(70 * 1024)),
            ("other".to_owned(), "o".repeat(70 * 1024)),
        ]
        .into();
        n.common_labels = [("team".to_owned(), "t".repeat(70 * 1024))].into();
        n.external_url = format!("http://am/{}", "u".repeat(70 * 1024));
        let (_, text) = render(&n, Source::Alertmanager, 0, LIMITS);
        assert!(text.len() <= MAX_TEXT_BYTES, "{}", text.len());
        for part in [
            "• First (i=1)",
            "one",
            "• Second (i=2)",
            "two",
            "other: ooo",
        ] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
    }

    #[test]
    fn every_part_is_bounded_whatever_the_sizes() {
        let big = "é".repeat(40 * 1024);
        for content in [1024, 4096, 64 * 1024] {
            for count in [1, 2, 50] {
                let mut alerts = Vec::new();
                for i in 0..count {
                    let mut alert = one_alert(&big, &[("k", &big), ("i", &i.to_string())], &big);
                    alert.generator_url = big.clone();
                    alert.annotations.insert("summary".into(), big.clone());
                    alerts.push(alert);
                }
                let mut n = notification(alerts);
                n.group_labels = [("alertname".to_owned(), big.clone())].into();
                n.common_labels = [("k".to_owned(), big.clone())].into();
                n.common_annotations = [("a".to_owned(), big.clone())].into();
                n.external_url = big.clone();
                let limits = Limits::new(content, Urgency::Urgent);
                let (title, text) = render(&n, Source::Grafana, 3600, limits);
                assert!(title.len() <= limits.title, "{}", title.len());
                assert!(text.len() <= content.min(MAX_TEXT_BYTES), "{}", text.len());
                assert!(text.contains("• éé"), "{content} {count}: {text}");
            }
        }
    }

    #[test]
    fn critical_firing_alerts_ask_to_be_acknowledged() {
        let with = |status: &str, severity: &str| Notification {
            status: status.to_owned(),
            common_labels: [("severity".to_owned(), severity.to_owned())].into(),
            ..Notification::default()
        };
        let critical = ["critical".to_owned()];
        assert!(asks_ack(&with("firing", "critical"), &critical));
        assert!(asks_ack(&with("firing", "CRITICAL "), &critical));
        assert!(!asks_ack(&with("firing", "warning"), &critical));
        assert!(!asks_ack(&with("resolved", "critical"), &critical));
        assert!(!asks_ack(&with("firing", "critical"), &[]));
        assert!(!asks_ack(&Notification::default(), &critical));
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Times as webhooks send them, the ones that broke rendering, and any text.
        fn time() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("9999-12-31T23:59:59Z".to_owned()),
                Just("0000-01-01T00:00:00Z".to_owned()),
                Just("0001-01-01T00:00:00Z".to_owned()),
                Just("2026-11-27T02:00:00.000+14:00".to_owned()),
                "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
                any::<String>(),
            ]
        }

        fn map() -> impl Strategy<Value = serde_json::Value> {
            prop::collection::btree_map(any::<String>(), any::<String>(), 0..4)
                .prop_map(|m| serde_json::json!(m))
        }

        fn alert() -> impl Strategy<Value = serde_json::Value> {
            (
                any::<String>(),
                map(),
                map(),
                time(),
                time(),
                any::<String>(),
            )
                .prop_map(|(status, labels, annotations, starts, ends, url)| {
                    serde_json::json!({
                        "status": status, "labels": labels, "annotations": annotations,
                        "startsAt": starts, "endsAt": ends, "generatorURL": url,
                    })
                })
        }

        fn notification_json() -> impl Strategy<Value = Vec<u8>> {
            (
                prop_oneof![
                    Just("firing".to_owned()),
                    Just("resolved".to_owned()),
                    any::<String>()
                ],
                prop::collection::vec(alert(), 0..6),
                map(),
                map(),
                any::<String>(),
                any::<String>(),
            )
                .prop_map(|(status, alerts, labels, annotations, url, title)| {
                    serde_json::to_vec(&serde_json::json!({
                        "status": status, "alerts": alerts, "commonLabels": labels,
                        "commonAnnotations": annotations, "externalURL": url,
                        "title": title, "message": title,
                    }))
                    .unwrap_or_default()
                })
        }

        proptest! {
            /// Any payload either is not a notification (a 400) or renders within the
            /// title and content limits, whatever its times, labels and sizes: never a
            /// panic (Alertmanager retries a 5xx for ever).
            #[test]
            fn any_payload_renders_within_the_limits_or_is_refused(
                body in prop_oneof![notification_json(), any::<Vec<u8>>()],
                content in 1_024usize..20_000,
                offset in -50_400i32..=50_400,
                grafana in any::<bool>(),
            ) {
                let Ok(n) = serde_json::from_slice::<Notification>(&body) else {
                    return Ok(());
                };
                let source = if grafana { Source::Grafana } else { Source::Alertmanager };
                let limits = Limits::new(content, urgency(&n));
                let (title, text) = render(&n, source, offset, limits);
                prop_assert!(title.len() <= limits.title, "title {} > {}", title.len(), limits.title);
                prop_assert!(text.len() <= limits.content, "content {} > {}", text.len(), limits.content);
            }
        }
    }
}
