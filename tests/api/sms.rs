//! SMS as a delivery channel, on each provider the gateway speaks (Aliyun SMS, Tencent
//! Cloud SMS, Twilio) against [`MockSms`]: binding a phone by a texted code, the fallback
//! from WeCom, throttling, sends that timed out (looked up, never resent blindly), the daily
//! caps, permanent refusals, secrets, and `pushbot doctor`.
//!
//! Texts are checked on what the mock provider accepted (it verifies every signature),
//! never on what the gateway says about itself alone.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::helpers::*;
use crate::mock_sms::*;
use crate::smtp::{SmtpSink, six_digits};

/// The number as a member types it, in E.164, and as `status` shows it.
const TYPED: &str = "138 0013 8000";
const PHONE: &str = "+8613800138000";
const MASKED: &str = "+86 138****8000";
/// A second member's number.
const TYPED_B: &str = "139-0013-9000";
const PHONE_B: &str = "+8613900139000";

/// One test per provider for a scenario `async fn name(provider: SmsProvider)`: the tests
/// are `sms::name::aliyun`, `sms::name::tencent` and `sms::name::twilio`. Attributes
/// before the name (e.g. `#[ignore = "…"]`) go on all three.
macro_rules! on_each_provider {
    ($(#[$attr:meta])* $scenario:ident) => {
        mod $scenario {
            use super::SmsProvider;

            $(#[$attr])*
            #[tokio::test]
            async fn aliyun() {
                super::$scenario(SmsProvider::Aliyun).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn tencent() {
                super::$scenario(SmsProvider::Tencent).await;
            }

            $(#[$attr])*
            #[tokio::test]
            async fn twilio() {
                super::$scenario(SmsProvider::Twilio).await;
            }
        }
    };
}

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// A mock SMS provider and the gateway with an `[sms]` section for `provider` pointing at
/// it. Short backoffs and probes, a 30 s retry window, unless `tweak` says otherwise.
async fn sms_app(provider: SmsProvider, tweak: impl FnOnce(&mut Settings)) -> (TestApp, MockSms) {
    let sms = MockSms::start().await;
    let app = spawn_app_with(|c| {
        c.sms = Some(mock_sms(&sms, provider));
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
        c.delivery.retry_window = Duration::from_secs(30);
        tweak(c);
    })
    .await;
    (app, sms)
}

fn sms_config(c: &mut Settings) -> &mut SmsSettings {
    c.sms.as_mut().expect("an [sms] section")
}

/// A one-call timeout far below the mock's holds, and look-ups given a second: a send
/// that times out is asked about, then (if the provider cannot say) left unconfirmed.
fn quick_timeouts(c: &mut Settings) {
    let sms = sms_config(c);
    sms.timeout = Duration::from_millis(300);
    sms.lookup_after = Duration::from_secs(1);
}

/// A member with a push token.
struct Member {
    user: String,
    token: String,
}

async fn member(api: &Api, prefix: &str) -> Member {
    let user = userid(prefix);
    let token = api.get_token(&user).await;
    Member { user, token }
}

/// `order:` of a reply lists `first` before `second`.
fn assert_order(reply: &str, first: &str, second: &str) {
    let order = line(reply, "order:").to_lowercase();
    assert!(
        matches!((order.find(first), order.find(second)), (Some(a), Some(b)) if a < b),
        "the order is {first} → {second}: {reply}"
    );
}

/// Sends with `channel` (a channel or an order such as `sms,email`); returns the id.
async fn send_on(api: &Api, token: &str, title: &str, content: &str, channel: &str) -> String {
    let resp = api
        .send_get(&[
            ("token", token),
            ("title", title),
            ("content", content),
            ("channel", channel),
        ])
        .await;
    accepted_id(resp).await
}

// ---- texts ----

/// A verification-code text: the code template (Aliyun, Tencent Cloud) or Twilio's code
/// sentence.
fn is_code_text(t: &SmsSent) -> bool {
    t.is_code() || (t.provider == SmsProvider::Twilio && t.text.contains("verification code"))
}

/// The six-digit code a code text carries.
fn code_of(t: &SmsSent) -> String {
    let code = match t.provider {
        SmsProvider::Twilio => six_digits(&t.text),
        _ => t.code().map(str::to_owned),
    };
    code.filter(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("the code text carries a six-digit code: {t:#?}"))
}

/// The code texts the provider accepted for `e164`.
fn code_texts_to(sms: &MockSms, e164: &str) -> Vec<SmsSent> {
    sms.sent()
        .into_iter()
        .filter(|t| t.to_e164() == e164 && is_code_text(t))
        .collect()
}

/// Every text the provider accepted for `e164`.
fn texts_to(sms: &MockSms, e164: &str) -> Vec<SmsSent> {
    sms.sent()
        .into_iter()
        .filter(|t| t.to_e164() == e164)
        .collect()
}

/// The texts that carried message `id`: by its id as `OutId` / `SessionContext` (Aliyun,
/// Tencent Cloud), or by its page link in the body (Twilio, which carries no id of ours).
fn texts_for(sms: &MockSms, id: &str) -> Vec<SmsSent> {
    let link = format!("/m/{id}?");
    sms.sent()
        .into_iter()
        .filter(|t| t.out_id.as_deref() == Some(id) || t.text.contains(&link))
        .collect()
}

/// Send requests (`SendSms`, Twilio's create), refused ones included.
fn send_calls(sms: &MockSms) -> Vec<SmsCall> {
    sms.calls()
        .into_iter()
        .filter(|c| matches!(c.action.as_str(), "SendSms" | "CreateMessage"))
        .collect()
}

/// Look-ups of a send (Aliyun `QuerySendDetails`, Tencent `PullSmsSendStatus*`).
fn lookup_calls(sms: &MockSms) -> Vec<SmsCall> {
    sms.calls()
        .into_iter()
        .filter(|c| {
            matches!(
                c.action.as_str(),
                "QuerySendDetails" | "PullSmsSendStatusByPhoneNumber" | "PullSmsSendStatus"
            )
        })
        .collect()
}

/// Every request was properly signed and went to an API the provider has.
fn assert_well_signed(sms: &MockSms) {
    assert_eq!(
        sms.signature_failures(),
        0,
        "no badly signed request: {:#?}",
        sms.calls()
    );
    assert_eq!(sms.auth_failures(), 0, "{:#?}", sms.calls());
    assert!(
        sms.unexpected_requests().is_empty(),
        "{:?}",
        sms.unexpected_requests()
    );
}

/// Waits for the `nth` code text to `e164`.
async fn wait_for_code_text(sms: &MockSms, e164: &str, nth: usize) -> SmsSent {
    let deadline = Instant::now() + WAIT;
    loop {
        let texts = code_texts_to(sms, e164);
        if texts.len() >= nth {
            return texts[nth - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no code text #{nth} to {e164} within {WAIT:?}: sent={:#?}\ncalls={:#?}",
            sms.sent(),
            sms.calls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A code text as documented: to the number being bound, with the code template, the
/// approved signature (Aliyun, Tencent Cloud) or the configured sender (Twilio).
fn assert_code_text(t: &SmsSent, provider: SmsProvider, e164: &str) {
    assert_eq!(t.provider, provider, "{t:#?}");
    assert_eq!(t.to_e164(), e164, "to the number being bound: {t:#?}");
    match provider {
        SmsProvider::Aliyun | SmsProvider::Tencent => {
            let template = if provider == SmsProvider::Aliyun {
                ALIYUN_CODE_TEMPLATE
            } else {
                TENCENT_CODE_TEMPLATE
            };
            assert_eq!(t.template.as_deref(), Some(template), "{t:#?}");
            assert!(t.is_code(), "{t:#?}");
            assert_eq!(t.sign_name.as_deref(), Some(SIGN_NAME), "{t:#?}");
        }
        SmsProvider::Twilio => {
            assert_eq!(t.from.as_deref(), Some(TWILIO_FROM), "{t:#?}");
        }
    }
    code_of(t);
}

/// `user` asks for a code to `typed` (which is `e164`); asserts the reply and the text;
/// returns the code.
async fn request_code(
    api: &Api,
    sms: &MockSms,
    provider: SmsProvider,
    user: &str,
    typed: &str,
    e164: &str,
) -> String {
    let nth = code_texts_to(sms, e164).len() + 1;
    let reply = say(api, user, &format!("phone {typed}")).await;
    assert_says(&reply, "code sent", "`phone <number>`");
    assert!(reply.contains(e164), "names the number: {reply}");
    let text = wait_for_code_text(sms, e164, nth).await;
    assert_code_text(&text, provider, e164);
    code_of(&text)
}

/// Binds `typed` (`e164`) to `user` by its code; returns the reply to `verify`.
async fn bind_phone(
    api: &Api,
    sms: &MockSms,
    provider: SmsProvider,
    user: &str,
    typed: &str,
    e164: &str,
) -> String {
    let code = request_code(api, sms, provider, user, typed, e164).await;
    let reply = say(api, user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "`verify` with the right code");
    reply
}

// ---- history ----

/// `(channel, outcome)` of each history entry, checking the entry's shape on the way.
fn history(status: &Value) -> Vec<(String, String)> {
    status["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history is an array: {status}"))
        .iter()
        .map(|e| {
            let channel = e["channel"].as_str().unwrap_or_else(|| panic!("{e}"));
            let outcome = e["outcome"].as_str().unwrap_or_else(|| panic!("{e}"));
            assert!(
                ["retry", "failed", "delivered", "unconfirmed"].contains(&outcome),
                "outcome is retry|failed|delivered|unconfirmed: {e}"
            );
            assert!(e["at"].is_string(), "{e}");
            (channel.to_owned(), outcome.to_owned())
        })
        .collect()
}

/// `message/send` calls to `user` whose text mentions `needle`.
fn wecom_calls_for(mock: &MockWeCom, user: &str, needle: &str) -> usize {
    mock.calls()
        .iter()
        .filter(|c| c.touser() == user && c.text().contains(needle))
        .count()
}

// ------------------------------------------------------------------------------------------
// 1. binding a phone
// ------------------------------------------------------------------------------------------

/// `phone 138 0013 8000` texts one code (the code template, or Twilio's code sentence) to
/// +8613800138000, properly signed; `verify` binds it, `status` shows it masked, `phone
/// off` unbinds; the Chinese keywords do the same; a number that is not one gets a clear
/// answer and costs no text.
async fn binds_a_phone(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, |_| {}).await;
    let m = member(&app, "bind").await;
    let reply = say(&app, &m.user, "status").await;
    assert!(has(line(&reply, "phone:"), "none"), "{reply}");

    let reply = say(&app, &m.user, &format!("phone {TYPED}")).await;
    assert_says(&reply, "code sent", "`phone 138 0013 8000`");
    assert!(reply.contains(PHONE), "names the number: {reply}");
    let sent = sms.wait_for_sent(1, WAIT).await;
    assert_eq!(sent.len(), 1, "one code text: {sent:#?}");
    assert_code_text(&sent[0], provider, PHONE);
    let code = code_of(&sent[0]);

    // Not bound yet; a wrong code binds nothing.
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let reply = say(&app, &m.user, &format!("verify {wrong}")).await;
    assert_says(&reply, "wrong code", "`verify` with a wrong code");
    let reply = say(&app, &m.user, "status").await;
    assert!(has(line(&reply, "phone:"), "none"), "{reply}");

    let reply = say(&app, &m.user, &format!("verify {code}")).await;
    assert_says(&reply, "bound", "`verify` with the right code");
    assert!(
        reply.contains(MASKED),
        "the reply shows the number masked: {reply}"
    );
    assert!(!reply.contains("13800138000"), "only masked: {reply}");
    // SMS is not in the default order (wecom, email): the reply says how to add it.
    assert_says(&reply, "fallback wecom,sms", "bound outside the order");

    let reply = say(&app, &m.user, "status").await;
    let phone = line(&reply, "phone:");
    assert!(phone.contains(MASKED), "`status` shows {MASKED}: {phone:?}");
    assert!(!reply.contains("13800138000"), "only masked: {reply}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sms.sent().len(), 1, "exactly one text: {:#?}", sms.sent());
    assert_eq!(send_calls(&sms).len(), 1, "one send request");
    assert_well_signed(&sms);

    // A message on channel=sms reaches the bound number.
    let id = send_on(&app, &m.token, "bound", "by text", "sms").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "{status}");
    assert_eq!(texts_for(&sms, &id).len(), 1);
    assert_eq!(texts_for(&sms, &id)[0].to_e164(), PHONE);

    let reply = say(&app, &m.user, "phone off").await;
    assert_says(&reply, "unbound", "`phone off`");
    let reply = say(&app, &m.user, "status").await;
    assert!(has(line(&reply, "phone:"), "none"), "{reply}");
    let resp = app
        .send_get(&[("token", &m.token), ("title", "x"), ("channel", "sms")])
        .await;
    assert_error(resp, 400, "bad_request").await;

    // Not a phone number: said so, nothing texted.
    let calls = sms.calls().len();
    for typed in ["12345", "+86 2345678901", "138001380001"] {
        let reply = say(&app, &m.user, &format!("phone {typed}")).await;
        assert_says(
            &reply,
            "not a valid phone number",
            "`phone` with a non-number",
        );
        assert!(reply.contains(typed), "quotes what was typed: {reply}");
        assert!(!has(&reply, "code sent"), "{reply}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sms.calls().len(), calls, "nothing asked of the provider");

    // The Chinese keywords.
    let reply = say(&app, &m.user, "手机 13800138000").await;
    assert_says(&reply, "code sent", "`手机 13800138000`");
    let text = wait_for_code_text(&sms, PHONE, 2).await;
    assert_code_text(&text, provider, PHONE);
    let reply = say(&app, &m.user, &format!("验证 {}", code_of(&text))).await;
    assert_says(&reply, "bound", "`验证 <code>`");
    let reply = say(&app, &m.user, "状态").await;
    assert!(line(&reply, "phone:").contains(MASKED), "{reply}");
    let reply = say(&app, &m.user, "手机 关闭").await;
    assert_says(&reply, "unbound", "`手机 关闭`");
    let reply = say(&app, &m.user, "status").await;
    assert!(has(line(&reply, "phone:"), "none"), "{reply}");
    assert_well_signed(&sms);
}

on_each_provider!(binds_a_phone);

/// A number outside mainland China binds on every provider (Aliyun takes it as the country
/// code and the number without `+`).
async fn binds_an_international_number(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, |_| {}).await;
    let m = member(&app, "intl").await;
    let reply = bind_phone(
        &app,
        &sms,
        provider,
        &m.user,
        "+852 9123 4567",
        "+85291234567",
    )
    .await;
    assert!(reply.contains("+852"), "the country stays visible: {reply}");
    assert_well_signed(&sms);
}

on_each_provider!(binds_an_international_number);

/// Without an `[sms]` section `phone` says SMS is not configured and nothing is sent.
#[tokio::test]
async fn without_an_sms_section_phone_says_sms_is_not_configured() {
    let sms = MockSms::start().await;
    let app = spawn_app().await;
    let m = member(&app, "nosms").await;
    let reply = say(&app, &m.user, &format!("phone {TYPED}")).await;
    assert_says(&reply, "not configured", "`phone` without [sms]");
    let resp = app
        .send_get(&[("token", &m.token), ("title", "x"), ("channel", "sms")])
        .await;
    assert_error(resp, 400, "bad_request").await;
    assert!(sms.calls().is_empty());
}

// ------------------------------------------------------------------------------------------
// 2. fallback from WeCom
// ------------------------------------------------------------------------------------------

/// Order `wecom,sms`, WeCom refusing the member for good (81013): the message is texted
/// at once, once, with the title, the excerpt and the page link in the template's
/// variables (Twilio: in the body); the history shows WeCom's failure.
async fn wecom_refusal_goes_by_sms_once(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, |_| {}).await;
    let m = member(&app, "fall").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    let reply = say(&app, &m.user, "fallback wecom,sms").await;
    assert_order(&reply, "wecom", "sms");
    assert!(!has(&reply, "note"), "nothing unusable: {reply}");

    app.mock.fail_always_for(&m.user, wecom_permanent());
    let (title, content) = ("Disk full", "host-7 down");
    let started = Instant::now();
    let id = app.send_ok(&m.token, title, content).await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a permanent WeCom failure goes to SMS at once, not after the 30 s window: {:?}",
        started.elapsed()
    );
    assert_eq!(status["channel"], "sms", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("wecom", "failed"), ("sms", "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(why.contains("81013"), "the WeCom entry says why: {status}");
    let page = status["page"].as_str().expect("the message has a page");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts = texts_for(&sms, &id);
    assert_eq!(texts.len(), 1, "texted exactly once: {:#?}", sms.sent());
    let t = &texts[0];
    assert_eq!(t.to_e164(), PHONE);
    match provider {
        SmsProvider::Aliyun | SmsProvider::Tencent => {
            let template = if provider == SmsProvider::Aliyun {
                ALIYUN_TEMPLATE
            } else {
                TENCENT_TEMPLATE
            };
            assert_eq!(t.template.as_deref(), Some(template), "{t:#?}");
            assert_eq!(t.sign_name.as_deref(), Some(SIGN_NAME), "{t:#?}");
            assert_eq!(t.title(), Some(title), "{t:#?}");
            assert_eq!(t.content(), Some(content), "{t:#?}");
            assert_eq!(t.link(), Some(page), "the link is the page: {t:#?}");
            assert_eq!(t.out_id.as_deref(), Some(id.as_str()), "{t:#?}");
        }
        SmsProvider::Twilio => {
            let body = t.body.as_deref().expect("a body");
            for part in [title, content, page] {
                assert!(body.contains(part), "the body has {part:?}: {body:?}");
            }
            assert_eq!(t.from.as_deref(), Some(TWILIO_FROM), "{t:#?}");
        }
    }
    assert_eq!(
        send_calls(&sms).len(),
        2,
        "the code and this message, nothing retried: {:#?}",
        sms.calls()
    );
    assert_eq!(wecom_calls_for(&app.mock, &m.user, title), 1, "WeCom once");

    // Back to the default order (wecom, email): the sender's `channel=wecom,sms` does the
    // same for one message.
    let reply = say(&app, &m.user, "fallback default").await;
    assert!(!has(line(&reply, "order:"), "sms"), "{reply}");
    let title = "Sender's order";
    let id = send_on(&app, &m.token, title, "wecom then sms", "wecom,sms").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("wecom", "failed"), ("sms", "delivered")]),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts_for(&sms, &id).len(), 1, "{:#?}", sms.sent());
    assert_eq!(
        send_calls(&sms).len(),
        3,
        "one more send: {:#?}",
        sms.calls()
    );
    assert_eq!(wecom_calls_for(&app.mock, &m.user, title), 1, "WeCom once");
    assert_well_signed(&sms);
}

on_each_provider!(wecom_refusal_goes_by_sms_once);

/// SMS is not in the default order: a bound member whose WeCom fails for good, with no
/// order of their own, is not texted.
#[tokio::test]
async fn a_bound_phone_is_not_texted_unless_the_order_names_sms() {
    let (app, sms) = sms_app(SmsProvider::Aliyun, |_| {}).await;
    let m = member(&app, "noorder").await;
    bind_phone(&app, &sms, SmsProvider::Aliyun, &m.user, TYPED, PHONE).await;
    app.mock.fail_always_for(&m.user, wecom_permanent());
    let id = app.send_ok(&m.token, "not texted", "").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    assert_eq!(history(&status), pairs(&[("wecom", "failed")]), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(texts_for(&sms, &id).is_empty(), "{:#?}", sms.sent());
    assert_eq!(sms.sent().len(), 1, "only the code");
}

// ------------------------------------------------------------------------------------------
// 3. throttled
// ------------------------------------------------------------------------------------------

/// The provider's "too often for this number / too many requests" refusal, and the code
/// the history must quote.
fn throttling(provider: SmsProvider) -> (ScriptedSms, &'static str) {
    match provider {
        SmsProvider::Aliyun => (
            ScriptedSms::refuse("isv.BUSINESS_LIMIT_CONTROL", "触发号码天级流控Permits:10"),
            "isv.BUSINESS_LIMIT_CONTROL",
        ),
        SmsProvider::Tencent => (
            ScriptedSms::refuse(
                "LimitExceeded.PhoneNumberThirtySecondLimit",
                "the number of sms messages sent from a single mobile number within 30 seconds exceeds the upper limit",
            ),
            "LimitExceeded.PhoneNumberThirtySecondLimit",
        ),
        SmsProvider::Twilio => (
            ScriptedSms::twilio(429, 20429, "Too Many Requests"),
            "20429",
        ),
    }
}

/// Throttled once, then accepted: delivered by SMS, one text, the throttling in the
/// history as a retry.
async fn throttled_then_retried(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, |_| {}).await;
    let m = member(&app, "slow").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    let (script, code) = throttling(provider);
    sms.fail_next(provider, script);
    let id = send_on(&app, &m.token, "throttled", "then sent", "sms").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("sms", "retry"), ("sms", "delivered")]),
        "{status}"
    );
    assert!(
        history_error(&status, 0).contains(code),
        "the retry quotes {code}: {status}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts_for(&sms, &id).len(), 1, "{:#?}", sms.sent());
    let sends = send_calls(&sms);
    assert_eq!(sends.len(), 3, "code, refused, accepted: {sends:#?}");
    assert_well_signed(&sms);
}

on_each_provider!(throttled_then_retried);

// ------------------------------------------------------------------------------------------
// 4. sends that timed out
// ------------------------------------------------------------------------------------------

/// The provider takes the text but answers after the gateway's `sms.timeout`: the next try
/// looks the send up, finds it, and the message is delivered with exactly one text.
async fn a_timed_out_send_is_looked_up_not_resent(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, quick_timeouts).await;
    let m = member(&app, "held").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    sms.fail_next(provider, ScriptedSms::SentThenHold(Duration::from_secs(3)));
    let id = send_on(&app, &m.token, "held reply", "sent anyway", "sms").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "{status}");
    let h = history(&status);
    assert_eq!(
        collapsed(&h),
        pairs(&[("sms", "retry"), ("sms", "delivered")]),
        "{status}"
    );
    assert!(
        has(&history_error(&status, 0), "may have been sent"),
        "the timeout is recorded as a send that may have gone: {status}"
    );
    assert!(!lookup_calls(&sms).is_empty(), "the send was looked up");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(texts_for(&sms, &id).len(), 1, "{:#?}", sms.sent());
    assert_eq!(
        send_calls(&sms).len(),
        2,
        "the code, then one send, never again"
    );
    assert_well_signed(&sms);
}

#[tokio::test]
async fn aliyun_timed_out_send_is_looked_up_not_resent() {
    a_timed_out_send_is_looked_up_not_resent(SmsProvider::Aliyun).await;
}

#[tokio::test]
async fn tencent_timed_out_send_is_looked_up_not_resent() {
    a_timed_out_send_is_looked_up_not_resent(SmsProvider::Tencent).await;
}

/// Aliyun loses the request (nothing sent) and answers after the timeout: the look-up
/// proves the absence, the text is sent again and delivered, one text in all.
#[tokio::test]
async fn aliyun_lost_send_is_looked_up_then_sent_again() {
    let provider = SmsProvider::Aliyun;
    let (app, sms) = sms_app(provider, quick_timeouts).await;
    let m = member(&app, "lost").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    sms.fail_next(provider, ScriptedSms::LostThenHold(Duration::from_secs(3)));
    let id = send_on(&app, &m.token, "lost", "then sent", "sms").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "{status}");
    assert_eq!(
        collapsed(&history(&status)),
        pairs(&[("sms", "retry"), ("sms", "delivered")]),
        "{status}"
    );
    assert!(
        !lookup_calls(&sms).is_empty(),
        "looked up before sending again"
    );
    let sends = send_calls(&sms);
    assert_eq!(
        sends.len(),
        3,
        "the code, the lost send, the resend: {sends:#?}"
    );
    let lookup = lookup_calls(&sms)[0].arrival;
    assert!(
        sends[1].arrival < lookup && lookup < sends[2].arrival,
        "looked up between the lost send and the resend: {:#?}",
        sms.calls()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts_for(&sms, &id).len(), 1, "{:#?}", sms.sent());
    assert_well_signed(&sms);
}

/// Tencent Cloud loses the request: its receipts cannot prove an absence, so after
/// `sms.lookup_after` the step is unconfirmed (nothing resent) and the message moves on to
/// e-mail.
#[tokio::test]
async fn tencent_lost_send_is_unconfirmed_and_moves_on() {
    let provider = SmsProvider::Tencent;
    let sink = SmtpSink::start().await;
    let (app, sms) = sms_app(provider, |c| {
        quick_timeouts(c);
        c.email = Some(local_email(sink.port));
    })
    .await;
    let m = member(&app, "tlost").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    bind_email(&app, &sink, &m.user).await;
    sms.fail_next(provider, ScriptedSms::LostThenHold(Duration::from_secs(3)));
    let started = Instant::now();
    let id = send_on(&app, &m.token, "lost", "by mail", "sms,email").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "after lookup_after"
    );
    assert_eq!(status["channel"], "email", "{status}");
    let h = history(&status);
    assert_eq!(
        collapsed(&h),
        pairs(&[
            ("sms", "retry"),
            ("sms", "unconfirmed"),
            ("email", "delivered")
        ]),
        "{status}"
    );
    assert!(!lookup_calls(&sms).is_empty(), "looked up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send_calls(&sms).len(), 2, "the code and the lost send only");
    assert!(texts_for(&sms, &id).is_empty());
    assert_eq!(sink.mails_for(&id).len(), 1);
}

/// Twilio cannot look a send up: after `sms.lookup_after` the step is `unconfirmed`, the
/// text is not sent again, and the message moves on to e-mail — or, with nothing after
/// SMS, ends failed saying why.
#[tokio::test]
async fn twilio_timed_out_send_is_unconfirmed_and_never_resent() {
    let provider = SmsProvider::Twilio;
    let sink = SmtpSink::start().await;
    let (app, sms) = sms_app(provider, |c| {
        quick_timeouts(c);
        c.email = Some(local_email(sink.port));
    })
    .await;
    let m = member(&app, "twheld").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    bind_email(&app, &sink, &m.user).await;

    sms.fail_next(provider, ScriptedSms::SentThenHold(Duration::from_secs(3)));
    let started = Instant::now();
    let id = send_on(&app, &m.token, "held", "then mailed", "sms,email").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "after lookup_after"
    );
    assert_eq!(status["channel"], "email", "{status}");
    let h = history(&status);
    assert_eq!(
        collapsed(&h),
        pairs(&[
            ("sms", "retry"),
            ("sms", "unconfirmed"),
            ("email", "delivered")
        ]),
        "{status}"
    );
    let at = h.iter().position(|(_, o)| o == "unconfirmed").unwrap();
    let why = history_error(&status, at);
    assert!(
        has(&why, "cannot say") && has(&why, "not sent again"),
        "the unconfirmed entry says why: {why}"
    );
    assert!(why.contains(MASKED) && !why.contains(PHONE), "{why}");

    // Nothing after SMS: the message ends failed, unconfirmed.
    sms.fail_next(provider, ScriptedSms::SentThenHold(Duration::from_secs(3)));
    let id2 = send_on(&app, &m.token, "held again", "no fallback", "sms").await;
    let status2 = app.wait_for_status(&id2, &m.token, "failed", WAIT).await;
    assert_eq!(
        collapsed(&history(&status2)),
        pairs(&[("sms", "retry"), ("sms", "unconfirmed")]),
        "{status2}"
    );
    let last = status2["last_error"].as_str().unwrap_or_default();
    assert!(has(last, "cannot say"), "last_error says why: {status2}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(texts_for(&sms, &id).len(), 1, "{:#?}", sms.sent());
    assert_eq!(texts_for(&sms, &id2).len(), 1, "{:#?}", sms.sent());
    assert_eq!(send_calls(&sms).len(), 3, "the code and one send each");
    assert_eq!(sink.mails_for(&id).len(), 1);
    assert!(sink.mails_for(&id2).is_empty());
    assert_well_signed(&sms);
}

// ------------------------------------------------------------------------------------------
// 5. daily caps
// ------------------------------------------------------------------------------------------

/// `daily_limit_per_member = 3`: the code and two messages are texted; the third message
/// is not (its SMS step fails naming the cap, and it is mailed), nor is a new code; another
/// member is not affected.
async fn the_daily_limit_per_member(provider: SmsProvider) {
    let sink = SmtpSink::start().await;
    let (app, sms) = sms_app(provider, |c| {
        c.email = Some(local_email(sink.port));
        sms_config(c).daily_limit_per_member = 3;
    })
    .await;
    let a = member(&app, "capa").await;
    // The code is the first of the three.
    bind_phone(&app, &sms, provider, &a.user, TYPED, PHONE).await;
    bind_email(&app, &sink, &a.user).await;
    for i in 0..2 {
        let id = send_on(&app, &a.token, &format!("within {i}"), "", "sms,email").await;
        let status = app.wait_for_status(&id, &a.token, "delivered", WAIT).await;
        assert_eq!(status["channel"], "sms", "text {} of 3: {status}", i + 2);
    }

    let id = send_on(&app, &a.token, "over the cap", "", "sms,email").await;
    let status = app.wait_for_status(&id, &a.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("sms", "failed"), ("email", "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(
        why.contains("sms.daily_limit_per_member"),
        "the SMS entry names the cap: {why}"
    );
    assert!(texts_for(&sms, &id).is_empty());
    assert_eq!(sink.mails_for(&id).len(), 1);

    let id = send_on(&app, &a.token, "sms only", "", "sms").await;
    let status = app.wait_for_status(&id, &a.token, "failed", WAIT).await;
    assert_eq!(history(&status), pairs(&[("sms", "failed")]), "{status}");
    let last = status["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("sms.daily_limit_per_member"), "{status}");

    // A code counts too: none is texted past the cap.
    let reply = say(&app, &a.user, "phone 13700137000").await;
    assert_says(&reply, "code sent", "the request is accepted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        texts_to(&sms, "+8613700137000").is_empty(),
        "{:#?}",
        sms.sent()
    );
    assert_eq!(texts_to(&sms, PHONE).len(), 3, "{:#?}", sms.sent());

    // Another member is not affected.
    let b = member(&app, "capb").await;
    bind_phone(&app, &sms, provider, &b.user, TYPED_B, PHONE_B).await;
    let id = send_on(&app, &b.token, "b's own", "", "sms").await;
    let status = app.wait_for_status(&id, &b.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "{status}");
    assert_eq!(texts_for(&sms, &id).len(), 1);
    assert_well_signed(&sms);
}

on_each_provider!(the_daily_limit_per_member);

/// `daily_limit = 3` for the whole server: two codes and one message, then every member's
/// SMS step fails naming `sms.daily_limit`.
async fn the_daily_limit_of_the_server(provider: SmsProvider) {
    let sink = SmtpSink::start().await;
    let (app, sms) = sms_app(provider, |c| {
        c.email = Some(local_email(sink.port));
        sms_config(c).daily_limit = 3;
    })
    .await;
    let a = member(&app, "srva").await;
    let b = member(&app, "srvb").await;
    bind_phone(&app, &sms, provider, &a.user, TYPED, PHONE).await;
    bind_phone(&app, &sms, provider, &b.user, TYPED_B, PHONE_B).await;
    bind_email(&app, &sink, &b.user).await;

    let id = send_on(&app, &a.token, "a first", "", "sms").await;
    let status = app.wait_for_status(&id, &a.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "sms", "the third text: {status}");

    let names_server_cap =
        |why: &str| why.contains("sms.daily_limit") && !why.contains("daily_limit_per_member");
    let id = send_on(&app, &b.token, "b over", "", "sms,email").await;
    let status = app.wait_for_status(&id, &b.token, "delivered", WAIT).await;
    assert_eq!(status["channel"], "email", "{status}");
    assert_eq!(
        history(&status),
        pairs(&[("sms", "failed"), ("email", "delivered")]),
        "{status}"
    );
    let why = history_error(&status, 0);
    assert!(names_server_cap(&why), "names sms.daily_limit: {why}");

    let id = send_on(&app, &a.token, "a over", "", "sms").await;
    let status = app.wait_for_status(&id, &a.token, "failed", WAIT).await;
    let last = status["last_error"].as_str().unwrap_or_default();
    assert!(names_server_cap(last), "names sms.daily_limit: {status}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sms.sent().len(), 3, "{:#?}", sms.sent());
    assert_well_signed(&sms);
}

on_each_provider!(the_daily_limit_of_the_server);

// ------------------------------------------------------------------------------------------
// 6. permanent refusals
// ------------------------------------------------------------------------------------------

/// A refusal retrying cannot help: a message template the account does not have (Aliyun,
/// Tencent Cloud: a wrong `sms.template`), a number Twilio calls invalid (21211). The
/// step fails at once quoting the provider's code, nothing is retried; with WeCom after
/// SMS the message is delivered there at once.
async fn a_permanent_refusal_fails_the_step_at_once(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, |c| match provider {
        SmsProvider::Aliyun => sms_config(c).template = Some("SMS_999999999".to_owned()),
        SmsProvider::Tencent => sms_config(c).template = Some("999999".to_owned()),
        SmsProvider::Twilio => {}
    })
    .await;
    let code = match provider {
        SmsProvider::Aliyun => "isv.SMS_TEMPLATE_ILLEGAL",
        SmsProvider::Tencent => "FailedOperation.TemplateIncorrectOrUnapproved",
        SmsProvider::Twilio => "21211",
    };
    let refuse_next = || {
        if provider == SmsProvider::Twilio {
            sms.fail_next(
                provider,
                ScriptedSms::twilio(
                    400,
                    21211,
                    "The 'To' number +8613800138000 is not a valid phone number.",
                ),
            );
        }
    };
    let m = member(&app, "perm").await;
    // Codes use the code template, which is right.
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;

    refuse_next();
    let started = Instant::now();
    let id = send_on(&app, &m.token, "refused", "for good", "sms").await;
    let status = app.wait_for_status(&id, &m.token, "failed", WAIT).await;
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    assert_eq!(history(&status), pairs(&[("sms", "failed")]), "{status}");
    assert_eq!(status["attempts"], 1, "{status}");
    let last = status["last_error"].as_str().unwrap_or_default();
    assert!(last.contains(code), "last_error quotes {code}: {status}");

    refuse_next();
    let id2 = send_on(&app, &m.token, "then wecom", "", "sms,wecom").await;
    let status2 = app.wait_for_status(&id2, &m.token, "delivered", WAIT).await;
    assert_eq!(status2["channel"], "wecom", "{status2}");
    assert_eq!(
        history(&status2),
        pairs(&[("sms", "failed"), ("wecom", "delivered")]),
        "{status2}"
    );
    assert!(history_error(&status2, 0).contains(code), "{status2}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        send_calls(&sms).len(),
        3,
        "the code and one try per message: {:#?}",
        sms.calls()
    );
    assert!(texts_for(&sms, &id).is_empty() && texts_for(&sms, &id2).is_empty());
    assert_eq!(app.message_json(&id, &m.token).await["status"], "failed");
    assert_well_signed(&sms);
}

on_each_provider!(a_permanent_refusal_fails_the_step_at_once);

// ------------------------------------------------------------------------------------------
// content
// ------------------------------------------------------------------------------------------

/// A long message is cut to what one text may carry — each template variable to
/// `max_variable_chars` (35 Aliyun, 12 Tencent Cloud by default) with "…", Twilio's body
/// to `max_segments` (2) GSM-7 segments with "..." — and its page link is never cut.
async fn a_long_message_is_cut_but_keeps_its_link(provider: SmsProvider) {
    let (app, sms) = sms_app(provider, |_| {}).await;
    let m = member(&app, "long").await;
    bind_phone(&app, &sms, provider, &m.user, TYPED, PHONE).await;
    let title = "Nightly backup of the main database failed again";
    let content = "The job ran out of disk space while copying the write-ahead log. ".repeat(20);
    let id = send_on(&app, &m.token, title, &content, "sms").await;
    let status = app.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    let page = status["page"].as_str().expect("a page");
    let texts = texts_for(&sms, &id);
    assert_eq!(texts.len(), 1, "{:#?}", sms.sent());
    let t = &texts[0];
    match provider {
        SmsProvider::Aliyun | SmsProvider::Tencent => {
            let limit = if provider == SmsProvider::Aliyun {
                35
            } else {
                12
            };
            for (name, value, whole) in [
                ("title", t.title(), title),
                ("content", t.content(), content.as_str()),
            ] {
                let value = value.unwrap_or_else(|| panic!("a {name}: {t:#?}"));
                assert!(
                    value.encode_utf16().count() <= limit && value.ends_with('…'),
                    "{name} cut to {limit} with an ellipsis: {value:?}"
                );
                let kept = value.trim_end_matches('…');
                assert!(!kept.is_empty() && whole.starts_with(kept), "{value:?}");
            }
            assert_eq!(t.link(), Some(page), "the link whole: {t:#?}");
        }
        SmsProvider::Twilio => {
            let body = t.body.as_deref().expect("a body");
            assert!(
                body.is_ascii(),
                "GSM-7 stays GSM-7 (\"...\", not \"…\"): {body:?}"
            );
            assert!(body.len() <= 2 * 153, "two segments at most: {body:?}");
            assert!(body.starts_with(title), "{body:?}");
            assert!(
                body.ends_with(&format!("...\n{page}")),
                "cut, link whole: {body:?}"
            );
        }
    }
}

on_each_provider!(a_long_message_is_cut_but_keeps_its_link);

// ------------------------------------------------------------------------------------------
// kill -9 mid-send
// ------------------------------------------------------------------------------------------

/// The real binary is killed (SIGKILL) while the provider holds its answer to a send it
/// took. After the restart the charge left unsettled makes the gateway ask before sending
/// again: Tencent Cloud finds the text (delivered, one text); Twilio cannot say (after
/// `sms.lookup_after` the step is unconfirmed, one text, nothing resent).
async fn kill9_mid_send_is_never_texted_twice(provider: SmsProvider) {
    let wecom = MockWeCom::start().await;
    let sms = MockSms::start().await;
    let mut section = mock_sms(&sms, provider);
    section.timeout = Duration::from_secs(20);
    section.lookup_after = Duration::from_secs(1);
    let config = settings_with(|c| {
        c.sms = Some(section);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
        c.delivery.retry_window = Duration::from_secs(30);
        c.delivery.lease = Duration::from_secs(2);
        c.delivery.instance_id = Some(format!("sms-kill9-{provider:?}"));
    });
    let setup = bin_setup(&config, &wecom.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let m = member(&bin, "k9sms").await;
    bind_phone(&bin, &sms, provider, &m.user, TYPED, PHONE).await;

    sms.fail_next(provider, ScriptedSms::SentThenHold(Duration::from_secs(60)));
    let id = send_on(&bin, &m.token, "killed mid-send", "", "sms").await;
    let deadline = Instant::now() + WAIT;
    while texts_for(&sms, &id).is_empty() {
        assert!(Instant::now() < deadline, "the send reached the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bin.kill9();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let status = wait_settled(&bin, &id, &m.token, Duration::from_secs(20)).await;
    let h = history(&status);
    match provider {
        SmsProvider::Twilio => {
            assert_eq!(status["status"], "failed", "{status}");
            assert_eq!(
                h.last().map(|(c, o)| (c.as_str(), o.as_str())),
                Some(("sms", "unconfirmed")),
                "{status}"
            );
        }
        _ => {
            assert_eq!(status["status"], "delivered", "{status}");
            assert_eq!(status["channel"], "sms", "{status}");
            assert!(!lookup_calls(&sms).is_empty(), "looked up");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts_for(&sms, &id).len(), 1, "{:#?}", sms.sent());
    assert_eq!(send_calls(&sms).len(), 2, "the code and the one send");
    assert_well_signed(&sms);
}

#[tokio::test]
async fn tencent_kill9_mid_send_is_looked_up_after_restart() {
    kill9_mid_send_is_never_texted_twice(SmsProvider::Tencent).await;
}

#[tokio::test]
async fn twilio_kill9_mid_send_is_unconfirmed_after_restart() {
    kill9_mid_send_is_never_texted_twice(SmsProvider::Twilio).await;
}

#[tokio::test]
async fn aliyun_kill9_mid_send_is_looked_up_after_restart() {
    kill9_mid_send_is_never_texted_twice(SmsProvider::Aliyun).await;
}

// ------------------------------------------------------------------------------------------
// 7. secrets
// ------------------------------------------------------------------------------------------

/// `PUSHBOT_SMS__…`: where the provider's secret comes from in the environment.
fn secret_env(provider: SmsProvider) -> (&'static str, &'static str) {
    match provider {
        SmsProvider::Aliyun => ("PUSHBOT_SMS__ACCESS_KEY_SECRET", ALIYUN_KEY_SECRET),
        SmsProvider::Tencent => ("PUSHBOT_SMS__SECRET_KEY", TENCENT_SECRET_KEY),
        SmsProvider::Twilio => ("PUSHBOT_SMS__AUTH_TOKEN", TWILIO_TOKEN),
    }
}

/// The forms a secret could leak in: itself, and (Twilio) the Basic credentials.
fn secret_forms(provider: SmsProvider) -> Vec<String> {
    let (_, secret) = secret_env(provider);
    let mut forms = vec![secret.to_owned()];
    if provider == SmsProvider::Twilio {
        forms.push(
            base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{secret}")),
        );
    }
    forms
}

/// The real binary, the secret from the environment, logging at DEBUG: a code, a delivered
/// text, a refusal whose message echoes the secret, a send that timed out. The secret is in
/// no chat reply, no API answer (`/messages/{id}`, `/messages`, `/healthz`), no log line,
/// and (Aliyun, Tencent Cloud, which sign) in no request the provider received.
async fn secrets_never_appear(provider: SmsProvider) {
    let wecom = MockWeCom::start().await;
    let sms = MockSms::start().await;
    let mut sms_section = mock_sms(&sms, provider);
    *sms_secret(&mut sms_section) = None;
    sms_section.timeout = Duration::from_millis(300);
    sms_section.lookup_after = Duration::from_secs(1);
    let config = settings_with(|c| {
        c.sms = Some(sms_section);
        c.delivery.backoff_initial = Duration::from_millis(50);
        c.delivery.backoff_max = Duration::from_millis(200);
        c.delivery.probe_max = Duration::from_millis(200);
        c.delivery.retry_window = Duration::from_secs(30);
    });
    let setup = bin_setup(&config, &wecom.base_url);
    let (env_name, secret) = secret_env(provider);
    let mut bin = spawn_binary(
        &setup.config_path,
        setup.port,
        &[("RUST_LOG", "debug"), (env_name, secret)],
    )
    .await;
    let m = member(&bin, "quiet").await;
    let mut seen: Vec<String> = Vec::new();
    for text in ["help", "status"] {
        seen.push(say(&bin, &m.user, text).await);
    }
    seen.push(bind_phone(&bin, &sms, provider, &m.user, TYPED, PHONE).await);
    seen.push(say(&bin, &m.user, "fallback wecom,sms").await);
    seen.push(say(&bin, &m.user, "status").await);

    let mut ids = Vec::new();
    let id = send_on(&bin, &m.token, "fine", "delivered", "sms").await;
    bin.wait_for_status(&id, &m.token, "delivered", WAIT).await;
    ids.push(id);

    // A refusal whose message echoes the secret.
    let (code, echo) = match provider {
        SmsProvider::Aliyun => (
            "isv.MOBILE_NUMBER_ILLEGAL",
            format!("key {ALIYUN_KEY_ID} secret {secret} refused"),
        ),
        SmsProvider::Tencent => (
            "FailedOperation.PhoneNumberInBlacklist",
            format!("secret {secret} refused"),
        ),
        SmsProvider::Twilio => ("21610", format!("token {secret} refused")),
    };
    sms.fail_next(provider, ScriptedSms::refuse(code, &echo));
    let id = send_on(&bin, &m.token, "echoed", "refused", "sms").await;
    let status = bin.wait_for_status(&id, &m.token, "failed", WAIT).await;
    let last = status["last_error"].as_str().unwrap_or_default();
    assert!(last.contains(code), "the refusal is quoted: {status}");
    ids.push(id);

    // A send that times out (looked up, or unconfirmed).
    sms.fail_next(provider, ScriptedSms::SentThenHold(Duration::from_secs(2)));
    let id = send_on(&bin, &m.token, "timed out", "", "sms").await;
    wait_settled(&bin, &id, &m.token, WAIT).await;
    ids.push(id);

    // And WeCom failing into SMS.
    wecom.fail_always_for(&m.user, wecom_permanent());
    let id = bin.send_ok(&m.token, "via wecom", "").await;
    wait_settled(&bin, &id, &m.token, WAIT).await;
    ids.push(id);

    for id in &ids {
        let resp = bin.message(id, Some(&m.token)).await;
        seen.push(resp.text().await.unwrap());
    }
    let resp = bin
        .messages(&[("token", m.token.as_str()), ("limit", "100")])
        .await;
    seen.push(resp.text().await.unwrap());
    seen.push(bin.healthz().await.unwrap().text().await.unwrap());
    bin.kill9();
    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on");

    for form in secret_forms(provider) {
        for (i, answer) in seen.iter().enumerate() {
            assert!(
                !answer.contains(&form),
                "answer {i} shows the secret: {answer}"
            );
        }
        assert!(!log.contains(&form), "the log shows the secret:\n{log}");
        if provider != SmsProvider::Twilio {
            for call in sms.calls() {
                assert!(
                    !call.uri.contains(&form)
                        && !call.body.contains(&form)
                        && call.headers.iter().all(|(_, v)| !v.contains(&form)),
                    "a signed request carries the secret itself: {call:#?}"
                );
            }
        }
    }
    assert_well_signed(&sms);
}

on_each_provider!(secrets_never_appear);

// ------------------------------------------------------------------------------------------
// 8. doctor
// ------------------------------------------------------------------------------------------

/// `pushbot doctor`'s check that mentions SMS (短信), continuation lines joined.
async fn doctor_sms_check(setup: &BinSetup) -> (String, String) {
    let mut cmd = pushbot_command(&[]);
    cmd.arg("doctor").arg("--config").arg(&setup.config_path);
    let out = run_captured(cmd, Duration::from_secs(30)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut checks: Vec<String> = Vec::new();
    for l in stdout.lines() {
        if l.starts_with(['✓', '✗', '!', '–']) {
            checks.push(l.to_owned());
        } else if l.starts_with(' ')
            && let Some(last) = checks.last_mut()
        {
            last.push(' ');
            last.push_str(l.trim());
        }
    }
    let check = checks
        .into_iter()
        .find(|c| c.contains("短信"))
        .unwrap_or_else(|| panic!("no SMS check:\n{stdout}"));
    (check, stdout)
}

/// With `[sms]` pointing at the mock, doctor's SMS line passes for the right credentials
/// and fails naming the secret's key for a wrong one; neither secret is printed.
async fn doctor_checks_sms(provider: SmsProvider) {
    let wecom = MockWeCom::start().await;
    let sms = MockSms::start().await;
    let label = match provider {
        SmsProvider::Aliyun => "Aliyun SMS",
        SmsProvider::Tencent => "Tencent Cloud SMS",
        SmsProvider::Twilio => "Twilio",
    };
    let (_, secret) = secret_env(provider);
    let good = settings_with(|c| {
        c.sms = Some(mock_sms(&sms, provider));
    });
    let setup = bin_setup(&good, &wecom.base_url);
    let (check, stdout) = doctor_sms_check(&setup).await;
    assert!(check.starts_with('✓'), "passes: {check}\n{stdout}");
    assert!(check.contains(label), "{check}");
    assert!(!stdout.contains(secret), "{stdout}");
    assert_eq!(sms.auth_failures(), 0, "{:#?}", sms.calls());

    let wrong_secret = "wrongSecretWrongSecret0123456789";
    let mut section = mock_sms(&sms, provider);
    *sms_secret(&mut section) = Some(SecretString::from(wrong_secret.to_owned()));
    let key = format!("sms.{}", sms_secret_key(&section));
    let bad = settings_with(|c| {
        c.sms = Some(section);
    });
    let setup = bin_setup(&bad, &wecom.base_url);
    let (check, stdout) = doctor_sms_check(&setup).await;
    assert!(check.starts_with('✗'), "fails: {check}\n{stdout}");
    assert!(check.contains(&key), "names {key}: {check}");
    for s in [secret, wrong_secret] {
        assert!(!stdout.contains(s), "prints a secret:\n{stdout}");
    }
    assert!(sms.auth_failures() > 0, "the wrong one was refused");
    assert!(sms.sent().is_empty(), "doctor texts nobody");
}

on_each_provider!(doctor_checks_sms);
