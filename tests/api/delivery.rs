//! The outbox worker against WeCom's `gettoken` and `message/send`: token caching and
//! refresh, retries of transient failures, and permanent failures.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

async fn app_and_member(tweak: impl FnOnce(&mut Settings)) -> (TestApp, String, String) {
    let app = spawn_app_with(tweak).await;
    let user = userid("ops");
    let token = app.get_token(&user).await;
    (app, user, token)
}

fn attempts(status: &Value) -> i64 {
    status["attempts"]
        .as_i64()
        .unwrap_or_else(|| panic!("attempts is a number: {status}"))
}

fn last_error(status: &Value) -> String {
    status["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("last_error is set: {status}"))
        .to_owned()
}

// ---- access token ----

#[tokio::test]
async fn access_token_is_fetched_once_and_cached() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    for i in 0..5 {
        let id = app.send_ok(&token, "n", &i.to_string()).await;
        app.wait_for_status(&id, &token, "delivered", WAIT).await;
    }
    assert_eq!(app.mock.gettoken_calls(), 1);
    let calls = app.mock.calls();
    assert_eq!(calls.len(), 5);
    assert!(
        calls
            .windows(2)
            .all(|w| w[0].access_token == w[1].access_token),
        "every send uses the cached token"
    );
}

#[tokio::test]
async fn access_token_is_refreshed_before_it_expires() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    // A token said to live 1 s is refreshed at the latest halfway through its life, so
    // a send 1.5 s later must not use it (without WeCom having to reject it first).
    app.mock.set_expires_in(1);
    let first = app.send_ok(&token, "a", "1").await;
    app.wait_for_status(&first, &token, "delivered", WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = app.send_ok(&token, "a", "2").await;
    app.wait_for_status(&second, &token, "delivered", WAIT)
        .await;
    assert_eq!(app.mock.gettoken_calls(), 2);
    let calls = app.mock.calls();
    assert_eq!(calls.len(), 2, "no send was rejected for an expired token");
    assert_ne!(calls[0].access_token, calls[1].access_token);
}

#[tokio::test]
async fn concurrent_sends_on_a_cold_cache_share_one_gettoken() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    // A slow gettoken keeps the first fetch in flight while the others want a token.
    app.mock
        .set_gettoken_delay(Some(Duration::from_millis(300)));
    let futures = (0..10).map(|i| {
        let token = token.clone();
        let app = &app;
        async move { app.send_ok(&token, "burst", &i.to_string()).await }
    });
    let ids = futures_util::future::join_all(futures).await;
    app.mock.wait_for_sent(10, WAIT).await;
    for id in &ids {
        app.wait_for_status(id, &token, "delivered", WAIT).await;
    }
    assert_eq!(app.mock.gettoken_calls(), 1, "single-flight token fetch");
}

#[tokio::test]
async fn expired_access_token_is_refreshed_once_and_the_message_delivered() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    let id = app.send_ok(&token, "first", "").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(app.mock.gettoken_calls(), 1);

    app.mock.expire_tokens();
    let id = app.send_ok(&token, "second", "").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(app.mock.gettoken_calls(), 2, "refreshed exactly once");
    let calls = app.mock.calls();
    assert_eq!(calls[1].reply.errcode, 42001);
    assert_eq!(calls[2].reply.errcode, 0);
    assert_ne!(calls[1].access_token, calls[2].access_token);
    let sent = app.mock.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].content, "second");

    // And the new token is cached again.
    let id = app.send_ok(&token, "third", "").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(app.mock.gettoken_calls(), 2);
}

#[tokio::test]
async fn invalid_access_token_40014_is_refreshed_too() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    app.mock
        .push_replies([SendReply::errcode(40014, "invalid access_token")]);
    let id = app.send_ok(&token, "t", "c").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(app.mock.gettoken_calls(), 2);
    assert_eq!(app.mock.sent().len(), 1);
}

// ---- transient failures ----

async fn assert_retried_then_delivered(reply: SendReply) {
    let (app, user, token) = app_and_member(|_| {}).await;
    app.mock.push_replies([reply.clone()]);
    let id = app.send_ok(&token, "retry", "me").await;
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert!(attempts(&status) > 1, "after {reply:?}: {status}");
    assert_eq!(status["channel"], "wecom", "{status}");
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].touser, user);
    assert_eq!(sent[0].content, "retry\n\nme");
}

#[tokio::test]
async fn http_500_is_retried() {
    assert_retried_then_delivered(SendReply::http(500)).await;
}

#[tokio::test]
async fn http_503_is_retried() {
    assert_retried_then_delivered(SendReply::http(503)).await;
}

#[tokio::test]
async fn system_busy_is_retried() {
    assert_retried_then_delivered(SendReply::errcode(-1, "system busy")).await;
}

#[tokio::test]
async fn rate_limit_45009_is_retried() {
    assert_retried_then_delivered(SendReply::errcode(45009, "reach max api daily quota limit"))
        .await;
}

#[tokio::test]
async fn concurrency_limit_45033_is_retried() {
    assert_retried_then_delivered(SendReply::errcode(45033, "api concurrent out of limit")).await;
}

#[tokio::test]
async fn several_transient_failures_in_a_row_are_retried() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    app.mock.push_replies([
        SendReply::http(502),
        SendReply::errcode(-1, "system busy"),
        SendReply::errcode(45033, "api concurrent out of limit"),
    ]);
    let id = app.send_ok(&token, "persistent", "").await;
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(attempts(&status), 4, "{status}");
    assert_eq!(app.mock.send_calls(), 4);
}

#[tokio::test]
async fn a_wecom_call_slower_than_request_timeout_is_retried() {
    let (app, _user, token) =
        app_and_member(|c| c.wecom.request_timeout = Duration::from_millis(300)).await;
    app.mock
        .push_replies([SendReply::ok().delayed(Duration::from_secs(3))]);
    let started = std::time::Instant::now();
    let id = app.send_ok(&token, "slow", "wecom").await;
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert!(attempts(&status) > 1, "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout, not the slow answer, ended the first attempt"
    );
    assert!(app.mock.sent().iter().any(|s| s.content == "slow\n\nwecom"));
}

#[tokio::test]
async fn transient_errors_past_the_retry_window_fail_the_message() {
    // Probes of the channel that is down at most 100 ms apart: the probe message below is
    // tried within its own 300 ms window however the doomed one's probes fell (with the
    // default 1 s, a probe just before the doomed message failed could put the next one
    // past the probe message's window, and it failed untried).
    let (app, _user, token) = app_and_member(|c| {
        c.delivery.retry_window = Duration::from_millis(300);
        c.delivery.probe_max = Duration::from_millis(100);
    })
    .await;
    app.mock.fail_always(SendReply::errcode(-1, "system busy"));
    let id = app.send_ok(&token, "doomed", "").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(attempts(&status) > 1, "it was retried first: {status}");
    assert!(!last_error(&status).is_empty(), "{status}");
    assert!(app.mock.sent().is_empty());

    // It stays failed: no more attempts once WeCom recovers.
    let calls = app.mock.send_calls();
    app.mock.heal();
    let probe = app.send_ok(&token, "probe", "").await;
    app.wait_for_status(&probe, &token, "delivered", WAIT).await;
    assert_eq!(app.mock.send_calls(), calls + 1);
    let status = app.message_json(&id, &token).await;
    assert_eq!(status["status"], "failed");
}

#[tokio::test]
async fn wecom_that_never_answers_in_time_fails_the_message_after_the_window() {
    let (app, _user, token) = app_and_member(|c| {
        c.wecom.request_timeout = Duration::from_millis(100);
        c.delivery.retry_window = Duration::from_millis(600);
    })
    .await;
    app.mock.set_delay(Some(Duration::from_secs(5)));
    let id = app.send_ok(&token, "lost", "in time").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(attempts(&status) > 1, "{status}");
    assert!(!last_error(&status).is_empty(), "{status}");
}

// ---- permanent failures ----

async fn assert_failed_after_one_attempt(reply: SendReply) -> String {
    let (app, _user, token) =
        app_and_member(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    app.mock.fail_always(reply.clone());
    let id = app.send_ok(&token, "never", "arrives").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert_eq!(attempts(&status), 1, "permanent {reply:?}: {status}");
    assert_eq!(app.mock.send_calls(), 1);
    assert!(app.mock.sent().is_empty());
    let error = last_error(&status);
    assert!(!error.is_empty());
    error
}

#[tokio::test]
async fn untrusted_ip_60020_fails_at_once_and_says_which_ip_to_trust() {
    let error = assert_failed_after_one_attempt(SendReply::errcode(
        60020,
        "not allow to access from your ip, hint: [1700000000_1_abc], from ip: 1.2.3.4, more info at https://open.work.weixin.qq.com/devtool/query?e=60020",
    ))
    .await;
    assert!(error.contains("1.2.3.4"), "names the egress IP: {error}");
    let lower = error.to_lowercase();
    assert!(
        lower.contains("trusted ip") || lower.contains("可信ip") || lower.contains("可信 ip"),
        "tells the admin to add it to the trusted IPs: {error}"
    );
}

#[tokio::test]
async fn all_users_invalid_81013_fails_at_once() {
    assert_failed_after_one_attempt(SendReply::errcode(81013, "user & party & tag all invalid"))
        .await;
}

#[tokio::test]
async fn api_forbidden_48002_fails_at_once() {
    assert_failed_after_one_attempt(SendReply::errcode(48002, "api forbidden")).await;
}

#[tokio::test]
async fn invalid_agentid_40056_fails_at_once() {
    assert_failed_after_one_attempt(SendReply::errcode(40056, "invalid agentid")).await;
}

#[tokio::test]
async fn success_listing_the_member_as_invaliduser_is_a_failure() {
    let (app, user, token) =
        app_and_member(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    app.mock
        .fail_always(SendReply::invalid_user(&user.to_lowercase()));
    let id = app.send_ok(&token, "nobody", "home").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(!last_error(&status).is_empty(), "{status}");
    assert!(app.mock.sent().is_empty());
    assert_eq!(app.mock.send_calls(), 1, "not retried: {status}");
}

#[tokio::test]
async fn a_failed_message_does_not_block_the_next_one() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    app.mock
        .push_replies([SendReply::errcode(48002, "api forbidden")]);
    let bad = app.send_ok(&token, "bad", "").await;
    app.wait_for_status(&bad, &token, "failed", WAIT).await;
    let good = app.send_ok(&token, "good", "").await;
    app.wait_for_status(&good, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn many_messages_from_many_members_are_all_delivered_once() {
    let app = spawn_app().await;
    let mut members = Vec::new();
    for _ in 0..4 {
        let user = userid("fan");
        let token = app.get_token(&user).await;
        members.push((user, token));
    }
    let mut expected = Vec::new();
    for i in 0..10 {
        for (user, token) in &members {
            app.send_ok(token, "n", &i.to_string()).await;
            expected.push((user.clone(), format!("n\n\n{i}")));
        }
    }
    let sent = app.mock.wait_for_sent(expected.len(), WAIT).await;
    let mut got: Vec<_> = sent.into_iter().map(|s| (s.touser, s.content)).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each exactly once");
    assert_eq!(app.mock.gettoken_calls(), 1);
    assert!(app.mock.unexpected_requests().is_empty());
}

#[tokio::test]
async fn an_unreachable_wecom_api_is_retried_then_reported() {
    // Nothing listens on this port: every attempt is a connection error. (Getting a token
    // from the bot needs no WeCom API call.)
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (app, _user, token) = app_and_member(|c| {
        c.wecom.api_base = http_url(&closed);
        c.delivery.retry_window = Duration::from_millis(300);
        c.delivery.backoff_initial = Duration::from_millis(20);
        c.delivery.backoff_max = Duration::from_millis(50);
    })
    .await;
    let id = app.send_ok(&token, "t", "c").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(attempts(&status) > 1, "{status}");
    let error = last_error(&status);
    assert!(error.contains("unreachable"), "{error}");
    assert!(error.contains("retry window"), "{error}");
}

#[tokio::test]
async fn the_access_token_is_replaced_well_before_expires_in() {
    let (app, _user, token) = app_and_member(|_| {}).await;
    // A 4 s token is refreshed at the latest halfway (2 s), well before it expires, so a
    // send 2.5 s after the first fetch already uses a new one.
    app.mock.set_expires_in(4);
    let first = app.send_ok(&token, "a", "1").await;
    app.wait_for_status(&first, &token, "delivered", WAIT).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = app.send_ok(&token, "a", "2").await;
    app.wait_for_status(&second, &token, "delivered", WAIT)
        .await;
    assert_eq!(app.mock.gettoken_calls(), 2);
    let calls = app.mock.calls();
    assert_eq!(calls.len(), 2, "no send was rejected: {calls:#?}");
    assert_ne!(calls[0].access_token, calls[1].access_token);
}

// ---- gettoken outages ----

/// N messages want a token while `gettoken` is down: WeCom sees one call per failure
/// window, not one per message (or per message and retry); once `gettoken` works again
/// every message is delivered.
async fn assert_gettoken_outage_is_contained(
    failure: Option<GetTokenFailure>,
    delay: Option<Duration>,
) {
    const N: usize = 8;
    let (app, _user, token) = app_and_member(|c| {
        c.wecom.request_timeout = Duration::from_millis(300);
        c.delivery.retry_window = Duration::from_secs(20);
        c.delivery.concurrency = N;
    })
    .await;
    app.mock.fail_gettoken(failure);
    app.mock.set_gettoken_delay(delay);
    let sends = (0..N).map(|i| {
        let token = token.clone();
        let app = &app;
        async move { app.send_ok(&token, "outage", &i.to_string()).await }
    });
    let ids = futures_util::future::join_all(sends).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        app.mock.gettoken_calls(),
        1,
        "one gettoken call per failure window, whatever the number of messages"
    );
    assert!(app.mock.calls().is_empty(), "no send without a token");

    app.mock.fail_gettoken(None);
    app.mock.set_gettoken_delay(None);
    for id in &ids {
        app.wait_for_status(id, &token, "delivered", WAIT).await;
    }
    assert_eq!(app.mock.sent().len(), N);
    assert!(
        app.mock.gettoken_calls() <= 3,
        "{} gettoken calls",
        app.mock.gettoken_calls()
    );
}

#[tokio::test]
async fn a_gettoken_http_500_outage_costs_one_call_per_window() {
    assert_gettoken_outage_is_contained(Some(GetTokenFailure::Http(500)), None).await;
}

#[tokio::test]
async fn a_gettoken_system_busy_outage_costs_one_call_per_window() {
    assert_gettoken_outage_is_contained(
        Some(GetTokenFailure::Errcode(-1, "system busy".into())),
        None,
    )
    .await;
}

#[tokio::test]
async fn a_gettoken_slower_than_the_request_timeout_is_waited_for_once() {
    assert_gettoken_outage_is_contained(None, Some(Duration::from_secs(5))).await;
}

// ---- retry pacing ----

#[tokio::test]
async fn the_backoff_grows_while_wecom_stays_busy() {
    let (app, _user, token) = app_and_member(|c| {
        c.delivery.retry_window = Duration::from_secs(30);
        c.delivery.backoff_initial = Duration::from_millis(20);
        c.delivery.backoff_max = Duration::from_secs(10);
    })
    .await;
    app.mock.fail_always(SendReply::errcode(-1, "system busy"));
    app.send_ok(&token, "busy", "").await;
    app.mock.wait_for_send_calls(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Waits of at least 10, 20, 40, 80, 160, 320, 640 ms (half of a doubling base, the
    // smallest equal jitter allows): at most 6 retries fit into 1.2 s. A backoff stuck
    // at its first value would have made ~60.
    let calls = app.mock.send_calls();
    assert!(
        (3..=7).contains(&calls),
        "{calls} message/send calls in 1.2 s"
    );
}

// ---- errcode 0 that is not a delivery ----

#[tokio::test]
async fn invaliduser_is_matched_without_regard_to_case() {
    // WeCom lower-cases the userids it lists; ours has capitals.
    let app = spawn_app_with(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    let user = userid("MixedCase");
    let token = app.get_token(&user).await;
    let listed = format!("someone|{}|other", user.to_lowercase());
    app.mock.fail_always(SendReply::invalid_user(&listed));
    let id = app.send_ok(&token, "nobody", "home").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(last_error(&status).contains("invaliduser"), "{status}");
    assert_eq!(app.mock.send_calls(), 1, "not retried: {status}");
}

#[tokio::test]
async fn unlicenseduser_in_an_errcode_0_answer_is_a_failure() {
    let (app, user, token) =
        app_and_member(|c| c.delivery.retry_window = Duration::from_secs(30)).await;
    app.mock.fail_always(SendReply::unlicensed_user(&user));
    let id = app.send_ok(&token, "no", "licence").await;
    let status = app.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(!last_error(&status).is_empty(), "{status}");
    assert_eq!(app.mock.send_calls(), 1, "not retried: {status}");
}
