//! A stand-in for the WeCom server API (`qyapi.weixin.qq.com`), just the calls the gateway
//! makes: `GET /cgi-bin/gettoken`, `POST /cgi-bin/message/send`, `POST /cgi-bin/media/upload`
//! and (`pushbot doctor`) `GET /cgi-bin/agent/get`.
//!
//! It behaves like the real thing where the gateway's correctness depends on it (access
//! tokens are issued only for the right credentials, expire, and are checked on every
//! send; uploads are held to WeCom's type and size rules and their `media_id`s expire;
//! image and file messages name a `media_id` it issued), records every call, and lets a
//! test script the next replies.
//!
//! `media/upload` as WeCom documents it (上传临时素材, developer.work.weixin.qq.com
//! document/path/90253): multipart/form-data, the file in the field `media`, whose
//! `filename` is what the recipient sees; every file more than 5 bytes; `image` at most
//! 10 MB and JPG or PNG, `voice` 2 MB, `video` 10 MB, `file` 20 MB (MB taken as MiB here);
//! the answer `{"errcode":0,"errmsg":"","type":…,"media_id":…,"created_at":"<unix seconds>"}`.
//! Refusals use WeCom's global errcodes (全局错误码, document/path/90313): 40005 for a `type`
//! it does not know and for an `image` that is not JPG/PNG ("invalid file type", the answer
//! wechatpy/wechatpy#204 got uploading a non-image as `image`), 40006 for a file of 5 bytes
//! or fewer or over its type's cap ("不合法的文件大小"), 40009 for an image over 10 MB
//! ("上传图片大小不是有效值"), 44001 for no `media` field or an empty one ("empty media
//! data", binarywang/WxJava#1569), and 40007 ("invalid media_id", easychen/wecomchan#56)
//! from `message/send` for a `media_id` that is unknown, expired or of another type.
//!
//! `message/send` with several members (`touser=a|b|c`, as WeCom takes up to 1,000): one
//! call ([`MockWeCom::send_requests`] lists each call's members), recorded as one
//! [`SendCall`] per member (its `touser` that member alone, its `reply` what that member
//! got), so that counting per member works the same for shared and single calls. Replies
//! scripted for one member ([`MockWeCom::push_replies_for`], [`MockWeCom::fail_always_for`])
//! apply inside a shared call as WeCom could answer them there: an invalid-user reply
//! (`invaliduser`/`unlicenseduser`, or 81013 "all invalid") names that member in the
//! call's `invaliduser` (`unlicenseduser`) list, lower-cased, with errcode 0 — or 81013 when
//! it names every member; any other scripted error (an errcode, an HTTP status) has no
//! per-member form at WeCom, so it fails the whole call, for every member in it (the first
//! such member's reply, in `touser` order). The global script ([`MockWeCom::push_replies`],
//! [`MockWeCom::fail_always`]) answers the call, once per call: a failure fails it for
//! everyone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub const CORP_ID: &str = "wx5823bf96d3bd56c7";
pub const SECRET: &str = "test-secret";
pub const AGENT_ID: i64 = 1000002;

/// What the mock answers to one `message/send` call.
#[derive(Debug, Clone, PartialEq)]
pub struct SendReply {
    /// HTTP status; anything but 200 is answered with a plain-text body.
    pub status: u16,
    pub errcode: i64,
    pub errmsg: String,
    /// Reported with `errcode` 0 for members that could not be reached.
    pub invaliduser: Option<String>,
    /// Reported with `errcode` 0 for members without a licence (interoperability accounts).
    pub unlicenseduser: Option<String>,
    /// Wait this long before answering (to trip the gateway's request timeout).
    pub delay: Option<Duration>,
}

impl SendReply {
    pub fn ok() -> Self {
        Self {
            status: 200,
            errcode: 0,
            errmsg: "ok".to_owned(),
            invaliduser: None,
            unlicenseduser: None,
            delay: None,
        }
    }

    pub fn errcode(errcode: i64, errmsg: &str) -> Self {
        Self {
            errcode,
            errmsg: errmsg.to_owned(),
            ..Self::ok()
        }
    }

    pub fn http(status: u16) -> Self {
        Self {
            status,
            errcode: -1,
            errmsg: "internal server error".to_owned(),
            ..Self::ok()
        }
    }

    pub fn invalid_user(user: &str) -> Self {
        Self {
            invaliduser: Some(user.to_owned()),
            ..Self::ok()
        }
    }

    /// `errcode` 0, but these members (a `|`-separated list) had no licence.
    pub fn unlicensed_user(users: &str) -> Self {
        Self {
            unlicenseduser: Some(users.to_owned()),
            ..Self::ok()
        }
    }

    pub fn delayed(self, delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            ..self
        }
    }

    fn is_success(&self) -> bool {
        self.status == 200
            && self.errcode == 0
            && self.invaliduser.is_none()
            && self.unlicenseduser.is_none()
    }
}

/// How the mock's `gettoken` fails when told to.
#[derive(Debug, Clone, PartialEq)]
pub enum GetTokenFailure {
    /// This HTTP status with a plain-text body.
    Http(u16),
    /// HTTP 200 with this `errcode` (e.g. -1, system busy).
    Errcode(i64, String),
}

/// One `message/send` call as received.
#[derive(Debug, Clone)]
pub struct SendCall {
    pub access_token: Option<String>,
    pub body: Value,
    /// What the mock answered (after token validation and scripting).
    pub reply: SendReply,
    /// When the request arrived (before any scripted delay): what WeCom's per-member
    /// counters would go by.
    pub received_at: Instant,
    /// Arrival order among all `message/send` requests (0 for the first); the members of
    /// one shared call have the same.
    pub arrival: usize,
    /// Every member the request named (`touser` split at `|`): this member alone for a
    /// call to one member.
    pub batch: Vec<String>,
}

impl SendCall {
    /// WeCom accepted it: the member sees it.
    pub fn delivered(&self) -> bool {
        self.reply.is_success()
    }

    pub fn touser(&self) -> &str {
        self.body["touser"].as_str().unwrap_or_default()
    }

    /// The text message's content as sent.
    pub fn text(&self) -> &str {
        self.body["text"]["content"].as_str().unwrap_or_default()
    }
}

/// A message WeCom accepted and would have shown to the member.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub touser: String,
    pub agentid: i64,
    pub msgtype: String,
    /// `text` and `markdown`: the content; `textcard`: the title, a blank line and the
    /// description; `image` and `file`: the `media_id` (see [`MockWeCom::upload_of`]).
    pub content: String,
    /// `textcard` only.
    pub card: Option<SentCard>,
}

/// A `textcard` as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SentCard {
    pub title: String,
    pub description: String,
    pub url: String,
    pub btntxt: String,
}

impl SentCard {
    /// Title, description and link, for one comparison.
    pub fn parts(&self) -> (&str, &str, &str) {
        (&self.title, &self.description, &self.url)
    }
}

/// One `media/upload` request as received, accepted or not.
#[derive(Debug, Clone)]
pub struct UploadCall {
    pub access_token: Option<String>,
    /// The `type` query parameter.
    pub kind: Option<String>,
    /// The `media` field's filename (what the recipient would see).
    pub filename: Option<String>,
    /// The `media` field's Content-Type.
    pub content_type: Option<String>,
    /// The `media` field's bytes (empty when there was none).
    pub bytes: Bytes,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
    /// The answer's errcode (0: accepted) and, when accepted, the `media_id` issued.
    pub errcode: i64,
    pub media_id: Option<String>,
}

impl UploadCall {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// A `media_id` the mock issued.
struct Media {
    kind: String,
    expired: bool,
}

#[derive(Default)]
struct MockState {
    issued: u64,
    valid_tokens: HashSet<String>,
    expired_tokens: HashSet<String>,
    gettoken_calls: u64,
    gettoken_delay: Option<Duration>,
    /// Answer every `gettoken` with this failure until healed.
    gettoken_failure: Option<GetTokenFailure>,
    /// `expires_in` of the tokens issued from now on (WeCom's real value when `None`).
    expires_in: Option<u64>,
    send_started: usize,
    script: VecDeque<SendReply>,
    failure: Option<SendReply>,
    /// Like `script` and `failure`, for one member (`touser`) only; consulted first.
    member_script: HashMap<String, VecDeque<SendReply>>,
    member_failure: HashMap<String, SendReply>,
    delay: Option<Duration>,
    /// Answer every `agent/get` (with a valid token) with this instead of the app.
    agent_get_failure: Option<SendReply>,
    calls: Vec<SendCall>,
    /// The members each answered `message/send` request named, in answer order.
    requests: Vec<Vec<String>>,
    sent: Vec<Sent>,
    unexpected: Vec<String>,
    /// `media_id` → what was uploaded under it.
    media: HashMap<String, Media>,
    /// Answers for the next `media/upload` calls that pass the token check.
    upload_script: VecDeque<SendReply>,
    uploads: Vec<UploadCall>,
    /// `user/simplelist`: department id → its members' userids.
    departments: HashMap<u64, Vec<String>>,
    /// `tag/get`: tag id → its members' userids and the departments tagged as a whole.
    tags: HashMap<u64, (Vec<String>, Vec<u64>)>,
    /// Answer `user/simplelist` for this department (`tag/get` for this tag) with this
    /// error instead (e.g. 60011: outside the app's visible range).
    department_failure: HashMap<u64, SendReply>,
    tag_failure: HashMap<u64, SendReply>,
    /// `user/simplelist` and `tag/get` calls answered.
    member_list_calls: usize,
}

impl MockState {
    /// Whether an API call's access token is one WeCom would accept.
    fn check_token(&self, access_token: Option<&str>) -> Result<(), SendReply> {
        match access_token {
            Some(t) if self.valid_tokens.contains(t) => Ok(()),
            Some(t) if self.expired_tokens.contains(t) => Err(SendReply::errcode(
                42001,
                "access_token expired, hint: [mock]",
            )),
            Some(_) => Err(SendReply::errcode(
                40014,
                "invalid access_token, hint: [mock]",
            )),
            None => Err(SendReply::errcode(
                41001,
                "access_token missing, hint: [mock]",
            )),
        }
    }

    /// An `image` or `file` message must name a `media_id` this mock issued for that type
    /// and that has not expired; WeCom answers 40007 otherwise.
    fn check_media(&self, body: &Value) -> Result<(), SendReply> {
        let msgtype = body["msgtype"].as_str().unwrap_or_default();
        if !is_media_msgtype(msgtype) {
            return Ok(());
        }
        let media_id = body[msgtype]["media_id"].as_str().unwrap_or_default();
        match self.media.get(media_id) {
            Some(media) if !media.expired && media.kind == msgtype => Ok(()),
            _ => Err(SendReply::errcode(40007, "invalid media_id, hint: [mock]")),
        }
    }
}

impl MockState {
    /// The replies to a `message/send` to `tousers` that passed the token and media
    /// checks: the call's answer and each member's own (see the module documentation).
    fn answer_send(&mut self, tousers: &[String]) -> (SendReply, Vec<SendReply>) {
        let own: Vec<Option<SendReply>> = tousers
            .iter()
            .map(|u| {
                let scripted = self.member_script.get_mut(u).and_then(VecDeque::pop_front);
                scripted.or_else(|| self.member_failure.get(u).cloned())
            })
            .collect();
        // The global script answers a call that has a member without a reply of their own.
        let global = own
            .iter()
            .any(Option::is_none)
            .then(|| match self.script.pop_front() {
                Some(r) => r,
                None => self.failure.clone().unwrap_or_else(SendReply::ok),
            });
        if let [one] = own.as_slice() {
            let reply = one.clone().or(global).unwrap_or_else(SendReply::ok);
            return (reply.clone(), vec![reply]);
        }
        let is_invalid = |r: &SendReply| {
            r.status == 200
                && (r.errcode == 81013
                    || (r.errcode == 0 && (r.invaliduser.is_some() || r.unlicenseduser.is_some())))
        };
        let fails_call = |r: &SendReply| !r.is_success() && !is_invalid(r);
        let call_failure = own
            .iter()
            .flatten()
            .find(|r| fails_call(r))
            .or(global
                .as_ref()
                .filter(|g| g.status != 200 || g.errcode != 0))
            .cloned();
        if let Some(failure) = call_failure {
            return (failure.clone(), vec![failure; tousers.len()]);
        }
        let delay = own
            .iter()
            .flatten()
            .chain(global.as_ref())
            .find_map(|r| r.delay);
        let listed = |list: &Option<String>, u: &str| {
            list.as_deref()
                .is_some_and(|l| l.split('|').any(|n| n.eq_ignore_ascii_case(u)))
        };
        let mut invalid = Vec::new();
        let mut unlicensed = Vec::new();
        let mut each = Vec::with_capacity(tousers.len());
        for (u, own) in tousers.iter().zip(&own) {
            let by_global = global
                .as_ref()
                .is_some_and(|g| listed(&g.invaliduser, u) || listed(&g.unlicenseduser, u));
            match own {
                Some(r) if is_invalid(r) => {
                    if r.unlicenseduser.is_some() {
                        unlicensed.push(u.to_lowercase());
                    } else {
                        invalid.push(u.to_lowercase());
                    }
                    each.push(r.clone());
                }
                _ if by_global => {
                    invalid.push(u.to_lowercase());
                    each.push(SendReply::invalid_user(u));
                }
                _ => each.push(SendReply::ok()),
            }
        }
        let join = |l: &[String]| (!l.is_empty()).then(|| l.join("|"));
        let mut reply = if invalid.len() + unlicensed.len() == tousers.len() {
            SendReply::errcode(81013, "user & party & tag all invalid")
        } else {
            SendReply::ok()
        };
        reply.invaliduser = join(&invalid);
        reply.unlicenseduser = join(&unlicensed);
        reply.delay = delay;
        (reply, each)
    }
}

/// The message types that carry a `media_id` and that the mock checks.
fn is_media_msgtype(msgtype: &str) -> bool {
    matches!(msgtype, "image" | "file")
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

/// Handle to a running mock; dropping it stops the server.
pub struct MockWeCom {
    pub base_url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockWeCom {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockWeCom {
    pub async fn start() -> Self {
        let (changed, _) = watch::channel(0);
        let shared = Shared {
            state: Arc::default(),
            changed: Arc::new(changed),
        };
        let router = Router::new()
            .route("/cgi-bin/gettoken", get(gettoken))
            .route("/cgi-bin/message/send", post(message_send))
            .route("/cgi-bin/agent/get", get(agent_get))
            .route("/cgi-bin/user/simplelist", get(user_simplelist))
            .route("/cgi-bin/tag/get", get(tag_get))
            // WeCom takes files up to 20 MB; a larger one is read and refused (40006).
            .route(
                "/cgi-bin/media/upload",
                post(media_upload).layer(DefaultBodyLimit::disable()),
            )
            .fallback(unexpected)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock WeCom");
        let addr = listener.local_addr().expect("mock address");
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("mock WeCom server");
        });
        Self {
            base_url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    // ---- the address book (department and tag member lists) ----

    /// Department `id`'s members (`user/simplelist`); a department never set is unknown
    /// (60003).
    pub fn set_department(&self, id: u64, userids: &[&str]) {
        let users = userids.iter().map(|u| (*u).to_owned()).collect();
        self.shared.lock().departments.insert(id, users);
    }

    /// Tag `id`'s members and the departments tagged as a whole (`tag/get`); a tag never
    /// set is unknown (40068).
    pub fn set_tag(&self, id: u64, userids: &[&str], parties: &[u64]) {
        let users = userids.iter().map(|u| (*u).to_owned()).collect();
        self.shared
            .lock()
            .tags
            .insert(id, (users, parties.to_vec()));
    }

    /// Answers `user/simplelist` for department `id` with `reply` (`None`: heals).
    pub fn refuse_department(&self, id: u64, reply: Option<SendReply>) {
        let mut s = self.shared.lock();
        match reply {
            Some(reply) => s.department_failure.insert(id, reply),
            None => s.department_failure.remove(&id),
        };
    }

    /// Answers `tag/get` for tag `id` with `reply` (`None`: heals).
    pub fn refuse_tag(&self, id: u64, reply: Option<SendReply>) {
        let mut s = self.shared.lock();
        match reply {
            Some(reply) => s.tag_failure.insert(id, reply),
            None => s.tag_failure.remove(&id),
        };
    }

    /// `user/simplelist` and `tag/get` calls answered so far.
    pub fn member_list_calls(&self) -> usize {
        self.shared.lock().member_list_calls
    }

    // ---- scripting ----

    /// Answers the next `message/send` calls with these replies, in order (after which the
    /// failure mode, if any, or success applies). Token validation happens first.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = SendReply>) {
        self.shared.lock().script.extend(replies);
    }

    /// Answers every `message/send` call with `reply` until [`Self::heal`].
    pub fn fail_always(&self, reply: SendReply) {
        self.shared.lock().failure = Some(reply);
    }

    /// Answers the next `message/send` calls *to `touser`* with these replies, in order;
    /// other members are unaffected. Consulted before the global script and failure mode.
    pub fn push_replies_for(&self, touser: &str, replies: impl IntoIterator<Item = SendReply>) {
        self.shared
            .lock()
            .member_script
            .entry(touser.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Answers every `message/send` call to `touser` with `reply` until
    /// [`Self::heal_member`] (or [`Self::heal`]).
    pub fn fail_always_for(&self, touser: &str, reply: SendReply) {
        self.shared
            .lock()
            .member_failure
            .insert(touser.to_owned(), reply);
    }

    /// Ends `touser`'s failure mode and drops replies scripted for it.
    pub fn heal_member(&self, touser: &str) {
        let mut s = self.shared.lock();
        s.member_failure.remove(touser);
        s.member_script.remove(touser);
    }

    /// Ends the failure mode and drops any scripted replies and delay.
    pub fn heal(&self) {
        let mut s = self.shared.lock();
        s.failure = None;
        s.script.clear();
        s.member_failure.clear();
        s.member_script.clear();
        s.delay = None;
    }

    /// Delays every `message/send` answer.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.lock().delay = delay;
    }

    /// Delays every `gettoken` answer (widens the window for concurrent cold-cache sends).
    pub fn set_gettoken_delay(&self, delay: Option<Duration>) {
        self.shared.lock().gettoken_delay = delay;
    }

    /// Fails every `gettoken` call with `failure` (`None` heals it). Calls are still
    /// counted, and a delay set with [`Self::set_gettoken_delay`] still applies first.
    pub fn fail_gettoken(&self, failure: Option<GetTokenFailure>) {
        self.shared.lock().gettoken_failure = failure;
    }

    /// Answers every `agent/get` call that has a valid access token with `reply` (its
    /// status, errcode and errmsg); `None` heals it.
    pub fn fail_agent_get(&self, reply: Option<SendReply>) {
        self.shared.lock().agent_get_failure = reply;
    }

    /// Issue tokens that claim to live only `secs` seconds.
    pub fn set_expires_in(&self, secs: u64) {
        self.shared.lock().expires_in = Some(secs);
    }

    /// Expires every access token issued so far, like WeCom does after `expires_in`.
    pub fn expire_tokens(&self) {
        let mut s = self.shared.lock();
        let tokens: Vec<String> = s.valid_tokens.drain().collect();
        s.expired_tokens.extend(tokens);
    }

    /// Answers the next `media/upload` calls that carry a valid access token with these
    /// replies, in order, whatever they upload (the body is still read and recorded); a
    /// reply's delay is waited out before answering, and a successful reply issues a
    /// `media_id` as usual.
    pub fn push_upload_replies(&self, replies: impl IntoIterator<Item = SendReply>) {
        self.shared.lock().upload_script.extend(replies);
    }

    /// Expires `media_id` as WeCom does 3 days after its upload: `message/send` naming it
    /// answers 40007 from now on.
    pub fn expire_media(&self, media_id: &str) {
        if let Some(media) = self.shared.lock().media.get_mut(media_id) {
            media.expired = true;
        }
    }

    /// Expires every `media_id` issued so far.
    pub fn expire_all_media(&self) {
        for media in self.shared.lock().media.values_mut() {
            media.expired = true;
        }
    }

    // ---- observation ----

    pub fn gettoken_calls(&self) -> u64 {
        self.shared.lock().gettoken_calls
    }

    /// Waits until at least `n` `message/send` requests have arrived, including ones still
    /// waiting out a delay.
    pub async fn wait_for_send_started(&self, n: usize, timeout: Duration) {
        if !self.wait_until(timeout, |s| s.send_started >= n).await {
            panic!("expected {n} message/send requests within {timeout:?}");
        }
    }

    /// `message/send` requests that arrived so far, including ones still being answered.
    pub fn send_started(&self) -> usize {
        self.shared.lock().send_started
    }

    /// The members each answered `message/send` request named, in the order they were
    /// answered: one entry per HTTP call, however many members it named.
    pub fn send_requests(&self) -> Vec<Vec<String>> {
        self.shared.lock().requests.clone()
    }

    /// `message/send` calls answered so far, one per member a shared call named (see
    /// [`Self::send_requests`] for the HTTP calls).
    pub fn send_calls(&self) -> usize {
        self.shared.lock().calls.len()
    }

    pub fn calls(&self) -> Vec<SendCall> {
        self.shared.lock().calls.clone()
    }

    /// Every call WeCom accepted, in arrival order (the order the member sees them).
    pub fn delivered_calls(&self) -> Vec<SendCall> {
        let mut calls: Vec<SendCall> = self
            .shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.delivered())
            .cloned()
            .collect();
        calls.sort_by_key(|c| c.arrival);
        calls
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.shared.lock().sent.clone()
    }

    /// Every `media/upload` request, accepted or not, in arrival order.
    pub fn upload_calls(&self) -> Vec<UploadCall> {
        self.shared.lock().uploads.clone()
    }

    /// The uploads WeCom accepted (each issued a `media_id`), in arrival order.
    pub fn uploads(&self) -> Vec<UploadCall> {
        let s = self.shared.lock();
        s.uploads
            .iter()
            .filter(|u| u.errcode == 0)
            .cloned()
            .collect()
    }

    /// The accepted upload that issued `media_id`.
    pub fn upload_of(&self, media_id: &str) -> Option<UploadCall> {
        let s = self.shared.lock();
        s.uploads
            .iter()
            .find(|u| u.media_id.as_deref() == Some(media_id))
            .cloned()
    }

    /// Waits until at least `n` uploads were accepted and returns them.
    pub async fn wait_for_uploads(&self, n: usize, timeout: Duration) -> Vec<UploadCall> {
        let accepted = |s: &MockState| s.uploads.iter().filter(|u| u.errcode == 0).count();
        if self.wait_until(timeout, |s| accepted(s) >= n).await {
            self.uploads()
        } else {
            panic!(
                "expected {n} accepted uploads within {timeout:?}, got {}",
                self.uploads().len()
            );
        }
    }

    /// Requests to paths the gateway has no business calling.
    pub fn unexpected_requests(&self) -> Vec<String> {
        self.shared.lock().unexpected.clone()
    }

    /// Waits until at least `n` messages were accepted and returns all accepted so far.
    pub async fn wait_for_sent(&self, n: usize, timeout: Duration) -> Vec<Sent> {
        if self.wait_until(timeout, |s| s.sent.len() >= n).await {
            self.sent()
        } else {
            let s = self.shared.lock();
            panic!(
                "expected {n} delivered messages within {timeout:?}, got {}: sent={:#?}\ncalls={:#?}",
                s.sent.len(),
                s.sent,
                s.calls
            );
        }
    }

    /// Waits until at least `n` `message/send` calls were made (successful or not).
    pub async fn wait_for_send_calls(&self, n: usize, timeout: Duration) -> Vec<SendCall> {
        if self.wait_until(timeout, |s| s.calls.len() >= n).await {
            self.calls()
        } else {
            let s = self.shared.lock();
            panic!(
                "expected {n} message/send calls within {timeout:?}, got {}: {:#?}",
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

#[derive(Deserialize)]
struct GetTokenQuery {
    corpid: Option<String>,
    corpsecret: Option<String>,
}

async fn gettoken(State(shared): State<Shared>, Query(q): Query<GetTokenQuery>) -> Response {
    let (delay, expires_in) = {
        let mut s = shared.lock();
        s.gettoken_calls += 1;
        (s.gettoken_delay, s.expires_in.unwrap_or(7200))
    };
    shared.bump();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    // Read after the delay, so a test can heal gettoken while a slow call is pending.
    let failure = shared.lock().gettoken_failure.clone();
    match failure {
        Some(GetTokenFailure::Http(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "upstream trouble").into_response();
        }
        Some(GetTokenFailure::Errcode(errcode, errmsg)) => {
            return Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response();
        }
        None => {}
    }
    if q.corpid.as_deref() != Some(CORP_ID) {
        return Json(json!({"errcode": 40013, "errmsg": "invalid corpid"})).into_response();
    }
    if q.corpsecret.as_deref() != Some(SECRET) {
        return Json(json!({"errcode": 40001, "errmsg": "invalid credential"})).into_response();
    }
    let token = {
        let mut s = shared.lock();
        s.issued += 1;
        let token = format!("ACCESS_TOKEN_{}_{:08x}", s.issued, rand::random::<u32>());
        s.valid_tokens.insert(token.clone());
        token
    };
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "access_token": token,
        "expires_in": expires_in
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SendQuery {
    access_token: Option<String>,
}

async fn message_send(
    State(shared): State<Shared>,
    Query(q): Query<SendQuery>,
    body: axum::body::Bytes,
) -> Response {
    let received_at = Instant::now();
    let arrival = {
        let mut s = shared.lock();
        s.send_started += 1;
        s.send_started - 1
    };
    shared.bump();
    let received = Received {
        access_token: q.access_token,
        received_at,
        arrival,
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let reply = SendReply::errcode(47001, &format!("data format error: {e}"));
            let resp = reply_response(&reply);
            record_call(&shared, received, Value::Null, reply);
            return resp;
        }
    };

    let tousers: Vec<String> = body["touser"]
        .as_str()
        .unwrap_or_default()
        .split('|')
        .map(str::to_owned)
        .collect();
    let (reply, each, delay) = {
        let mut s = shared.lock();
        let checked = s
            .check_token(received.access_token.as_deref())
            .and_then(|()| s.check_media(&body));
        let (reply, each) = match checked {
            Err(r) => (r.clone(), vec![r; tousers.len()]),
            Ok(()) => s.answer_send(&tousers),
        };
        let delay = reply.delay.or(s.delay);
        (reply, each, delay)
    };

    if let Some(d) = delay {
        // The call is recorded only after the delay: a gateway that gave up waiting has
        // dropped the connection, and with it this future, so such a call leaves no trace
        // as a delivery.
        tokio::time::sleep(d).await;
    }

    let resp = reply_response(&reply);
    let msgtype = body["msgtype"].as_str().unwrap_or_default().to_owned();
    let field = |path: &[&str]| {
        path.iter()
            .fold(&body, |v, k| &v[*k])
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let card = (msgtype == "textcard").then(|| SentCard {
        title: field(&["textcard", "title"]),
        description: field(&["textcard", "description"]),
        url: field(&["textcard", "url"]),
        btntxt: field(&["textcard", "btntxt"]),
    });
    let content = match &card {
        Some(card) => format!("{}\n\n{}", card.title, card.description),
        None if msgtype == "markdown" => field(&["markdown", "content"]),
        None if is_media_msgtype(&msgtype) => field(&[msgtype.as_str(), "media_id"]),
        None => field(&["text", "content"]),
    };
    {
        let mut s = shared.lock();
        s.requests.push(tousers.clone());
        for (touser, reply) in tousers.iter().zip(each) {
            if reply.is_success() {
                s.sent.push(Sent {
                    touser: touser.clone(),
                    agentid: body["agentid"].as_i64().unwrap_or_default(),
                    msgtype: msgtype.clone(),
                    content: content.clone(),
                    card: card.clone(),
                });
            }
            let mut own = body.clone();
            if tousers.len() > 1 {
                own["touser"] = json!(touser);
            }
            s.calls.push(SendCall {
                access_token: received.access_token.clone(),
                body: own,
                reply,
                received_at: received.received_at,
                arrival: received.arrival,
                batch: tousers.clone(),
            });
        }
    }
    shared.bump();
    resp
}

#[derive(Deserialize)]
struct UploadQuery {
    access_token: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The `media` field of an upload, read whole.
#[derive(Default)]
struct MediaField {
    filename: Option<String>,
    content_type: Option<String>,
    bytes: Bytes,
}

/// Reads the multipart body to its end (so the client is never cut off mid-upload, as a
/// real server reads what it is sent) and returns the `media` field, if any.
async fn read_media_field(headers: &HeaderMap, body: axum::body::Body) -> Option<MediaField> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = multer::parse_boundary(content_type).ok()?;
    let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut media = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        let is_media = field.name() == Some("media");
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(|m| m.to_string());
        let bytes = field.bytes().await.ok()?;
        if is_media && media.is_none() {
            media = Some(MediaField {
                filename,
                content_type,
                bytes,
            });
        }
    }
    media
}

/// WeCom's cap for an upload `type`, or `None` for a type it does not know.
fn upload_cap(kind: &str) -> Option<usize> {
    const MB: usize = 1024 * 1024;
    match kind {
        "image" | "video" => Some(10 * MB),
        "voice" => Some(2 * MB),
        "file" => Some(20 * MB),
        _ => None,
    }
}

/// JPG (FF D8 FF) or PNG (89 50 4E 47 0D 0A 1A 0A), by their first bytes.
fn is_jpg_or_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// WeCom's verdict on an upload that passed the token check: `Ok` or the refusal.
fn judge_upload(kind: &str, media: Option<&MediaField>) -> Result<(), SendReply> {
    let Some(cap) = upload_cap(kind) else {
        return Err(SendReply::errcode(40005, "invalid file type, hint: [mock]"));
    };
    let bytes = match media {
        Some(m) if !m.bytes.is_empty() => &m.bytes,
        _ => return Err(SendReply::errcode(44001, "empty media data, hint: [mock]")),
    };
    if bytes.len() <= 5 {
        return Err(SendReply::errcode(40006, "invalid file size, hint: [mock]"));
    }
    if kind == "image" {
        if !is_jpg_or_png(bytes) {
            return Err(SendReply::errcode(40005, "invalid file type, hint: [mock]"));
        }
        if bytes.len() > cap {
            return Err(SendReply::errcode(
                40009,
                "invalid image size, hint: [mock]",
            ));
        }
    }
    if bytes.len() > cap {
        return Err(SendReply::errcode(40006, "invalid file size, hint: [mock]"));
    }
    Ok(())
}

async fn media_upload(
    State(shared): State<Shared>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let media = read_media_field(&headers, body).await;
    let kind = q.kind.clone().unwrap_or_default();
    let verdict = {
        let mut s = shared.lock();
        s.check_token(q.access_token.as_deref())
            .and_then(|()| match s.upload_script.pop_front() {
                Some(reply) => Err(reply),
                None => judge_upload(&kind, media.as_ref()),
            })
    };
    if let Err(SendReply { delay: Some(d), .. }) = &verdict {
        tokio::time::sleep(*d).await;
    }
    let media = media.unwrap_or_default();
    let mut call = UploadCall {
        access_token: q.access_token,
        kind: q.kind,
        filename: media.filename,
        content_type: media.content_type,
        sha256: hex::encode(Sha256::digest(&media.bytes)),
        bytes: media.bytes,
        errcode: 0,
        media_id: None,
    };
    let resp = match verdict {
        // A scripted success is an ordinary success.
        Err(reply) if !reply.is_success() => {
            call.errcode = if reply.status == 200 {
                reply.errcode
            } else {
                -1
            };
            reply_response(&reply)
        }
        _ => {
            let mut s = shared.lock();
            let media_id = format!("MEDIA_{}_{:016x}", s.media.len() + 1, rand::random::<u64>());
            s.media.insert(
                media_id.clone(),
                Media {
                    kind: kind.clone(),
                    expired: false,
                },
            );
            call.media_id = Some(media_id.clone());
            let created_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            Json(json!({
                "errcode": 0,
                "errmsg": "",
                "type": kind,
                "media_id": media_id,
                "created_at": created_at.to_string()
            }))
            .into_response()
        }
    };
    shared.lock().uploads.push(call);
    shared.bump();
    resp
}

#[derive(Deserialize)]
struct AgentGetQuery {
    access_token: Option<String>,
    agentid: Option<String>,
}

#[derive(Deserialize)]
struct SimpleListQuery {
    access_token: Option<String>,
    department_id: Option<u64>,
}

/// `user/simplelist`: a department's members, as set by [`MockWeCom::set_department`].
async fn user_simplelist(
    State(shared): State<Shared>,
    Query(q): Query<SimpleListQuery>,
) -> Response {
    let answer = {
        let mut s = shared.lock();
        s.member_list_calls += 1;
        let id = q.department_id.unwrap_or_default();
        match s.check_token(q.access_token.as_deref()) {
            Err(reply) => Err(reply),
            Ok(()) => match (s.department_failure.get(&id), s.departments.get(&id)) {
                (Some(reply), _) => Err(reply.clone()),
                (None, None) => Err(SendReply::errcode(
                    60003,
                    "department not found, hint: [mock]",
                )),
                (None, Some(users)) => Ok(users.clone()),
            },
        }
    };
    shared.bump();
    match answer {
        Err(reply) => reply_response(&reply),
        Ok(users) => Json(json!({
            "errcode": 0,
            "errmsg": "ok",
            "userlist": users.iter().map(|u| json!({"userid": u, "name": u, "department": [q.department_id]})).collect::<Vec<_>>(),
        }))
        .into_response(),
    }
}

#[derive(Deserialize)]
struct TagQuery {
    access_token: Option<String>,
    tagid: Option<u64>,
}

/// `tag/get`: a tag's members and tagged departments, as set by [`MockWeCom::set_tag`].
async fn tag_get(State(shared): State<Shared>, Query(q): Query<TagQuery>) -> Response {
    let answer = {
        let mut s = shared.lock();
        s.member_list_calls += 1;
        let id = q.tagid.unwrap_or_default();
        match s.check_token(q.access_token.as_deref()) {
            Err(reply) => Err(reply),
            Ok(()) => match (s.tag_failure.get(&id), s.tags.get(&id)) {
                (Some(reply), _) => Err(reply.clone()),
                (None, None) => Err(SendReply::errcode(40068, "invalid tagid, hint: [mock]")),
                (None, Some(tag)) => Ok(tag.clone()),
            },
        }
    };
    shared.bump();
    match answer {
        Err(reply) => reply_response(&reply),
        Ok((users, parties)) => Json(json!({
            "errcode": 0,
            "errmsg": "ok",
            "tagname": format!("tag{}", q.tagid.unwrap_or_default()),
            "userlist": users.iter().map(|u| json!({"userid": u, "name": u})).collect::<Vec<_>>(),
            "partylist": parties,
        }))
        .into_response(),
    }
}

/// The app: "pushbot-test", visible to two members and one department.
async fn agent_get(State(shared): State<Shared>, Query(q): Query<AgentGetQuery>) -> Response {
    let reply = {
        let s = shared.lock();
        match s.check_token(q.access_token.as_deref()) {
            Err(reply) => Some(reply),
            Ok(()) => s.agent_get_failure.clone(),
        }
    };
    shared.bump();
    if let Some(reply) = reply {
        return reply_response(&reply);
    }
    if q.agentid.as_deref() != Some(AGENT_ID.to_string().as_str()) {
        return reply_response(&SendReply::errcode(40056, "invalid agentid, hint: [mock]"));
    }
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "agentid": AGENT_ID,
        "name": "pushbot-test",
        "square_logo_url": "https://p.qlogo.cn/bizmail/mock/0",
        "description": "",
        "allow_userinfos": {"user": [{"userid": "alice"}, {"userid": "bob"}]},
        "allow_partys": {"partyid": [1]},
        "allow_tags": {"tagid": []},
        "close": 0,
        "redirect_domain": "push.example.com",
        "report_location_flag": 0,
        "isreportenter": 0,
        "home_url": ""
    }))
    .into_response()
}

/// What is known of a `message/send` request as it arrives.
struct Received {
    access_token: Option<String>,
    received_at: Instant,
    arrival: usize,
}

/// Records a request that could not be read (one call, no member).
fn record_call(shared: &Shared, received: Received, body: Value, reply: SendReply) {
    let mut s = shared.lock();
    s.requests.push(Vec::new());
    s.calls.push(SendCall {
        access_token: received.access_token,
        body,
        reply,
        received_at: received.received_at,
        arrival: received.arrival,
        batch: Vec::new(),
    });
    drop(s);
    shared.bump();
}

fn reply_response(reply: &SendReply) -> Response {
    if reply.status != 200 {
        let status =
            StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, "upstream trouble").into_response();
    }
    let mut body = json!({"errcode": reply.errcode, "errmsg": reply.errmsg});
    if let Some(u) = &reply.invaliduser {
        body["invaliduser"] = json!(u);
    }
    if let Some(u) = &reply.unlicenseduser {
        body["unlicenseduser"] = json!(u);
    }
    Json(body).into_response()
}

async fn unexpected(State(shared): State<Shared>, uri: Uri) -> impl IntoResponse {
    shared.lock().unexpected.push(uri.to_string());
    shared.bump();
    (StatusCode::NOT_FOUND, "no such WeCom API in the mock")
}
