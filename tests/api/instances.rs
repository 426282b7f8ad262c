//! Several `pushbot serve` processes on one PostgreSQL database: the guarantees docs/operations.md
//! gives for that layout, checked against real binaries and the mock WeCom.
//!
//! - the work is shared, and a `kill -9` of one instance loses nothing: its lanes are taken
//!   over when their lease runs out, with at most the sends in flight at the kill repeated,
//!   each member's order kept and the member limits held across instances;
//! - a rotation through one instance is refused by the other at once (`/send` keeps tokens in
//!   memory, and the insert checks the token again as it commits);
//! - a WeCom callback posted to two instances is processed once;
//! - a lost database connection is `503` (with `Retry-After`) until it is back, and nothing
//!   accepted before it is lost.
//! - a group made on one instance and joined on the other reaches every member once per
//!   message whichever instance took it; a leave, a rotation and the groups' limits hold
//!   across instances at once.
//!
//! These tests are about PostgreSQL whatever `PUSHBOT_TEST_DB` says: each makes a schema of
//! its own in the test database (`PUSHBOT_TEST_PG_URL`, by default [`PG_URL_DEFAULT`]) and
//! fails, naming the server, when PostgreSQL cannot be reached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row as _;
use tempfile::TempDir;
use tokio::sync::Semaphore;

use crate::db;
use crate::helpers::*;
use crate::mock_wecom::SendCall;
use crate::tcp_front::TcpFront;

/// Two instances ("inst-a", "inst-b") with the default settings on a fresh schema and one
/// mock WeCom (set up by `prepare` before they start). Bind the values in this order: they
/// drop in reverse, instances before the schema.
async fn two_instances(
    prepare: impl FnOnce(&MockWeCom),
) -> (TestDb, MockWeCom, Cluster, BinApp, BinApp) {
    let schema = TestDb::postgres();
    let mock = MockWeCom::start().await;
    prepare(&mock);
    let cluster = Cluster::new(schema.url().to_owned(), &mock.base_url, test_settings());
    let a = cluster.start("inst-a").await;
    let b = cluster.start("inst-b").await;
    (schema, mock, cluster, a, b)
}

// ------------------------------------------------------------------------------------------
// instances
// ------------------------------------------------------------------------------------------

/// Config files for instances on one database and one WeCom, each with a port and an
/// `instance_id` of its own.
struct Cluster {
    dir: TempDir,
    store_url: String,
    api_base: String,
    config: Settings,
}

impl Cluster {
    fn new(store_url: String, api_base: &str, config: Settings) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            store_url,
            api_base: api_base.to_owned(),
            config,
        }
    }

    /// Starts `pushbot serve` as instance `id` and waits until it is healthy.
    async fn start(&self, id: &str) -> BinApp {
        let port = free_port();
        let mut config = self.config.clone();
        config.delivery.instance_id = Some(id.to_owned());
        let toml = render(
            &config,
            &format!("127.0.0.1:{port}"),
            &self.store_url,
            &self.api_base,
        );
        let path: PathBuf = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, toml).expect("write config");
        spawn_binary(&path, port, &[]).await
    }
}

/// The status of a response, its `Retry-After` header and its body as JSON (`Null` when it
/// is not JSON), or the transport error.
async fn answer(
    resp: reqwest::Result<reqwest::Response>,
) -> Result<(u16, Option<String>, Value), String> {
    let resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok((status, retry_after, body))
}

/// Waits (tiny polls) until `deadline`; panics with `what` when it has passed.
async fn tick(deadline: Instant, what: impl FnOnce() -> String) {
    assert!(Instant::now() < deadline, "{}", what());
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// `GET /send` with `token` and `title`, as [`answer`] reads it.
async fn send_title(
    api: &Api,
    token: &str,
    title: &str,
) -> Result<(u16, Option<String>, Value), String> {
    answer(
        api.http
            .get(api.url("/send"))
            .query(&[("token", token), ("title", title)])
            .send()
            .await,
    )
    .await
}

async fn count(url: &str, sql: &'static str) -> i64 {
    let mut conn = db::connect(url).await;
    let n: i64 = sqlx::query(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    db::close(conn).await;
    n
}

// ------------------------------------------------------------------------------------------
// 1. two instances share the work and survive a kill -9
// ------------------------------------------------------------------------------------------

const MEMBERS: usize = 20;
const PER_MEMBER: usize = 100;
const TOTAL: usize = MEMBERS * PER_MEMBER;
/// Requests in flight at once, over all members.
const CLIENTS: usize = 16;
/// Instance B is killed once this many messages were accepted (and both have delivered).
const KILL_AFTER: usize = 700;
/// `wecom.member_limits`: at most this many sends per member in any second.
const LIMIT: usize = 40;

fn content(member: usize, seq: usize) -> String {
    format!("m{member:02}-{seq:03}")
}

fn parse_content(text: &str) -> Option<(usize, usize)> {
    let (m, s) = text.strip_prefix('m')?.split_once('-')?;
    Some((m.parse().ok()?, s.parse().ok()?))
}

/// What the client saw.
#[derive(Default)]
struct Outcomes {
    /// (member, seq, id, instance) of every 2xx.
    accepted: Vec<(usize, usize, String, char)>,
    /// (member, seq) of requests to B that failed because it was killed: not accepted, but
    /// B may have committed them before it died.
    lost_to_b: Vec<(usize, usize)>,
}

struct Client {
    a: Api,
    b: Api,
    tokens: Vec<String>,
    b_dead: AtomicBool,
    turn: AtomicUsize,
    accepted: AtomicUsize,
    outcomes: Mutex<Outcomes>,
    permits: Semaphore,
}

impl Client {
    /// Sends member `m`'s messages one after another (each accepted before the next is
    /// sent, so the member's acceptance order is its sequence order), alternating between
    /// the instances until B is dead.
    async fn run_member(self: Arc<Self>, m: usize) {
        for seq in 0..PER_MEMBER {
            let _permit = self.permits.acquire().await.expect("permits");
            let to_b = !self.b_dead.load(Ordering::SeqCst)
                && self.turn.fetch_add(1, Ordering::SeqCst) % 2 == 1;
            let api = if to_b { &self.b } else { &self.a };
            let text = content(m, seq);
            let resp = api
                .http
                .post(api.url("/send"))
                .bearer_auth(&self.tokens[m])
                .form(&[("content", text.as_str())])
                .send()
                .await;
            let got = answer(resp).await;
            let id = match &got {
                Ok((200, _, body)) if body["ok"] == true => body["id"].as_str().map(str::to_owned),
                _ => None,
            };
            match id {
                Some(id) => {
                    let via = if to_b { 'B' } else { 'A' };
                    lock(&self.outcomes).accepted.push((m, seq, id, via));
                    self.accepted.fetch_add(1, Ordering::SeqCst);
                }
                None if to_b && self.b_dead.load(Ordering::SeqCst) => {
                    lock(&self.outcomes).lost_to_b.push((m, seq));
                }
                None => panic!(
                    "{text} via {}: not accepted: {got:?}",
                    if to_b { 'B' } else { 'A' }
                ),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which instance made a call, by the WeCom access token it carried (each instance gets a
/// token of its own).
fn instance_of(call: &SendCall, a_token: &str) -> char {
    if call.access_token.as_deref() == Some(a_token) {
        'A'
    } else {
        'B'
    }
}

/// The most sends any `window` of the given (sorted) arrival times holds.
fn busiest_window(times: &[Instant], window: Duration) -> usize {
    let mut most = 0;
    let mut end = 0;
    for (start, &t) in times.iter().enumerate() {
        while end < times.len() && times[end].duration_since(t) < window {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_survive_a_kill_9() {
    let started = Instant::now();
    let schema = TestDb::postgres();
    let mock = MockWeCom::start().await;
    let config = settings_with(|c| {
        c.delivery.lease = Duration::from_secs(2);
        c.wecom.member_limits = member_limits(&[(LIMIT as u32, Duration::from_secs(1))]);
        c.delivery.retry_window = Duration::from_secs(60);
    });
    let cluster = Cluster::new(schema.url().to_owned(), &mock.base_url, config);

    // A alone first, to learn its WeCom access token: calls with any other are B's.
    let a = cluster.start("inst-a").await;
    let warm = userid("warm");
    let warm_token = a.get_token(&warm).await;
    a.send_ok(&warm_token, "warm", "up").await;
    let calls = mock.wait_for_send_calls(1, WAIT).await;
    let a_token = calls[0].access_token.clone().expect("an access token");
    let mut b = cluster.start("inst-b").await;

    // Members get their tokens through either instance's callback.
    let users: Vec<String> = (0..MEMBERS).map(|_| userid("inst")).collect();
    let mut tokens = Vec::new();
    for (m, user) in users.iter().enumerate() {
        let via: &Api = if m % 2 == 0 { &a } else { &b };
        tokens.push(via.get_token(user).await);
    }
    let member_of: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .map(|(m, u)| (u.as_str(), m))
        .collect();

    let client = Arc::new(Client {
        a: Api::new(a.address.clone()),
        b: Api::new(b.address.clone()),
        tokens,
        b_dead: AtomicBool::new(false),
        turn: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
        outcomes: Mutex::default(),
        permits: Semaphore::new(CLIENTS),
    });
    let send_started = Instant::now();
    let senders: Vec<_> = (0..MEMBERS)
        .map(|m| tokio::spawn(Arc::clone(&client).run_member(m)))
        .collect();

    // Kill B mid-run, once both instances have delivered something to the members.
    let delivered_by = || {
        let calls = mock.calls();
        let mine = || calls.iter().filter(|c| member_of.contains_key(c.touser()));
        let by_a = mine().filter(|c| instance_of(c, &a_token) == 'A').count();
        let by_b = mine().filter(|c| instance_of(c, &a_token) == 'B').count();
        (by_a, by_b)
    };
    let mut shared = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !shared {
            let (by_a, by_b) = delivered_by();
            shared = by_a > 0 && by_b > 0;
        }
        if shared && client.accepted.load(Ordering::SeqCst) >= KILL_AFTER {
            break;
        }
        if Instant::now() > deadline || senders.iter().any(|s| s.is_finished()) {
            for s in senders {
                if s.is_finished() {
                    s.await.expect("a sender panicked");
                }
            }
            panic!(
                "B was never killed: {} of {TOTAL} accepted; delivered by (A, B): {:?} (the \
                 work is not shared)",
                client.accepted.load(Ordering::SeqCst),
                delivered_by()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.b_dead.store(true, Ordering::SeqCst);
    b.kill9();
    let killed = Instant::now();
    let accepted_at_kill = client.accepted.load(Ordering::SeqCst);
    // What B left behind: the lanes it held, and what was recorded delivered.
    let mut conn = db::connect(schema.url()).await;
    let b_lanes: Vec<String> =
        sqlx::query("SELECT userid FROM lanes WHERE owner = 'inst-b' AND lease_until > $1")
            .bind(db::now_ms())
            .fetch_all(&mut conn)
            .await
            .expect("read lanes")
            .iter()
            .map(|r| r.get("userid"))
            .collect();
    let recorded_at_kill: BTreeSet<String> =
        sqlx::query("SELECT content FROM messages WHERE status = 'delivered'")
            .fetch_all(&mut conn)
            .await
            .expect("read messages")
            .iter()
            .filter_map(|r| r.get::<Option<String>, _>("content"))
            .collect();
    db::close(conn).await;
    assert!(
        accepted_at_kill < TOTAL - 200,
        "B must die while sends are still going ({accepted_at_kill} of {TOTAL} accepted)"
    );

    for s in senders {
        s.await.expect("a sender panicked");
    }
    let send_time = send_started.elapsed();
    let outcomes = std::mem::take(&mut *lock(&client.outcomes));
    let accepted: BTreeSet<String> = outcomes
        .accepted
        .iter()
        .map(|(m, s, _, _)| content(*m, *s))
        .collect();
    let lost_to_b: BTreeSet<String> = outcomes
        .lost_to_b
        .iter()
        .map(|(m, s)| content(*m, *s))
        .collect();
    assert_eq!(accepted.len() + lost_to_b.len(), TOTAL);

    // Everything accepted reaches WeCom, and then nothing is queued any more (so no
    // further send can come).
    let store_url = schema.url().to_owned();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let sent: BTreeSet<String> = mock.sent().into_iter().map(|s| s.content).collect();
        if accepted.is_subset(&sent) {
            let queued = count(
                &store_url,
                "SELECT count(*) FROM messages WHERE status = 'queued'",
            )
            .await;
            if queued == 0 {
                break;
            }
        }
        tick(deadline, || {
            let missing: Vec<_> = accepted.difference(&sent).take(10).collect();
            format!(
                "not every accepted message was delivered (or some stay queued): {} of {} \
                 missing, e.g. {missing:?}",
                accepted.difference(&sent).count(),
                accepted.len()
            )
        })
        .await;
    }
    let drained = started.elapsed();
    let not_delivered = count(
        &store_url,
        "SELECT count(*) FROM messages WHERE status <> 'delivered'",
    )
    .await;
    assert_eq!(not_delivered, 0, "every stored message ends delivered");

    // The calls for the test's members, in arrival order.
    let mut calls: Vec<SendCall> = mock
        .calls()
        .into_iter()
        .filter(|c| member_of.contains_key(c.touser()))
        .collect();
    calls.sort_by_key(|c| c.arrival);
    assert!(
        calls.iter().all(SendCall::delivered),
        "WeCom accepted every call"
    );

    // Which instance accepted each message.
    let accepted_via: HashMap<String, char> = outcomes
        .accepted
        .iter()
        .map(|(m, s, _, via)| (content(*m, *s), *via))
        .collect();
    let via = |text: &str| accepted_via.get(text).copied().unwrap_or('?');
    // Everything found wrong, reported together at the end.
    let mut problems: Vec<String> = Vec::new();

    // The work was shared before the kill; after it only A sends.
    let before_kill = |c: &&SendCall| c.received_at < killed;
    let by_a = calls
        .iter()
        .filter(before_kill)
        .filter(|c| instance_of(c, &a_token) == 'A')
        .count();
    let by_b = calls
        .iter()
        .filter(before_kill)
        .filter(|c| instance_of(c, &a_token) == 'B')
        .count();
    if by_a == 0 || by_b == 0 {
        problems.push(format!(
            "the work was not shared before the kill: A delivered {by_a}, B {by_b}"
        ));
    }
    let slack = Duration::from_millis(250);
    let b_after: Vec<_> = calls
        .iter()
        .filter(|c| instance_of(c, &a_token) == 'B' && c.received_at > killed + slack)
        .map(|c| c.text().to_owned())
        .collect();
    if !b_after.is_empty() {
        problems.push(format!("B sent after its death: {b_after:?}"));
    }

    // Every text is one the client sent; accepted, or lost when B died.
    let mut copies: BTreeMap<&str, Vec<&SendCall>> = BTreeMap::new();
    for c in &calls {
        copies.entry(c.text()).or_default().push(c);
    }
    for text in copies.keys() {
        if !accepted.contains(*text) && !lost_to_b.contains(*text) {
            problems.push(format!("{text:?} reached WeCom but was never sent"));
        }
    }
    let unaccepted_delivered = copies.keys().filter(|t| lost_to_b.contains(**t)).count();

    // Duplicates: only sends B had in flight at the kill.
    let duplicates: Vec<(&str, &Vec<&SendCall>)> = copies
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(t, c)| (*t, c))
        .collect();
    for (text, copies) in &duplicates {
        let first = copies[0];
        if copies.len() != 2 {
            problems.push(format!("{text} reached WeCom {} times", copies.len()));
        }
        if instance_of(first, &a_token) != 'B' {
            problems.push(format!("{text}: sent twice, first by A"));
        }
        if first.received_at > killed + slack {
            problems.push(format!(
                "{text}: sent twice, first {:?} after the kill",
                first.received_at - killed
            ));
        }
        if !b_lanes.iter().any(|u| u == first.touser()) {
            problems.push(format!(
                "{text}: sent twice, but B did not hold {}'s lane at the kill ({b_lanes:?})",
                first.touser()
            ));
        }
        if recorded_at_kill.contains(*text) {
            problems.push(format!(
                "{text} was recorded delivered before the kill, yet sent again"
            ));
        }
        // A re-send is the member's very next message: nothing of it came in between.
        let mine: Vec<&SendCall> = calls
            .iter()
            .filter(|c| c.touser() == first.touser())
            .collect();
        let at = mine
            .iter()
            .position(|c| c.arrival == first.arrival)
            .expect("the first copy");
        let next = mine.get(at + 1).map(|c| c.text());
        if next != Some(*text) {
            problems.push(format!(
                "{text}: sent twice, but the re-send is not the member's next message \
                 ({next:?} is)"
            ));
        }
    }
    if duplicates.len() > b_lanes.len() {
        problems.push(format!(
            "{} duplicates, but B held only {} lanes at the kill",
            duplicates.len(),
            b_lanes.len()
        ));
    }

    // Per member: in sequence order (a re-send right after its first copy aside), and
    // never more than LIMIT sends in any second.
    let mut busiest = 0;
    let mut out_of_order = Vec::new();
    let mut order_pairs = Vec::new();
    for (m, user) in users.iter().enumerate() {
        let mine: Vec<&SendCall> = calls.iter().filter(|c| c.touser() == user).collect();
        let mut last: Option<(usize, &str)> = None;
        for c in &mine {
            let Some(seq) = parse_content(c.text())
                .filter(|(member, _)| *member == m)
                .map(|(_, seq)| seq)
            else {
                problems.push(format!("{} went to {user}", c.text()));
                continue;
            };
            match last {
                Some((_, text)) if text == c.text() => {}
                Some((prev, prev_text)) if seq < prev => {
                    order_pairs.push((via(c.text()), via(prev_text)));
                    out_of_order.push(format!(
                        "{user}: {} (accepted by {}) arrived after {prev_text} (accepted by {})",
                        c.text(),
                        via(c.text()),
                        via(prev_text)
                    ));
                }
                _ => {}
            }
            if last.is_none_or(|(prev, _)| seq > prev) {
                last = Some((seq, c.text()));
            }
        }
        let times: Vec<Instant> = mine.iter().map(|c| c.received_at).collect();
        let most = busiest_window(&times, Duration::from_secs(1));
        if most > LIMIT {
            problems.push(format!(
                "{user} got {most} sends within one second (limit {LIMIT})"
            ));
        }
        busiest = busiest.max(most);
    }
    if !out_of_order.is_empty() {
        let mut kinds: BTreeMap<(char, char), usize> = BTreeMap::new();
        for (late, earlier) in &order_pairs {
            *kinds.entry((*late, *earlier)).or_default() += 1;
        }
        problems.push(format!(
            "{} messages arrived out of their member's order (accepted by X, after one \
             accepted by Y: {kinds:?}), e.g. {:#?}",
            out_of_order.len(),
            &out_of_order[..out_of_order.len().min(8)]
        ));
    }

    let takeover = calls
        .iter()
        .filter(|c| c.received_at > killed && b_lanes.iter().any(|u| u == c.touser()))
        .map(|c| c.received_at - killed)
        .min();
    eprintln!(
        "kill -9 of B after {accepted_at_kill} of {TOTAL} accepted; {} accepted in all, {} \
         requests lost with B ({unaccepted_delivered} of them delivered anyway); before the \
         kill A delivered {by_a}, B {by_b}; B held {} lanes; {} duplicates {:?}; first send \
         on a lane of B's {takeover:?} after the kill; busiest second {busiest}/{LIMIT}; \
         {} out of order; sending took {send_time:?}, all delivered after {drained:?}",
        accepted.len(),
        lost_to_b.len(),
        b_lanes.len(),
        duplicates.len(),
        duplicates.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        out_of_order.len(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Each instance asks WeCom for its own access token once (it lasts two hours), not
    // once per message or per lane it takes over.
    assert_eq!(mock.gettoken_calls(), 2, "one gettoken per instance");
}

/// The smallest case of the order guarantee above: one member whose client alternates
/// between the instances, each message accepted before the next is sent.
#[tokio::test]
async fn one_member_sending_through_both_instances_is_delivered_in_order() {
    let (_schema, mock, _cluster, a, b) = two_instances(|mock| {
        // Each send takes a moment, so the lane is busy while the next messages come in.
        mock.set_delay(Some(Duration::from_millis(30)));
    })
    .await;
    let user = userid("fifo");
    let token = a.get_token(&user).await;

    let mut texts = Vec::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let (via, api) = if i % 2 == 0 { ('A', &a) } else { ('B', &b) };
        let text = format!("{i:02} via {via}");
        ids.push(api.send_ok(&token, &text, "").await);
        texts.push(text);
    }
    for id in &ids {
        a.wait_for_status(id, &token, "delivered", WAIT).await;
    }
    let sent: Vec<String> = mock.sent().into_iter().map(|s| s.content).collect();
    assert_eq!(sent, texts, "delivered in the order accepted");
}

// ------------------------------------------------------------------------------------------
// 2. tokens are shared
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_rotated_on_one_instance_is_refused_by_the_other_at_once() {
    let (_schema, mock, _cluster, a, b) = two_instances(|_| {}).await;
    let user = userid("rot");

    let old = a.get_token(&user).await;
    assert_eq!(b.get_token(&user).await, old, "B knows A's token");
    let first = b.send_ok(&old, "before", "rotation").await;

    let new = a.rotate(&user).await;
    assert_ne!(new, old);
    // At once: no wait, no retry.
    let resp = b.send_get(&[("token", &old), ("title", "revoked")]).await;
    assert_error(resp, 401, "unauthorized").await;
    let resp = a.send_get(&[("token", &old), ("title", "revoked")]).await;
    assert_error(resp, 401, "unauthorized").await;
    let second = b.send_ok(&new, "after", "rotation").await;
    assert_eq!(b.get_token(&user).await, new, "B's bot shows the new token");

    for id in [&first, &second] {
        b.wait_for_status(id, &new, "delivered", WAIT).await;
    }
    let texts: Vec<String> = mock.sent().into_iter().map(|s| s.content).collect();
    assert_eq!(texts, ["before\n\nrotation", "after\n\nrotation"]);
}

// ------------------------------------------------------------------------------------------
// 3. callbacks are claimed once across instances
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_same_callback_on_two_instances_is_processed_once() {
    let (_schema, _mock, _cluster, a, b) = two_instances(|_| {}).await;
    let crypto = crypto();

    for round in 0..8 {
        let user = userid("twice");
        let old = if round % 2 == 0 {
            a.get_token(&user).await
        } else {
            b.get_token(&user).await
        };
        // One rotation, as WeCom would retry it to another instance: the same signed
        // callback, the same MsgId, at the same moment.
        let sealed = seal_with(&crypto, &text_message(&user, "rotate", next_msg_id()));
        let (to_a, to_b) = tokio::join!(a.post_sealed(&sealed), b.post_sealed(&sealed));
        let mut replies = Vec::new();
        for (via, resp) in [('A', to_a), ('B', to_b)] {
            let status = resp.status();
            let body = resp.text().await.expect("callback body");
            assert_eq!(status, 200, "round {round}, {via}: {body}");
            let reply =
                open_reply(&body).unwrap_or_else(|| panic!("round {round}, {via}: an empty reply"));
            replies.push(token_from_reply(&reply.content));
        }
        assert_eq!(
            replies[0], replies[1],
            "round {round}: both replies carry the one new token"
        );
        let new = replies.swap_remove(0);
        assert_ne!(new, old, "round {round}: the token was rotated");
        // Exactly one rotation: the token the replies show is the member's token now.
        assert_eq!(a.get_token(&user).await, new, "round {round}");
        assert_eq!(b.get_token(&user).await, new, "round {round}");
        let resp = a.send_get(&[("token", &old), ("title", "old")]).await;
        assert_error(resp, 401, "unauthorized").await;
        b.send_ok(&new, "new", &round.to_string()).await;
    }
}

// ------------------------------------------------------------------------------------------
// 4. a lost database connection
// ------------------------------------------------------------------------------------------

/// `delivery.lease` of the instance whose database connection is cut.
const CUT_LEASE: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_lost_database_connection_is_503_and_recovers() {
    let schema = TestDb::postgres();
    let front = TcpFront::start(Some(&schema.pg_server_as_http())).await;
    let front_addr: SocketAddr = front
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("front address");
    let mock = MockWeCom::start().await;
    let config = settings_with(|c| {
        c.delivery.lease = CUT_LEASE;
        c.delivery.retry_window = Duration::from_secs(60);
        // Paced, so that most of what is accepted before the cut is still queued at it.
        c.wecom.member_limits = member_limits(&[(4, Duration::from_secs(1))]);
    });
    let cluster = Cluster::new(schema.pg_url_via(front_addr), &mock.base_url, config);
    let app = cluster.start("inst-a").await;
    let user = userid("cut");
    let token = app.get_token(&user).await;

    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for i in 0..12 {
        let text = format!("before-{i:02}");
        ids.push(app.send_ok(&token, &text, "").await);
        texts.push(text);
    }
    mock.wait_for_sent(1, WAIT).await;

    front.go_down();
    let cut = Instant::now();
    let delivered_at_cut = mock.sent().len();
    assert!(
        delivered_at_cut < texts.len(),
        "messages are still queued at the cut (the member limit paces them)"
    );
    // A request that beat the cut and was answered 200 counts as accepted.
    let mut during = Vec::new();
    let deadline = cut + WAIT;
    let (status, retry_after, body) = loop {
        match send_title(&app, &token, "during").await {
            Ok((200, _, body)) => during.push(body["id"].as_str().expect("id").to_owned()),
            other => break other.expect("/send answers while the database is away"),
        }
        tick(deadline, || {
            "/send kept answering 200 with the database cut off".to_owned()
        })
        .await;
    };
    let first_503 = cut.elapsed();
    assert_eq!(status, 503, "/send without a database: {body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the 503 says why: {body}"
    );
    let secs: u64 = retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("503 with Retry-After in seconds, got {retry_after:?}"));
    assert!(secs >= 1, "Retry-After {secs}");
    // And so it stays while the database is away: longer than a lease and than a
    // member-limit slot, so that the scheduler meets the outage too (claims, renewals,
    // reads and records failing).
    let calls_at_cut = mock.send_calls();
    let outage = CUT_LEASE + Duration::from_millis(500);
    let mut refused = 1;
    while cut.elapsed() < outage {
        let (status, retry_after, body) = send_title(&app, &token, "during")
            .await
            .expect("/send answers");
        assert_eq!(
            status,
            503,
            "/send {:?} into the cut: {body}",
            cut.elapsed()
        );
        assert_eq!(body["error"], "unavailable", "{body}");
        assert!(retry_after.is_some(), "Retry-After on every 503");
        let resp = app.healthz().await.expect("/healthz answers");
        let status = resp.status();
        let health: Value = resp.json().await.expect("/healthz is JSON");
        assert_eq!(status, 503, "/healthz without a database: {health}");
        assert_eq!(health["storage"], "postgres", "{health}");
        // Where the database is and why it failed is for the log, not the wire.
        let message = health["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("storage unavailable"), "{health}");
        for detail in ["127.0.0.1", "error", "postgres", "connection"] {
            assert!(
                !message.to_lowercase().contains(detail),
                "{detail}: {health}"
            );
        }
        refused += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent_in_cut = mock.send_calls() - calls_at_cut;
    let cut_for = cut.elapsed();

    front.come_up();
    let back = Instant::now();
    let deadline = back + WAIT;
    let after = loop {
        if let Ok((200, _, body)) = send_title(&app, &token, "after").await {
            break body["id"].as_str().expect("id").to_owned();
        }
        tick(deadline, || {
            "/send did not recover once the database was back".to_owned()
        })
        .await;
    };
    let recovered = back.elapsed();
    loop {
        if app.healthz().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tick(deadline, || {
            "/healthz did not recover once the database was back".to_owned()
        })
        .await;
    }
    let healthy = back.elapsed();

    for id in ids.iter().chain(&during).chain([&after]) {
        app.wait_for_status(id, &token, "delivered", Duration::from_secs(20))
            .await;
    }
    let sent: Vec<String> = mock.sent().into_iter().map(|s| s.content).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for s in &sent {
        *seen.entry(s.as_str()).or_default() += 1;
    }
    for text in &texts {
        assert_eq!(seen.get(text.as_str()), Some(&1), "{text}: {sent:?}");
    }
    // In acceptance order.
    let befores: Vec<&String> = sent.iter().filter(|s| s.starts_with("before-")).collect();
    assert_eq!(befores, texts.iter().collect::<Vec<_>>());
    eprintln!(
        "database cut for {cut_for:?} with {} of {} queued: first 503 after {first_503:?} ({} \
         accepted in between), \
         {refused} requests refused, {sent_in_cut} WeCom sends during the cut; /send 200 again \
         {recovered:?} and /healthz 200 {healthy:?} after it was back",
        texts.len() - delivered_at_cut,
        texts.len(),
        during.len()
    );
}

// ------------------------------------------------------------------------------------------
// 5. a scheduled message is released by one instance (issue 21)
// ------------------------------------------------------------------------------------------

/// Messages scheduled through both instances for the same second, to a few members: both
/// instances poll the schedule, and each message is released and delivered once, at its
/// time, in acceptance order per member.
#[tokio::test]
async fn two_instances_deliver_each_scheduled_message_once() {
    let (schema, mock, _cluster, a, b) = two_instances(|_| {}).await;
    let members: Vec<String> = (0..5).map(|i| userid(&format!("sched{i}"))).collect();
    let mut tokens = Vec::new();
    for member in &members {
        tokens.push(a.get_token(member).await);
    }
    let wall = std::time::SystemTime::now();
    let now = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = (now + 3).to_string();
    // That second, on this process's monotonic clock.
    let ahead = (std::time::UNIX_EPOCH + Duration::from_secs(now + 3))
        .duration_since(wall)
        .unwrap_or_default();
    let due = Instant::now() + ahead;
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..60 {
        let member = i % members.len();
        let api = if i % 2 == 0 { &a } else { &b };
        let text = format!("s{member}-{i:02}");
        let (status, _, body) = answer(
            api.http
                .get(api.url("/send"))
                .query(&[
                    ("token", tokens[member].as_str()),
                    ("title", text.as_str()),
                    ("at", at.as_str()),
                ])
                .send()
                .await,
        )
        .await
        .expect("an answer");
        assert_eq!(
            (status, &body["status"]),
            (200, &Value::from("scheduled")),
            "{body}"
        );
        expected
            .entry(members[member].clone())
            .or_default()
            .push(text);
    }
    mock.wait_for_sent(60, WAIT).await;
    // Nothing more arrives: each was released once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = mock.delivered_calls();
    assert_eq!(calls.len(), 60, "each once");
    assert!(
        calls.iter().all(|c| c.received_at >= due),
        "none before its time"
    );
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for call in &calls {
        got.entry(call.touser().to_owned())
            .or_default()
            .push(call.text().to_owned());
    }
    assert_eq!(got, expected, "each member's in acceptance order");
    assert_eq!(
        count(
            schema.url(),
            "SELECT count(*) FROM messages WHERE status = 'delivered'"
        )
        .await,
        60
    );
}

/// Issue 30: messages that ask to be acknowledged, accepted through both instances and left
/// unacknowledged, are each escalated once (both instances run the escalation loop).
#[tokio::test]
async fn two_instances_escalate_each_unacknowledged_message_once() {
    let schema = TestDb::postgres();
    let mock = MockWeCom::start().await;
    let sink = crate::smtp::SmtpSink::start().await;
    let mut config = test_settings();
    config.email = Some(local_email(sink.port));
    config.ack.escalate_min = Duration::from_secs(1);
    let cluster = Cluster::new(schema.url().to_owned(), &mock.base_url, config);
    let a = cluster.start("esc-a").await;
    let b = cluster.start("esc-b").await;
    let user = userid("esc2");
    let token = a.get_token(&user).await;
    let address = format!("{user}@example.com");
    say(&a, &user, &format!("email {address}")).await;
    let code = sink.wait_for_mails_to(&address, 1, WAIT).await[0]
        .code()
        .expect("a code");
    assert_says(
        &say(&a, &user, &format!("verify {code}")).await,
        "bound",
        "verify",
    );
    say(&a, &user, "fallback wecom,email").await;
    for i in 0..10 {
        let api = if i % 2 == 0 { &a } else { &b };
        let (status, _, body) = answer(
            api.http
                .post(api.url("/send"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"title": format!("e{i}"), "escalate": "1s"}))
                .send()
                .await,
        )
        .await
        .expect("an answer");
        assert_eq!(status, 200, "{body}");
    }
    sink.wait_for_mails_to(&address, 11, WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sink.mails_to(&address).len(),
        11,
        "the code mail and one escalation each"
    );
    assert_eq!(
        count(schema.url(), "SELECT count(*) FROM acks WHERE step = 1").await,
        10
    );
    assert_eq!(
        count(
            schema.url(),
            "SELECT count(*) FROM messages WHERE resent_from IS NOT NULL"
        )
        .await,
        10
    );
}

// ------------------------------------------------------------------------------------------
// 6. groups across instances (issue 29)
// ------------------------------------------------------------------------------------------

/// `method path` with a member's personal token and a JSON body, through one instance:
/// the status and the answer.
async fn groups_request(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let resp = api
        .http
        .request(method, api.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("a groups request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// As [`groups_request`], and it must answer `200`.
async fn groups_ok(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> Value {
    let (status, answer) = groups_request(api, method, path, token, body).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

/// A group message sent through `api` with the group's token: its id, after checking the
/// number of recipients.
async fn group_send(api: &Api, group_token: &str, body: Value, recipients: i64) -> String {
    let resp = api.send_json(Some(group_token), &body).await;
    let status = resp.status();
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recipients"], recipients, "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

/// `member → status` of a group message as its token shows it.
fn group_recipients(status: &Value) -> BTreeMap<String, String> {
    status["recipients"]
        .as_array()
        .unwrap_or_else(|| panic!("recipients: {status}"))
        .iter()
        .map(|r| {
            (
                r["member"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Texts WeCom accepted, per member (a call may name several members).
fn texts_per_member(mock: &MockWeCom) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for call in mock.delivered_calls() {
        for user in call.touser().split('|') {
            by.entry(user.to_owned())
                .or_default()
                .push(call.text().to_owned());
        }
    }
    for texts in by.values_mut() {
        texts.sort();
    }
    by
}

/// A group made on A and joined on B: a message sent to A and one sent to B reach every
/// member exactly once each; a leave on B stops the leaver's copies — a scheduled one
/// accepted on A before it becomes `left`, and a message accepted on A after it has no
/// copy for them; rotating the group's token on A kills the old one on B at once.
#[tokio::test]
async fn a_group_spans_both_instances() {
    let (_schema, mock, _cluster, a, b) = two_instances(|_| {}).await;
    let [owner, bob, carol] = ["gowner", "gbob", "gcarol"].map(userid);
    let owner_token = a.get_token(&owner).await;
    let bob_token = b.get_token(&bob).await;
    let carol_token = b.get_token(&carol).await;

    let made = groups_ok(
        &a,
        reqwest::Method::POST,
        "/groups",
        &owner_token,
        serde_json::json!({"name": "ops"}),
    )
    .await;
    let group_token = made["token"].as_str().expect("the token").to_owned();
    for token in [&bob_token, &carol_token] {
        groups_ok(
            &b,
            reqwest::Method::POST,
            "/groups/join",
            token,
            serde_json::json!({ "invite": made["invite"] }),
        )
        .await;
    }

    let via_a = group_send(&a, &group_token, serde_json::json!({"title": "via A"}), 3).await;
    let via_b = group_send(&b, &group_token, serde_json::json!({"title": "via B"}), 3).await;
    for (id, api) in [(&via_a, &b), (&via_b, &a)] {
        // Followed through the other instance.
        let status = api
            .wait_for_status(id, &group_token, "delivered", WAIT)
            .await;
        assert_eq!(group_recipients(&status).len(), 3, "{status}");
    }
    let got = texts_per_member(&mock);
    for user in [&owner, &bob, &carol] {
        assert_eq!(
            got.get(user.as_str()).cloned().unwrap_or_default(),
            ["via A", "via B"],
            "{user}: each message exactly once"
        );
    }

    // Scheduled on A, then carol leaves on B: her copy is left, the others' wait.
    let later = group_send(
        &a,
        &group_token,
        serde_json::json!({"title": "later", "delay": "1h"}),
        3,
    )
    .await;
    groups_ok(
        &b,
        reqwest::Method::POST,
        "/groups/ops/leave",
        &carol_token,
        Value::Null,
    )
    .await;
    let status = a.message_json(&later, &group_token).await;
    assert_eq!(
        group_recipients(&status),
        BTreeMap::from([
            (owner.clone(), "scheduled".to_owned()),
            (bob.clone(), "scheduled".to_owned()),
            (carol.clone(), "left".to_owned()),
        ]),
        "{status}"
    );
    // Accepted on A after the leave on B: no copy for carol.
    let after = group_send(
        &a,
        &group_token,
        serde_json::json!({"title": "after the leave"}),
        2,
    )
    .await;
    let status = b
        .wait_for_status(&after, &group_token, "delivered", WAIT)
        .await;
    assert!(!group_recipients(&status).contains_key(&carol), "{status}");
    let got = texts_per_member(&mock);
    assert_eq!(got[&carol], ["via A", "via B"], "nothing more for carol");
    assert_eq!(got[&bob], ["after the leave", "via A", "via B"]);

    // Rotated on A: the old token is refused on B at once, the new one works there.
    let rotated = groups_ok(
        &a,
        reqwest::Method::POST,
        "/groups/ops/rotate",
        &owner_token,
        Value::Null,
    )
    .await;
    let new_token = rotated["token"].as_str().expect("a new token").to_owned();
    assert_ne!(new_token, group_token);
    let resp = b
        .send_json(
            Some(&group_token),
            &serde_json::json!({"title": "old token"}),
        )
        .await;
    assert_error(resp, 401, "unauthorized").await;
    group_send(&b, &new_token, serde_json::json!({"title": "new token"}), 2).await;
}

/// Makes and joins through both instances at once keep the limits: a member in at most
/// `max_groups_per_member` groups, one group of a name per member, at most `max_members`
/// members in a group — counted in the database, whichever instance answered.
#[tokio::test]
async fn making_and_joining_on_both_instances_keep_the_limits() {
    let schema = TestDb::postgres();
    let mock = MockWeCom::start().await;
    let cluster = Cluster::new(
        schema.url().to_owned(),
        &mock.base_url,
        settings_with(|c| {
            c.groups.max_groups_per_member = 3;
            c.groups.max_members = 4;
        }),
    );
    let a = cluster.start("inst-a").await;
    let b = cluster.start("inst-b").await;
    let both = [&a, &b];

    // One member makes eight groups of different names through both at once: three made.
    let maker = userid("maker");
    let maker_token = a.get_token(&maker).await;
    let makes = (0..8).map(|i| {
        let (api, token) = (both[i % 2], maker_token.as_str());
        async move {
            groups_request(
                api,
                reqwest::Method::POST,
                "/groups",
                token,
                serde_json::json!({ "name": format!("g{i}") }),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(makes).await;
    let made = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(made, 3, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _)| *s == 200 || (400..500).contains(s)),
        "{answers:?}"
    );

    // Another makes one name six times through both at once: one group.
    let twin = userid("twin");
    let twin_token = b.get_token(&twin).await;
    let makes = (0..6).map(|i| {
        let (api, token) = (both[i % 2], twin_token.as_str());
        async move {
            groups_request(
                api,
                reqwest::Method::POST,
                "/groups",
                token,
                serde_json::json!({"name": "dup"}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(makes).await;
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 200).count(),
        1,
        "{answers:?}"
    );

    // Eight join one group (its owner is the fourth member's place taken) through both at
    // once: three get in.
    let owner = userid("jowner");
    let owner_token = a.get_token(&owner).await;
    let group = groups_ok(
        &a,
        reqwest::Method::POST,
        "/groups",
        &owner_token,
        serde_json::json!({"name": "full"}),
    )
    .await;
    let mut joiners = Vec::new();
    for i in 0..8 {
        let user = userid("joiner");
        joiners.push(both[i % 2].get_token(&user).await);
    }
    let joins = joiners.iter().enumerate().map(|(i, token)| {
        let (api, invite) = (both[i % 2], group["invite"].clone());
        async move {
            groups_request(
                api,
                reqwest::Method::POST,
                "/groups/join",
                token,
                serde_json::json!({ "invite": invite }),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(joins).await;
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 200).count(),
        3,
        "{answers:?}"
    );

    let url = schema.url();
    let counted = count(
        url,
        "SELECT count(*) FROM group_members m JOIN groups g ON g.id = m.group_id \
         WHERE g.name = 'full'",
    )
    .await;
    assert_eq!(counted, 4, "the owner and three");
    let most = count(
        url,
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT count(*) AS n FROM group_members \
         GROUP BY userid) AS per_member",
    )
    .await;
    assert!(most <= 3, "a member in {most} groups");
    let twins = count(url, "SELECT count(*) FROM groups WHERE name = 'dup'").await;
    assert_eq!(twins, 1);
}
