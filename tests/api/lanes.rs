//! The delivery scheduler with per-member lanes, from the outside: member limits that hold
//! under load and across a restart, digests for bursts, per-member FIFO with head-of-line
//! retries that hold back only their own member, channel health while WeCom is down, and
//! claims that survive `kill -9`.
//!
//! Limits are checked on what the mock WeCom received and when it received it, never on
//! what the gateway says about itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::db;
use crate::helpers::*;
use crate::mock_wecom::SendCall;
use crate::tcp_front::TcpFront;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

struct Member {
    user: String,
    token: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = api.get_token(&user).await;
    Member { user, token }
}

async fn members(api: &Api, prefix: &str, n: usize) -> Vec<Member> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(member(api, prefix).await);
    }
    all
}

/// The `/send` rate limit out of the way: these tests are about what happens after.
fn unthrottled(c: &mut Settings) {
    c.server.send_rate = SendRate {
        count: 1_000_000,
        per: Duration::from_secs(1),
    };
}

/// `n` distinct titles for `user`, in the order they are to be sent. A message with a
/// title and no content reaches WeCom as exactly its title.
fn titles(user: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{user} #{k:03}")).collect()
}

/// Sends each title once the previous one was accepted (one sequential client), so the
/// order of acceptance is the order of `titles`. Returns the ids in that order.
async fn send_in_order(api: &Api, token: &str, titles: &[String]) -> Vec<String> {
    let mut ids = Vec::with_capacity(titles.len());
    for title in titles {
        ids.push(api.send_ok(token, title, "").await);
    }
    ids
}

/// Polls `probe` every 10 ms until it yields a value; panics with `what()` after `timeout`.
async fn poll_until<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("not within {timeout:?}: {}", what());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until WeCom has accepted at least `n` distinct texts; returns every accepted call
/// in arrival order.
async fn wait_for_distinct(mock: &MockWeCom, n: usize, timeout: Duration) -> Vec<SendCall> {
    poll_until(
        timeout,
        || {
            let calls = mock.delivered_calls();
            let distinct: BTreeSet<&str> = calls.iter().map(SendCall::text).collect();
            format!(
                "expected {n} distinct messages at WeCom, got {} ({} accepted calls, {} calls in all)",
                distinct.len(),
                calls.len(),
                mock.send_calls()
            )
        },
        || {
            let calls = mock.delivered_calls();
            let distinct: BTreeSet<&str> = calls.iter().map(SendCall::text).collect();
            (distinct.len() >= n).then_some(calls)
        },
    )
    .await
}

/// Texts WeCom accepted, per member, in arrival order.
fn delivered_by_member(calls: &[SendCall]) -> BTreeMap<String, Vec<String>> {
    let mut by_member: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut sorted: Vec<&SendCall> = calls.iter().filter(|c| c.delivered()).collect();
    sorted.sort_by_key(|c| c.arrival);
    for call in sorted {
        by_member
            .entry(call.touser().to_owned())
            .or_default()
            .push(call.text().to_owned());
    }
    by_member
}

/// No member received more than `count` messages in any window of length `per` (windows
/// are half-open, `[t, t + per)`), judged by when the mock received them.
fn assert_member_limit(calls: &[SendCall], count: usize, per: Duration) {
    let mut times: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.delivered()) {
        times
            .entry(call.touser())
            .or_default()
            .push(call.received_at);
    }
    for (member, mut times) in times {
        times.sort();
        let first = times[0];
        for (i, &start) in times.iter().enumerate() {
            let inside: Vec<Duration> = times[i..]
                .iter()
                .take_while(|&&t| t.duration_since(start) < per)
                .map(|&t| t.duration_since(first))
                .collect();
            assert!(
                inside.len() <= count,
                "member {member} received {} messages within {per:?} (limit {count}); \
                 arrivals since the member's first: {inside:?}",
                inside.len()
            );
        }
    }
}

/// Every id reaches `delivered` (checked 50 at a time).
async fn assert_delivered(api: &Api, token: &str, ids: &[String]) -> Vec<Value> {
    let mut all = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(50) {
        let statuses = join_all(
            chunk
                .iter()
                .map(|id| api.wait_for_status(id, token, "delivered", WAIT)),
        )
        .await;
        all.extend(statuses);
    }
    all
}

/// The member has no message left `queued` and none `failed`: every one it sent is
/// `delivered`.
async fn assert_nothing_pending(api: &Api, token: &str) {
    // The mock WeCom sees a message before its outcome is committed: give the last
    // outcomes a moment to be recorded, then nothing may be left queued or failed.
    let deadline = Instant::now() + Duration::from_secs(5);
    for status in ["queued", "failed"] {
        loop {
            let resp = api
                .messages(&[("token", token), ("status", status), ("limit", "5")])
                .await;
            let code = resp.status();
            let body: Value = resp.json().await.expect("message list is JSON");
            assert_eq!(code, 200, "{body}");
            let left = body["messages"].as_array().map(Vec::len);
            if left == Some(0) {
                break;
            }
            assert!(
                status == "queued" && Instant::now() < deadline,
                "no message may be left {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// member limits
// ------------------------------------------------------------------------------------------

/// The "500 messages from 50 clients to 5 members at (5, 2s)", scaled down to stay
/// fast with the same shape: 5 members, 10 concurrent clients per member, each client
/// sending 3 messages one after the other (150 in all), at 5 per 500 ms (enforced as
/// 750 ms). "Order" for concurrent senders: a client's own messages, each sent after the
/// previous one was accepted, must reach WeCom in the client's order; messages of
/// different concurrent clients have no order between them to keep.
#[tokio::test]
async fn concurrent_clients_never_push_a_member_past_its_limit_and_each_keeps_its_order() {
    const MEMBERS: usize = 5;
    const CLIENTS: usize = 10;
    const EACH: usize = 3;
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(5, Duration::from_millis(500))]);
        c.delivery.retry_window = Duration::from_secs(60);
        unthrottled(c);
    })
    .await;
    let members = members(&app, "limit", MEMBERS).await;

    let clients = members
        .iter()
        .flat_map(|m| (0..CLIENTS).map(move |c| (m, c)));
    let sent = join_all(clients.map(|(m, c)| {
        let app = &app;
        async move {
            let titles: Vec<String> = (0..EACH).map(|k| format!("{} c{c} #{k}", m.user)).collect();
            let ids = send_in_order(app, &m.token, &titles).await;
            (m, titles, ids)
        }
    }))
    .await;

    let total = MEMBERS * CLIENTS * EACH;
    wait_for_distinct(&app.mock, total, Duration::from_secs(30)).await;
    for (m, _, ids) in &sent {
        assert_delivered(&app, &m.token, ids).await;
    }
    let calls: Vec<SendCall> = app.mock.delivered_calls();
    let by_member = delivered_by_member(&calls);

    for m in &members {
        let got = by_member.get(&m.user).cloned().unwrap_or_default();
        // Exactly once each.
        let mut expected: Vec<String> = sent
            .iter()
            .filter(|(owner, _, _)| owner.user == m.user)
            .flat_map(|(_, titles, _)| titles.clone())
            .collect();
        expected.sort();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "member {} got each message once", m.user);
        // Each client's messages in the client's order.
        for c in 0..CLIENTS {
            let prefix = format!("{} c{c} #", m.user);
            let order: Vec<&String> = got.iter().filter(|t| t.starts_with(&prefix)).collect();
            let want: Vec<String> = (0..EACH).map(|k| format!("{prefix}{k}")).collect();
            assert_eq!(
                order,
                want.iter().collect::<Vec<_>>(),
                "client {c} of {} sent in order",
                m.user
            );
        }
    }
    assert_eq!(calls.len(), total, "nothing else reached WeCom");
    assert_member_limit(&calls, 5, Duration::from_millis(500));
}

/// Any number of windows: each holds on its own.
#[tokio::test]
async fn every_configured_window_holds() {
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[
            (3, Duration::from_millis(300)),
            (6, Duration::from_millis(1500)),
        ]);
        c.delivery.retry_window = Duration::from_secs(60);
        unthrottled(c);
    })
    .await;
    let m = member(&app, "windows").await;
    let titles = titles(&m.user, 12);
    let ids = send_in_order(&app, &m.token, &titles).await;

    wait_for_distinct(&app.mock, titles.len(), Duration::from_secs(20)).await;
    assert_delivered(&app, &m.token, &ids).await;
    let calls = app.mock.delivered_calls();
    assert_eq!(delivered_by_member(&calls)[&m.user], titles);
    assert_member_limit(&calls, 3, Duration::from_millis(300));
    assert_member_limit(&calls, 6, Duration::from_millis(1500));
}

/// The send history is in the database: a restart right after each member used up its
/// window must not give it a fresh one. Three members, 15 messages each, one sequential
/// client per member, at 5 per second; the restart comes as soon as the first five of
/// each member reached WeCom.
#[tokio::test]
async fn member_limits_hold_across_a_restart() {
    let mut app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(5, Duration::from_secs(1))]);
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.instance_id = Some("lanes-restart".to_owned());
        unthrottled(c);
    })
    .await;
    let members = members(&app, "restart", 3).await;
    let sent = join_all(members.iter().map(|m| {
        let app = &app;
        async move {
            let titles = titles(&m.user, 15);
            let ids = send_in_order(app, &m.token, &titles).await;
            (titles, ids)
        }
    }))
    .await;

    app.mock.wait_for_sent(15, WAIT).await;
    app.restart().await;

    wait_for_distinct(&app.mock, 45, Duration::from_secs(30)).await;
    for (m, (_, ids)) in members.iter().zip(&sent) {
        assert_delivered(&app, &m.token, ids).await;
    }
    let calls = app.mock.delivered_calls();
    let by_member = delivered_by_member(&calls);
    for (m, (titles, _)) in members.iter().zip(&sent) {
        assert_eq!(
            by_member.get(&m.user),
            Some(titles),
            "{}: each once, in order, across the restart",
            m.user
        );
    }
    assert_eq!(calls.len(), 45, "nothing lost or sent twice");
    assert_member_limit(&calls, 5, Duration::from_secs(1));
}

/// The send history a member's window needs is what the start loads (on SQLite it is read
/// from memory, loaded from the `sends` table; issue 31): a window used up before a restart
/// still holds after it, however quickly the service is back. The window is far longer than
/// a restart takes, so only the stored history can hold the next message back.
#[tokio::test]
async fn a_window_used_up_before_a_restart_holds_after_it() {
    let window = Duration::from_secs(8);
    let mut app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(3, window)]);
        c.delivery.retry_window = Duration::from_secs(60);
        c.delivery.instance_id = Some("lanes-restart-window".to_owned());
        unthrottled(c);
    })
    .await;
    let m = members(&app, "window", 1).await.remove(0);
    let titles = titles(&m.user, 4);
    send_in_order(&app, &m.token, &titles[..3]).await;
    app.mock.wait_for_sent(3, WAIT).await;
    app.restart().await;
    send_in_order(&app, &m.token, &titles[3..]).await;
    let calls = wait_for_distinct(&app.mock, 4, window + WAIT).await;
    assert_eq!(delivered_by_member(&calls).get(&m.user), Some(&titles));
    assert_member_limit(&calls, 3, window);
}

// ------------------------------------------------------------------------------------------
// digests
// ------------------------------------------------------------------------------------------

/// One WeCom message as the member sees it: a digest, or a message sent on its own.
#[derive(Debug)]
enum Seen {
    Single(String),
    Digest {
        /// How many messages it carried (its headline).
        count: usize,
        range: String,
        /// (HH:MM, summary) per line, in order.
        lines: Vec<(String, String)>,
        /// Carried messages without a line ("…还有 N 条 · and N more").
        more: usize,
        /// The page listing every carried message in full ("全文 · in full: URL").
        page: Option<String>,
    },
}

/// Parses a digest: `"N 条消息 · N messages, HH:MM[–HH:MM]"`, then `"k. HH:MM summary"`
/// for k = 1, 2, …, then maybe `"…还有 M 条 · and M more"` and `"全文 · in full: URL"`.
/// Anything not starting with such a headline is a single message.
fn parse_seen(text: &str) -> Seen {
    let mut lines = text.split('\n');
    let headline = lines.next().unwrap_or_default();
    let Some((n, rest)) = headline.split_once(" 条消息 · ") else {
        return Seen::Single(text.to_owned());
    };
    let Ok(count) = n.parse::<usize>() else {
        return Seen::Single(text.to_owned());
    };
    let (n_en, range) = rest
        .split_once(" messages, ")
        .unwrap_or_else(|| panic!("digest headline {headline:?} lacks \"N messages, HH:MM\""));
    assert_eq!(n_en, n, "both counts in the headline agree: {headline:?}");
    let mut shown = Vec::new();
    let mut more = 0;
    let mut page = None;
    for line in lines {
        assert!(page.is_none(), "the page link ends the digest: {text}");
        if let Some(rest) = line.strip_prefix("…还有 ") {
            let (m, rest) = rest
                .split_once(" 条 · and ")
                .expect("\"…还有 M 条 · and M more\"");
            assert_eq!(rest, format!("{m} more"), "{line}");
            more = m.parse().expect("a count of more messages");
            continue;
        }
        if let Some(url) = line.strip_prefix("全文 · in full: ") {
            page = Some(url.to_owned());
            continue;
        }
        assert_eq!(more, 0, "no message line after the count of more: {text}");
        let (k, rest) = line
            .split_once(". ")
            .unwrap_or_else(|| panic!("digest line {line:?} is not \"k. HH:MM summary\""));
        assert_eq!(
            k,
            (shown.len() + 1).to_string(),
            "digest lines are numbered: {text}"
        );
        let (clock, summary) = rest
            .split_once(' ')
            .unwrap_or_else(|| panic!("digest line {line:?} is not \"k. HH:MM summary\""));
        shown.push((clock.to_owned(), summary.to_owned()));
    }
    assert_eq!(
        count,
        shown.len() + more,
        "headline count = lines + more: {text}"
    );
    if more > 0 || shown.iter().any(|(_, s)| s.ends_with('…')) {
        assert!(page.is_some(), "what is not shown whole is linked: {text}");
    }
    Seen::Digest {
        count,
        range: range.to_owned(),
        lines: shown,
        more,
        page,
    }
}

/// One message on a digest's page.
#[derive(Debug)]
struct PageEntry {
    accepted_ms: i64,
    title: Option<String>,
    content: String,
}

/// What `/m/…` answers to `link` (a URL under `server.public_url`, or a path): status, body.
async fn open_page(app: &Api, link: &str) -> (u16, String) {
    let path = link.strip_prefix(PUBLIC_URL).unwrap_or(link);
    assert!(path.starts_with("/m/"), "{link}");
    let resp = app
        .http
        .get(app.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("page body"))
}

/// The messages a digest's page lists (plain-text messages), in order.
async fn digest_page(app: &Api, link: &str) -> Vec<PageEntry> {
    let (status, html) = open_page(app, link).await;
    assert_eq!(status, 200, "{link}: {html}");
    let between = |text: &str, from: &str, to: &str| -> Option<String> {
        let start = text.find(from)? + from.len();
        let len = text[start..].find(to)?;
        Some(text[start..start + len].to_owned())
    };
    let unescape = |text: String| {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    };
    html.split("<article class=\"message\">")
        .skip(1)
        .map(|article| PageEntry {
            accepted_ms: between(article, "data-ms=\"", "\"")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("each message shows its time: {article}")),
            title: between(article, "<h2>", "</h2>").map(unescape),
            content: unescape(
                between(article, "<div class=\"content text\">", "</div>")
                    .unwrap_or_else(|| panic!("each message shows its content: {article}")),
            ),
        })
        .collect()
}

/// `HH:MM` in UTC+8 of unix milliseconds.
fn beijing_clock_ms(ms: i64) -> String {
    let of_day = (ms / 1000 + 8 * 3600).rem_euclid(86_400);
    format!("{:02}:{:02}", of_day / 3600, of_day % 3600 / 60)
}

/// `HH:MM` of an RFC 3339 UTC time (`2026-11-25T18:01:33.690Z`) in UTC+8, the default
/// `delivery.utc_offset` that digests show times in.
fn beijing_clock(rfc3339: &str) -> String {
    let time = rfc3339
        .split_once('T')
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {rfc3339}"));
    let hour: u32 = time[0..2].parse().expect("hour");
    let minute = &time[3..5];
    format!("{:02}:{minute}", (hour + 8) % 24)
}

/// A digest line shows a markdown message as readable text, not its `**` and `##` markers.
#[tokio::test]
async fn a_digest_shows_markdown_as_readable_text() {
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(1, Duration::from_secs(1))]);
        c.delivery.digest_after = Some(Duration::from_secs(1));
        unthrottled(c);
    })
    .await;
    let m = member(&app, "mddigest").await;
    for n in 0..6 {
        let resp = app
            .http
            .post(app.url("/send"))
            .bearer_auth(&m.token)
            .json(&serde_json::json!({
                "content": format!("**Job {n}** failed on `db-{n}`"),
                "format": "markdown",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let digest = loop {
        let calls = app.mock.delivered_calls();
        if let Some(call) = calls.iter().find(|c| c.text().contains("Job 5")) {
            break call.text().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no digest carried the last message: {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(digest.contains("Job 5 failed on db-5"), "{digest}");
    assert!(
        !digest.contains("**") && !digest.contains("##") && !digest.contains('`'),
        "{digest}"
    );
}

/// 300 messages to one member at 5 a second, with `digest_after = "1s"`: the lane would
/// wait a minute, so waiting messages are coalesced. The member gets far fewer WeCom
/// messages that, read in order (a digest's lines, then its page for the messages it has
/// no room for), carry all 300 in the order they were sent; each of the
/// 300 is `delivered`, those carried by a digest with `via` naming it, those sent on their
/// own with `via: null`; the member limit holds for the digests too.
#[tokio::test]
async fn a_burst_becomes_digests_that_carry_every_message_in_order() {
    const N: usize = 300;
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(5, Duration::from_secs(1))]);
        c.delivery.digest_after = Some(Duration::from_secs(1));
        c.delivery.retry_window = Duration::from_secs(60);
        unthrottled(c);
    })
    .await;
    let m = member(&app, "digest").await;
    let titles = titles(&m.user, N);
    let ids = send_in_order(&app, &m.token, &titles).await;

    // Read what the member saw until all 300 are carried.
    let seen_now =
        |calls: &[SendCall]| -> Vec<Seen> { calls.iter().map(|c| parse_seen(c.text())).collect() };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let calls = app.mock.delivered_calls();
        let carried: usize = seen_now(&calls)
            .iter()
            .map(|s| match s {
                Seen::Single(_) => 1,
                Seen::Digest { count, .. } => *count,
            })
            .sum();
        if carried >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {carried} of {N} messages reached the member in {} WeCom messages",
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses = assert_delivered(&app, &m.token, &ids).await;
    // Read again once all are recorded, so that a late extra message shows too.
    let calls = app.mock.delivered_calls();
    let seen = seen_now(&calls);

    assert!(
        calls.len() < N,
        "a burst of {N} must be coalesced, but WeCom got {} messages",
        calls.len()
    );
    assert!(
        seen.iter().any(|s| matches!(s, Seen::Digest { .. })),
        "at least one digest"
    );
    assert_member_limit(&calls, 5, Duration::from_secs(1));

    // Unfold: which WeCom message carried each of the 300, and what it said about it (on
    // its lines, and on its page for those it has no room for).
    let mut carried: Vec<(usize, Option<String>, String)> = Vec::new(); // (call, clock, title)
    for (i, (call, s)) in calls.iter().zip(&seen).enumerate() {
        assert!(
            call.text().len() <= 2048,
            "WeCom message {i} is {} bytes",
            call.text().len()
        );
        match s {
            Seen::Single(text) => carried.push((i, None, text.clone())),
            Seen::Digest {
                count,
                range,
                lines,
                more,
                page,
            } => {
                let all: Vec<(String, String)> = match page {
                    None => lines.clone(),
                    Some(link) => {
                        let entries = digest_page(&app, link).await;
                        assert_eq!(
                            entries.len(),
                            *count,
                            "its page lists all it carried: {s:?}"
                        );
                        let all: Vec<(String, String)> = entries
                            .iter()
                            .map(|e| {
                                assert_eq!(e.content, "", "{e:?}");
                                let title = e.title.clone().unwrap_or_default();
                                (beijing_clock_ms(e.accepted_ms), title)
                            })
                            .collect();
                        assert_eq!(
                            lines[..],
                            all[..lines.len()],
                            "the lines are the page's first messages"
                        );
                        all
                    }
                };
                assert!(*more < *count, "a digest shows at least one line: {s:?}");
                for (clock, title) in &all {
                    carried.push((i, Some(clock.clone()), title.clone()));
                }
                let (first, last) = (&all[0].0, &all[all.len() - 1].0);
                assert!(
                    range.starts_with(first.as_str()) && range.ends_with(last.as_str()),
                    "headline range {range:?} spans the first and last message's time ({first}, {last})"
                );
            }
        }
    }
    let order: Vec<&String> = carried.iter().map(|(_, _, t)| t).collect();
    assert_eq!(
        order,
        titles.iter().collect::<Vec<_>>(),
        "every message carried exactly once, in the order sent"
    );

    let mut via_of_call: HashMap<usize, String> = HashMap::new();
    let mut call_of_via: HashMap<String, usize> = HashMap::new();
    for ((call, clock, title), status) in carried.iter().zip(&statuses) {
        let via = status
            .get("via")
            .unwrap_or_else(|| panic!("GET /messages/{{id}} has a via field: {status}"));
        match clock {
            None => assert!(via.is_null(), "{title} was sent on its own: {status}"),
            Some(clock) => {
                assert_eq!(
                    clock,
                    &beijing_clock(status["created_at"].as_str().expect("created_at")),
                    "{title}: the digest line shows when it was accepted: {status}"
                );
                let via = via
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| panic!("{title} came in a digest: {status}"));
                let known = via_of_call.entry(*call).or_insert_with(|| via.to_owned());
                assert_eq!(known, via, "one digest, one via: {status}");
                let owner = call_of_via.entry(via.to_owned()).or_insert(*call);
                assert_eq!(owner, call, "two digests share via {via}");
            }
        }
    }
}

/// What each message of a burst said to the member, in the order the member can read it:
/// a single message's text; a digest's line — or, when the digest links its page, the
/// page's entry for it (`"title\n\ncontent"`, as a single message reads) with the page's
/// link. A digest's lines are checked against its page on the way.
async fn readable(app: &Api, calls: &[SendCall]) -> Vec<(String, Option<String>)> {
    let mut said = Vec::new();
    for call in calls {
        assert!(call.text().len() <= 2048, "{} bytes", call.text().len());
        match parse_seen(call.text()) {
            Seen::Single(text) => said.push((text, None)),
            Seen::Digest {
                lines, page: None, ..
            } => said.extend(lines.into_iter().map(|(_, summary)| (summary, None))),
            Seen::Digest {
                count,
                lines,
                page: Some(link),
                ..
            } => {
                let entries = digest_page(app, &link).await;
                assert_eq!(
                    entries.len(),
                    count,
                    "its page lists all it carried: {link}"
                );
                for ((clock, summary), entry) in lines.iter().zip(&entries) {
                    assert_eq!(clock, &beijing_clock_ms(entry.accepted_ms), "{entry:?}");
                    let title = entry.title.as_deref().unwrap_or_default();
                    assert!(
                        summary.starts_with(title),
                        "line {summary:?} starts with its title: {entry:?}"
                    );
                }
                for entry in entries {
                    let text = match entry.title {
                        Some(title) => format!("{title}\n\n{}", entry.content),
                        None => entry.content,
                    };
                    said.push((text, Some(link.clone())));
                }
            }
        }
    }
    said
}

/// A burst of 30 messages with one title ("burst") and distinct contents, under a member
/// limit of 2 per 3 s: what the member reads carries every content, in order — a digest
/// line shows the title and the content, not the title alone.
#[tokio::test]
async fn a_digest_shows_every_content_of_a_burst_with_one_title() {
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(2, Duration::from_secs(3))]);
        c.delivery.digest_after = Some(Duration::from_secs(1));
        unthrottled(c);
    })
    .await;
    let m = member(&app, "dgburst").await;
    let contents: Vec<String> = (0..30).map(|k| format!("dg-{k:02}")).collect();
    let mut ids = Vec::with_capacity(contents.len());
    for content in &contents {
        ids.push(app.send_ok(&m.token, "burst", content).await);
    }
    let statuses = assert_delivered(&app, &m.token, &ids).await;
    let calls = app.mock.delivered_calls();
    assert!(
        calls.len() < contents.len(),
        "the burst is coalesced: {calls:#?}"
    );
    let said = readable(&app, &calls).await;
    let texts: Vec<&str> = said.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        said.len(),
        contents.len(),
        "one reading per message: {texts:#?}"
    );
    for (k, (text, content)) in texts.iter().zip(&contents).enumerate() {
        assert!(
            text.contains("burst") && text.contains(content.as_str()),
            "message {k} ({content}) reads {text:?}; all: {texts:#?}"
        );
    }
    let in_digests = statuses.iter().filter(|s| s["via"].is_string()).count();
    assert!(in_digests >= 20, "most went in digests: {statuses:#?}");
}

/// Messages too long for a digest line: the digest shows each line cut short, counts those
/// it has no room for and links its page, which lists every carried message in full (title,
/// time, content) in acceptance order — to whoever has the link's key. Without the key, or
/// with a wrong one, the page answers exactly as a message page with a wrong key does.
#[tokio::test]
async fn a_digest_page_has_every_message_in_full_and_only_with_its_key() {
    let app = spawn_app_with(|c| {
        c.wecom.member_limits = member_limits(&[(2, Duration::from_secs(3))]);
        c.delivery.digest_after = Some(Duration::from_secs(1));
        unthrottled(c);
    })
    .await;
    let m = member(&app, "dgpage").await;
    let contents: Vec<String> = (0..40)
        .map(|k| {
            format!(
                "dg-{k:02} host-{k:02}: /var 100%\n{}",
                "detail & <more> ".repeat(20)
            )
        })
        .collect();
    let mut ids = Vec::with_capacity(contents.len());
    for content in &contents {
        ids.push(app.send_ok(&m.token, "Disk full", content).await);
    }
    let statuses = assert_delivered(&app, &m.token, &ids).await;
    let calls = app.mock.delivered_calls();
    let said = readable(&app, &calls).await;
    assert_eq!(said.len(), contents.len());
    let mut links = BTreeSet::new();
    for ((text, link), (content, status)) in said.iter().zip(contents.iter().zip(&statuses)) {
        assert_eq!(
            text,
            &format!("Disk full\n\n{content}"),
            "in full, in order"
        );
        match (link, status["via"].as_str()) {
            (None, None) => {}
            (Some(link), Some(via)) => {
                assert!(
                    link.starts_with(&format!("{PUBLIC_URL}/m/{via}?k=")),
                    "the page of the digest that carried it: {link} {status}"
                );
                links.insert(link.clone());
            }
            (link, _) => panic!("a message in a digest is on its page: {link:?} {status}"),
        }
    }
    assert!(!links.is_empty(), "a digest linked its page: {calls:#?}");

    // The answer to a message page with a wrong key, nonce aside.
    let without_nonce = |html: &str| {
        html.split("nonce=\"")
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once('"').map_or(part, |(_, rest)| rest)
                }
            })
            .collect::<String>()
    };
    let (status, wrong_message) =
        open_page(&app, &format!("/m/{}?k=AAAAAAAAAAAAAAAAAAAAAA", ids[0])).await;
    assert_eq!(status, 404);
    let not_found = without_nonce(&wrong_message);
    for link in &links {
        let (base, key) = link.split_once("?k=").expect("a key");
        let mut wrong = key.to_owned();
        let last = if wrong.pop() == Some('A') { 'B' } else { 'A' };
        wrong.push(last);
        for attempt in [
            base.to_owned(),
            format!("{base}?k="),
            format!("{base}?k={wrong}"),
            format!("{base}?k={}", &key[..key.len() - 1]),
            format!("{base}?k={key}x"),
        ] {
            let (status, body) = open_page(&app, &attempt).await;
            assert_eq!(status, 404, "{attempt}: {body}");
            assert_eq!(without_nonce(&body), not_found, "{attempt}");
            assert!(
                !body.contains("dg-") && !body.contains("Disk full"),
                "{body}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// per-member FIFO and head-of-line retries
// ------------------------------------------------------------------------------------------

/// Calls to `user`, in arrival order: (text, accepted by WeCom).
fn calls_to(mock: &MockWeCom, user: &str) -> Vec<(String, bool)> {
    let mut calls: Vec<SendCall> = mock
        .calls()
        .into_iter()
        .filter(|c| c.touser() == user)
        .collect();
    calls.sort_by_key(|c| c.arrival);
    calls
        .iter()
        .map(|c| (c.text().to_owned(), c.delivered()))
        .collect()
}

async fn a_head_in_retries_holds_back_only_its_own_member(failure: SendReply) {
    let app = spawn_app_with(|c| {
        c.delivery.retry_window = Duration::from_secs(30);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
    })
    .await;
    let a = member(&app, "hola").await;
    let b = member(&app, "holb").await;
    app.mock.fail_always_for(&a.user, failure.clone());

    let a_titles = titles(&a.user, 4);
    let a_ids = send_in_order(&app, &a.token, &a_titles).await;
    // A's head has failed twice: it is being retried.
    poll_until(
        WAIT,
        || format!("A's head tried twice: {:?}", calls_to(&app.mock, &a.user)),
        || (calls_to(&app.mock, &a.user).len() >= 2).then_some(()),
    )
    .await;

    // B is not held up by A's retries.
    let b_titles = titles(&b.user, 4);
    let b_ids = send_in_order(&app, &b.token, &b_titles).await;
    for id in &b_ids {
        app.wait_for_status(id, &b.token, "delivered", Duration::from_secs(5))
            .await;
    }
    // Meanwhile only A's head was tried; the rest of A's lane waits behind it.
    let so_far = calls_to(&app.mock, &a.user);
    assert!(
        so_far.iter().all(|(text, ok)| text == &a_titles[0] && !ok),
        "while A's head fails ({failure:?}), no later A message is attempted: {so_far:?}"
    );
    for id in &a_ids {
        let status = app.message_json(id, &a.token).await;
        assert_eq!(status["status"], "queued", "{status}");
    }

    app.mock.heal_member(&a.user);
    assert_delivered(&app, &a.token, &a_ids).await;
    let a_calls = calls_to(&app.mock, &a.user);
    let failures = a_calls.iter().take_while(|(_, ok)| !ok).count();
    assert!(failures >= 2, "{a_calls:?}");
    let mut expected: Vec<(String, bool)> = vec![(a_titles[0].clone(), false); failures];
    expected.extend(a_titles.iter().map(|t| (t.clone(), true)));
    assert_eq!(
        a_calls, expected,
        "A: its head retried until it got through, then the rest in order"
    );
    // Every B message reached WeCom before A's head finally did.
    let calls = app.mock.calls();
    let a_head_ok = calls
        .iter()
        .find(|c| c.touser() == a.user && c.delivered())
        .map(|c| c.arrival)
        .expect("A's head got through");
    let b_arrivals: Vec<usize> = calls
        .iter()
        .filter(|c| c.touser() == b.user && c.delivered())
        .map(|c| c.arrival)
        .collect();
    assert_eq!(b_arrivals.len(), 4);
    assert!(
        b_arrivals.iter().all(|&b| b < a_head_ok),
        "B was delivered while A's head was being retried"
    );
}

#[tokio::test]
async fn a_head_busy_with_errcode_minus_1_holds_back_only_its_own_member() {
    a_head_in_retries_holds_back_only_its_own_member(SendReply::errcode(-1, "system busy")).await;
}

#[tokio::test]
async fn a_head_answered_http_502_holds_back_only_its_own_member() {
    a_head_in_retries_holds_back_only_its_own_member(SendReply::http(502)).await;
}

/// The head fails transiently once, then permanently: it ends `failed` at once and the lane
/// moves on to the next message, which was not attempted before.
async fn a_permanent_failure_ends_the_head_and_the_lane_moves_on(permanent: fn(&str) -> SendReply) {
    let app = spawn_app_with(|c| {
        c.delivery.retry_window = Duration::from_secs(30);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
    })
    .await;
    let a = member(&app, "perm").await;
    app.mock.push_replies_for(
        &a.user,
        [SendReply::errcode(-1, "system busy"), permanent(&a.user)],
    );
    let titles = titles(&a.user, 3);
    let ids = send_in_order(&app, &a.token, &titles).await;

    let mut settled = Vec::new();
    for id in &ids {
        settled.push(settled_status(&app, id, &a.token).await);
    }
    assert_eq!(
        calls_to(&app.mock, &a.user),
        vec![
            (titles[0].clone(), false),
            (titles[0].clone(), false),
            (titles[1].clone(), true),
            (titles[2].clone(), true),
        ],
        "the head's two tries, then the rest of the lane in order"
    );
    let head = &settled[0];
    assert_eq!(head["status"], "failed", "{head}");
    assert_eq!(head["attempts"], 2, "{head}");
    assert!(
        head["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{head}"
    );
    for status in &settled[1..] {
        assert_eq!(status["status"], "delivered", "{status}");
    }
}

/// Polls until the message is no longer `queued`; returns its state.
async fn settled_status(api: &Api, id: &str, token: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = api.message_json(id, token).await;
        if status["status"] != "queued" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} still queued after {WAIT:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_head_that_fails_with_81013_is_failed_and_the_lane_moves_on() {
    a_permanent_failure_ends_the_head_and_the_lane_moves_on(|_| {
        SendReply::errcode(81013, "user & party & tag all invalid")
    })
    .await;
}

#[tokio::test]
async fn a_head_reported_as_invaliduser_is_failed_and_the_lane_moves_on() {
    a_permanent_failure_ends_the_head_and_the_lane_moves_on(SendReply::invalid_user).await;
}

// ------------------------------------------------------------------------------------------
// channel health
// ------------------------------------------------------------------------------------------

/// Lines of `log` that talk about the outage or about retrying.
fn outage_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("unreachable") || l.contains("retry") || l.contains("attempt")
        })
        .collect()
}

/// WeCom is down (every connection reset) for 10 s while 1,000 messages for 4 members
/// queue up: WeCom sees a handful of connection attempts (probes), not one per message;
/// once it answers again, all 1,000 are delivered, once each, in order per member; the log
/// says when it went down (WARN, with how many wait) and when it came back (INFO), and has
/// no line per message.
#[tokio::test]
async fn an_outage_is_probed_not_hammered_and_logged_once_each_way() {
    const MEMBERS: usize = 4;
    // 400 queued messages against at most 15 connection attempts: probes, not one per
    // message (250 each took over 10 s to queue on PostgreSQL during a full-suite run).
    const EACH: usize = 100;
    const OUTAGE: Duration = Duration::from_secs(10);
    const MAX_ATTEMPTS: u64 = 15;
    let mock = MockWeCom::start().await;
    let front = TcpFront::start(Some(&mock.base_url)).await;
    // Probes start near 200 ms and grow to 3 s: a 10 s outage leaves room for well under
    // MAX_ATTEMPTS, even with jitter halving every wait.
    let mut config = settings_with(|c| {
        c.delivery.retry_window = Duration::from_secs(120);
        c.wecom.request_timeout = Duration::from_secs(2);
        c.delivery.backoff_initial = Duration::from_millis(200);
        c.delivery.backoff_max = Duration::from_secs(3);
        c.delivery.probe_max = Duration::from_secs(3);
        c.delivery.instance_id = Some("lanes-outage".to_owned());
    });
    unthrottled(&mut config);
    let setup = bin_setup(&config, &front.base_url);
    let bin = spawn_binary(&setup.config_path, setup.port, &[("RUST_LOG", "info")]).await;
    let members = members(&bin, "outage", MEMBERS).await;

    // Through the front while it is up: the access token is cached, connections pooled.
    for m in &members {
        let id = bin.send_ok(&m.token, "warm-up", "").await;
        bin.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    }
    assert!(
        front.connections() >= 1,
        "the warm-up went through the front"
    );

    front.go_down();
    let down_at = Instant::now();
    let sent = join_all(members.iter().map(|m| {
        let bin = &bin;
        async move {
            let titles = titles(&m.user, EACH);
            send_in_order(bin, &m.token, &titles).await;
            titles
        }
    }))
    .await;
    assert!(
        down_at.elapsed() < OUTAGE,
        "queuing {} messages took {:?}",
        MEMBERS * EACH,
        down_at.elapsed()
    );
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let attempts = front.refused();
    front.come_up();

    wait_for_distinct(&mock, MEMBERS * EACH + 1, Duration::from_secs(30)).await;
    for m in &members {
        assert_nothing_pending(&bin, &m.token).await;
    }
    let calls = mock.delivered_calls();
    let log = std::fs::read_to_string(&bin.log_path).expect("read the log");
    assert!(
        attempts <= MAX_ATTEMPTS,
        "WeCom saw {attempts} connection attempts during a {OUTAGE:?} outage \
         (at most {MAX_ATTEMPTS}: probes, not one per message)"
    );

    let by_member = delivered_by_member(&calls);
    for (m, titles) in members.iter().zip(&sent) {
        let mut expected = vec!["warm-up".to_owned()];
        expected.extend(titles.iter().cloned());
        assert_eq!(
            by_member.get(&m.user),
            Some(&expected),
            "{}: every message once, in order",
            m.user
        );
    }

    let down = log
        .lines()
        .position(|l| l.contains("WeCom unreachable") && l.contains("WARN"))
        .unwrap_or_else(|| {
            panic!(
                "a WARN line says \"WeCom unreachable\"; log:\n{}",
                tail(&log)
            )
        });
    let down_line = log.lines().nth(down).unwrap_or_default();
    let after = down_line
        .split_once("WeCom unreachable")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(
        after.chars().any(|c| c.is_ascii_digit()),
        "the outage line says how many messages wait: {down_line}"
    );
    let up = log
        .lines()
        .position(|l| l.contains("WeCom reachable again") && l.contains("INFO"))
        .unwrap_or_else(|| {
            panic!(
                "an INFO line says \"WeCom reachable again\"; log:\n{}",
                tail(&log)
            )
        });
    assert!(up > down, "reachable again comes after unreachable");
    let chatter = outage_lines(&log);
    assert!(
        chatter.len() < 20,
        "{} log lines about the outage for {} messages (one per state change, not per \
         message); e.g.:\n{}",
        chatter.len(),
        MEMBERS * EACH,
        chatter[..chatter.len().min(5)].join("\n")
    );
}

/// The last 40 lines, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A message whose retry window runs out while WeCom is down ends `failed`, saying WeCom
/// was unreachable and the retry window is used up, at about the end of its own window —
/// never before: only once a try at its end has failed too. Two messages in one lane, sent
/// 700 ms apart: the second, waiting behind the first, has its own window too.
/// `no_try_for`: how long after a failed try WeCom cannot be tried again (with `gettoken`
/// refused, its failure is the answer for `TOKEN_FAILURE_COOLDOWN`), by which a message can
/// move on that much later than its window's end.
async fn a_window_that_ends_while_wecom_is_down_fails_the_message(
    take_down: impl FnOnce(&MockWeCom, &TcpFront),
    no_try_for: Duration,
) {
    const WINDOW: Duration = Duration::from_secs(2);
    let front = TcpFront::start(None).await;
    let app = spawn_app_with(|c| {
        c.wecom.api_base = http_url(&front.base_url);
        c.delivery.retry_window = Duration::from_secs(2);
        c.delivery.probe_max = Duration::from_millis(500);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(500);
    })
    .await;
    front.forward_to(&app.mock.base_url);
    let m = member(&app, "window").await;
    take_down(&app.mock, &front);

    let first = app.send_ok(&m.token, "first", "").await;
    let first_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = app.send_ok(&m.token, "second", "").await;
    let second_at = Instant::now();

    let mut failed: HashMap<&str, (Duration, Value)> = HashMap::new();
    let deadline = Instant::now() + WINDOW * 4;
    while failed.len() < 2 {
        for (id, at) in [(&first, first_at), (&second, second_at)] {
            if failed.contains_key(id.as_str()) {
                continue;
            }
            let status = app.message_json(id, &m.token).await;
            match status["status"].as_str() {
                Some("queued") => {}
                Some("failed") => {
                    failed.insert(id.as_str(), (at.elapsed(), status));
                }
                _ => panic!("message {id} must end failed: {status}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "both messages failed within {:?}: {failed:?}",
            WINDOW * 4
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (name, id) in [("first", &first), ("second", &second)] {
        let (after, status) = &failed[id.as_str()];
        let error = status["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            error.contains("unreachable"),
            "{name}: last_error says WeCom was unreachable: {status}"
        );
        assert!(
            error.contains("retry window") || error.contains("retry_window"),
            "{name}: last_error says the retry window was used up: {status}"
        );
        // (Measured from just after it was accepted.)
        assert!(
            *after >= WINDOW - Duration::from_millis(100),
            "{name} failed after {after:?}, before its {WINDOW:?} window ended"
        );
        assert!(
            *after <= WINDOW + no_try_for + Duration::from_millis(1000),
            "{name} failed {after:?} after it was accepted, long past its {WINDOW:?} window"
        );
    }
}

#[tokio::test]
async fn a_window_that_ends_while_wecom_refuses_connections_fails_saying_unreachable() {
    // No token was fetched before: every try starts with a refused `gettoken`.
    a_window_that_ends_while_wecom_is_down_fails_the_message(
        |_, front| front.go_down(),
        pushbot::wecom::client::TOKEN_FAILURE_COOLDOWN,
    )
    .await;
}

#[tokio::test]
async fn a_window_that_ends_while_wecom_answers_503_fails_saying_unreachable() {
    a_window_that_ends_while_wecom_is_down_fails_the_message(
        |mock, _| mock.fail_always(SendReply::http(503)),
        Duration::ZERO,
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// claims and restarts
// ------------------------------------------------------------------------------------------

/// `kill -9` while lanes are claimed and attempts are in flight at a slow WeCom: after a
/// restart (same instance id, so it takes its own claims back at once rather than after
/// the 10 s lease) everything is delivered; a message reaches the member twice only if
/// its attempt had started before the kill and its delivery was not yet recorded.
#[tokio::test]
async fn sigkill_while_lanes_are_claimed_loses_nothing_and_repeats_only_unrecorded_attempts() {
    const MEMBERS: usize = 4;
    const EACH: usize = 5;
    let mock = MockWeCom::start().await;
    let mut config = settings_with(|c| {
        c.delivery.retry_window = Duration::from_secs(60);
        c.wecom.request_timeout = Duration::from_secs(5);
        c.delivery.lease = Duration::from_secs(10);
        c.delivery.instance_id = Some("lanes-kill9".to_owned());
    });
    unthrottled(&mut config);
    let setup = bin_setup(&config, &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let members = members(&bin, "kill", MEMBERS).await;

    mock.set_delay(Some(Duration::from_millis(800)));
    let sent = join_all(members.iter().map(|m| {
        let bin = &bin;
        async move {
            let titles = titles(&m.user, EACH);
            let ids = send_in_order(bin, &m.token, &titles).await;
            (titles, ids)
        }
    }))
    .await;
    // Some attempts done, more in flight.
    mock.wait_for_send_calls(MEMBERS, WAIT).await;
    mock.wait_for_send_started(MEMBERS + 1, WAIT).await;
    bin.kill9();
    let started_at_kill = mock.send_started();

    let mut conn = db::connect(setup.store_url()).await;
    let rows = db::messages(&mut conn).await;
    db::close(conn).await;
    let recorded: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.status == "delivered")
        .map(|r| r.id.clone())
        .collect();
    // Attempts WeCom may have processed whose success pushbot had not recorded.
    let unrecorded = started_at_kill.saturating_sub(recorded.len());

    mock.heal();
    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let total = MEMBERS * EACH;
    // Well within the 10 s lease: the same instance id takes its own claims back at once.
    wait_for_distinct(&mock, total, Duration::from_secs(8)).await;
    for (m, (_, ids)) in members.iter().zip(&sent) {
        assert_delivered(&bin, &m.token, ids).await;
    }

    let calls = mock.delivered_calls();
    let duplicates = calls.len() - total;
    assert!(
        duplicates <= unrecorded,
        "{duplicates} messages reached WeCom twice, but only {unrecorded} attempts were \
         unrecorded at the kill ({started_at_kill} started, {} recorded delivered)",
        recorded.len()
    );
    let by_member = delivered_by_member(&calls);
    for (m, (titles, ids)) in members.iter().zip(&sent) {
        let got = &by_member[&m.user];
        let mut first_seen: Vec<&String> = Vec::new();
        for text in got {
            if first_seen.contains(&text) {
                let k = titles.iter().position(|t| t == text).expect("a sent title");
                assert!(
                    !recorded.contains(&ids[k]),
                    "{text} was recorded delivered before the kill, yet sent again"
                );
            } else {
                first_seen.push(text);
            }
        }
        assert_eq!(
            first_seen,
            titles.iter().collect::<Vec<_>>(),
            "{}: all delivered, in order",
            m.user
        );
    }
}

/// A restart with a few thousand queued rows answers `/healthz` at once and drains them:
/// 2,000 messages for 20 members queue while WeCom is down; WeCom comes back and the
/// gateway is restarted.
#[tokio::test]
async fn a_restart_with_thousands_queued_is_healthy_at_once_and_drains_them() {
    const MEMBERS: usize = 20;
    const EACH: usize = 100;
    let front = TcpFront::start(None).await;
    let mut app = spawn_app_with(|c| {
        c.wecom.api_base = http_url(&front.base_url);
        c.delivery.retry_window = Duration::from_secs(120);
        c.delivery.backoff_initial = Duration::from_secs(1);
        c.delivery.backoff_max = Duration::from_secs(5);
        c.delivery.probe_max = Duration::from_secs(5);
        c.delivery.instance_id = Some("lanes-drain".to_owned());
        unthrottled(c);
    })
    .await;
    front.forward_to(&app.mock.base_url);
    front.go_down();
    let members = members(&app, "drain", MEMBERS).await;
    let sent = join_all(members.iter().map(|m| {
        let app = &app;
        async move {
            let titles = titles(&m.user, EACH);
            send_in_order(app, &m.token, &titles).await;
            titles
        }
    }))
    .await;
    app.stop().await;
    assert!(app.mock.sent().is_empty(), "nothing got through while down");
    front.come_up();

    let started = Instant::now();
    app.restart().await;
    loop {
        if let Ok(resp) = app.healthz().await
            && resp.status() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "/healthz answers 200 at once after a restart with 2,000 queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = MEMBERS * EACH;
    wait_for_distinct(&app.mock, total, Duration::from_secs(60)).await;
    for m in &members {
        assert_nothing_pending(&app, &m.token).await;
    }
    let calls = app.mock.delivered_calls();
    assert_eq!(calls.len(), total, "each once");
    let by_member = delivered_by_member(&calls);
    for (m, titles) in members.iter().zip(&sent) {
        assert_eq!(by_member.get(&m.user), Some(titles), "{}: in order", m.user);
    }
}

/// A transient failure that is about the member, not about WeCom (its rate limit): only
/// that member's lane waits; WeCom is not treated as down.
#[tokio::test]
async fn a_head_rate_limited_by_wecom_holds_back_only_its_own_member() {
    a_head_in_retries_holds_back_only_its_own_member(SendReply::errcode(
        45009,
        "api freq out of limit",
    ))
    .await;
}

/// Lanes are given up and claimed again all the time when many members each get a
/// message now and then. A lane claimed again in the instant its old worker lets go must
/// still get a worker: with a lease of a minute, a lane without one would sit for a
/// minute (the benchmark once stalled for exactly a lease that way).
#[tokio::test]
async fn a_lane_claimed_again_as_its_worker_lets_go_is_still_worked_on() {
    let app = spawn_app_with(|c| {
        unthrottled(c);
        c.delivery.lease = Duration::from_secs(60);
        // Few slots: workers do not linger, lanes come and go.
        c.delivery.max_in_flight = 8;
    })
    .await;
    let all = members(&app, "churn", 60).await;
    let mut ids = Vec::new();
    for round in 0..4 {
        let sends = all.iter().map(|m| {
            let api = &app.api;
            async move {
                let id = api
                    .send_ok(&m.token, &format!("{} round {round}", m.user), "")
                    .await;
                (m.token.clone(), id)
            }
        });
        ids.extend(join_all(sends).await);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (token, id) in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        app.wait_for_status(id, token, "delivered", left).await;
    }
}

/// `user`'s lane as an independent connection sees it: `None` when there is none, else
/// whether it is claimed.
async fn lane_claimed(app: &TestApp, user: &str) -> Option<bool> {
    let mut conn = db::connect(app.store_url()).await;
    let owner: Option<Option<String>> =
        sqlx::query_scalar("SELECT owner FROM lanes WHERE userid = lower($1)")
            .bind(user)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    db::close(conn).await;
    owner.map(|o| o.is_some())
}

/// A worker whose lane ran empty keeps it for a moment while slots are free (the member's
/// next message then costs no claim and no read), instead of giving it up at once.
#[tokio::test]
async fn an_emptied_lane_is_kept_for_a_moment_while_slots_are_free() {
    let app = spawn_app_with(|c| {
        unthrottled(c);
        c.delivery.max_in_flight = 8;
    })
    .await;
    let a = member(&app, "linger").await;
    let id = app.send_ok(&a.token, "one", "").await;
    app.wait_for_status(&id, &a.token, "delivered", Duration::from_secs(5))
        .await;
    // The worker lingers 300 ms after its lane ran empty; without lingering the lane is
    // deleted as soon as the outcome is recorded.
    assert_eq!(
        lane_claimed(&app, &a.user).await,
        Some(true),
        "the emptied lane was given up at once although 7 of 8 slots were free"
    );
    // After the moment, the empty lane is gone (not just released to be claimed again).
    let deadline = Instant::now() + Duration::from_secs(3);
    while lane_claimed(&app, &a.user).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "an empty lane is still in the table 3 s after its last message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With every slot busy, a worker whose lane ran empty gives it up at once: another
/// member's message must not wait out its linger.
#[tokio::test]
async fn with_every_slot_busy_an_emptied_lane_is_given_up_for_other_members() {
    let app = spawn_app_with(|c| {
        unthrottled(c);
        c.delivery.max_in_flight = 1;
    })
    .await;
    let a = member(&app, "busya").await;
    let b = member(&app, "busyb").await;
    let first = app.send_ok(&a.token, "a1", "").await;
    app.wait_for_status(&first, &a.token, "delivered", Duration::from_secs(5))
        .await;
    // b's message needs the only slot. A worker lingering on a's lane (300 ms) would keep
    // it, and take a's next message (sent 150 ms later) before b's.
    app.send_ok(&b.token, "b1", "").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.send_ok(&a.token, "a2", "").await;
    let sent = app.mock.wait_for_sent(3, Duration::from_secs(5)).await;
    let order: Vec<&str> = sent.iter().map(|s| s.content.as_str()).collect();
    assert_eq!(order, ["a1", "b1", "a2"]);
}

/// A fresh accept wakes the scheduler at once (the writer tells it after the commit): a
/// member without a lane worker does not wait for the loop's next look at the database
/// (at most a second later).
#[tokio::test]
async fn a_message_to_an_idle_member_goes_out_at_once() {
    let app = spawn_app_with(unthrottled).await;
    let all = members(&app, "prompt", 8).await;
    for m in &all {
        let accepted = Instant::now();
        let id = app.send_ok(&m.token, &format!("{} now", m.user), "").await;
        app.wait_for_status(&id, &m.token, "delivered", Duration::from_secs(5))
            .await;
        let took = accepted.elapsed();
        assert!(
            took < Duration::from_millis(600),
            "{}'s message took {took:?} to be delivered",
            m.user
        );
    }
}
