//! A stand-in for three SMS providers' HTTP APIs, just the calls an SMS channel makes:
//!
//! - **Aliyun SMS** (dysmsapi, version 2017-05-25), RPC style with `ACS3-HMAC-SHA256` ("V3")
//!   signatures: `POST /` (any method is accepted and signed as received) with the action in
//!   `x-acs-action` and the operation's parameters in the query string (an
//!   `application/x-www-form-urlencoded` body is read as well). Actions: `SendSms`,
//!   `QuerySendDetails`, `QuerySmsTemplate` and its successor `GetSmsTemplate`.
//! - **Tencent Cloud SMS** (version 2021-01-11) with `TC3-HMAC-SHA256` signatures:
//!   `POST /` with a JSON body. Actions: `SendSms`, `PullSmsSendStatus`,
//!   `PullSmsSendStatusByPhoneNumber`, `DescribeSmsTemplateList`.
//! - **Twilio** (2010-04-01) with HTTP Basic auth: `POST|GET
//!   /2010-04-01/Accounts/{sid}/Messages.json`, `GET
//!   /2010-04-01/Accounts/{sid}/Messages/{MessageSid}.json`, `GET
//!   /2010-04-01/Accounts/{sid}.json`.
//!
//! [`MockSms::start`] starts one listener per provider on `127.0.0.1:0`, sharing one state;
//! [`MockSms::base_url`] gives each one's base URL (point the gateway's configurable
//! endpoint there). The signatures are verified independently of the gateway's signer
//! (this file's own code, checked against the vendors' published vectors in the tests at
//! the end), over what was *received*: method, path, query, the signed headers' values
//! (so `host` is whatever the client sent, normally `127.0.0.1:PORT`) and the body bytes.
//! A wrong signer therefore gets the provider's real refusal, and every call is recorded
//! with the reason, so a test can assert that no badly signed request was ever sent.
//!
//! Wire details that the research could not confirm are marked UNVERIFIED where they are
//! made (see also `/work/shared/research/channels.md` §1–§3).

// Several controls and accessors exist for the SMS channel tests that use this mock; the
// module is compiled into the test binary whether or not a given test uses them.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

// ------------------------------------------------------------------------------------------
// what the mock knows
// ------------------------------------------------------------------------------------------

pub const ALIYUN_KEY_ID: &str = "LTAI5tPushbotMockKey01";
pub const ALIYUN_KEY_SECRET: &str = "pushbotMockAliyunSecret0123456789";

pub const TENCENT_SECRET_ID: &str = "AKIDpushbotMockSecretId0123456789ab";
pub const TENCENT_SECRET_KEY: &str = "pushbotMockTencentKey0123456789";
pub const TENCENT_SDK_APP_ID: &str = "1400006666";

/// "AC" and 32 hex digits, like a real Account SID.
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "f00dfeedf00dfeedf00dfeedf00dfeed";
/// Twilio's magic "valid" test number; the only `From` this account owns.
pub const TWILIO_FROM: &str = "+15005550006";
/// The account's one Messaging Service (an alternative to `From`).
pub const TWILIO_MESSAGING_SERVICE_SID: &str = "MG0123456789abcdef0123456789abcdef";

/// The approved signature (签名) of both the Aliyun and the Tencent account.
pub const SIGN_NAME: &str = "推送测试";

/// Aliyun message template: `${title}：${content} 详情：${link}`.
pub const ALIYUN_TEMPLATE: &str = "SMS_100000001";
/// Aliyun verification-code template: one variable, `${code}`.
pub const ALIYUN_CODE_TEMPLATE: &str = "SMS_100000002";
/// Tencent message template: `{1}：{2} 详情：{3}` (title, content, link).
pub const TENCENT_TEMPLATE: &str = "100001";
/// Tencent verification-code template: `{1}` (the code, 0–6 digits).
pub const TENCENT_CODE_TEMPLATE: &str = "100002";

/// The message templates' variables, in Tencent's positional order.
pub const MESSAGE_VARS: [&str; 3] = ["title", "content", "link"];
/// The code templates' one variable.
pub const CODE_VAR: &str = "code";

/// Aliyun's allowed clock drift (x-acs-date), and Tencent's (X-TC-Timestamp).
pub const ALIYUN_MAX_SKEW: Duration = Duration::from_secs(15 * 60);
pub const TENCENT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

const ALIYUN_VERSION: &str = "2017-05-25";
const TENCENT_VERSION: &str = "2021-01-11";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SmsProvider {
    Aliyun,
    Tencent,
    Twilio,
}

struct Template {
    provider: SmsProvider,
    id: &'static str,
    name: &'static str,
    code: bool,
    /// Aliyun: `${name}` placeholders; Tencent: `{1}`, `{2}`, ….
    text: &'static str,
}

impl Template {
    fn vars(&self) -> &'static [&'static str] {
        if self.code {
            &[CODE_VAR]
        } else {
            &MESSAGE_VARS
        }
    }

    /// The text the phone shows: `【sign】` and the filled-in template.
    fn render(&self, params: &BTreeMap<String, String>) -> String {
        let mut text = self.text.to_owned();
        for (k, v) in params {
            let placeholder = match self.provider {
                SmsProvider::Aliyun => format!("${{{k}}}"),
                _ => format!("{{{k}}}"),
            };
            text = text.replace(&placeholder, v);
        }
        format!("【{SIGN_NAME}】{text}")
    }
}

const TEMPLATES: &[Template] = &[
    Template {
        provider: SmsProvider::Aliyun,
        id: ALIYUN_TEMPLATE,
        name: "推送通知",
        code: false,
        text: "${title}：${content} 详情：${link}",
    },
    Template {
        provider: SmsProvider::Aliyun,
        id: ALIYUN_CODE_TEMPLATE,
        name: "验证码",
        code: true,
        text: "您的验证码为${code}，5分钟内有效，请勿泄露于他人。",
    },
    Template {
        provider: SmsProvider::Tencent,
        id: TENCENT_TEMPLATE,
        name: "推送通知",
        code: false,
        text: "{1}：{2} 详情：{3}",
    },
    Template {
        provider: SmsProvider::Tencent,
        id: TENCENT_CODE_TEMPLATE,
        name: "验证码",
        code: true,
        text: "您的验证码为{1}，5分钟内有效，请勿泄露于他人。",
    },
];

fn template(provider: SmsProvider, id: &str) -> Option<&'static Template> {
    TEMPLATES
        .iter()
        .find(|t| t.provider == provider && t.id == id)
}

// ------------------------------------------------------------------------------------------
// records and scripts
// ------------------------------------------------------------------------------------------

/// A text the provider accepted (one per number of a multi-number send).
#[derive(Debug, Clone, PartialEq)]
pub struct SmsSent {
    pub provider: SmsProvider,
    /// The number as the request gave it.
    pub to: String,
    /// Aliyun `BizId` (shared by the numbers of one request), Tencent `SerialNo`, Twilio
    /// message `sid`.
    pub id: String,
    pub sign_name: Option<String>,
    pub template: Option<String>,
    /// Aliyun: `TemplateParam` by name (`title`, `content`, `link` / `code`). Tencent:
    /// `TemplateParamSet` by position, keys `"1"`, `"2"`, `"3"`. See [`Self::param`] for a
    /// uniform lookup by name.
    pub params: BTreeMap<String, String>,
    /// What the phone shows: `【sign】` and the filled-in template; Twilio: the `Body`.
    pub text: String,
    /// Twilio only: `Body` as sent.
    pub body: Option<String>,
    /// Aliyun `OutId`, Tencent `SessionContext`.
    pub out_id: Option<String>,
    /// Twilio: `From`, or the `MessagingServiceSid` when that was given instead.
    pub from: Option<String>,
    /// The mock's clock (UNIX seconds) when it was accepted.
    pub sent_at: i64,
    /// Arrival index of the request that carried it (see [`SmsCall::arrival`]).
    pub arrival: usize,
}

impl SmsSent {
    /// A template variable by name, whatever the provider: `title`, `content`, `link` or
    /// `code` (Tencent's positions are mapped through the template); raw keys work too.
    pub fn param(&self, name: &str) -> Option<&str> {
        if let Some(v) = self.params.get(name) {
            return Some(v);
        }
        let t = template(self.provider, self.template.as_deref()?)?;
        let pos = t.vars().iter().position(|v| *v == name)?;
        self.params.get(&(pos + 1).to_string()).map(String::as_str)
    }

    pub fn title(&self) -> Option<&str> {
        self.param("title")
    }

    pub fn content(&self) -> Option<&str> {
        self.param("content")
    }

    pub fn link(&self) -> Option<&str> {
        self.param("link")
    }

    pub fn code(&self) -> Option<&str> {
        self.param(CODE_VAR)
    }

    /// Sent with one of the verification-code templates.
    pub fn is_code(&self) -> bool {
        self.template
            .as_deref()
            .and_then(|id| template(self.provider, id))
            .is_some_and(|t| t.code)
    }

    /// The number in E.164 form (`+86` added to a bare mainland number).
    pub fn to_e164(&self) -> String {
        normalize_number(&self.to)
    }
}

/// How a request fared against the provider's authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Passed,
    /// Known key, but the signature (or the Twilio token, or the Aliyun body hash) is wrong.
    WrongSignature,
    /// The `Authorization` header is missing or does not follow the scheme (unsigned
    /// `x-acs-*` headers, unsorted `SignedHeaders`, no `host` signed, …).
    Malformed,
    /// Unknown AccessKeyId / SecretId / Account SID.
    UnknownKey,
    /// Signed too far from the mock's clock.
    ClockSkew,
    /// A reused Aliyun `x-acs-signature-nonce`.
    NonceReused,
    /// Not checked: the request was refused before (e.g. unknown action or version).
    NotChecked,
}

/// One request as received, with what the mock made of it.
#[derive(Debug, Clone)]
pub struct SmsCall {
    pub provider: SmsProvider,
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// Aliyun `x-acs-action`, Tencent `X-TC-Action`; Twilio: `CreateMessage`,
    /// `ListMessages`, `FetchMessage`, `FetchAccount`.
    pub action: String,
    /// Every header as received (lower-case names).
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub auth: AuthOutcome,
    /// HTTP status answered.
    pub status: u16,
    /// The provider's code answered: Aliyun `Code`; Tencent `Error.Code`, or for `SendSms`
    /// `Ok` or the first per-number code that was not; Twilio's numeric error `code`
    /// (empty on success).
    pub code: String,
    /// Why the mock refused, in words (for signature failures: the canonical request and
    /// string to sign the mock computed). `None` when the request was served.
    pub reason: Option<String>,
    /// The answer was held this long (a scripted timeout).
    pub held: Option<Duration>,
    /// Arrival order among all requests to the mock (0 for the first).
    pub arrival: usize,
    pub received_at: Instant,
}

impl SmsCall {
    /// A signing bug on the client's side: wrong signature or malformed authorization.
    pub fn signature_failure(&self) -> bool {
        matches!(
            self.auth,
            AuthOutcome::WrongSignature | AuthOutcome::Malformed
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer to the next send (`SendSms` / Twilio create) that passed
/// authentication and validation. Queue them with [`MockSms::fail_next`] /
/// [`MockSms::push_replies`], or set one for every send with [`MockSms::fail_always`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedSms {
    /// A business refusal in the provider's usual form. Aliyun: `{"Code":code,
    /// "Message":message,"RequestId":…}` in HTTP 200. Tencent: every number's
    /// `SendStatusSet[i]` carries this `Code`/`Message` (`SerialNo` "", `Fee` 0) while the
    /// request itself succeeds (HTTP 200, no `Error`). Twilio: HTTP 400 with `code` parsed
    /// as a number (give a numeric code, e.g. "21610"; anything else becomes 0).
    Refuse { code: String, message: String },
    /// Tencent: a request-level `{"Response":{"Error":{…},"RequestId":…}}` (HTTP 200).
    /// Aliyun and Twilio: like [`ScriptedSms::Refuse`].
    RequestError { code: String, message: String },
    /// Twilio: this HTTP status with a Twilio JSON error (`code`, `message`, `more_info`,
    /// `status`), e.g. 429/20429. Aliyun and Tencent: like [`ScriptedSms::Http`].
    TwilioError {
        status: u16,
        code: u32,
        message: String,
    },
    /// This HTTP status with a plain-text body (the provider's front end in trouble).
    Http(u16),
    /// The provider sends the text (it is recorded, and shows up in the delivery reports)
    /// but answers only after this long: a client with a shorter timeout gives up although
    /// the text went out. Answers the usual success if the client is still there.
    SentThenHold(Duration),
    /// Nothing is sent or recorded; the answer comes after this long, as HTTP 503 (plain
    /// text), if the client is still there.
    LostThenHold(Duration),
}

impl ScriptedSms {
    pub fn refuse(code: &str, message: &str) -> Self {
        Self::Refuse {
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    pub fn request_error(code: &str, message: &str) -> Self {
        Self::RequestError {
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    pub fn twilio(status: u16, code: u32, message: &str) -> Self {
        Self::TwilioError {
            status,
            code,
            message: message.to_owned(),
        }
    }
}

#[derive(Default)]
struct MockState {
    /// Seconds the mock's clock is ahead of the real one (negative: behind).
    clock_offset: i64,
    arrivals: usize,
    serial: u64,
    calls: Vec<SmsCall>,
    sent: Vec<SmsSent>,
    scripts: HashMap<SmsProvider, VecDeque<ScriptedSms>>,
    always: HashMap<SmsProvider, ScriptedSms>,
    /// Normalized number → (code, message): refused by every provider until healed.
    refused_numbers: HashMap<String, (String, String)>,
    /// Per-provider limit on a template variable's length in characters.
    param_limit: HashMap<SmsProvider, usize>,
    aliyun_nonces: HashSet<String>,
    /// Indexes into `sent` of Tencent texts whose receipt was not pulled yet.
    tencent_receipts: VecDeque<usize>,
    unexpected: Vec<String>,
}

impl MockState {
    fn now(&self) -> i64 {
        unix_now() + self.clock_offset
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn take_script(&mut self, provider: SmsProvider) -> Option<ScriptedSms> {
        self.scripts
            .get_mut(&provider)
            .and_then(VecDeque::pop_front)
            .or_else(|| self.always.get(&provider).cloned())
    }

    fn refusal_for(&self, number: &str) -> Option<(String, String)> {
        self.refused_numbers.get(&normalize_number(number)).cloned()
    }

    /// The first variable longer than the provider's limit, if one is set.
    fn too_long<'a>(
        &self,
        provider: SmsProvider,
        values: impl IntoIterator<Item = &'a String>,
    ) -> Option<String> {
        let limit = *self.param_limit.get(&provider)?;
        values
            .into_iter()
            .find(|v| v.chars().count() > limit)
            .cloned()
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<MockState>>,
    /// Bumped on every recorded event so waiters can re-check their condition.
    changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MockState> {
        // A panicking handler must not hide the state from the test that reports it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

// ------------------------------------------------------------------------------------------
// the handle
// ------------------------------------------------------------------------------------------

/// Handle to the running mock (three listeners, one state); dropping it stops them.
pub struct MockSms {
    aliyun_url: String,
    tencent_url: String,
    twilio_url: String,
    shared: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MockSms {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl MockSms {
    pub async fn start() -> Self {
        let (changed, _) = watch::channel(0);
        let shared = Shared {
            state: Arc::default(),
            changed: Arc::new(changed),
        };
        let aliyun = Router::new()
            .route("/", any(aliyun_entry))
            .fallback(unexpected)
            .with_state(shared.clone());
        let tencent = Router::new()
            .route("/", any(tencent_entry))
            .fallback(unexpected)
            .with_state(shared.clone());
        let twilio = Router::new()
            .fallback(twilio_entry)
            .with_state(shared.clone());
        let (aliyun_url, a) = serve(aliyun, "Aliyun").await;
        let (tencent_url, b) = serve(tencent, "Tencent").await;
        let (twilio_url, c) = serve(twilio, "Twilio").await;
        Self {
            aliyun_url,
            tencent_url,
            twilio_url,
            shared,
            tasks: vec![a, b, c],
        }
    }

    /// `http://127.0.0.1:PORT` of the provider's listener (no trailing slash): stands for
    /// `https://dysmsapi.aliyuncs.com`, `https://sms.tencentcloudapi.com` and
    /// `https://api.twilio.com`.
    pub fn base_url(&self, provider: SmsProvider) -> &str {
        match provider {
            SmsProvider::Aliyun => &self.aliyun_url,
            SmsProvider::Tencent => &self.tencent_url,
            SmsProvider::Twilio => &self.twilio_url,
        }
    }

    // ---- scripting ----

    /// Answers the next send to `provider` with `reply` (after any already queued).
    pub fn fail_next(&self, provider: SmsProvider, reply: ScriptedSms) {
        self.push_replies(provider, [reply]);
    }

    /// Answers the next sends to `provider` with these replies, in order; then
    /// [`Self::fail_always`]'s reply if set, else the normal behaviour.
    pub fn push_replies(
        &self,
        provider: SmsProvider,
        replies: impl IntoIterator<Item = ScriptedSms>,
    ) {
        self.shared
            .lock()
            .scripts
            .entry(provider)
            .or_default()
            .extend(replies);
    }

    /// Answers every send to `provider` with `reply` until [`Self::heal`].
    pub fn fail_always(&self, provider: SmsProvider, reply: ScriptedSms) {
        self.shared.lock().always.insert(provider, reply);
    }

    /// Every provider refuses texts to `number` (compared in E.164 form, so
    /// "13800000000" and "+8613800000000" are one number) with this code and message:
    /// Tencent in that number's `SendStatusSet` entry (the other numbers of the request
    /// are sent), Aliyun for the whole request (`Code`, HTTP 200), Twilio as HTTP 400
    /// with `code` parsed as a number. Until [`Self::heal`].
    pub fn refuse_number(&self, number: &str, code: &str, message: &str) {
        self.shared.lock().refused_numbers.insert(
            normalize_number(number),
            (code.to_owned(), message.to_owned()),
        );
    }

    /// A template variable longer than `chars` characters is refused: Aliyun
    /// `isv.PARAM_LENGTH_LIMIT`, Tencent `InvalidParameterValue.TemplateParameterLengthLimit`
    /// (12 for individually verified Tencent accounts). `None`: no limit (the default,
    /// like an enterprise account).
    pub fn set_param_length_limit(&self, provider: SmsProvider, chars: Option<usize>) {
        let mut s = self.shared.lock();
        match chars {
            Some(n) => s.param_limit.insert(provider, n),
            None => s.param_limit.remove(&provider),
        };
    }

    /// Drops scripted replies, failure modes, refused numbers and length limits.
    pub fn heal(&self) {
        let mut s = self.shared.lock();
        s.scripts.clear();
        s.always.clear();
        s.refused_numbers.clear();
        s.param_limit.clear();
    }

    /// Sets the mock's clock `secs` seconds ahead of the real one (negative: behind), to
    /// provoke `InvalidTimeStamp.Expired` / `AuthFailure.SignatureExpire`. Also moves the
    /// dates it reports.
    pub fn set_clock_offset(&self, secs: i64) {
        self.shared.lock().clock_offset = secs;
    }

    // ---- observation ----

    /// Every text accepted so far, in acceptance order.
    pub fn sent(&self) -> Vec<SmsSent> {
        self.shared.lock().sent.clone()
    }

    pub fn sent_by(&self, provider: SmsProvider) -> Vec<SmsSent> {
        self.sent()
            .into_iter()
            .filter(|t| t.provider == provider)
            .collect()
    }

    /// Every request received, including refused ones, in arrival order.
    pub fn calls(&self) -> Vec<SmsCall> {
        self.shared.lock().calls.clone()
    }

    /// Requests refused for a signing bug ([`SmsCall::signature_failure`]).
    pub fn signature_failures(&self) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.signature_failure())
            .count()
    }

    /// Requests that did not pass authentication for any reason.
    pub fn auth_failures(&self) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| !matches!(c.auth, AuthOutcome::Passed | AuthOutcome::NotChecked))
            .count()
    }

    /// Requests to paths no provider has.
    pub fn unexpected_requests(&self) -> Vec<String> {
        self.shared.lock().unexpected.clone()
    }

    /// Waits until at least `n` texts were accepted and returns all accepted so far.
    pub async fn wait_for_sent(&self, n: usize, timeout: Duration) -> Vec<SmsSent> {
        if self.wait_until(timeout, |s| s.sent.len() >= n).await {
            self.sent()
        } else {
            let s = self.shared.lock();
            panic!(
                "expected {n} texts sent within {timeout:?}, got {}: sent={:#?}\ncalls={:#?}",
                s.sent.len(),
                s.sent,
                s.calls
            );
        }
    }

    /// Waits until at least `n` requests were received (served or refused).
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> Vec<SmsCall> {
        if self.wait_until(timeout, |s| s.calls.len() >= n).await {
            self.calls()
        } else {
            let s = self.shared.lock();
            panic!(
                "expected {n} SMS API calls within {timeout:?}, got {}: {:#?}",
                s.calls.len(),
                s.calls
            );
        }
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn(&MockState) -> bool) -> bool {
        crate::helpers::wait_until_changed(
            &self.shared.changed,
            timeout,
            || self.shared.lock(),
            |s| cond(s),
        )
        .await
    }
}

async fn serve(router: Router, name: &str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind mock {name} SMS: {e}"));
    let addr = listener.local_addr().expect("mock address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("mock SMS server");
    });
    (format!("http://{addr}"), task)
}

async fn unexpected(State(shared): State<Shared>, method: Method, uri: Uri) -> impl IntoResponse {
    shared.lock().unexpected.push(format!("{method} {uri}"));
    shared.bump();
    (StatusCode::NOT_FOUND, "no such SMS API in the mock")
}

// ------------------------------------------------------------------------------------------
// request plumbing
// ------------------------------------------------------------------------------------------

struct Incoming {
    provider: SmsProvider,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    received_at: Instant,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query(&self) -> &str {
        self.uri.query().unwrap_or("")
    }
}

/// What the mock decided for one request.
struct Outcome {
    auth: AuthOutcome,
    status: u16,
    code: String,
    reason: Option<String>,
    body: OutBody,
    /// Twilio's 401: `WWW-Authenticate: Basic realm="Twilio API"`.
    basic_challenge: bool,
    hold: Option<Duration>,
}

enum OutBody {
    Json(Value),
    Text(&'static str),
}

impl Outcome {
    fn json(status: u16, code: &str, body: Value) -> Self {
        Self {
            auth: AuthOutcome::Passed,
            status,
            code: code.to_owned(),
            reason: None,
            body: OutBody::Json(body),
            basic_challenge: false,
            hold: None,
        }
    }

    fn text(status: u16, text: &'static str) -> Self {
        Self {
            body: OutBody::Text(text),
            ..Self::json(status, &status.to_string(), Value::Null)
        }
    }

    fn auth(self, auth: AuthOutcome) -> Self {
        Self { auth, ..self }
    }

    fn reason(self, reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..self
        }
    }

    fn hold(self, hold: Duration) -> Self {
        Self {
            hold: Some(hold),
            ..self
        }
    }

    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = match &self.body {
            OutBody::Json(v) => (status, axum::Json(v.clone())).into_response(),
            OutBody::Text(t) => (status, *t).into_response(),
        };
        if self.basic_challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
        }
        resp
    }
}

/// Records the call, then answers (after the scripted hold, if any).
async fn answer(
    shared: &Shared,
    inc: Incoming,
    decide: impl FnOnce(&mut MockState, &Incoming) -> (String, Outcome),
) -> Response {
    let (response, hold) = {
        let mut s = shared.lock();
        let arrival = s.arrivals;
        s.arrivals += 1;
        let (action, out) = decide(&mut s, &inc);
        let call = SmsCall {
            provider: inc.provider,
            method: inc.method.to_string(),
            uri: inc.uri.to_string(),
            action,
            headers: inc
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&inc.body).into_owned(),
            auth: out.auth,
            status: out.status,
            code: out.code.clone(),
            reason: out.reason.clone(),
            held: out.hold,
            arrival,
            received_at: inc.received_at,
        };
        // Texts recorded by `decide` carry the arrival index.
        for t in s.sent.iter_mut().rev() {
            if t.arrival != usize::MAX {
                break;
            }
            t.arrival = arrival;
        }
        s.calls.push(call);
        (out.response(), out.hold)
    };
    shared.bump();
    if let Some(d) = hold {
        // Held after recording: a client that gives up meanwhile drops the connection,
        // and the text (if it was "sent") stays recorded, like at the real provider.
        tokio::time::sleep(d).await;
    }
    response
}

fn incoming(
    provider: SmsProvider,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Incoming {
    Incoming {
        provider,
        method,
        uri,
        headers,
        body,
        received_at: Instant::now(),
    }
}

/// Splits `Scheme k=v, k=v, …` (commas, optional spaces) into its fields.
fn auth_fields<'a>(value: &'a str, scheme: &str) -> Option<HashMap<&'a str, &'a str>> {
    let rest = value.strip_prefix(scheme)?.strip_prefix(' ')?;
    rest.split(',')
        .map(|kv| kv.trim().split_once('='))
        .collect::<Option<HashMap<_, _>>>()
}

/// The signed headers' (name, received value), checking that `SignedHeaders` is lower-case,
/// sorted, without duplicates, names only received headers and includes `required`.
fn signed_header_values(
    inc: &Incoming,
    signed: &str,
    required: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let names: Vec<&str> = signed.split(';').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || *n != n.to_ascii_lowercase())
    {
        return Err(format!(
            "SignedHeaders {signed:?} must be lower-case names joined by ';'"
        ));
    }
    if names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "SignedHeaders {signed:?} must be sorted, without duplicates"
        ));
    }
    if let Some(missing) = required.iter().find(|r| !names.contains(r)) {
        return Err(format!("SignedHeaders {signed:?} must include {missing}"));
    }
    names
        .iter()
        .map(|n| match inc.header(n) {
            Some(v) => Ok(((*n).to_owned(), v.to_owned())),
            None => Err(format!("signed header {n} was not sent")),
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// signing primitives (the mock's own, checked against the published vectors below)
// ------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// RFC 3986 unreserved characters stay; everything else is `%XY` (space is `%20`, `*` is
/// `%2A`, `~` stays).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn rfc3986(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// The result of signing: the intermediate strings, for messages and tests.
#[derive(Debug)]
struct Signed {
    canonical_request: String,
    string_to_sign: String,
    signature: String,
}

/// Aliyun's CanonicalQueryString from a received query: each pair decoded (`+` as space,
/// as a form-decoding server does), re-encoded per RFC 3986, sorted, joined with `&`.
fn acs3_canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (rfc3986(&k), rfc3986(&v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// ACS3-HMAC-SHA256 over a request: `headers` are the signed headers as (name, value) in
/// any order; names are lower-cased, values trimmed (not lower-cased), then sorted.
fn acs3_sign(
    secret: &str,
    method: &str,
    path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    hashed_payload: &str,
) -> Signed {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    // CanonicalHeaders ends with "\n" and the template adds another: the blank line is
    // part of the published vector.
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{hashed_payload}",
        acs3_canonical_query(raw_query)
    );
    let string_to_sign = format!(
        "ACS3-HMAC-SHA256\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let signature = hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()));
    Signed {
        canonical_request,
        string_to_sign,
        signature,
    }
}

/// TC3-HMAC-SHA256 over a request: `headers` are the signed headers as (name, value) in any
/// order; names and values are lower-cased and trimmed, then sorted. `date` is the UTC date
/// (`YYYY-MM-DD`) of `timestamp`.
#[allow(clippy::too_many_arguments)]
fn tc3_sign(
    secret_key: &str,
    method: &str,
    path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    payload: &[u8],
    timestamp: &str,
    date: &str,
    service: &str,
) -> Signed {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{path}\n{raw_query}\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(payload)
    );
    let string_to_sign = format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    Signed {
        canonical_request,
        string_to_sign,
        signature,
    }
}

// ------------------------------------------------------------------------------------------
// Aliyun
// ------------------------------------------------------------------------------------------

async fn aliyun_entry(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inc = incoming(SmsProvider::Aliyun, method, uri, headers, body);
    answer(&shared, inc, aliyun_decide).await
}

fn aliyun_request_id() -> String {
    uuid::Uuid::now_v7().to_string().to_uppercase()
}

/// Gateway-level refusal (non-200), in Aliyun's error shape.
fn aliyun_error(status: u16, code: &str, message: &str) -> Outcome {
    Outcome::json(
        status,
        code,
        json!({
            "Code": code,
            "Message": message,
            "RequestId": aliyun_request_id(),
            "HostId": "dysmsapi.aliyuncs.com",
            "Recommend": format!("https://api.aliyun.com/troubleshoot?q={code}&product=Dysmsapi"),
        }),
    )
}

/// Business result inside HTTP 200.
fn aliyun_business(code: &str, message: &str) -> Outcome {
    Outcome::json(
        200,
        code,
        json!({"Code": code, "Message": message, "RequestId": aliyun_request_id()}),
    )
}

fn aliyun_decide(s: &mut MockState, inc: &Incoming) -> (String, Outcome) {
    let action = inc.header("x-acs-action").unwrap_or_default().to_owned();
    let out = aliyun_dispatch(s, inc, &action);
    (action, out)
}

fn aliyun_dispatch(s: &mut MockState, inc: &Incoming, action: &str) -> Outcome {
    if action.is_empty() {
        // UNVERIFIED: the code for a missing x-acs-action.
        return aliyun_error(
            400,
            "MissingAction",
            "Action is mandatory for this request.",
        )
        .auth(AuthOutcome::NotChecked)
        .reason("no x-acs-action header");
    }
    if let Err(out) = aliyun_verify(s, inc) {
        return out;
    }
    // UNVERIFIED: Aliyun may check the version and action before the signature.
    let version = inc.header("x-acs-version").unwrap_or_default();
    if version != ALIYUN_VERSION {
        return aliyun_error(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        )
        .reason(format!(
            "x-acs-version {version:?}, expected {ALIYUN_VERSION}"
        ));
    }
    let mut params: BTreeMap<String, String> = url::form_urlencoded::parse(inc.query().as_bytes())
        .into_owned()
        .collect();
    let form_body = inc
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if form_body {
        for (k, v) in url::form_urlencoded::parse(&inc.body).into_owned() {
            params.entry(k).or_insert(v);
        }
    }
    match action {
        "SendSms" => aliyun_send(s, &params),
        "QuerySendDetails" => aliyun_query_send_details(s, &params),
        "QuerySmsTemplate" => aliyun_query_template(&params, false),
        "GetSmsTemplate" => aliyun_query_template(&params, true),
        _ => aliyun_error(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )
        .reason(format!("the mock has no Aliyun action {action:?}")),
    }
}

/// The ACS3-HMAC-SHA256 checks, in the order the mock applies them.
fn aliyun_verify(s: &mut MockState, inc: &Incoming) -> Result<(), Outcome> {
    let incomplete = |reason: String| {
        aliyun_error(
            400,
            "IncompleteSignature",
            "The request signature does not conform to Aliyun standards.",
        )
        .auth(AuthOutcome::Malformed)
        .reason(reason)
    };
    let Some(authorization) = inc.header("authorization") else {
        return Err(incomplete("no Authorization header".to_owned()));
    };
    let Some(fields) = auth_fields(authorization, "ACS3-HMAC-SHA256") else {
        return Err(incomplete(format!(
            "Authorization {authorization:?} is not `ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…`"
        )));
    };
    let (Some(credential), Some(signed), Some(signature)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return Err(incomplete(format!(
            "Authorization {authorization:?} lacks Credential, SignedHeaders or Signature"
        )));
    };
    if *credential != ALIYUN_KEY_ID {
        // Real responses (third-party reports): HTTP 404 with this code and message.
        return Err(aliyun_error(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        )
        .auth(AuthOutcome::UnknownKey)
        .reason(format!(
            "AccessKeyId {credential:?} is not {ALIYUN_KEY_ID:?}"
        )));
    }
    let date = inc.header("x-acs-date").unwrap_or_default();
    let Some(date_secs) = parse_iso8601(date) else {
        // UNVERIFIED: the code for a malformed x-acs-date.
        return Err(aliyun_error(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        )
        .auth(AuthOutcome::Malformed)
        .reason(format!("x-acs-date {date:?} is not yyyy-MM-ddTHH:mm:ssZ")));
    };
    let skew = (s.now() - date_secs).unsigned_abs();
    if skew > ALIYUN_MAX_SKEW.as_secs() {
        return Err(aliyun_error(
            400,
            "InvalidTimeStamp.Expired",
            &format!(
                "Specified time stamp or date value is expired. The server time is {}.",
                iso8601(s.now())
            ),
        )
        .auth(AuthOutcome::ClockSkew)
        .reason(format!(
            "x-acs-date {date} is {skew} s off the mock's clock"
        )));
    }
    let Some(nonce) = inc.header("x-acs-signature-nonce") else {
        return Err(incomplete("no x-acs-signature-nonce header".to_owned()));
    };
    let Some(content_sha) = inc.header("x-acs-content-sha256") else {
        return Err(incomplete("no x-acs-content-sha256 header".to_owned()));
    };
    // Every x-acs-* header, host and content-type received must be signed.
    let unsigned: Vec<&str> = inc
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-acs-") || *k == "host" || *k == "content-type")
        .filter(|k| !signed.split(';').any(|n| n == *k))
        .collect();
    if !unsigned.is_empty() {
        return Err(incomplete(format!(
            "headers {unsigned:?} were sent but not listed in SignedHeaders {signed:?}"
        )));
    }
    let headers = signed_header_values(inc, signed, &["host"]).map_err(incomplete)?;
    let signed_result = acs3_sign(
        ALIYUN_KEY_SECRET,
        inc.method.as_str(),
        inc.uri.path(),
        inc.query(),
        &headers,
        content_sha,
    );
    let mismatch = |why: String| {
        aliyun_error(
            400,
            "SignatureDoesNotMatch",
            &format!(
                "Specified signature is not matched with our calculation. server string to sign is:{}",
                signed_result.string_to_sign
            ),
        )
        .auth(AuthOutcome::WrongSignature)
        .reason(format!(
            "{why}\ncanonical request:\n{}\nstring to sign:\n{}",
            signed_result.canonical_request, signed_result.string_to_sign
        ))
    };
    let body_sha = sha256_hex(&inc.body);
    if content_sha != body_sha {
        // UNVERIFIED: Aliyun's exact answer to a wrong body hash.
        return Err(mismatch(format!(
            "x-acs-content-sha256 {content_sha} is not the body's SHA-256 {body_sha}"
        )));
    }
    if *signature != signed_result.signature {
        return Err(mismatch(format!(
            "signature {signature} is not the mock's {}",
            signed_result.signature
        )));
    }
    if !s.aliyun_nonces.insert(nonce.to_owned()) {
        return Err(aliyun_error(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        )
        .auth(AuthOutcome::NonceReused)
        .reason(format!("x-acs-signature-nonce {nonce:?} was used before")));
    }
    Ok(())
}

fn aliyun_missing(param: &str) -> Outcome {
    // Aliyun's "Missing<Param>" convention; UNVERIFIED for dysmsapi specifically.
    aliyun_error(
        400,
        &format!("Missing{param}"),
        &format!("{param} is mandatory for this action."),
    )
    .reason(format!("no {param} parameter"))
}

fn aliyun_send(s: &mut MockState, params: &BTreeMap<String, String>) -> Outcome {
    let (Some(numbers), Some(sign), Some(template_code)) = (
        params.get("PhoneNumbers"),
        params.get("SignName"),
        params.get("TemplateCode"),
    ) else {
        let missing = ["PhoneNumbers", "SignName", "TemplateCode"]
            .into_iter()
            .find(|p| !params.contains_key(*p))
            .unwrap_or_default();
        return aliyun_missing(missing);
    };
    let numbers: Vec<&str> = numbers.split(',').map(str::trim).collect();
    if numbers.len() > 1000 {
        return aliyun_business(
            "isv.MOBILE_COUNT_OVER_LIMIT",
            "手机号码数量超过限制，最多支持1000条。",
        )
        .reason(format!("{} numbers", numbers.len()));
    }
    if let Some(bad) = numbers.iter().find(|n| !aliyun_number_ok(n)) {
        return aliyun_business("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号").reason(format!(
            "{bad:?} is neither +CC… (8–15 digits) nor an 11-digit mainland number"
        ));
    }
    if sign != SIGN_NAME {
        return aliyun_business("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
            .reason(format!("SignName {sign:?} is not {SIGN_NAME:?}"));
    }
    let Some(tpl) = template(SmsProvider::Aliyun, template_code) else {
        return aliyun_business("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板").reason(
            format!("TemplateCode {template_code:?} is not an approved template"),
        );
    };
    let Some(raw_params) = params.get("TemplateParam") else {
        return aliyun_business("isv.TEMPLATE_MISSING_PARAMETERS", "模板变量缺少对应参数值")
            .reason("no TemplateParam for a template with variables");
    };
    let values: BTreeMap<String, String> = match serde_json::from_str::<Value>(raw_params) {
        Ok(Value::Object(map)) => {
            let mut values = BTreeMap::new();
            for (k, v) in map {
                let Value::String(v) = v else {
                    return aliyun_business(
                        "isv.INVALID_JSON_PARAM",
                        "JSON参数不合法，只接受字符串值",
                    )
                    .reason(format!("TemplateParam value of {k:?} is {v}, not a string"));
                };
                values.insert(k, v);
            }
            values
        }
        _ => {
            return aliyun_business("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
                .reason(format!("TemplateParam {raw_params:?} is not a JSON object"));
        }
    };
    if let Some(missing) = tpl.vars().iter().find(|v| !values.contains_key(**v)) {
        return aliyun_business("isv.TEMPLATE_MISSING_PARAMETERS", "模板变量缺少对应参数值")
            .reason(format!("TemplateParam has no {missing:?}"));
    }
    // Only the template's variables are kept (extra keys are ignored, UNVERIFIED).
    let values: BTreeMap<String, String> = values
        .into_iter()
        .filter(|(k, _)| tpl.vars().contains(&k.as_str()))
        .collect();
    if let Some(long) = s.too_long(SmsProvider::Aliyun, values.values()) {
        return aliyun_business("isv.PARAM_LENGTH_LIMIT", "参数超出长度限制")
            .reason(format!("variable {long:?} is over the length limit"));
    }
    if let Some((code, message)) = numbers.iter().find_map(|n| s.refusal_for(n)) {
        return aliyun_business(&code, &message).reason("number refused (refuse_number)");
    }
    let hold = match s.take_script(SmsProvider::Aliyun) {
        None => None,
        Some(
            ScriptedSms::Refuse { code, message } | ScriptedSms::RequestError { code, message },
        ) => {
            return aliyun_business(&code, &message).reason("scripted refusal");
        }
        Some(ScriptedSms::Http(status) | ScriptedSms::TwilioError { status, .. }) => {
            return Outcome::text(status, "upstream trouble").reason("scripted HTTP status");
        }
        Some(ScriptedSms::LostThenHold(d)) => {
            return Outcome::text(503, "Service Unavailable")
                .reason("scripted: lost, nothing sent")
                .hold(d);
        }
        Some(ScriptedSms::SentThenHold(d)) => Some(d),
    };
    let biz_id = format!("{:016}^0", 9_006_197_469_364_984u64 + s.next_serial());
    let now = s.now();
    for n in &numbers {
        let text = tpl.render(&values);
        s.sent.push(SmsSent {
            provider: SmsProvider::Aliyun,
            to: (*n).to_owned(),
            id: biz_id.clone(),
            sign_name: Some(sign.clone()),
            template: Some(template_code.clone()),
            params: values.clone(),
            text,
            body: None,
            out_id: params.get("OutId").cloned(),
            from: None,
            sent_at: now,
            arrival: usize::MAX,
        });
    }
    let out = Outcome::json(
        200,
        "OK",
        json!({"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": aliyun_request_id()}),
    );
    match hold {
        Some(d) => out.hold(d),
        None => out,
    }
}

/// `QuerySendDetails`: the texts the mock accepted for that number on that (Beijing) day,
/// each `SendStatus` 3 (delivered). Shape from the official SDK model:
/// `SmsSendDetailDTOs.SmsSendDetailDTO[]` and `TotalCount`, which the current SDK types
/// as a string (an older doc page says Number; UNVERIFIED which the server sends).
fn aliyun_query_send_details(s: &mut MockState, params: &BTreeMap<String, String>) -> Outcome {
    for p in ["PhoneNumber", "SendDate", "PageSize", "CurrentPage"] {
        if !params.contains_key(p) {
            return aliyun_missing(p);
        }
    }
    let number = normalize_number(&params["PhoneNumber"]);
    let date = &params["SendDate"];
    let (Ok(page_size), Ok(page)) = (
        params["PageSize"].parse::<usize>(),
        params["CurrentPage"].parse::<usize>(),
    ) else {
        return aliyun_error(
            400,
            "InvalidParameter",
            "PageSize and CurrentPage must be numbers.",
        )
        .reason("PageSize/CurrentPage not numbers");
    };
    if !(1..=50).contains(&page_size) || page == 0 {
        // UNVERIFIED: the code for an out-of-range page.
        return aliyun_error(
            400,
            "InvalidParameter",
            "PageSize must be 1–50, CurrentPage ≥ 1.",
        )
        .reason(format!("PageSize {page_size}, CurrentPage {page}"));
    }
    let matching: Vec<&SmsSent> = s
        .sent
        .iter()
        .filter(|t| t.provider == SmsProvider::Aliyun)
        .filter(|t| normalize_number(&t.to) == number)
        .filter(|t| beijing_yyyymmdd(t.sent_at) == *date)
        .filter(|t| params.get("BizId").is_none_or(|b| *b == t.id))
        .collect();
    let details: Vec<Value> = matching
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|t| {
            json!({
                "PhoneNum": t.to,
                "SendStatus": 3,
                "ErrCode": "DELIVERED",
                "TemplateCode": t.template,
                "Content": t.text,
                "SendDate": beijing_datetime(t.sent_at),
                "ReceiveDate": beijing_datetime(t.sent_at),
                "OutId": t.out_id.clone().unwrap_or_default(),
            })
        })
        .collect();
    Outcome::json(
        200,
        "OK",
        json!({
            "Code": "OK",
            "Message": "OK",
            "RequestId": aliyun_request_id(),
            "TotalCount": matching.len().to_string(),
            "SmsSendDetailDTOs": {"SmsSendDetailDTO": details},
        }),
    )
}

/// `QuerySmsTemplate` (fields and `TemplateStatus` 1 = approved from the official SDK
/// model; Aliyun marks this API deprecated/offline in favour of `GetSmsTemplate`) and
/// `GetSmsTemplate` (its doc types `TemplateStatus` and `TemplateType` as strings; the
/// value list was truncated in the copy read, so "1" = approved is UNVERIFIED there).
fn aliyun_query_template(params: &BTreeMap<String, String>, get: bool) -> Outcome {
    let Some(code) = params.get("TemplateCode") else {
        return aliyun_missing("TemplateCode");
    };
    let Some(tpl) = template(SmsProvider::Aliyun, code) else {
        // UNVERIFIED: the answer for an unknown template code.
        return aliyun_business("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
            .reason(format!("no template {code:?}"));
    };
    let kind = if tpl.code { 0 } else { 1 };
    let mut body = json!({
        "Code": "OK",
        "Message": "OK",
        "RequestId": aliyun_request_id(),
        "TemplateCode": tpl.id,
        "TemplateName": tpl.name,
        "TemplateContent": tpl.text,
        "CreateDate": "2024-06-03 10:02:34",
        "Reason": "无审批备注",
    });
    if get {
        body["TemplateStatus"] = json!("1");
        body["TemplateType"] = json!(kind.to_string());
        body["RelatedSignName"] = json!(SIGN_NAME);
        body["TemplateTag"] = json!(2);
    } else {
        body["TemplateStatus"] = json!(1);
        body["TemplateType"] = json!(kind);
    }
    Outcome::json(200, "OK", body)
}

// ------------------------------------------------------------------------------------------
// Tencent
// ------------------------------------------------------------------------------------------

async fn tencent_entry(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inc = incoming(SmsProvider::Tencent, method, uri, headers, body);
    answer(&shared, inc, tencent_decide).await
}

fn tencent_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Request-level error: `{"Response":{"Error":{…},"RequestId":…}}` in HTTP 200 (the
/// status is UNVERIFIED; the docs say Response and RequestId always come back).
fn tencent_error(code: &str, message: &str) -> Outcome {
    Outcome::json(
        200,
        code,
        json!({"Response": {
            "Error": {"Code": code, "Message": message},
            "RequestId": tencent_request_id(),
        }}),
    )
}

fn tencent_ok(mut response: Value) -> Outcome {
    response["RequestId"] = json!(tencent_request_id());
    Outcome::json(200, "Ok", json!({ "Response": response }))
}

fn tencent_decide(s: &mut MockState, inc: &Incoming) -> (String, Outcome) {
    let action = inc.header("x-tc-action").unwrap_or_default().to_owned();
    let out = tencent_dispatch(s, inc, &action);
    (action, out)
}

fn tencent_dispatch(s: &mut MockState, inc: &Incoming, action: &str) -> Outcome {
    // UNVERIFIED: the codes for these structural errors (the common error list has them,
    // their order of checking is the mock's).
    if inc.method != Method::POST {
        return tencent_error(
            "InvalidParameter",
            "The mock accepts POST with a JSON body only.",
        )
        .auth(AuthOutcome::NotChecked)
        .reason(format!("method {}", inc.method));
    }
    if action.is_empty() {
        return tencent_error(
            "MissingParameter",
            "The request is missing a required parameter `Action`.",
        )
        .auth(AuthOutcome::NotChecked)
        .reason("no X-TC-Action header");
    }
    let version = inc.header("x-tc-version").unwrap_or_default();
    if version != TENCENT_VERSION {
        return tencent_error(
            "NoSuchVersion",
            "The requested version does not exist or is not supported.",
        )
        .auth(AuthOutcome::NotChecked)
        .reason(format!(
            "X-TC-Version {version:?}, expected {TENCENT_VERSION}"
        ));
    }
    if inc.header("x-tc-region").is_none_or(str::is_empty) {
        return tencent_error(
            "MissingParameter",
            "The request is missing a required parameter `Region`.",
        )
        .auth(AuthOutcome::NotChecked)
        .reason("no X-TC-Region header");
    }
    if let Err(out) = tencent_verify(s, inc) {
        return out;
    }
    let body: Value = match serde_json::from_slice(&inc.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return tencent_error(
                "FailedOperation.JsonParseFail",
                "Failed to parse the request body.",
            )
            .reason("the body is not a JSON object");
        }
    };
    match action {
        "SendSms" => tencent_send(s, &body),
        "PullSmsSendStatus" => tencent_pull_status(s, &body),
        "PullSmsSendStatusByPhoneNumber" => tencent_pull_status_by_number(s, &body),
        "DescribeSmsTemplateList" => tencent_describe_templates(&body),
        _ => tencent_error(
            "InvalidAction",
            &format!("The requested action `{action}` does not exist."),
        )
        .reason(format!("the mock has no Tencent action {action:?}")),
    }
}

fn tencent_verify(s: &MockState, inc: &Incoming) -> Result<(), Outcome> {
    let malformed = |reason: String| {
        tencent_error(
            "AuthFailure.InvalidAuthorization",
            "Authorization in the request header does not conform to the Tencent Cloud standard.",
        )
        .auth(AuthOutcome::Malformed)
        .reason(reason)
    };
    let Some(authorization) = inc.header("authorization") else {
        return Err(malformed("no Authorization header".to_owned()));
    };
    let Some(fields) = auth_fields(authorization, "TC3-HMAC-SHA256") else {
        return Err(malformed(format!(
            "Authorization {authorization:?} is not `TC3-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`"
        )));
    };
    let (Some(credential), Some(signed), Some(signature)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return Err(malformed(format!(
            "Authorization {authorization:?} lacks Credential, SignedHeaders or Signature"
        )));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, service, "tc3_request"] = scope[..] else {
        return Err(malformed(format!(
            "Credential {credential:?} is not <SecretId>/<date>/<service>/tc3_request"
        )));
    };
    if secret_id != TENCENT_SECRET_ID {
        return Err(tencent_error(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        )
        .auth(AuthOutcome::UnknownKey)
        .reason(format!(
            "SecretId {secret_id:?} is not {TENCENT_SECRET_ID:?}"
        )));
    }
    let timestamp = inc.header("x-tc-timestamp").unwrap_or_default();
    let Ok(ts) = timestamp.parse::<i64>() else {
        return Err(tencent_error(
            "InvalidParameterValue",
            "X-TC-Timestamp must be UNIX seconds.",
        )
        .auth(AuthOutcome::Malformed)
        .reason(format!("X-TC-Timestamp {timestamp:?} is not UNIX seconds")));
    };
    let now = s.now();
    let skew = (now - ts).unsigned_abs();
    if skew > TENCENT_MAX_SKEW.as_secs() {
        return Err(tencent_error(
            "AuthFailure.SignatureExpire",
            &format!("Signature expired. Timestamp:{ts}; Server Timestamp:{now}"),
        )
        .auth(AuthOutcome::ClockSkew)
        .reason(format!(
            "X-TC-Timestamp {ts} is {skew} s off the mock's clock"
        )));
    }
    let failure = |reason: String| {
        tencent_error(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        )
        .auth(AuthOutcome::WrongSignature)
        .reason(reason)
    };
    if service != "sms" {
        return Err(failure(format!(
            "credential scope service {service:?}, expected \"sms\""
        )));
    }
    let utc = utc_date(ts);
    if date != utc {
        return Err(failure(format!(
            "credential scope date {date} is not the UTC date {utc} of X-TC-Timestamp {ts}"
        )));
    }
    let headers =
        signed_header_values(inc, signed, &["content-type", "host"]).map_err(malformed)?;
    let signed_result = tc3_sign(
        TENCENT_SECRET_KEY,
        inc.method.as_str(),
        inc.uri.path(),
        inc.query(),
        &headers,
        &inc.body,
        timestamp,
        date,
        service,
    );
    if *signature != signed_result.signature {
        return Err(failure(format!(
            "signature {signature} is not the mock's {}\ncanonical request:\n{}\nstring to sign:\n{}",
            signed_result.signature, signed_result.canonical_request, signed_result.string_to_sign
        )));
    }
    Ok(())
}

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn check_sdk_app_id(body: &Value) -> Result<(), Outcome> {
    match str_field(body, "SmsSdkAppId") {
        None => Err(tencent_error(
            "MissingParameter",
            "The request is missing a required parameter `SmsSdkAppId`.",
        )
        .reason("no SmsSdkAppId")),
        Some(TENCENT_SDK_APP_ID) => Ok(()),
        Some(other) => Err(tencent_error(
            "UnauthorizedOperation.SmsSdkAppIdVerifyFail",
            "SmsSdkAppId verify failed.",
        )
        .reason(format!(
            "SmsSdkAppId {other:?} is not {TENCENT_SDK_APP_ID:?}"
        ))),
    }
}

fn tencent_send(s: &mut MockState, body: &Value) -> Outcome {
    let numbers: Vec<String> = match body.get("PhoneNumberSet") {
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
        Some(_) => {
            return tencent_error(
                "InvalidParameter",
                "PhoneNumberSet must be an array of strings.",
            )
            .reason("PhoneNumberSet is not an array of strings");
        }
    };
    if numbers.is_empty() {
        return tencent_error(
            "MissingParameter.EmptyPhoneNumberSet",
            "The PhoneNumberSet is empty.",
        )
        .reason("no numbers");
    }
    if numbers.len() > 200 {
        return tencent_error(
            "LimitExceeded.PhoneNumberCountLimit",
            "The number of phone numbers exceeds 200.",
        )
        .reason(format!("{} numbers", numbers.len()));
    }
    if let Err(out) = check_sdk_app_id(body) {
        return out;
    }
    let Some(template_id) = str_field(body, "TemplateId") else {
        return tencent_error(
            "MissingParameter",
            "The request is missing a required parameter `TemplateId`.",
        )
        .reason("no TemplateId");
    };
    let values: Vec<String> = match body.get("TemplateParamSet") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return tencent_error(
                "InvalidParameter",
                "TemplateParamSet must be an array of strings.",
            )
            .reason("TemplateParamSet is not an array of strings");
        }
    };
    let sign = str_field(body, "SignName");
    let session = str_field(body, "SessionContext").map(str::to_owned);
    let valid: Vec<&String> = numbers.iter().filter(|n| e164_ok(n)).collect();
    if valid.iter().any(|n| n.starts_with("+86")) && valid.iter().any(|n| !n.starts_with("+86")) {
        return tencent_error(
            "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
            "The request contains both Chinese mainland and international numbers.",
        )
        .reason("mixed +86 and other numbers");
    }

    // What goes wrong for every number (sign, template, variables). In the SendStatusSet
    // like the per-number failures, as third-party client tests show them; UNVERIFIED
    // whether Tencent answers these with a request-level Error instead.
    let tpl = template(SmsProvider::Tencent, template_id);
    let content_error: Option<(&str, String, String)> = if sign != Some(SIGN_NAME) {
        Some((
            "FailedOperation.SignatureIncorrectOrUnapproved",
            "signature format is wrong or signature is not approved".to_owned(),
            format!("SignName {sign:?} is not {SIGN_NAME:?}"),
        ))
    } else if let Some(tpl) = tpl {
        if values.len() != tpl.vars().len() {
            Some((
                "FailedOperation.TemplateParamSetNotMatchApprovedTemplate",
                "request content does not match the approved template content".to_owned(),
                format!(
                    "{} template parameters for a template with {}",
                    values.len(),
                    tpl.vars().len()
                ),
            ))
        } else if tpl.code
            && !values
                .iter()
                .all(|v| v.len() <= 6 && v.bytes().all(|b| b.is_ascii_digit()))
        {
            Some((
                "InvalidParameterValue.TemplateParameterFormatError",
                "verification code template parameter format error".to_owned(),
                format!("code {values:?} is not 0–6 digits"),
            ))
        } else {
            s.too_long(SmsProvider::Tencent, values.iter()).map(|long| {
                (
                    "InvalidParameterValue.TemplateParameterLengthLimit",
                    "single template parameter length exceeds the limit".to_owned(),
                    format!("variable {long:?} is over the length limit"),
                )
            })
        }
    } else {
        Some((
            "FailedOperation.TemplateIncorrectOrUnapproved",
            "template is not approved or request content does not match the approved template content".to_owned(),
            format!("TemplateId {template_id:?} is not an approved template"),
        ))
    };

    let mut hold = None;
    let mut scripted_refusal: Option<(String, String)> = None;
    if content_error.is_none() {
        match s.take_script(SmsProvider::Tencent) {
            None => {}
            Some(ScriptedSms::Refuse { code, message }) => scripted_refusal = Some((code, message)),
            Some(ScriptedSms::RequestError { code, message }) => {
                return tencent_error(&code, &message).reason("scripted request error");
            }
            Some(ScriptedSms::Http(status) | ScriptedSms::TwilioError { status, .. }) => {
                return Outcome::text(status, "upstream trouble").reason("scripted HTTP status");
            }
            Some(ScriptedSms::LostThenHold(d)) => {
                return Outcome::text(503, "Service Unavailable")
                    .reason("scripted: lost, nothing sent")
                    .hold(d);
            }
            Some(ScriptedSms::SentThenHold(d)) => hold = Some(d),
        }
    }

    let params: BTreeMap<String, String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i + 1).to_string(), v.clone()))
        .collect();
    let now = s.now();
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    for n in &numbers {
        let refusal: Option<(String, String, String)> = if !e164_ok(n) {
            Some((
                "InvalidParameterValue.IncorrectPhoneNumber".to_owned(),
                "invalid mobile number".to_owned(),
                format!("{n:?} is not +CC… with 8–15 digits"),
            ))
        } else if let Some((code, message, why)) = &content_error {
            Some(((*code).to_owned(), message.clone(), why.clone()))
        } else if let Some((code, message)) = &scripted_refusal {
            Some((code.clone(), message.clone(), "scripted refusal".to_owned()))
        } else {
            s.refusal_for(n)
                .map(|(code, message)| (code, message, "number refused (refuse_number)".to_owned()))
        };
        let e164 = normalize_number(n);
        if let Some((code, message, why)) = refusal {
            reasons.push(format!("{n}: {why}"));
            statuses.push(json!({
                "SerialNo": "",
                "PhoneNumber": e164,
                "Fee": 0,
                "SessionContext": session.clone().unwrap_or_default(),
                "Code": code,
                "Message": message,
                "IsoCode": iso_code(&e164),
            }));
            continue;
        }
        let tpl = tpl.expect("content checked");
        let text = tpl.render(&params);
        let serial = format!("2640:{:028}", 10_457_106_691_570_536u64 + s.next_serial());
        statuses.push(json!({
            "SerialNo": serial,
            "PhoneNumber": e164,
            "Fee": text_fee(&text),
            "SessionContext": session.clone().unwrap_or_default(),
            "Code": "Ok",
            "Message": "send success",
            "IsoCode": iso_code(&e164),
        }));
        s.sent.push(SmsSent {
            provider: SmsProvider::Tencent,
            to: n.clone(),
            id: serial,
            sign_name: sign.map(str::to_owned),
            template: Some(template_id.to_owned()),
            params: params.clone(),
            text,
            body: None,
            out_id: session.clone(),
            from: None,
            sent_at: now,
            arrival: usize::MAX,
        });
        let index = s.sent.len() - 1;
        s.tencent_receipts.push_back(index);
    }
    let code = statuses
        .iter()
        .filter_map(|st| st["Code"].as_str())
        .find(|c| *c != "Ok")
        .unwrap_or("Ok")
        .to_owned();
    let mut out = tencent_ok(json!({ "SendStatusSet": statuses }));
    out.code = code;
    if !reasons.is_empty() {
        out = out.reason(reasons.join("; "));
    }
    match hold {
        Some(d) => out.hold(d),
        None => out,
    }
}

/// A delivery receipt: fields from the official 2021-01-11 SDK model and doc example.
fn tencent_receipt(t: &SmsSent) -> Value {
    let e164 = normalize_number(&t.to);
    let (country, subscriber) = split_country(&e164);
    json!({
        "UserReceiveTime": t.sent_at,
        "CountryCode": country,
        "SubscriberNumber": subscriber,
        "PhoneNumber": e164,
        "SerialNo": t.id,
        "ReportStatus": "SUCCESS",
        "Description": "DELIVRD",
        "SessionContext": t.out_id.clone().unwrap_or_default(),
    })
}

fn tencent_limit(body: &Value) -> Result<usize, Outcome> {
    match body.get("Limit").and_then(Value::as_u64) {
        Some(n @ 1..=100) => Ok(n as usize),
        other => Err(tencent_error(
            "InvalidParameterValue.LimitVerifyFail",
            "Limit verification failed.",
        )
        .reason(format!("Limit {other:?} is not 1–100"))),
    }
}

/// `PullSmsSendStatus`: a queue, each receipt is pulled once (as the old API's doc says of
/// pulled content; UNVERIFIED for 2021-01-11, whose page does not say).
fn tencent_pull_status(s: &mut MockState, body: &Value) -> Outcome {
    if let Err(out) = check_sdk_app_id(body) {
        return out;
    }
    let limit = match tencent_limit(body) {
        Ok(n) => n,
        Err(out) => return out,
    };
    let n = limit.min(s.tencent_receipts.len());
    let receipts: Vec<Value> = s
        .tencent_receipts
        .drain(..n)
        .map(|i| tencent_receipt(&s.sent[i]))
        .collect();
    tencent_ok(json!({ "PullSmsSendStatusSet": receipts }))
}

/// `PullSmsSendStatusByPhoneNumber`: the receipts of one number sent between `BeginTime`
/// and `EndTime` (UNIX seconds), whether pulled before or not.
fn tencent_pull_status_by_number(s: &mut MockState, body: &Value) -> Outcome {
    if let Err(out) = check_sdk_app_id(body) {
        return out;
    }
    let limit = match tencent_limit(body) {
        Ok(n) => n,
        Err(out) => return out,
    };
    let Some(begin) = body.get("BeginTime").and_then(Value::as_i64) else {
        return tencent_error(
            "InvalidParameterValue.BeginTimeVerifyFail",
            "BeginTime verification failed.",
        )
        .reason("no BeginTime");
    };
    let Some(number) = str_field(body, "PhoneNumber") else {
        return tencent_error(
            "MissingParameter",
            "The request is missing a required parameter `PhoneNumber`.",
        )
        .reason("no PhoneNumber");
    };
    let end = body
        .get("EndTime")
        .and_then(Value::as_i64)
        .unwrap_or(i64::MAX);
    let offset = body.get("Offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let number = normalize_number(number);
    let receipts: Vec<Value> = s
        .sent
        .iter()
        .filter(|t| t.provider == SmsProvider::Tencent && normalize_number(&t.to) == number)
        .filter(|t| (begin..=end).contains(&t.sent_at))
        .skip(offset)
        .take(limit)
        .map(tencent_receipt)
        .collect();
    tencent_ok(json!({ "PullSmsSendStatusSet": receipts }))
}

/// `DescribeSmsTemplateList`: `StatusCode` 0 (approved and in effect) for the known ids;
/// unknown ids are left out (UNVERIFIED: Tencent may answer an error for them).
fn tencent_describe_templates(body: &Value) -> Outcome {
    let Some(international) = body.get("International").and_then(Value::as_u64) else {
        return tencent_error(
            "MissingParameter",
            "The request is missing a required parameter `International`.",
        )
        .reason("no International");
    };
    let ids: Vec<u64> = body
        .get("TemplateIdSet")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let set: Vec<Value> = TEMPLATES
        .iter()
        .filter(|t| t.provider == SmsProvider::Tencent && international == 0)
        .filter_map(|t| Some((t, t.id.parse::<u64>().ok()?)))
        .filter(|(_, id)| ids.is_empty() || ids.contains(id))
        .map(|(t, id)| {
            json!({
                "TemplateId": id,
                "International": 0,
                "StatusCode": 0,
                "ReviewReply": "",
                "TemplateName": t.name,
                "CreateTime": 1_717_380_154,
                "TemplateContent": t.text,
            })
        })
        .collect();
    tencent_ok(json!({ "DescribeTemplateStatusSet": set }))
}

// ------------------------------------------------------------------------------------------
// Twilio
// ------------------------------------------------------------------------------------------

async fn twilio_entry(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inc = incoming(SmsProvider::Twilio, method, uri, headers, body);
    answer(&shared, inc, twilio_decide).await
}

fn twilio_error(status: u16, code: u32, message: &str) -> Outcome {
    Outcome::json(
        status,
        &code.to_string(),
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

enum TwilioRoute {
    Account,
    Messages,
    Message(String),
}

fn twilio_route(path: &str) -> Option<(String, TwilioRoute)> {
    let rest = path.strip_prefix("/2010-04-01/Accounts/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[..] {
        [account] => Some((
            account.strip_suffix(".json")?.to_owned(),
            TwilioRoute::Account,
        )),
        [account, "Messages.json"] => Some((account.to_owned(), TwilioRoute::Messages)),
        [account, "Messages", message] => Some((
            account.to_owned(),
            TwilioRoute::Message(message.strip_suffix(".json")?.to_owned()),
        )),
        _ => None,
    }
}

fn twilio_decide(s: &mut MockState, inc: &Incoming) -> (String, Outcome) {
    let path = inc.uri.path();
    let not_found = || {
        twilio_error(
            404,
            20404,
            &format!("The requested resource {path} was not found"),
        )
    };
    let Some((account, route)) = twilio_route(path) else {
        s.unexpected.push(format!("{} {}", inc.method, inc.uri));
        let out = not_found()
            .auth(AuthOutcome::NotChecked)
            .reason("no such Twilio resource in the mock");
        return ("Unknown".to_owned(), out);
    };
    let action = match (&route, &inc.method) {
        (TwilioRoute::Account, &Method::GET) => "FetchAccount",
        (TwilioRoute::Messages, &Method::POST) => "CreateMessage",
        (TwilioRoute::Messages, &Method::GET) => "ListMessages",
        (TwilioRoute::Message(_), &Method::GET) => "FetchMessage",
        _ => "",
    };
    let out = match twilio_auth(inc) {
        Err(out) => out,
        Ok(()) if account != TWILIO_SID => not_found().reason(format!(
            "account {account:?} in the path is not {TWILIO_SID:?}"
        )),
        Ok(()) => match (route, action) {
            (TwilioRoute::Account, "FetchAccount") => twilio_account(),
            (TwilioRoute::Messages, "CreateMessage") => twilio_create(s, inc),
            (TwilioRoute::Messages, "ListMessages") => twilio_list(s, inc),
            (TwilioRoute::Message(sid), "FetchMessage") => twilio_fetch(s, &sid),
            _ => twilio_error(405, 20004, "Method not allowed")
                .reason(format!("{} is not served on {path}", inc.method)),
        },
    };
    (action.to_owned(), out)
}

fn twilio_auth(inc: &Incoming) -> Result<(), Outcome> {
    let refuse = |auth: AuthOutcome, reason: String| {
        let mut out = twilio_error(401, 20003, "Authenticate")
            .auth(auth)
            .reason(reason);
        out.basic_challenge = true;
        out
    };
    let decoded = inc
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some(decoded) = decoded else {
        return Err(refuse(
            AuthOutcome::Malformed,
            "no Basic Authorization header".to_owned(),
        ));
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return Err(refuse(
            AuthOutcome::Malformed,
            "Basic credentials without ':'".to_owned(),
        ));
    };
    if user != TWILIO_SID {
        return Err(refuse(
            AuthOutcome::UnknownKey,
            format!("username {user:?} is not {TWILIO_SID:?}"),
        ));
    }
    if password != TWILIO_TOKEN {
        return Err(refuse(
            AuthOutcome::WrongSignature,
            "wrong Auth Token".to_owned(),
        ));
    }
    Ok(())
}

fn twilio_account() -> Outcome {
    Outcome::json(
        200,
        "",
        json!({
            "sid": TWILIO_SID,
            "owner_account_sid": TWILIO_SID,
            "friendly_name": "pushbot mock account",
            "status": "active",
            "type": "Full",
            "auth_token": TWILIO_TOKEN,
            "date_created": "Mon, 03 Jun 2024 02:02:34 +0000",
            "date_updated": "Mon, 03 Jun 2024 02:02:34 +0000",
            "uri": format!("/2010-04-01/Accounts/{TWILIO_SID}.json"),
            "subresource_uris": {
                "messages": format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"),
            },
        }),
    )
}

/// Segments as Twilio counts them, roughly: GSM-7 (approximated by printable ASCII) 160 a
/// segment or 153 when concatenated, else UCS-2 70 / 67 (UTF-16 units).
fn sms_segments(body: &str) -> usize {
    let gsm = body
        .chars()
        .all(|c| c == '\n' || c == '\r' || (' '..='~').contains(&c));
    let (len, single, multi) = if gsm {
        (body.chars().count(), 160, 153)
    } else {
        (body.encode_utf16().count(), 70, 67)
    };
    if len <= single {
        1
    } else {
        len.div_ceil(multi)
    }
}

fn twilio_message_json(t: &SmsSent, status: &str) -> Value {
    let service = t
        .from
        .as_deref()
        .filter(|f| f.starts_with("MG"))
        .map(str::to_owned);
    let from = if service.is_some() {
        None
    } else {
        t.from.clone()
    };
    let body = t.body.clone().unwrap_or_default();
    let date = rfc2822(t.sent_at);
    let date_sent = if status == "delivered" {
        json!(date)
    } else {
        Value::Null
    };
    json!({
        "account_sid": TWILIO_SID,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": date,
        "date_sent": date_sent,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": sms_segments(&body).to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": t.id,
        "status": status,
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages/{}/Media.json", t.id),
        },
        "to": t.to,
        "uri": format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages/{}.json", t.id),
    })
}

fn twilio_create(s: &mut MockState, inc: &Incoming) -> Outcome {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&inc.body)
        .into_owned()
        .collect();
    let Some(to) = form.get("To").filter(|t| !t.is_empty()) else {
        return twilio_error(400, 21604, "A 'To' phone number is required.").reason("no To");
    };
    if !e164_ok(to) {
        return twilio_error(400, 21211, &format!("Invalid 'To' Phone Number: {to}"))
            .reason(format!("To {to:?} is not +CC… with 8–15 digits"));
    }
    let service = form.get("MessagingServiceSid").filter(|v| !v.is_empty());
    let from = form.get("From").filter(|v| !v.is_empty());
    let sender = match (service, from) {
        (Some(mg), _) if mg != TWILIO_MESSAGING_SERVICE_SID => {
            // UNVERIFIED: the code and text for an unknown Messaging Service.
            return twilio_error(
                400,
                21701,
                &format!("The Messaging Service Sid {mg} is invalid."),
            )
            .reason(format!(
                "MessagingServiceSid {mg:?} is not {TWILIO_MESSAGING_SERVICE_SID:?}"
            ));
        }
        (Some(mg), _) => mg.clone(),
        (None, Some(f)) if f != TWILIO_FROM => {
            return twilio_error(
                400,
                21606,
                &format!(
                    "The From phone number {f} is not a valid, SMS-capable inbound phone number or short code for your account."
                ),
            )
            .reason(format!("From {f:?} is not {TWILIO_FROM:?}"));
        }
        (None, Some(f)) => f.clone(),
        (None, None) => {
            return twilio_error(
                400,
                21603,
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
            )
            .reason("neither From nor MessagingServiceSid");
        }
    };
    let Some(body) = form.get("Body").filter(|b| !b.is_empty()) else {
        let code = if service.is_some() { 21619 } else { 21602 };
        return twilio_error(400, code, "Message body is required.").reason("no Body");
    };
    if body.chars().count() > 1600 {
        return twilio_error(
            400,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        )
        .reason(format!("Body of {} characters", body.chars().count()));
    }
    if let Some((code, message)) = s.refusal_for(to) {
        return twilio_error(400, code.parse().unwrap_or(0), &message)
            .reason("number refused (refuse_number)");
    }
    let hold = match s.take_script(SmsProvider::Twilio) {
        None => None,
        Some(
            ScriptedSms::Refuse { code, message } | ScriptedSms::RequestError { code, message },
        ) => {
            return twilio_error(400, code.parse().unwrap_or(0), &message)
                .reason("scripted refusal");
        }
        Some(ScriptedSms::TwilioError {
            status,
            code,
            message,
        }) => return twilio_error(status, code, &message).reason("scripted Twilio error"),
        Some(ScriptedSms::Http(status)) => {
            return Outcome::text(status, "upstream trouble").reason("scripted HTTP status");
        }
        Some(ScriptedSms::LostThenHold(d)) => {
            return Outcome::text(503, "Service Unavailable")
                .reason("scripted: lost, nothing sent")
                .hold(d);
        }
        Some(ScriptedSms::SentThenHold(d)) => Some(d),
    };
    let sid = format!("SM{:032x}", rand::random::<u128>());
    let sent = SmsSent {
        provider: SmsProvider::Twilio,
        to: to.clone(),
        id: sid,
        sign_name: None,
        template: None,
        params: BTreeMap::new(),
        text: body.clone(),
        body: Some(body.clone()),
        out_id: None,
        from: Some(sender),
        sent_at: s.now(),
        arrival: usize::MAX,
    };
    let status = if service.is_some() {
        "accepted"
    } else {
        "queued"
    };
    let out = Outcome::json(201, "", twilio_message_json(&sent, status));
    s.sent.push(sent);
    match hold {
        Some(d) => out.hold(d),
        None => out,
    }
}

/// `GET …/Messages.json`, filtered by `To` / `From` when given; newest first, one page.
fn twilio_list(s: &MockState, inc: &Incoming) -> Outcome {
    let query: HashMap<String, String> = url::form_urlencoded::parse(inc.query().as_bytes())
        .into_owned()
        .collect();
    let messages: Vec<Value> = s
        .sent
        .iter()
        .rev()
        .filter(|t| t.provider == SmsProvider::Twilio)
        .filter(|t| query.get("To").is_none_or(|to| *to == t.to))
        .filter(|t| query.get("From").is_none_or(|f| Some(f) == t.from.as_ref()))
        .map(|t| twilio_message_json(t, "delivered"))
        .collect();
    let uri = format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json");
    Outcome::json(
        200,
        "",
        json!({
            "messages": messages,
            "end": messages.len().saturating_sub(1),
            "first_page_uri": format!("{uri}?PageSize=50&Page=0"),
            "next_page_uri": null,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": null,
            "start": 0,
            "uri": format!("{uri}?PageSize=50&Page=0"),
        }),
    )
}

fn twilio_fetch(s: &MockState, sid: &str) -> Outcome {
    match s
        .sent
        .iter()
        .find(|t| t.provider == SmsProvider::Twilio && t.id == sid)
    {
        Some(t) => Outcome::json(200, "", twilio_message_json(t, "delivered")),
        None => twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}.json was not found"),
        )
        .reason(format!("no message {sid}")),
    }
}

// ------------------------------------------------------------------------------------------
// numbers and dates
// ------------------------------------------------------------------------------------------

/// `+` then 8–15 digits.
fn e164_ok(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fn mainland_bare(n: &str) -> bool {
    n.len() == 11 && n.starts_with('1') && n.bytes().all(|b| b.is_ascii_digit())
}

/// Aliyun also takes bare 11-digit mainland numbers.
fn aliyun_number_ok(n: &str) -> bool {
    e164_ok(n) || mainland_bare(n) || international_bare(n)
}

/// Aliyun's international form: the country code and the number, without `+`.
fn international_bare(n: &str) -> bool {
    (8..=15).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0')
}

/// E.164 form for comparisons: a bare mainland number gets `+86`.
fn normalize_number(n: &str) -> String {
    let n = n.trim();
    if mainland_bare(n) {
        format!("+86{n}")
    } else if international_bare(n) {
        format!("+{n}")
    } else {
        n.to_owned()
    }
}

/// (country code, subscriber number) of an E.164 number, for the few codes that matter.
fn split_country(e164: &str) -> (String, String) {
    let digits = e164.trim_start_matches('+');
    let cc = ["852", "853", "886", "86", "44", "81", "65", "1"]
        .into_iter()
        .find(|cc| digits.starts_with(cc))
        .unwrap_or(&digits[..digits.len().min(2)]);
    (cc.to_owned(), digits[cc.len()..].to_owned())
}

fn iso_code(e164: &str) -> &'static str {
    match split_country(e164).0.as_str() {
        "86" => "CN",
        "852" => "HK",
        "853" => "MO",
        "886" => "TW",
        "1" => "US",
        "44" => "GB",
        "81" => "JP",
        "65" => "SG",
        _ => "DEF",
    }
}

/// Tencent bills per 70 characters (67 a part when split), signature included.
fn text_fee(text: &str) -> usize {
    let n = text.chars().count();
    if n <= 70 { 1 } else { n.div_ceil(67) }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

struct Civil {
    y: i64,
    mo: u32,
    d: u32,
    h: i64,
    mi: i64,
    s: i64,
    weekday: usize,
}

fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    Civil {
        y,
        mo,
        d,
        h: secs / 3600,
        mi: secs % 3600 / 60,
        s: secs % 60,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as usize,
    }
}

/// `yyyy-MM-ddTHH:mm:ssZ` (UTC), Aliyun's x-acs-date.
fn iso8601(unix: i64) -> String {
    let c = civil(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.y, c.mo, c.d, c.h, c.mi, c.s
    )
}

/// Strictly `yyyy-MM-ddTHH:mm:ssZ`.
fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if !shape_ok {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// `YYYY-MM-DD` (UTC), Tencent's credential-scope date.
fn utc_date(unix: i64) -> String {
    let c = civil(unix);
    format!("{:04}-{:02}-{:02}", c.y, c.mo, c.d)
}

const BEIJING: i64 = 8 * 3600;

/// `yyyy-MM-dd HH:mm:ss` in Beijing time, Aliyun's record dates.
fn beijing_datetime(unix: i64) -> String {
    let c = civil(unix + BEIJING);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        c.y, c.mo, c.d, c.h, c.mi, c.s
    )
}

/// `yyyyMMdd` in Beijing time, QuerySendDetails' `SendDate`.
fn beijing_yyyymmdd(unix: i64) -> String {
    let c = civil(unix + BEIJING);
    format!("{:04}{:02}{:02}", c.y, c.mo, c.d)
}

/// RFC 2822 in GMT, Twilio's dates.
fn rfc2822(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(unix);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} +0000",
        DAYS[c.weekday],
        c.d,
        MONTHS[c.mo as usize - 1],
        c.y,
        c.h,
        c.mi,
        c.s
    )
}

// ------------------------------------------------------------------------------------------
// the mock's own tests: the verifiers against the published vectors, and each provider
// end to end with a test-side signer
// ------------------------------------------------------------------------------------------

mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// channels.md §1.6, the official V3 example (an ECS call; same algorithm).
    #[test]
    fn acs3_matches_the_published_vector() {
        let headers = pairs(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        let signed = acs3_sign(
            "YourAccessKeySecret",
            "POST",
            "/",
            "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai",
            &headers,
            EMPTY_SHA256,
        );
        assert_eq!(
            sha256_hex(signed.canonical_request.as_bytes()),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259",
            "canonical request:\n{}",
            signed.canonical_request
        );
        assert_eq!(
            signed.signature,
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn acs3_query_is_decoded_and_re_encoded_per_rfc3986() {
        // Order, `+` as space, `*` and non-ASCII: what the server recomputes.
        assert_eq!(
            acs3_canonical_query("b=x+y*&a=%E9%98%BF~&c"),
            "a=%E9%98%BF~&b=x%20y%2A&c="
        );
        assert_eq!(acs3_canonical_query(""), "");
    }

    const TC3_PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    fn tc3_vector(secret_key: &str) -> Signed {
        tc3_sign(
            secret_key,
            "POST",
            "/",
            "",
            &pairs(&[
                ("content-type", "application/json; charset=utf-8"),
                ("host", "cvm.tencentcloudapi.com"),
            ]),
            TC3_PAYLOAD.as_bytes(),
            "1551113065",
            "2019-02-25",
            "cvm",
        )
    }

    /// channels.md §2.3, the official CVM example, Vector A (and B, the masked keys).
    #[test]
    fn tc3_matches_the_published_vectors() {
        assert_eq!(
            sha256_hex(TC3_PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let a = tc3_vector("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE");
        assert_eq!(
            sha256_hex(a.canonical_request.as_bytes()),
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031",
            "canonical request:\n{}",
            a.canonical_request
        );
        assert_eq!(
            a.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            tc3_vector("Gu5t9xGARNpq86cd98joQYCN3*******").signature,
            "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
    }

    /// channels.md §2.3's SMS-shaped vector (self-computed there, a regression check
    /// here): `x-tc-action` signed, its value lower-cased.
    #[test]
    fn tc3_with_x_tc_action_signed() {
        let payload = r#"{"PhoneNumberSet":["+8613800000000"],"SmsSdkAppId":"1400006666","SignName":"腾讯云","TemplateId":"1110","TemplateParamSet":["4370"]}"#;
        let signed = tc3_sign(
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            "POST",
            "/",
            "",
            &pairs(&[
                ("content-type", "application/json; charset=utf-8"),
                ("host", "sms.tencentcloudapi.com"),
                ("x-tc-action", "SendSms"),
            ]),
            payload.as_bytes(),
            "1551113065",
            "2019-02-25",
            "sms",
        );
        assert_eq!(
            sha256_hex(payload.as_bytes()),
            "0a9983fba553479a82f97f0521d99ba81258f3f517395ea5e2398bf93575543e"
        );
        assert_eq!(
            signed.signature,
            "db2cefa59e3c22dcc8dc6cd529c8f092745bc3eb61ab2252e58e7284079db6ed"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(1_551_113_065), "2019-02-25T16:44:25Z");
        assert_eq!(parse_iso8601("2019-02-25T16:44:25Z"), Some(1_551_113_065));
        assert_eq!(parse_iso8601("2019-02-25 16:44:25"), None);
        assert_eq!(utc_date(1_551_113_065), "2019-02-25");
        // 16:44 UTC is past midnight in Beijing.
        assert_eq!(beijing_yyyymmdd(1_551_113_065), "20190226");
        assert_eq!(beijing_datetime(1_551_113_065), "2019-02-26 00:44:25");
        assert_eq!(rfc2822(1_551_113_065), "Mon, 25 Feb 2019 16:44:25 +0000");
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn numbers() {
        assert!(e164_ok("+8613800000000"));
        assert!(e164_ok("+15005550006"));
        assert!(!e164_ok("13800000000"));
        assert!(!e164_ok("+1234567"));
        assert!(!e164_ok("+86 13800000000"));
        assert!(aliyun_number_ok("13800000000"));
        assert!(
            aliyun_number_ok("85291234567"),
            "Aliyun's international form"
        );
        assert!(!aliyun_number_ok("1234567"));
        assert!(!aliyun_number_ok("013800000000"));
        assert_eq!(normalize_number("13800000000"), "+8613800000000");
        assert_eq!(normalize_number("85291234567"), "+85291234567");
        assert_eq!(
            split_country("+8613800000000"),
            ("86".to_owned(), "13800000000".to_owned())
        );
        assert_eq!(sms_segments("hi"), 1);
        assert_eq!(sms_segments(&"a".repeat(161)), 2);
        assert_eq!(sms_segments(&"短".repeat(71)), 2);
    }

    // ---- test-side signers: written from the specs, separately from the verifiers ----

    fn client() -> reqwest::Client {
        crate::helpers::http_client()
    }

    fn host_of(base: &str) -> String {
        base.trim_start_matches("http://").to_owned()
    }

    struct AliyunCreds<'a> {
        id: &'a str,
        secret: &'a str,
        /// Seconds added to the real clock for x-acs-date.
        skew: i64,
    }

    const ALIYUN_OK: AliyunCreds<'static> = AliyunCreds {
        id: ALIYUN_KEY_ID,
        secret: ALIYUN_KEY_SECRET,
        skew: 0,
    };

    /// Sends an Aliyun RPC call the way the V3 doc describes: parameters in the query,
    /// empty body, six signed headers.
    async fn aliyun_call(
        mock: &MockSms,
        creds: &AliyunCreds<'_>,
        action: &str,
        params: &[(&str, &str)],
    ) -> (u16, Value) {
        let base = mock.base_url(SmsProvider::Aliyun);
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let mut query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        query.sort();
        let query = query.join("&");
        let date = iso8601(unix_now() + creds.skew);
        let nonce = format!("{:032x}", rand::random::<u128>());
        let host = host_of(base);
        let canonical_headers = format!(
            "host:{host}\nx-acs-action:{action}\nx-acs-content-sha256:{EMPTY_SHA256}\nx-acs-date:{date}\nx-acs-signature-nonce:{nonce}\nx-acs-version:{ALIYUN_VERSION}\n"
        );
        let signed_headers =
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version";
        let canonical =
            format!("POST\n/\n{query}\n{canonical_headers}\n{signed_headers}\n{EMPTY_SHA256}");
        let to_sign = format!(
            "ACS3-HMAC-SHA256\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut mac = HmacSha256::new_from_slice(creds.secret.as_bytes()).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let resp = client()
            .post(format!("{base}/?{query}"))
            .header("x-acs-action", action)
            .header("x-acs-version", ALIYUN_VERSION)
            .header("x-acs-date", &date)
            .header("x-acs-signature-nonce", &nonce)
            .header("x-acs-content-sha256", EMPTY_SHA256)
            .header(
                "authorization",
                format!(
                    "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed_headers},Signature={signature}",
                    creds.id
                ),
            )
            .send()
            .await
            .expect("Aliyun mock reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("Aliyun mock answers JSON"))
    }

    fn aliyun_send_params<'a>(to: &'a str, template_param: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("PhoneNumbers", to),
            ("SignName", SIGN_NAME),
            ("TemplateCode", ALIYUN_TEMPLATE),
            ("TemplateParam", template_param),
            ("OutId", "msg-1"),
        ]
    }

    const PARAMS: &str = r#"{"title":"备份完成","content":"nightly backup ok * 100%","link":"https://push.example.com/m/1"}"#;

    #[tokio::test]
    async fn aliyun_sends_looks_up_and_refuses_bad_signatures() {
        let mock = MockSms::start().await;
        let (status, body) = aliyun_call(
            &mock,
            &ALIYUN_OK,
            "SendSms",
            &aliyun_send_params("13800000000", PARAMS),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["Code"], "OK", "{body}");
        assert_eq!(body["Message"], "OK");
        let biz_id = body["BizId"].as_str().expect("BizId").to_owned();
        assert!(body["RequestId"].is_string());
        let sent = mock.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].provider, SmsProvider::Aliyun);
        assert_eq!(sent[0].to, "13800000000");
        assert_eq!(sent[0].title(), Some("备份完成"));
        assert_eq!(sent[0].content(), Some("nightly backup ok * 100%"));
        assert_eq!(sent[0].link(), Some("https://push.example.com/m/1"));
        assert_eq!(sent[0].out_id.as_deref(), Some("msg-1"));
        assert_eq!(
            sent[0].text,
            "【推送测试】备份完成：nightly backup ok * 100% 详情：https://push.example.com/m/1"
        );

        // The delivery report finds it by number and day (and BizId).
        let today = beijing_yyyymmdd(unix_now());
        let (status, body) = aliyun_call(
            &mock,
            &ALIYUN_OK,
            "QuerySendDetails",
            &[
                ("PhoneNumber", "13800000000"),
                ("SendDate", &today),
                ("PageSize", "10"),
                ("CurrentPage", "1"),
                ("BizId", &biz_id),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["TotalCount"], "1", "{body}");
        let dto = &body["SmsSendDetailDTOs"]["SmsSendDetailDTO"][0];
        assert_eq!(dto["SendStatus"], 3);
        assert_eq!(dto["OutId"], "msg-1");
        assert_eq!(dto["TemplateCode"], ALIYUN_TEMPLATE);
        assert_eq!(dto["Content"], sent[0].text.as_str());

        let (_, body) = aliyun_call(
            &mock,
            &ALIYUN_OK,
            "QuerySmsTemplate",
            &[("TemplateCode", ALIYUN_CODE_TEMPLATE)],
        )
        .await;
        assert_eq!(body["TemplateStatus"], 1, "{body}");

        // A wrong secret: Aliyun's refusal, counted as a signing failure.
        let wrong = AliyunCreds {
            secret: "not-the-secret",
            ..ALIYUN_OK
        };
        let (status, body) = aliyun_call(
            &mock,
            &wrong,
            "SendSms",
            &aliyun_send_params("13800000000", PARAMS),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["Code"], "SignatureDoesNotMatch");
        assert!(
            body["Message"]
                .as_str()
                .unwrap()
                .starts_with("Specified signature is not matched with our calculation."),
            "{body}"
        );
        assert_eq!(mock.signature_failures(), 1);
        assert!(
            mock.calls()
                .last()
                .unwrap()
                .reason
                .as_ref()
                .unwrap()
                .contains("canonical request")
        );

        let unknown = AliyunCreds {
            id: "LTAI-someone-else",
            ..ALIYUN_OK
        };
        let (status, body) = aliyun_call(
            &mock,
            &unknown,
            "SendSms",
            &aliyun_send_params("13800000000", PARAMS),
        )
        .await;
        assert_eq!(
            (status, body["Code"].as_str()),
            (404, Some("InvalidAccessKeyId.NotFound"))
        );

        let late = AliyunCreds {
            skew: -16 * 60,
            ..ALIYUN_OK
        };
        let (status, body) = aliyun_call(
            &mock,
            &late,
            "SendSms",
            &aliyun_send_params("13800000000", PARAMS),
        )
        .await;
        assert_eq!(
            (status, body["Code"].as_str()),
            (400, Some("InvalidTimeStamp.Expired"))
        );
        // The mock's own clock can be the one that is off.
        mock.set_clock_offset(20 * 60);
        let (_, body) = aliyun_call(
            &mock,
            &ALIYUN_OK,
            "SendSms",
            &aliyun_send_params("13800000000", PARAMS),
        )
        .await;
        assert_eq!(body["Code"], "InvalidTimeStamp.Expired");
        mock.set_clock_offset(0);

        // Business refusals inside HTTP 200.
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &aliyun_send_params("13800000000", r#"{"title":"t","content":"c"}"#),
                "isv.TEMPLATE_MISSING_PARAMETERS",
            ),
            (
                &aliyun_send_params("13800000000", r#"{"title":"t","content":"c","link":1}"#),
                "isv.INVALID_JSON_PARAM",
            ),
            (
                &aliyun_send_params("138000", PARAMS),
                "isv.MOBILE_NUMBER_ILLEGAL",
            ),
            (
                &[
                    ("PhoneNumbers", "13800000000"),
                    ("SignName", "别人的签名"),
                    ("TemplateCode", ALIYUN_TEMPLATE),
                    ("TemplateParam", PARAMS),
                ],
                "isv.SMS_SIGNATURE_ILLEGAL",
            ),
            (
                &[
                    ("PhoneNumbers", "13800000000"),
                    ("SignName", SIGN_NAME),
                    ("TemplateCode", "SMS_999"),
                    ("TemplateParam", PARAMS),
                ],
                "isv.SMS_TEMPLATE_ILLEGAL",
            ),
        ];
        for (params, code) in cases {
            let (status, body) = aliyun_call(&mock, &ALIYUN_OK, "SendSms", params).await;
            assert_eq!((status, body["Code"].as_str()), (200, Some(code)), "{body}");
        }
        assert_eq!(mock.sent().len(), 1, "nothing else was sent");
        assert_eq!(mock.signature_failures(), 1);
    }

    #[tokio::test]
    async fn aliyun_refuses_a_reused_nonce_and_an_unsigned_host() {
        let mock = MockSms::start().await;
        let base = mock.base_url(SmsProvider::Aliyun).to_owned();
        // Signs everything but `host`: the mock wants host signed.
        let date = iso8601(unix_now());
        let headers = pairs(&[
            ("x-acs-action", "QuerySmsTemplate"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", &date),
            ("x-acs-signature-nonce", "nonce-1"),
            ("x-acs-version", ALIYUN_VERSION),
        ]);
        let query = format!("TemplateCode={ALIYUN_TEMPLATE}");
        let signed = acs3_sign(
            ALIYUN_KEY_SECRET,
            "POST",
            "/",
            &query,
            &headers,
            EMPTY_SHA256,
        );
        let send = |auth: String| {
            let mut req = client().post(format!("{base}/?{query}"));
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req.header("authorization", auth).send()
        };
        let resp = send(format!(
            "ACS3-HMAC-SHA256 Credential={ALIYUN_KEY_ID},SignedHeaders=x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={}",
            signed.signature
        ))
        .await
        .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["Code"], "IncompleteSignature");
        assert_eq!(mock.calls()[0].auth, AuthOutcome::Malformed);

        // Signed properly, twice with one nonce.
        let mut with_host = headers.clone();
        with_host.push(("host".to_owned(), host_of(&base)));
        let signed = acs3_sign(
            ALIYUN_KEY_SECRET,
            "POST",
            "/",
            &query,
            &with_host,
            EMPTY_SHA256,
        );
        let auth = format!(
            "ACS3-HMAC-SHA256 Credential={ALIYUN_KEY_ID},SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={}",
            signed.signature
        );
        let first: Value = send(auth.clone()).await.unwrap().json().await.unwrap();
        assert_eq!(first["Code"], "OK", "{first}");
        let second: Value = send(auth).await.unwrap().json().await.unwrap();
        assert_eq!(second["Code"], "SignatureNonceUsed", "{second}");
    }

    /// A `QuerySmsTemplate` call that signs `signed_host` and sends `sent_host` (reqwest's
    /// own `127.0.0.1:PORT` when `None`).
    async fn aliyun_query_with_host(
        mock: &MockSms,
        signed_host: &str,
        sent_host: Option<&str>,
    ) -> Value {
        let base = mock.base_url(SmsProvider::Aliyun);
        let nonce = format!("{:032x}", rand::random::<u128>());
        let date = iso8601(unix_now());
        let query = format!("TemplateCode={ALIYUN_TEMPLATE}");
        let headers = pairs(&[
            ("x-acs-action", "QuerySmsTemplate"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", &date),
            ("x-acs-signature-nonce", &nonce),
            ("x-acs-version", ALIYUN_VERSION),
        ]);
        let mut signed_headers = headers.clone();
        signed_headers.push(("host".to_owned(), signed_host.to_owned()));
        let signed = acs3_sign(
            ALIYUN_KEY_SECRET,
            "POST",
            "/",
            &query,
            &signed_headers,
            EMPTY_SHA256,
        );
        let mut req = client().post(format!("{base}/?{query}"));
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        if let Some(host) = sent_host {
            req = req.header("host", host);
        }
        req.header(
            "authorization",
            format!(
                "ACS3-HMAC-SHA256 Credential={ALIYUN_KEY_ID},SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={}",
                signed.signature
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    }

    /// The host that counts is the one received: signing the real endpoint's name while
    /// talking to the mock fails, unless that name is also sent as `Host`.
    #[tokio::test]
    async fn aliyun_verifies_the_host_received() {
        let mock = MockSms::start().await;
        let real = "dysmsapi.aliyuncs.com";
        let body = aliyun_query_with_host(&mock, real, None).await;
        assert_eq!(body["Code"], "SignatureDoesNotMatch", "{body}");
        let body = aliyun_query_with_host(&mock, real, Some(real)).await;
        assert_eq!(body["Code"], "OK", "{body}");
        let own = host_of(mock.base_url(SmsProvider::Aliyun));
        let body = aliyun_query_with_host(&mock, &own, None).await;
        assert_eq!(body["Code"], "OK", "{body}");
        assert_eq!(mock.signature_failures(), 1);
    }

    /// Sends a Tencent API 3.0 call signed as the TC3 doc describes (`content-type;host`).
    async fn tencent_call(mock: &MockSms, secret_key: &str, action: &str, body: &Value) -> Value {
        let base = mock.base_url(SmsProvider::Tencent);
        let payload = serde_json::to_vec(body).unwrap();
        let ts = unix_now();
        let date = utc_date(ts);
        let host = host_of(base);
        let content_type = "application/json; charset=utf-8";
        let canonical = format!(
            "POST\n/\n\ncontent-type:{content_type}\nhost:{host}\n\ncontent-type;host\n{}",
            hex::encode(Sha256::digest(&payload))
        );
        let to_sign = format!(
            "TC3-HMAC-SHA256\n{ts}\n{date}/sms/tc3_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = format!("TC3{secret_key}").into_bytes();
        for part in [date.as_str(), "sms", "tc3_request"] {
            let mut mac = HmacSha256::new_from_slice(&key).unwrap();
            mac.update(part.as_bytes());
            key = mac.finalize().into_bytes().to_vec();
        }
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let resp = client()
            .post(format!("{base}/"))
            .header("content-type", content_type)
            .header("x-tc-action", action)
            .header("x-tc-version", TENCENT_VERSION)
            .header("x-tc-region", "ap-guangzhou")
            .header("x-tc-timestamp", ts.to_string())
            .header(
                "authorization",
                format!(
                    "TC3-HMAC-SHA256 Credential={TENCENT_SECRET_ID}/{date}/sms/tc3_request, SignedHeaders=content-type;host, Signature={signature}"
                ),
            )
            .body(payload)
            .send()
            .await
            .expect("Tencent mock reachable");
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.expect("Tencent mock answers JSON")
    }

    fn tencent_send_body(numbers: &[&str], params: &[&str]) -> Value {
        json!({
            "PhoneNumberSet": numbers,
            "SmsSdkAppId": TENCENT_SDK_APP_ID,
            "SignName": SIGN_NAME,
            "TemplateId": TENCENT_TEMPLATE,
            "TemplateParamSet": params,
            "SessionContext": "msg-7",
        })
    }

    #[tokio::test]
    async fn tencent_sends_reports_and_refuses_bad_signatures() {
        let mock = MockSms::start().await;
        mock.refuse_number(
            "+8613900000000",
            "LimitExceeded.PhoneNumberDailyLimit",
            "the number of sms messages sent from a single mobile number every day exceeds the upper limit",
        );
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "SendSms",
            &tencent_send_body(
                &["+8613800000000", "+8613900000000"],
                &["备份完成", "ok", "https://push.example.com/m/7"],
            ),
        )
        .await;
        let set = body["Response"]["SendStatusSet"]
            .as_array()
            .expect("SendStatusSet");
        assert_eq!(set.len(), 2, "{body}");
        assert_eq!(set[0]["Code"], "Ok");
        assert_eq!(set[0]["Message"], "send success");
        assert_eq!(set[0]["PhoneNumber"], "+8613800000000");
        assert_eq!(set[0]["SessionContext"], "msg-7");
        assert_eq!(set[0]["IsoCode"], "CN");
        assert_eq!(set[0]["Fee"], 1);
        assert_eq!(set[1]["Code"], "LimitExceeded.PhoneNumberDailyLimit");
        assert_eq!(set[1]["Fee"], 0);
        assert!(body["Response"]["RequestId"].is_string());
        let sent = mock.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].params["1"], "备份完成");
        assert_eq!(sent[0].title(), Some("备份完成"));
        assert_eq!(sent[0].link(), Some("https://push.example.com/m/7"));
        assert_eq!(sent[0].out_id.as_deref(), Some("msg-7"));
        assert_eq!(set[0]["SerialNo"], sent[0].id.as_str());

        // The receipt can be pulled, once.
        let pull = json!({"Limit": 10, "SmsSdkAppId": TENCENT_SDK_APP_ID});
        let body = tencent_call(&mock, TENCENT_SECRET_KEY, "PullSmsSendStatus", &pull).await;
        let receipts = body["Response"]["PullSmsSendStatusSet"].as_array().unwrap();
        assert_eq!(receipts.len(), 1, "{body}");
        assert_eq!(receipts[0]["ReportStatus"], "SUCCESS");
        assert_eq!(receipts[0]["SessionContext"], "msg-7");
        assert_eq!(receipts[0]["SubscriberNumber"], "13800000000");
        let body = tencent_call(&mock, TENCENT_SECRET_KEY, "PullSmsSendStatus", &pull).await;
        assert_eq!(body["Response"]["PullSmsSendStatusSet"], json!([]));
        // By number, it stays findable.
        let by_number = json!({
            "BeginTime": unix_now() - 60, "Offset": 0, "Limit": 10,
            "PhoneNumber": "+8613800000000", "SmsSdkAppId": TENCENT_SDK_APP_ID,
        });
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "PullSmsSendStatusByPhoneNumber",
            &by_number,
        )
        .await;
        assert_eq!(
            body["Response"]["PullSmsSendStatusSet"][0]["SerialNo"],
            sent[0].id.as_str()
        );

        let templates = json!({"TemplateIdSet": [100001, 100002], "International": 0});
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "DescribeSmsTemplateList",
            &templates,
        )
        .await;
        let set = body["Response"]["DescribeTemplateStatusSet"]
            .as_array()
            .unwrap();
        assert_eq!(set.len(), 2, "{body}");
        assert!(set.iter().all(|t| t["StatusCode"] == 0));

        // A wrong key: the request-level error, in HTTP 200.
        let body = tencent_call(
            &mock,
            "not-the-key",
            "SendSms",
            &tencent_send_body(&["+8613800000000"], &["t", "c", "l"]),
        )
        .await;
        assert_eq!(
            body["Response"]["Error"]["Code"], "AuthFailure.SignatureFailure",
            "{body}"
        );
        assert_eq!(mock.signature_failures(), 1);

        // Content errors per number; a wrong app id for the request.
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "SendSms",
            &tencent_send_body(&["+8613800000000"], &["only-one"]),
        )
        .await;
        assert_eq!(
            body["Response"]["SendStatusSet"][0]["Code"],
            "FailedOperation.TemplateParamSetNotMatchApprovedTemplate"
        );
        let mut wrong_app = tencent_send_body(&["+8613800000000"], &["t", "c", "l"]);
        wrong_app["SmsSdkAppId"] = json!("1400000000");
        let body = tencent_call(&mock, TENCENT_SECRET_KEY, "SendSms", &wrong_app).await;
        assert_eq!(
            body["Response"]["Error"]["Code"],
            "UnauthorizedOperation.SmsSdkAppIdVerifyFail"
        );
        let mut unknown = tencent_send_body(&["+8613800000000"], &["t", "c", "l"]);
        unknown["TemplateId"] = json!("999");
        let body = tencent_call(&mock, TENCENT_SECRET_KEY, "SendSms", &unknown).await;
        assert_eq!(
            body["Response"]["SendStatusSet"][0]["Code"],
            "FailedOperation.TemplateIncorrectOrUnapproved"
        );
        // The mock's clock off by more than 5 minutes.
        mock.set_clock_offset(-400);
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "SendSms",
            &tencent_send_body(&["+8613800000000"], &["t", "c", "l"]),
        )
        .await;
        assert_eq!(
            body["Response"]["Error"]["Code"],
            "AuthFailure.SignatureExpire"
        );
        assert_eq!(mock.sent().len(), 1);
    }

    async fn twilio_send(
        mock: &MockSms,
        token: &str,
        form: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, Value), reqwest::Error> {
        let base = mock.base_url(SmsProvider::Twilio);
        let resp = client()
            .post(format!(
                "{base}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
            ))
            .basic_auth(TWILIO_SID, Some(token))
            .form(form)
            .timeout(timeout)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    #[tokio::test]
    async fn twilio_sends_and_refuses_a_wrong_token() {
        let mock = MockSms::start().await;
        let wait = Duration::from_secs(10);
        let (status, body) = twilio_send(
            &mock,
            TWILIO_TOKEN,
            &[
                ("To", "+8613800000000"),
                ("From", TWILIO_FROM),
                ("Body", "backup ok"),
            ],
            wait,
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "queued");
        assert_eq!(body["to"], "+8613800000000");
        assert_eq!(body["from"], TWILIO_FROM);
        assert_eq!(body["body"], "backup ok");
        assert_eq!(body["error_code"], Value::Null);
        assert_eq!(body["num_segments"], "1");
        let sid = body["sid"].as_str().unwrap().to_owned();
        assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
        assert_eq!(mock.sent()[0].body.as_deref(), Some("backup ok"));

        let (status, body) = twilio_send(
            &mock,
            "wrong",
            &[
                ("To", "+8613800000000"),
                ("From", TWILIO_FROM),
                ("Body", "x"),
            ],
            wait,
        )
        .await
        .unwrap();
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"code": 20003, "message": "Authenticate",
                   "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401})
        );
        assert_eq!(mock.signature_failures(), 1);

        let (status, body) = twilio_send(
            &mock,
            TWILIO_TOKEN,
            &[("To", "+8613800000000"), ("From", TWILIO_FROM)],
            wait,
        )
        .await
        .unwrap();
        assert_eq!((status, body["code"].as_i64()), (400, Some(21602)));
        let (status, body) = twilio_send(
            &mock,
            TWILIO_TOKEN,
            &[("To", "5551234567"), ("From", TWILIO_FROM), ("Body", "x")],
            wait,
        )
        .await
        .unwrap();
        assert_eq!((status, body["code"].as_i64()), (400, Some(21211)));

        let base = mock.base_url(SmsProvider::Twilio);
        let account: Value = client()
            .get(format!("{base}/2010-04-01/Accounts/{TWILIO_SID}.json"))
            .basic_auth(TWILIO_SID, Some(TWILIO_TOKEN))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (account["sid"].as_str(), account["status"].as_str()),
            (Some(TWILIO_SID), Some("active"))
        );
        let fetched: Value = client()
            .get(format!(
                "{base}/2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}.json"
            ))
            .basic_auth(TWILIO_SID, Some(TWILIO_TOKEN))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(fetched["status"], "delivered");
        assert_eq!(mock.sent().len(), 1);
    }

    #[tokio::test]
    async fn scripted_replies_timeouts_and_refusals() {
        let mock = MockSms::start().await;
        let form = [
            ("To", "+15005550010"),
            ("From", TWILIO_FROM),
            ("Body", "hello"),
        ];
        let short = Duration::from_millis(300);
        mock.push_replies(
            SmsProvider::Twilio,
            [
                ScriptedSms::SentThenHold(Duration::from_secs(3)),
                ScriptedSms::LostThenHold(Duration::from_secs(3)),
                ScriptedSms::twilio(429, 20429, "Too Many Requests"),
                ScriptedSms::Http(502),
            ],
        );
        // Sent, but the client times out: the text is recorded all the same.
        let err = twilio_send(&mock, TWILIO_TOKEN, &form, short)
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(mock.sent().len(), 1);
        assert_eq!(mock.calls()[0].held, Some(Duration::from_secs(3)));
        // Lost: a timeout and nothing sent.
        let err = twilio_send(&mock, TWILIO_TOKEN, &form, short)
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(mock.sent().len(), 1);
        let (status, body) = twilio_send(&mock, TWILIO_TOKEN, &form, short)
            .await
            .unwrap();
        assert_eq!((status, body["code"].as_i64()), (429, Some(20429)));
        let (status, _) = twilio_send(&mock, TWILIO_TOKEN, &form, short)
            .await
            .unwrap();
        assert_eq!(status, 502);
        // The script is used up.
        let (status, _) = twilio_send(&mock, TWILIO_TOKEN, &form, short)
            .await
            .unwrap();
        assert_eq!(status, 201);
        assert_eq!(mock.wait_for_sent(2, Duration::from_secs(5)).await.len(), 2);

        // Aliyun and Tencent business refusals.
        mock.fail_next(
            SmsProvider::Aliyun,
            ScriptedSms::refuse("isv.BUSINESS_LIMIT_CONTROL", "触发号码天级流控Permits:10"),
        );
        let (status, body) = aliyun_call(
            &mock,
            &ALIYUN_OK,
            "SendSms",
            &aliyun_send_params("+8613800000000", PARAMS),
        )
        .await;
        assert_eq!(
            (status, body["Code"].as_str()),
            (200, Some("isv.BUSINESS_LIMIT_CONTROL"))
        );
        mock.fail_next(
            SmsProvider::Tencent,
            ScriptedSms::request_error("InternalError.Timeout", "request timeout"),
        );
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "SendSms",
            &tencent_send_body(&["+8613800000000"], &["t", "c", "l"]),
        )
        .await;
        assert_eq!(body["Response"]["Error"]["Code"], "InternalError.Timeout");
        mock.fail_always(
            SmsProvider::Tencent,
            ScriptedSms::refuse("LimitExceeded.PhoneNumberThirtySecondLimit", "30s limit"),
        );
        for _ in 0..2 {
            let body = tencent_call(
                &mock,
                TENCENT_SECRET_KEY,
                "SendSms",
                &tencent_send_body(&["+8613800000000"], &["t", "c", "l"]),
            )
            .await;
            assert_eq!(
                body["Response"]["SendStatusSet"][0]["Code"],
                "LimitExceeded.PhoneNumberThirtySecondLimit"
            );
        }
        mock.heal();
        let body = tencent_call(
            &mock,
            TENCENT_SECRET_KEY,
            "SendSms",
            &tencent_send_body(&["+8613800000000"], &["t", "c", "l"]),
        )
        .await;
        assert_eq!(body["Response"]["SendStatusSet"][0]["Code"], "Ok");
        assert_eq!(mock.sent().len(), 3);
        assert_eq!(mock.signature_failures(), 0);
        assert!(mock.unexpected_requests().is_empty());
    }
}
