//! WeCom server API client: `gettoken` (cached, single-flight, failures remembered
//! briefly), `message/send` and `media/upload`.
//!
//! Every URL is built from `wecom.api_base`, so tests and egress proxies can redirect it.
//! URLs carry the corp secret or the access token in their query, so transport errors are
//! stripped of their URL before they are logged or stored.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::Stream;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::WeComSettings;
use crate::metrics::{Metrics, WeComApi, WeComErrcode};

/// Refresh this long before WeCom says the token expires, so no send races the expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);
/// A failed `gettoken` is the answer for everyone asking within this long: during an
/// outage WeCom sees one call per this period, not one per message (each of which would
/// also hold a delivery permit for up to `wecom.request_timeout`).
pub const TOKEN_FAILURE_COOLDOWN: Duration = Duration::from_secs(2);
/// An upload may take `wecom.request_timeout` plus its size at this rate (2 Mbit/s): a
/// 20 MB file gets 80 s more, where a text message's 10 s would cut it off on a slow link.
const UPLOAD_MIN_RATE: u64 = 256 * 1024;

/// What went wrong calling WeCom. `Display` is meant for the admin reading `last_error`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WeComError {
    #[error("WeCom API unreachable: {0}")]
    Transport(String),
    #[error("WeCom API answered HTTP {0}")]
    Http(u16),
    #[error("unexpected answer from the WeCom API: {0}")]
    Decode(String),
    #[error("{message}")]
    Api { errcode: i64, message: String },
    #[error(
        "WeCom did not deliver to {0}: the member is not in the app's visible range (可见范围) or does not exist (invaliduser)"
    )]
    InvalidUser(String),
}

impl WeComError {
    /// Whether retrying later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Decode(_) => true,
            Self::Http(status) => *status >= 500 || *status == 429 || *status == 408,
            Self::Api { errcode, .. } => is_transient_errcode(*errcode),
            Self::InvalidUser(_) => false,
        }
    }

    /// Whether WeCom itself could not be reached or did not work (refused, timed out,
    /// HTTP 5xx, busy): then every message would fail the same way, so the whole queue
    /// waits and only probes go out. Rate limits and token trouble are not that.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Decode(_) => true,
            Self::Http(status) => *status >= 500 || *status == 408,
            Self::Api { errcode, .. } => *errcode == -1,
            Self::InvalidUser(_) => false,
        }
    }

    fn api(errcode: i64, errmsg: &str, touser: Option<&str>) -> Self {
        Self::Api {
            errcode,
            message: explain(errcode, errmsg, touser),
        }
    }

    /// What the call answered, as the metrics' `errcode` label.
    pub fn errcode(&self) -> WeComErrcode {
        match self {
            Self::Transport(_) => WeComErrcode::Transport,
            Self::Http(status) => WeComErrcode::Http(*status),
            Self::Decode(_) => WeComErrcode::Decode,
            Self::Api { errcode, .. } => WeComErrcode::Code(*errcode),
            Self::InvalidUser(_) => WeComErrcode::InvalidUser,
        }
    }

    fn token_rejected(&self) -> bool {
        matches!(self, Self::Api { errcode, .. } if is_token_errcode(*errcode))
    }

    /// WeCom does not know the `media_id` an image or file message named (40007): it
    /// expired (they live 3 days) or was never issued. Upload the file again and resend,
    /// once; the error is permanent otherwise.
    pub fn is_invalid_media(&self) -> bool {
        matches!(self, Self::Api { errcode: 40007, .. })
    }
}

/// -1 system busy, 45009 rate limit, 45033 concurrency limit; token errors are transient
/// too (they are retried once at once, then like any transient error).
fn is_transient_errcode(errcode: i64) -> bool {
    matches!(errcode, -1 | 45009 | 45033 | 45011) || is_token_errcode(errcode)
}

/// 40014 invalid access_token, 42001 expired, 40082 invalid suite token (same meaning).
fn is_token_errcode(errcode: i64) -> bool {
    matches!(errcode, 40014 | 42001 | 40082)
}

/// Turns a WeCom errcode into a sentence telling the admin what to fix.
pub fn explain(errcode: i64, errmsg: &str, touser: Option<&str>) -> String {
    let who = touser.unwrap_or("the member");
    let hint = match errcode {
        60020 => {
            let ip = untrusted_ip(errmsg).unwrap_or("(see errmsg)");
            format!(
                "WeCom refused this server's IP: add the server's egress IP {ip} to the app's \
                 trusted IP list (企业可信IP) in the WeCom admin console"
            )
        }
        81013 => format!(
            "no valid recipient: {who} does not exist or is outside the app's visible range (可见范围)"
        ),
        48002 => "API forbidden: the app may not send messages (check the app's permissions \
                  and visible range in the WeCom admin console)"
            .to_owned(),
        40056 => "invalid agentid: wecom.agent_id does not match the app (AgentId in the WeCom \
                  admin console)"
            .to_owned(),
        301002 => format!("the app has no permission to message {who}"),
        40001 | 40013 | 40091 | 41004 | 42009 => {
            "WeCom rejected the credentials: check wecom.corp_id and wecom.secret".to_owned()
        }
        -1 => "WeCom is busy; will retry".to_owned(),
        45009 | 45033 | 45011 => "WeCom rate limit reached; will retry".to_owned(),
        40014 | 42001 | 40082 => "WeCom rejected the access token even after a refresh".to_owned(),
        40004 | 40005 => "WeCom refused the file's type: an image must be a JPG or PNG \
                          (send other files as a file)"
            .to_owned(),
        40006 => "WeCom refused the file's size: a file must be more than 5 bytes and at \
                  most 20 MB"
            .to_owned(),
        40009 => "WeCom refused the image's size: an image must be at most 10 MB (send a \
                  larger one as a file, up to 20 MB)"
            .to_owned(),
        44001 => "WeCom received an empty file (a file must be more than 5 bytes)".to_owned(),
        60011 => "no privilege: the department, tag or member is outside the app's visible \
                  range (可见范围); add it there (应用管理 → the app → 可见范围)"
            .to_owned(),
        60003 => "no such department: check the department id (通讯录 → the department)".to_owned(),
        60123 => "invalid department id".to_owned(),
        40068 => "invalid tag id: check the tag id (通讯录 → 标签)".to_owned(),
        40007 => "WeCom does not know this media_id: uploaded files live 3 days, after which \
                  they must be uploaded again"
            .to_owned(),
        _ => "WeCom API error".to_owned(),
    };
    format!("{hint} (errcode {errcode}: {})", errmsg.trim())
}

/// The IP WeCom saw, from a 60020 errmsg ("not allow to access from your ip, hint: […],
/// from ip: 203.0.113.7, more info at …"); also found in text that quotes such an errmsg.
pub fn untrusted_ip(errmsg: &str) -> Option<&str> {
    errmsg
        .split("from ip:")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).find(|p| !p.is_empty()))
}

#[derive(Debug, Deserialize)]
struct ApiReply {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    invaliduser: Option<String>,
    #[serde(default)]
    unlicenseduser: Option<String>,
    /// `media/upload`: the uploaded file's id, valid 3 days.
    #[serde(default)]
    media_id: Option<String>,
}

/// One app message's content, as `message/send` takes it (`msgtype` and its object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "msgtype", rename_all = "lowercase")]
pub enum AppMessage {
    /// Up to 2048 bytes, shown as it is (WeCom cuts longer content without an error).
    Text { text: Content },
    /// Up to 2048 bytes; only the WeCom client renders it (WeChat shows "无法接收此类消息").
    Markdown { markdown: Content },
    /// A card: title ≤ 128 bytes, description ≤ 512 bytes, a link and a button; shown
    /// everywhere, WeChat included.
    Textcard { textcard: TextCard },
    /// A picture: the `media_id` of a JPG or PNG uploaded as [`MediaKind::Image`] within
    /// the last 3 days.
    Image { image: MediaRef },
    /// A file, shown with the filename it was uploaded with: the `media_id` of an upload
    /// as [`MediaKind::File`] within the last 3 days.
    File { file: MediaRef },
}

/// A file uploaded with [`WeComClient::upload_media`], as a message names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaRef {
    pub media_id: String,
}

/// What `media/upload` is to make of a file (its `type`). WeCom's limits: every file more
/// than 5 bytes; an image JPG or PNG and at most 10 MB; a file at most 20 MB. The client
/// does not check them: the caller decides the kind from the sniffed content and size
/// ([`crate::media::kind_for_wecom`]).
pub use crate::media::MediaKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Content {
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextCard {
    pub title: String,
    pub description: String,
    pub url: String,
    /// At most 4 characters.
    pub btntxt: String,
}

/// The app as `agent/get` describes it: what `pushbot doctor` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AgentInfo {
    #[serde(default)]
    pub agentid: i64,
    #[serde(default)]
    pub name: String,
    /// Members in the visible range (可见范围), listed one by one.
    #[serde(default)]
    pub allow_userinfos: VisibleUsers,
    /// Departments in the visible range (all their members can receive).
    #[serde(default)]
    pub allow_partys: VisibleParties,
    /// Tags in the visible range.
    #[serde(default)]
    pub allow_tags: VisibleTags,
    /// 1: the app is disabled (已停用).
    #[serde(default)]
    pub close: i64,
}

impl AgentInfo {
    pub fn is_closed(&self) -> bool {
        self.close == 1
    }

    /// Members, departments and tags in the visible range.
    pub fn visible_counts(&self) -> (usize, usize, usize) {
        (
            self.allow_userinfos.user.len(),
            self.allow_partys.partyid.len(),
            self.allow_tags.tagid.len(),
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VisibleUsers {
    #[serde(default)]
    pub user: Vec<VisibleUser>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VisibleUser {
    #[serde(default)]
    pub userid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VisibleParties {
    #[serde(default)]
    pub partyid: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VisibleTags {
    #[serde(default)]
    pub tagid: Vec<i64>,
}

#[derive(Deserialize)]
struct AgentReply {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(flatten)]
    agent: AgentInfo,
}

/// `user/simplelist`'s and `tag/get`'s answer: `userlist` (each with a `userid`) and, for
/// a tag, `partylist` (department ids).
#[derive(Debug, Deserialize)]
struct MembersReply {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    userlist: Vec<ListedUser>,
    #[serde(default)]
    partylist: Vec<u64>,
}

#[derive(Debug, Deserialize)]
struct ListedUser {
    #[serde(default)]
    userid: String,
}

impl MembersReply {
    fn into_members(self) -> Result<(Vec<String>, Vec<u64>), WeComError> {
        if self.errcode != 0 {
            return Err(WeComError::api(self.errcode, &self.errmsg, None));
        }
        let users = self
            .userlist
            .into_iter()
            .map(|u| u.userid.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        Ok((users, self.partylist))
    }
}

/// The most members one `message/send` may name in `touser`.
pub const MAX_TOUSERS: usize = 1000;

/// Each of `tousers`' outcome of one `message/send` that named them all (see
/// [`WeComClient::send_many`]).
fn split_answer(
    tousers: &[&str],
    answer: Result<ApiReply, WeComError>,
) -> Vec<Result<(), WeComError>> {
    let reply = match answer {
        Ok(reply) => reply,
        Err(err) => return tousers.iter().map(|_| Err(err.clone())).collect(),
    };
    if reply.errcode != 0 {
        return tousers
            .iter()
            .map(|u| Err(WeComError::api(reply.errcode, &reply.errmsg, Some(u))))
            .collect();
    }
    // errcode 0 can still mean "not delivered to these members" (ids lower-cased).
    let named = |u: &str| {
        [&reply.invaliduser, &reply.unlicenseduser]
            .into_iter()
            .flatten()
            .any(|list| list.split('|').any(|n| n.trim().eq_ignore_ascii_case(u)))
    };
    tousers
        .iter()
        .map(|u| {
            if named(u) {
                Err(WeComError::InvalidUser((*u).to_owned()))
            } else {
                Ok(())
            }
        })
        .collect()
}

#[derive(Serialize)]
struct SendRequest<'a> {
    touser: &'a str,
    agentid: i64,
    #[serde(flatten)]
    message: &'a AppMessage,
}

/// The name a recipient sees for an upload: `name` without what would break the multipart
/// header (quotes, backslashes, control characters) or read as a path; "file" if nothing
/// is left.
fn upload_filename(name: &str) -> String {
    let name = name.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    if name.is_empty() {
        return "file".to_owned();
    }
    name.chars()
        .map(|c| match c {
            '"' | '\\' | '/' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The URL of WeCom's API `path` under `api_base`.
fn api_url(api_base: &Url, path: &str) -> String {
    format!("{}/cgi-bin/{path}", api_base.as_str().trim_end_matches('/'))
}

struct CachedToken {
    value: String,
    refresh_at: Instant,
}

/// WeCom API client for one app (corp id + secret + agent id).
pub struct WeComClient {
    http: reqwest::Client,
    api_base: Url,
    /// `message/send`'s URL, built once: every send used to format and parse it (issue 31).
    /// `None` only if it does not parse, when each send builds it and reports why.
    send_url: Option<Url>,
    corp_id: String,
    secret: SecretString,
    agent_id: i64,
    /// `wecom.request_timeout`, which an upload gets plus time for its size.
    request_timeout: Duration,
    token: RwLock<Option<CachedToken>>,
    /// Held while fetching a token, so concurrent senders share one `gettoken`; holds the
    /// last failure and when it happened, so that the senders who waited for that call
    /// (and those asking shortly after) get its result instead of calling again.
    refresh: tokio::sync::Mutex<Option<(Instant, WeComError)>>,
    /// Failed calls are counted here (the service's client; not `pushbot doctor`'s).
    metrics: Option<Metrics>,
}

impl WeComClient {
    pub fn new(http: reqwest::Client, settings: &WeComSettings) -> Self {
        let api_base = settings.api_base.url().clone();
        Self {
            http,
            send_url: Url::parse(&api_url(&api_base, "message/send")).ok(),
            api_base,
            corp_id: settings.corp_id.as_str().to_owned(),
            secret: SecretString::from(settings.secret.expose()),
            agent_id: settings.agent_id.get(),
            request_timeout: settings.request_timeout,
            token: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            metrics: None,
        }
    }

    /// Counts failed `gettoken`, `message/send` and `media/upload` calls by errcode.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, api: WeComApi, err: &WeComError) {
        if let Some(metrics) = &self.metrics {
            metrics.wecom_error(api, err.errcode());
        }
    }

    fn url(&self, path: &str) -> String {
        api_url(&self.api_base, path)
    }

    fn cached_token(&self) -> Option<String> {
        let guard = self.token.read().ok()?;
        let cached = guard.as_ref()?;
        (Instant::now() < cached.refresh_at).then(|| cached.value.clone())
    }

    fn invalidate(&self, token: &str) {
        if let Ok(mut guard) = self.token.write()
            && guard.as_ref().is_some_and(|c| c.value == token)
        {
            *guard = None;
        }
    }

    /// How long from now a send would be answered with the last failed `gettoken`'s error
    /// without calling WeCom (see [`TOKEN_FAILURE_COOLDOWN`]); `None` when a send would
    /// call WeCom (a token is cached, no failure is that recent, or a call is under way).
    pub fn token_cooldown(&self) -> Option<Duration> {
        if self.cached_token().is_some() {
            return None;
        }
        let last_failure = self.refresh.try_lock().ok()?;
        let (at, _) = last_failure.as_ref()?;
        TOKEN_FAILURE_COOLDOWN
            .checked_sub(at.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// A valid access token, from cache or from one shared `gettoken` call. A failed
    /// call is everyone's answer for [`TOKEN_FAILURE_COOLDOWN`].
    pub async fn access_token(&self) -> Result<String, WeComError> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let mut last_failure = self.refresh.lock().await;
        // Whoever held the lock before us has just fetched a token, or failed to: either
        // way, its result is ours too.
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        if let Some((at, err)) = last_failure.as_ref()
            && at.elapsed() < TOKEN_FAILURE_COOLDOWN
        {
            return Err(err.clone());
        }
        match self.fetch_token().await {
            Ok(token) => {
                *last_failure = None;
                Ok(token)
            }
            Err(err) => {
                tracing::debug!(error = %err, "gettoken failed");
                self.count(WeComApi::GetToken, &err);
                *last_failure = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    /// One `gettoken` call; caches the token it returns.
    async fn fetch_token(&self) -> Result<String, WeComError> {
        let reply: ApiReply = self
            .call(self.http.get(self.url("gettoken")).query(&[
                ("corpid", self.corp_id.as_str()),
                ("corpsecret", self.secret.expose_secret()),
            ]))
            .await?;
        if reply.errcode != 0 {
            return Err(WeComError::api(reply.errcode, &reply.errmsg, None));
        }
        let value = reply
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| WeComError::Decode("gettoken answer has no access_token".into()))?;
        let lifetime = Duration::from_secs(reply.expires_in.unwrap_or(7200));
        let refresh_at = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN).max(lifetime / 2);
        if let Ok(mut guard) = self.token.write() {
            *guard = Some(CachedToken {
                value: value.clone(),
                refresh_at,
            });
        }
        tracing::debug!(
            expires_in = lifetime.as_secs(),
            "fetched WeCom access token"
        );
        Ok(value)
    }

    /// Runs `call` with an access token; on an invalid/expired token it refreshes the
    /// token once and runs it again.
    async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, WeComError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, WeComError>>,
    {
        let token = self.access_token().await?;
        match call(token.clone()).await {
            Err(err) if err.token_rejected() => {
                tracing::info!("WeCom rejected the cached access token; refreshing");
                self.invalidate(&token);
                call(self.access_token().await?).await
            }
            other => other,
        }
    }

    /// Sends an app message to one member: [`Self::send_many`] for one.
    pub async fn send(&self, touser: &str, message: &AppMessage) -> Result<(), WeComError> {
        self.send_many(&[touser], message)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(WeComError::Decode("no answer for the member".into())))
    }

    /// Sends one app message to several members: one `message/send` per
    /// [`MAX_TOUSERS`] of them (`touser=a|b|c`). The answer is each member's own outcome,
    /// in `tousers`' order: a call that failed (transport, HTTP, a non-zero errcode,
    /// classified as for one member) fails for everyone in it; `errcode` 0 delivers to
    /// all but those it names in `invaliduser` or `unlicenseduser` (compared ignoring
    /// case: WeCom lower-cases them), who get [`WeComError::InvalidUser`].
    pub async fn send_many(
        &self,
        tousers: &[&str],
        message: &AppMessage,
    ) -> Vec<Result<(), WeComError>> {
        let mut outcomes = Vec::with_capacity(tousers.len());
        for chunk in tousers.chunks(MAX_TOUSERS) {
            let touser = chunk.join("|");
            let answer = self
                .with_token(|token| {
                    let touser = touser.as_str();
                    async move {
                        self.post_message(&token, touser, message)
                            .await
                            .inspect_err(|err| self.count(WeComApi::MessageSend, err))
                    }
                })
                .await;
            // Answered with a non-zero errcode: one failed call. With errcode 0: each
            // member it names as not reached counts as one (`invaliduser`).
            let answered = answer.as_ref().ok().map(|reply| reply.errcode);
            let split = split_answer(chunk, answer);
            match answered {
                Some(0) => {
                    for err in split.iter().filter_map(|r| r.as_ref().err()) {
                        self.count(WeComApi::MessageSend, err);
                    }
                }
                Some(_) => {
                    if let Some(Err(err)) = split.first() {
                        self.count(WeComApi::MessageSend, err);
                    }
                }
                None => {}
            }
            if let Some(metrics) = &self.metrics {
                let reached = split.iter().filter(|r| r.is_ok()).count();
                metrics.wecom_recipient_sends(reached as u64);
            }
            outcomes.extend(split);
        }
        outcomes
    }

    /// `agent/get` for this app: its name, visible range and whether it is enabled. Fails
    /// like a send would for an untrusted IP (60020) or a Secret of another app.
    pub async fn agent_info(&self) -> Result<AgentInfo, WeComError> {
        self.with_token(|token| async move {
            let agentid = self.agent_id.to_string();
            let reply: AgentReply = self
                .call(self.http.get(self.url("agent/get")).query(&[
                    ("access_token", token.as_str()),
                    ("agentid", agentid.as_str()),
                ]))
                .await?;
            if reply.errcode != 0 {
                return Err(WeComError::api(reply.errcode, &reply.errmsg, None));
            }
            Ok(reply.agent)
        })
        .await
    }

    /// `user/simplelist` (with `fetch_child=1`): the userids of department `department`'s
    /// members. WeCom answers 60011 when the department is outside the app's visible range
    /// (可见范围), 60003 when there is no such department.
    pub async fn department_members(&self, department: u64) -> Result<Vec<String>, WeComError> {
        self.with_token(|token| async move {
            let department = department.to_string();
            let reply: MembersReply = self
                .call(self.http.get(self.url("user/simplelist")).query(&[
                    ("access_token", token.as_str()),
                    ("department_id", department.as_str()),
                    ("fetch_child", "1"),
                ]))
                .await?;
            reply.into_members().map(|(users, _)| users)
        })
        .await
    }

    /// `tag/get`: the userids tagged `tag`, and the departments tagged as a whole (whose
    /// members [`Self::department_members`] reads). `userlist` holds only members inside
    /// the app's visible range.
    pub async fn tag_members(&self, tag: u64) -> Result<(Vec<String>, Vec<u64>), WeComError> {
        self.with_token(|token| async move {
            let tag = tag.to_string();
            let reply: MembersReply = self
                .call(
                    self.http
                        .get(self.url("tag/get"))
                        .query(&[("access_token", token.as_str()), ("tagid", tag.as_str())]),
                )
                .await?;
            reply.into_members()
        })
        .await
    }

    /// Uploads a file with `media/upload` and returns its `media_id` (valid 3 days), for an
    /// [`AppMessage::Image`] or [`AppMessage::File`]. `filename` is what the recipient sees;
    /// `content_type` the part's Content-Type (the sniffed type, not the sender's word;
    /// `application/octet-stream` if it cannot be a header value);
    /// `length` the exact number of bytes `body` yields.
    ///
    /// `body` makes the content as a stream, so a 20 MB file is never held in memory here;
    /// it is called again when WeCom rejects the cached access token and the upload is
    /// retried with a fresh one, so each call must start the content from its beginning.
    /// An error from the stream ends the upload as a transport error (transient).
    pub async fn upload_media<F, S, E>(
        &self,
        kind: MediaKind,
        filename: &str,
        content_type: &str,
        length: u64,
        body: F,
    ) -> Result<String, WeComError>
    where
        F: Fn() -> S,
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let filename = upload_filename(filename);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_str(content_type).unwrap_or(
                reqwest::header::HeaderValue::from_static("application/octet-stream"),
            ),
        );
        self.with_token(|token| {
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(body()),
                length,
            )
            .file_name(filename.clone())
            .headers(headers.clone());
            async move {
                self.post_media(&token, kind, length, part)
                    .await
                    .inspect_err(|err| self.count(WeComApi::MediaUpload, err))
            }
        })
        .await
    }

    /// [`Self::upload_media`] for content already in memory.
    pub async fn upload_media_bytes(
        &self,
        kind: MediaKind,
        filename: &str,
        content_type: &str,
        content: Bytes,
    ) -> Result<String, WeComError> {
        let length = content.len() as u64;
        self.upload_media(kind, filename, content_type, length, || {
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(content.clone())])
        })
        .await
    }

    async fn post_media(
        &self,
        token: &str,
        kind: MediaKind,
        length: u64,
        part: reqwest::multipart::Part,
    ) -> Result<String, WeComError> {
        let form = reqwest::multipart::Form::new()
            // The filename as UTF-8, as browsers send it (WeCom shows it to the recipient).
            .percent_encode_noop()
            .part("media", part);
        let timeout = self.request_timeout + Duration::from_secs(length / UPLOAD_MIN_RATE);
        let reply: ApiReply = self
            .call(
                self.http
                    .post(self.url("media/upload"))
                    .query(&[("access_token", token), ("type", kind.as_str())])
                    .timeout(timeout)
                    .multipart(form),
            )
            .await?;
        if reply.errcode != 0 {
            return Err(WeComError::api(reply.errcode, &reply.errmsg, None));
        }
        reply
            .media_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| WeComError::Decode("media/upload answer has no media_id".into()))
    }

    /// A text message (the bot's replies, tests).
    pub async fn send_text(&self, touser: &str, content: &str) -> Result<(), WeComError> {
        let message = AppMessage::Text {
            text: Content {
                content: content.to_owned(),
            },
        };
        self.send(touser, &message).await
    }

    /// One `message/send` call to `touser` (one member, or several joined by `|`). Its
    /// answer, whatever the errcode — except a rejected access token, which is an error
    /// so that [`Self::with_token`] refreshes it and calls again.
    async fn post_message(
        &self,
        token: &str,
        touser: &str,
        message: &AppMessage,
    ) -> Result<ApiReply, WeComError> {
        if let Some(metrics) = &self.metrics {
            metrics.wecom_send_call();
        }
        let body = SendRequest {
            touser,
            agentid: self.agent_id,
            message,
        };
        let reply: ApiReply = self
            .call(
                match &self.send_url {
                    Some(url) => self.http.post(url.clone()),
                    None => self.http.post(self.url("message/send")),
                }
                .query(&[("access_token", token)])
                .json(&body),
            )
            .await?;
        if is_token_errcode(reply.errcode) {
            return Err(WeComError::api(reply.errcode, &reply.errmsg, None));
        }
        Ok(reply)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, WeComError> {
        // `without_url`: the query holds the secret or the access token.
        let response = request
            .send()
            .await
            .map_err(|e| WeComError::Transport(describe(e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WeComError::Http(status.as_u16()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| WeComError::Transport(describe(e.without_url())))?;
        serde_json::from_slice(&bytes).map_err(|e| WeComError::Decode(e.to_string()))
    }
}

/// reqwest's Display is terse ("error sending request"); include the cause chain.
pub fn describe(err: reqwest::Error) -> String {
    use std::error::Error as _;
    let text = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        err.to_string()
    };
    crate::error::with_causes(text, err.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_parse_users_and_tagged_departments() {
        let dept: MembersReply = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","userlist":[{"userid":"zhangsan","name":"张三",
            "department":[1,2],"open_userid":"x"},{"userid":" LiSi ","name":"李四"},
            {"name":"no id"}]}"#,
        )
        .unwrap();
        assert_eq!(
            dept.into_members().unwrap(),
            (vec!["zhangsan".to_owned(), "LiSi".to_owned()], vec![])
        );
        let tag: MembersReply = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","tagname":"oncall","userlist":[{"userid":"a","name":"A"}],
            "partylist":[2,3]}"#,
        )
        .unwrap();
        assert_eq!(
            tag.into_members().unwrap(),
            (vec!["a".to_owned()], vec![2, 3])
        );
        let empty: MembersReply = serde_json::from_str(r#"{"errcode":0,"errmsg":"ok"}"#).unwrap();
        assert_eq!(empty.into_members().unwrap(), (vec![], vec![]));
    }

    #[test]
    fn a_refused_member_list_says_which_permission_to_grant() {
        let refused: MembersReply = serde_json::from_str(
            r#"{"errcode":60011,"errmsg":"no privilege to access/modify contact/party/agent"}"#,
        )
        .unwrap();
        let err = refused.into_members().unwrap_err();
        assert!(matches!(err, WeComError::Api { errcode: 60011, .. }));
        assert!(err.to_string().contains("可见范围"), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn classification() {
        for code in [-1, 45009, 45033, 42001, 40014] {
            assert!(WeComError::api(code, "x", None).is_transient(), "{code}");
        }
        for code in [60020, 81013, 48002, 40056, 301002, 40001, 12345] {
            assert!(!WeComError::api(code, "x", None).is_transient(), "{code}");
        }
        assert!(WeComError::Http(502).is_transient());
        assert!(WeComError::Http(429).is_transient());
        assert!(!WeComError::Http(404).is_transient());
        assert!(WeComError::Transport("x".into()).is_transient());
        assert!(!WeComError::InvalidUser("a".into()).is_transient());
    }

    #[test]
    fn rate_limits_timeouts_and_garbled_answers_are_transient() {
        // 45011: API call frequency limit.
        assert!(WeComError::api(45011, "api freq out of limit", None).is_transient());
        assert!(WeComError::Http(408).is_transient());
        assert!(WeComError::Decode("expected value at line 1 column 1".into()).is_transient());
        // The boundaries of "5xx": 499 is a client error, 500 and 599 are not.
        assert!(!WeComError::Http(499).is_transient());
        assert!(WeComError::Http(500).is_transient());
        assert!(!WeComError::Http(400).is_transient());
    }

    #[test]
    fn untrusted_ip_names_the_ip_and_the_fix() {
        let text = explain(
            60020,
            "not allow to access from your ip, hint: [1699999999_1_abc], from ip: 203.0.113.7, more info at https://open.work.weixin.qq.com/devtool/query?e=60020",
            None,
        );
        // In the sentence itself, not only in the errmsg quoted after it.
        assert!(text.contains("egress IP 203.0.113.7 "), "{text}");
        assert!(text.contains("trusted IP"), "{text}");
        assert!(text.contains("60020"), "{text}");
    }

    #[test]
    fn every_known_errcode_says_what_to_do() {
        let cases: &[(i64, &str)] = &[
            (48002, "API forbidden"),
            (40056, "wecom.agent_id"),
            (301002, "no permission to message alice"),
            (40001, "wecom.secret"),
            (40013, "wecom.corp_id"),
            (-1, "busy"),
            (45009, "rate limit"),
            (45033, "rate limit"),
            (45011, "rate limit"),
            (42001, "access token"),
            (40014, "access token"),
            (40004, "JPG or PNG"),
            (40005, "JPG or PNG"),
            (40006, "more than 5 bytes and at most 20 MB"),
            (40009, "at most 10 MB"),
            (44001, "empty file"),
            (40007, "uploaded again"),
        ];
        for (errcode, hint) in cases {
            let text = explain(*errcode, "errmsg", Some("alice"));
            assert!(text.contains(hint), "{errcode}: {text}");
            assert!(
                text.ends_with(&format!("(errcode {errcode}: errmsg)")),
                "{text}"
            );
        }
        assert!(explain(99999, "odd", None).starts_with("WeCom API error"));
    }

    #[tokio::test]
    async fn transport_errors_name_the_cause_once_and_never_the_url() {
        let client =
            crate::app::http_client(Duration::from_millis(300), crate::app::Egress::Direct)
                .unwrap();
        // A port that was free a moment ago: connection refused.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = client
            .get(format!(
                "http://127.0.0.1:{port}/cgi-bin/gettoken?corpsecret=S3CR3T"
            ))
            .send()
            .await
            .unwrap_err();
        let text = describe(err.without_url());
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(
            !text.contains("S3CR3T") && !text.contains("gettoken"),
            "{text}"
        );
        let parts: Vec<&str> = text.split(": ").collect();
        let mut unique = parts.clone();
        unique.dedup();
        assert_eq!(parts, unique, "each cause once: {text}");

        // A server that never answers: the request timeout, said plainly.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let err = client
            .get(format!(
                "http://{addr}/cgi-bin/message/send?access_token=T0K3N"
            ))
            .send()
            .await
            .unwrap_err();
        let text = describe(err.without_url());
        assert!(text.starts_with("timed out"), "{text}");
        assert!(!text.contains("T0K3N"), "{text}");
        drop(silent);
    }

    #[test]
    fn agent_get_answers_are_read_as_documented() {
        // The example answer in WeCom's 获取指定的应用详情 documentation.
        let reply: AgentReply = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","agentid":1000005,"name":"HR助手",
                "square_logo_url":"https://p.qlogo.cn/bizmail/FicwmI50icF8GH9ib7rUAYR5kicLTgP265naVFQKnleqSlRhiaBx7QA9u7Q/0",
                "description":"HR服务与员工自助平台",
                "allow_userinfos":{"user":[{"userid":"zhangshan"},{"userid":"lisi"}]},
                "allow_partys":{"partyid":[1]},"allow_tags":{"tagid":[1,2,3]},"close":0,
                "redirect_domain":"open.work.weixin.qq.com","report_location_flag":0,
                "isreportenter":0,"home_url":"https://open.work.weixin.qq.com",
                "customized_publish_status":1}"#,
        )
        .unwrap();
        assert_eq!(reply.errcode, 0);
        assert_eq!(reply.agent.name, "HR助手");
        assert_eq!(reply.agent.visible_counts(), (2, 1, 3));
        assert!(!reply.agent.is_closed());
        // An error answer has none of the app's fields.
        let reply: AgentReply =
            serde_json::from_str(r#"{"errcode":60020,"errmsg":"not allow"}"#).unwrap();
        assert_eq!((reply.errcode, reply.agent), (60020, AgentInfo::default()));
    }

    #[test]
    fn media_errors_are_permanent_and_only_40007_asks_for_a_new_upload() {
        for code in [40004, 40005, 40006, 40007, 40009, 44001] {
            let err = WeComError::api(code, "x", None);
            assert!(!err.is_transient(), "{code}");
            assert!(!err.is_unreachable(), "{code}");
            assert_eq!(err.is_invalid_media(), code == 40007, "{code}");
        }
        assert!(!WeComError::InvalidUser("a".into()).is_invalid_media());
    }

    #[test]
    fn image_and_file_messages_have_wecoms_shape() {
        for (message, msgtype) in [
            (
                AppMessage::Image {
                    image: MediaRef {
                        media_id: "MEDIA_1".into(),
                    },
                },
                "image",
            ),
            (
                AppMessage::File {
                    file: MediaRef {
                        media_id: "MEDIA_1".into(),
                    },
                },
                "file",
            ),
        ] {
            let body = SendRequest {
                touser: "alice",
                agentid: 1000002,
                message: &message,
            };
            // Like text: no `safe`, no duplicate check; WeCom's defaults apply.
            assert_eq!(
                serde_json::to_value(&body).unwrap(),
                serde_json::json!({
                    "touser": "alice",
                    "agentid": 1000002,
                    "msgtype": msgtype,
                    msgtype: {"media_id": "MEDIA_1"},
                })
            );
        }
    }

    #[test]
    fn upload_answers_are_read_as_documented() {
        // The example answer in WeCom's 上传临时素材 documentation.
        let reply: ApiReply = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"","type":"image",
                "media_id":"1G6nrLmr5EC3MMb_-zK1dDdzmd0p7cNliYu9V5w7o8K0",
                "created_at":"1380000000"}"#,
        )
        .unwrap();
        assert_eq!(reply.errcode, 0);
        assert_eq!(
            reply.media_id.as_deref(),
            Some("1G6nrLmr5EC3MMb_-zK1dDdzmd0p7cNliYu9V5w7o8K0")
        );
    }

    #[test]
    fn upload_filenames_keep_what_the_recipient_should_see() {
        assert_eq!(upload_filename("报告 2026.pdf"), "报告 2026.pdf");
        assert_eq!(upload_filename("../etc/passwd"), ".._etc_passwd");
        assert_eq!(upload_filename("a\"b\\c\r\nd"), "a_b_c__d");
        assert_eq!(upload_filename(" \t\r\n "), "file");
        assert_eq!(upload_filename(""), "file");
    }

    fn reply(json: &str) -> Result<ApiReply, WeComError> {
        Ok(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn a_batch_answer_fails_over_only_the_members_it_names() {
        // WeCom lower-cases the ids it lists; both lists count.
        let split = split_answer(
            &["Alice", "bob", "carol", "Dave"],
            reply(
                r#"{"errcode":0,"errmsg":"ok","invaliduser":"alice|zed","unlicenseduser":"dave"}"#,
            ),
        );
        assert_eq!(
            split,
            vec![
                Err(WeComError::InvalidUser("Alice".into())),
                Ok(()),
                Ok(()),
                Err(WeComError::InvalidUser("Dave".into())),
            ]
        );
        // An empty list names nobody.
        assert_eq!(
            split_answer(
                &["a", "b"],
                reply(r#"{"errcode":0,"errmsg":"ok","invaliduser":""}"#)
            ),
            vec![Ok(()), Ok(())]
        );
        // A member is not named by a prefix or a part of another id.
        assert_eq!(
            split_answer(
                &["al", "ice"],
                reply(r#"{"errcode":0,"errmsg":"ok","invaliduser":"alice"}"#)
            ),
            vec![Ok(()), Ok(())]
        );
    }

    #[test]
    fn a_failed_batch_call_is_each_members_error_naming_them() {
        let split = split_answer(
            &["alice", "bob"],
            reply(r#"{"errcode":81013,"errmsg":"user & party & tag all invalid"}"#),
        );
        assert_eq!(split.len(), 2);
        for (who, outcome) in ["alice", "bob"].iter().zip(&split) {
            let err = outcome.as_ref().unwrap_err();
            assert!(matches!(err, WeComError::Api { errcode: 81013, .. }));
            assert!(err.to_string().contains(who), "{err}");
            assert!(!err.is_transient());
        }
        let busy = split_answer(&["a", "b", "c"], reply(r#"{"errcode":-1,"errmsg":"busy"}"#));
        assert!(busy.iter().all(|r| r.as_ref().unwrap_err().is_transient()));
        let down = split_answer(&["a", "b"], Err(WeComError::Http(502)));
        assert_eq!(
            down,
            vec![Err(WeComError::Http(502)), Err(WeComError::Http(502))]
        );
    }

    #[test]
    fn several_members_go_in_one_touser() {
        let message = AppMessage::Text {
            text: Content {
                content: "hi".into(),
            },
        };
        let body = SendRequest {
            touser: &["a", "b", "c"].join("|"),
            agentid: 1,
            message: &message,
        };
        assert_eq!(serde_json::to_value(&body).unwrap()["touser"], "a|b|c");
    }

    #[test]
    fn no_recipient_names_the_member() {
        let text = explain(81013, "user & party & tag all invalid", Some("alice"));
        assert!(
            text.contains("alice") && text.contains("visible range"),
            "{text}"
        );
    }
}
