//! ntfy: `PUT|POST /{topic}` with the message as the raw body and its options in headers
//! (`X-Title`/`Title`/`ti`/`t`, `X-Priority`/`Priority`/`prio`/`p`, `X-Tags`/`Tags`/`tag`/`ta`,
//! `X-Click`/`Click`, `X-Markdown`/`Markdown`/`md`, `X-Message`/`Message`/`m`) or the same
//! names in the query; header values may be RFC 2047-encoded (`=?UTF-8?B?…?=`).
//! `GET|POST /{topic}/publish` (also `/send`, `/trigger`) takes everything from the query,
//! and `POST /` a JSON body naming its `topic`.
//!
//! The topic is the member's pushbot token — or the token comes as `Authorization: Bearer`,
//! `Basic` (the password, or the user name when the password is empty, as ntfy's access
//! tokens do) or the `auth` query parameter (base64 of such a header), and then the topic can
//! be any name. Answers ntfy's message JSON; errors are `{"code","http","error","link"}`.
//!
//! Attachments as ntfy takes them: `PUT|POST /{topic}` with `X-Filename`/`Filename`/`file`/
//! `f` (header or query) has the file as its body, streamed into storage within
//! `media.max_bytes` (the message then comes from `X-Message`/`Message`/`m`); a body that is
//! not UTF-8 is a file too (within the limit of a text body); `X-Attach`/`Attach`/`a` (or
//! `attach` in JSON) is a URL fetched once, named by `Filename` when given.
//!
//! A delayed message (`X-Delay`/`Delay`/`X-At`/`At`/`X-In`/`In`, the query's `delay`/`at`/
//! `in`, JSON's `delay`) is scheduled with ntfy's forms: unix seconds, a duration (`30m`,
//! `2 days`), RFC 3339 or a clock time (`10am`, `tomorrow 8:30pm`) in the member's time
//! zone, up to `delivery.max_delay` (see [`crate::api::when`]); the answer's `time` is then
//! when it will be delivered, as ntfy's is.
//!
//! Options only a phone app acts on (`X-Icon`, `X-Cache`, `X-Firebase`, `X-UnifiedPush`)
//! are ignored; options pushbot cannot honour — action buttons, e-mail forwarding, phone
//! calls, templates ([`REFUSED`]) — are refused by name (400) rather than dropped.
//! `Idempotency-Key` is honoured as on `/send`.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest as _, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::attach::{self, Upload};
use super::super::rate_limit::authorized_sender;
use super::super::send::{Submission, idempotency_key, parse_query, submit};
use super::{PathOf, path_value};
use crate::domain::{Format, Urgency};
use crate::error::ApiError;
use crate::metrics::{Endpoint, TokenRoute};
use crate::render::visible::has_visible;

/// What ntfy sends when a publish carries no message at all.
const DEFAULT_MESSAGE: &str = "triggered";

/// The options of one publish, from headers, the query or a JSON body.
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    topic: Option<String>,
    message: Option<String>,
    title: Option<String>,
    /// `1`–`5` or a name; JSON sends a number.
    priority: Option<Value>,
    /// A comma-separated list (query) or an array (JSON).
    tags: Option<Value>,
    click: Option<String>,
    markdown: Option<Value>,
    auth: Option<String>,
    channel: Option<String>,
    /// A URL to fetch and attach.
    attach: Option<String>,
    /// The attachment's name (the body's, or the fetched file's).
    filename: Option<String>,
    /// When to deliver: `(the name it came under, its value)` (see [`DELAY_NAMES`]).
    #[serde(skip)]
    delay: Option<(String, String)>,
}

impl Options {
    /// `self`'s values, with `fallback`'s where `self` has none.
    fn or(self, fallback: Options) -> Options {
        Options {
            topic: self.topic.or(fallback.topic),
            message: self.message.or(fallback.message),
            title: self.title.or(fallback.title),
            priority: self.priority.or(fallback.priority),
            tags: self.tags.or(fallback.tags),
            click: self.click.or(fallback.click),
            markdown: self.markdown.or(fallback.markdown),
            auth: self.auth.or(fallback.auth),
            channel: self.channel.or(fallback.channel),
            attach: self.attach.or(fallback.attach),
            filename: self.filename.or(fallback.filename),
            delay: self.delay.or(fallback.delay),
        }
    }

    /// The options in a query string, under ntfy's names and short aliases; when a name
    /// comes twice (`?title=a&t=b`) the first wins, as in ntfy.
    fn from_query(query: Option<&str>) -> Result<Options, ApiError> {
        let pairs: Vec<(String, String)> = parse_query(query)?;
        for (name, value) in &pairs {
            refuse(&name.to_ascii_lowercase(), value, "query parameter")?;
        }
        let get = |names: &[&str]| {
            pairs
                .iter()
                .find(|(name, value)| {
                    names.contains(&name.to_ascii_lowercase().as_str()) && !value.trim().is_empty()
                })
                .map(|(_, value)| value.clone())
        };
        Ok(Options {
            message: get(&["message", "m"]).map(|m| unescape_newlines(&m)),
            title: get(&["title", "ti", "t"]),
            priority: get(&["priority", "prio", "p"]).map(Value::String),
            tags: get(&["tags", "tag", "ta"]).map(Value::String),
            click: get(&["click"]),
            markdown: get(&["markdown", "md"]).map(Value::String),
            auth: get(&["auth"]),
            channel: get(&["channel"]),
            attach: get(ATTACH_NAMES),
            filename: get(FILENAME_NAMES),
            topic: None,
            delay: pairs
                .iter()
                .find(|(name, value)| {
                    DELAY_NAMES.contains(&name.to_ascii_lowercase().as_str())
                        && !value.trim().is_empty()
                })
                .map(|(name, value)| (name.clone(), value.clone())),
        })
    }

    /// The options set in headers (ntfy's names, RFC 2047 decoded).
    fn from_headers(headers: &HeaderMap) -> Options {
        let get = |names: &[&str]| names.iter().find_map(|name| header_text(headers, name));
        Options {
            message: get(&["x-message", "message", "m"]).map(|m| unescape_newlines(&m)),
            title: get(&["x-title", "title", "ti", "t"]),
            priority: get(&["x-priority", "priority", "prio", "p"]).map(Value::String),
            tags: get(&["x-tags", "tags", "tag", "ta"]).map(Value::String),
            click: get(&["x-click", "click"]),
            markdown: get(&["x-markdown", "markdown", "md"]).map(Value::String),
            attach: get(ATTACH_NAMES),
            filename: get(FILENAME_NAMES),
            delay: DELAY_NAMES.iter().find_map(|name| {
                header_text(headers, name).map(|value| ((*name).to_owned(), value))
            }),
            ..Options::default()
        }
    }
}

/// ntfy's names for a delayed message's time, as a header or in the query (the first one
/// given counts, as in ntfy); all take the same forms.
const DELAY_NAMES: &[&str] = &["x-delay", "delay", "x-at", "at", "x-in", "in"];
/// The same in a JSON publish (ntfy's is `delay`; `at` and `in` are read rather than
/// ignored, so that a message meant for later never goes at once).
const DELAY_KEYS: &[&str] = &["delay", "at", "in"];

/// ntfy's names for an attachment's URL, as a header or in the query.
const ATTACH_NAMES: &[&str] = &["x-attach", "attach", "a"];
/// ntfy's names for an attachment's file name, as a header or in the query.
const FILENAME_NAMES: &[&str] = &["x-filename", "filename", "file", "f"];

/// Whether a `PUT|POST /{topic}` body is a file to stream into storage rather than the
/// message: a file name is given (header or query) and no `X-Attach` URL (with one, the
/// body is the message and the name is the fetched file's, as in ntfy).
pub fn body_is_file(headers: &HeaderMap, query: Option<&str>) -> bool {
    let from_headers = Options::from_headers(headers);
    let from_query = Options::from_query(query).unwrap_or_default();
    let options = from_headers.or(from_query);
    options.filename.is_some() && options.attach.is_none()
}

/// A message given in a header or the query writes a line break as the two characters
/// `\n` (a header cannot hold one); ntfy's server turns them back into line breaks — only
/// there, never in a body or a JSON publish.
fn unescape_newlines(message: &str) -> String {
    message.replace("\\n", "\n")
}

/// ntfy's options that pushbot cannot honour, under every name ntfy reads them by (as a
/// header or in the query, case-insensitive; the JSON key is among them), with why. A
/// template is refused only when turned on.
pub(crate) const REFUSED: &[(&[&str], &str)] = &[
    (
        &["x-actions", "actions", "action"],
        "action buttons are not supported: use X-Click for one link",
    ),
    (
        &["x-email", "x-e-mail", "email", "e-mail", "mail", "e"],
        "e-mail forwarding per message is not supported: bind an address in the app and \
         send with channel=email",
    ),
    (&["x-call", "call"], "phone calls are not supported"),
    (
        &["x-template", "template", "tpl"],
        "message templates are not supported: send the message text",
    ),
];

/// A 400 naming `name` (lower-case) when it is one of the [`REFUSED`] options and `value`
/// sets it (an empty value does not; a template only when turned on).
fn refuse(name: &str, value: &str, what: &str) -> Result<(), ApiError> {
    let Some((_, why)) = REFUSED.iter().find(|(names, _)| names.contains(&name)) else {
        return Ok(());
    };
    let is_template = matches!(name, "x-template" | "template" | "tpl");
    let set = if is_template {
        is_yes(Some(&Value::String(value.to_owned())))
    } else {
        !value.trim().is_empty()
    };
    if set {
        let shown: String = name.chars().take(64).collect();
        return Err(ApiError::BadRequest(format!(
            "{what} {shown:?} is not supported: {why}"
        )));
    }
    Ok(())
}

/// The [`REFUSED`] options set in headers.
fn refuse_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    for (names, _) in REFUSED {
        for name in *names {
            if let Some(value) = header_text(headers, name) {
                refuse(name, &value, "header")?;
            }
        }
    }
    Ok(())
}

/// The [`REFUSED`] options set in a JSON publish's object.
fn refuse_json(object: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    for (name, value) in object {
        let text = match value {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Array(items) if items.is_empty() => String::new(),
            other => other.to_string(),
        };
        refuse(name, &text, "JSON field")?;
    }
    Ok(())
}

/// A header's value as text: RFC 2047 encoded words decoded, raw UTF-8 accepted (curl sends
/// it as it is), surrounding space trimmed; empty counts as absent.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let raw = std::str::from_utf8(headers.get(name)?.as_bytes()).ok()?;
    let value = if raw.contains("=?") {
        // mailparse decodes encoded words the way a mail reader does.
        let line = format!("X: {raw}");
        match mailparse::parse_header(line.as_bytes()) {
            Ok((header, _)) => header.get_value(),
            Err(_) => raw.to_owned(),
        }
    } else {
        raw.to_owned()
    };
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// ntfy's flags: `yes`, `true`, `1` (or JSON `true`).
fn is_yes(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            matches!(s.trim().to_ascii_lowercase().as_str(), "yes" | "true" | "1")
        }
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// ntfy's priority: 1 (min) … 3 (default) … 5 (max, urgent).
fn priority(value: Option<&Value>) -> Result<u8, ApiError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(3),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
        Some(_) => String::new(),
    };
    match text.as_str() {
        "" | "3" | "default" => Ok(3),
        "1" | "min" => Ok(1),
        "2" | "low" => Ok(2),
        "4" | "high" => Ok(4),
        "5" | "max" | "urgent" => Ok(5),
        _ => Err(ApiError::BadRequest(
            "invalid priority: use 1–5 or min, low, default, high, max/urgent".into(),
        )),
    }
}

fn tags(value: Option<&Value>) -> Vec<String> {
    let items: Vec<String> = match value {
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The tags ntfy's documentation uses, shown as the emoji ntfy shows for them; other tags
/// are listed under the message as text.
fn tag_emoji(tag: &str) -> Option<&'static str> {
    Some(match tag {
        "warning" => "⚠️",
        "rotating_light" => "🚨",
        "white_check_mark" | "heavy_check_mark" => "✅",
        "x" | "no_entry" => "❌",
        "skull" => "💀",
        "tada" | "partying_face" => "🎉",
        "+1" => "👍",
        "-1" => "👎",
        "loudspeaker" => "📢",
        "computer" => "💻",
        "fire" => "🔥",
        "bell" => "🔔",
        "hourglass" => "⌛",
        "lock" => "🔒",
        "key" => "🔑",
        "package" => "📦",
        "cd" => "💿",
        "floppy_disk" => "💾",
        "bug" => "🐛",
        "zap" => "⚡",
        "info" | "information_source" => "ℹ️",
        _ => return None,
    })
}

/// An ntfy route's error, answered in ntfy's shape: `{"code":…,"http":…,"error":…,
/// "link":…}` with our status.
#[derive(Debug)]
pub struct NtfyError(ApiError);

impl From<ApiError> for NtfyError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for NtfyError {
    fn into_response(self) -> Response {
        let Self(err) = self;
        let status = err.status();
        let message = err.public_message();
        let link = match status {
            StatusCode::UNAUTHORIZED => "https://docs.ntfy.sh/publish/#authentication",
            _ => "https://docs.ntfy.sh/publish/",
        };
        err.respond_as(
            status,
            json!({
                "code": u32::from(status.as_u16()) * 100 + 1,
                "http": status.as_u16(),
                "error": message,
                "link": link,
            }),
        )
    }
}

/// The token from `Authorization` (Bearer, or Basic with the token as password or user)
/// or the `auth` query parameter, else the topic when it is shaped like a token.
fn token(headers: &HeaderMap, auth_param: Option<&str>, topic: &str) -> Option<String> {
    let from_param = auth_param.and_then(|encoded| {
        let encoded = encoded.trim().trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
            .ok()?;
        String::from_utf8(bytes).ok()
    });
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    header
        .or(from_param)
        .and_then(|value| authorization_token(&value))
        .or_else(|| crate::token::looks_valid(topic).then(|| topic.to_owned()))
}

fn authorization_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        // ntfy takes an access token as the password (empty user) or as the user name;
        // Apprise sends `TOKEN:None`. Whichever is shaped like a token, password first.
        [password, user]
            .into_iter()
            .find(|t| crate::token::looks_valid(t))
            .or_else(|| [password, user].into_iter().find(|t| !t.is_empty()))?
            .to_owned()
    } else {
        return None;
    };
    (!token.is_empty()).then_some(token)
}

/// What came with a publish besides its options.
pub enum Payload {
    /// Nothing (`GET …/publish`, a JSON publish).
    None,
    /// A body read whole (within the limit of a text body): the message, unless it is not
    /// UTF-8 or a file name is given.
    Read(Bytes),
    /// A body that is a file ([`body_is_file`]), not read yet: streamed into storage.
    File(Body),
}

/// A body that is a file, read or still to read.
enum FileBody {
    Read(Bytes),
    Stream(Body),
}

/// One publish to `topic` with `options`; `payload` is the message, or a file.
async fn publish(
    state: &AppState,
    topic: &str,
    headers: &HeaderMap,
    options: Options,
    payload: Payload,
) -> Result<Response, ApiError> {
    let topic_shaped = (1..=64).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !topic_shaped && !crate::token::looks_valid(topic) {
        return Err(ApiError::NotFound(
            "no such route (an ntfy topic is letters, digits, - and _)".into(),
        ));
    }
    if super::is_route_name(topic) {
        return Err(ApiError::NotFound(format!(
            "/{topic} is one of pushbot's own routes, not a topic"
        )));
    }
    let Some(token) = token(headers, options.auth.as_deref(), topic) else {
        super::super::auth::refused(state, TokenRoute::Send(Endpoint::Ntfy));
        return Err(ApiError::Unauthorized(
            "use your pushbot token as the topic, or send it as Authorization: Bearer".into(),
        ));
    };
    let (from_body, file) = match payload {
        Payload::None => (None, None),
        Payload::File(body) => (None, Some(FileBody::Stream(body))),
        Payload::Read(bytes) if bytes.is_empty() => (None, None),
        Payload::Read(bytes) => {
            let text = String::from_utf8(bytes.to_vec()).ok();
            match text {
                Some(text) if options.filename.is_none() || options.attach.is_some() => {
                    (Some(text), None)
                }
                // With X-Attach the body is the message: it must be text.
                None if options.attach.is_some() => {
                    return Err(ApiError::BadRequest(
                        "the body is not UTF-8 text: with X-Attach the body is the message; \
                         send a file as the body without X-Attach"
                            .into(),
                    ));
                }
                _ => (None, Some(FileBody::Read(bytes))),
            }
        }
    };
    let has_file = file.is_some() || options.attach.is_some();
    // No message (or only spaces) is ntfy's trigger; characters that show nothing are not.
    let message = from_body
        .or(options.message.clone())
        .filter(|m| !m.trim().is_empty());
    if message.as_deref().is_some_and(|m| !has_visible(m)) {
        return Err(ApiError::BadRequest(
            "nothing to send: the message shows nothing (only invisible characters)".into(),
        ));
    }
    // A file without text is a message of its own (titled with its name).
    let message = match message {
        None if !has_file => Some(DEFAULT_MESSAGE.to_owned()),
        message => message,
    };
    let priority = priority(options.priority.as_ref())?;
    let when = options
        .delay
        .as_ref()
        .map(|(name, value)| crate::api::when::ntfy(name, value))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let idempotency_key = idempotency_key(headers, None)?;
    let tags = tags(options.tags.as_ref());
    let (emoji, words): (Vec<&String>, Vec<&String>) =
        tags.iter().partition(|t| tag_emoji(t).is_some());
    let emoji: String = emoji.iter().filter_map(|t| tag_emoji(t)).collect();
    let title = match (emoji.is_empty(), options.title.as_deref()) {
        (true, title) => title.map(str::to_owned),
        (false, Some(title)) => Some(format!("{emoji} {title}")),
        (false, None) => Some(emoji),
    };
    let listed: Vec<&str> = words.iter().map(|t| t.as_str()).collect();
    let content = match (&message, listed.is_empty()) {
        (Some(message), true) => Some(message.clone()),
        (Some(message), false) => Some(format!("{message}\nTags: {}", listed.join(", "))),
        (None, false) => Some(format!("Tags: {}", listed.join(", "))),
        (None, true) => None,
    };
    // A file is stored once its sender is known (counted once against the send rate).
    let (attachments, sender) = match file {
        None => (Vec::new(), None),
        Some(file) => {
            let sender = authorized_sender(state, Some(token.clone()), Endpoint::Ntfy).await?;
            let upload = store_file(state, file, options.filename.as_deref()).await?;
            (vec![upload], Some(sender))
        }
    };
    let accepted = submit(
        state,
        Submission {
            token: Some(token),
            title,
            content,
            channel: options.channel.clone(),
            idempotency_key,
            url: options.click.clone(),
            urgency: Urgency::from_ntfy(priority),
            format: if is_yes(options.markdown.as_ref()) {
                Format::Markdown
            } else {
                Format::Text
            },
            endpoint: Endpoint::Ntfy,
            image_url: None,
            file_url: options.attach.clone(),
            file_name: options.filename.clone(),
            attachments,
            sender,
            when,
            // Acknowledgements from this route: not mapped yet (issue 30).
            ack: None,
        },
    )
    .await?;
    let attachment = first_attachment(state, &accepted.message.id).await?;
    let message = match (message, &attachment) {
        (Some(message), _) => message,
        // ntfy's own words for a file without a message.
        (None, Some((name, _, _))) => format!("You received a file: {name}"),
        (None, None) => String::new(),
    };
    // As ntfy: a delayed message's `time` is when it will be delivered.
    let time = accepted
        .message
        .deliver_at
        .filter(|_| accepted.message.status == crate::store::MessageStatus::Scheduled)
        .unwrap_or(accepted.message.created_at);
    let mut answer = json!({
        "id": accepted.message.id.as_str(),
        "time": time.as_secs(),
        "event": "message",
        "topic": topic,
        "message": message,
    });
    if let Some(map) = answer.as_object_mut() {
        if let Some(title) = options.title {
            map.insert("title".into(), title.into());
        }
        if priority != 3 {
            map.insert("priority".into(), priority.into());
        }
        if !tags.is_empty() {
            map.insert("tags".into(), tags.into());
        }
        if let Some(click) = options.click {
            map.insert("click".into(), click.into());
        }
        if let Some((name, mime, size)) = attachment {
            map.insert(
                "attachment".into(),
                json!({"name": name, "type": mime, "size": size}),
            );
        }
    }
    Ok((StatusCode::OK, Json(answer)).into_response())
}

/// Stores a publish's body as its file, named `filename` (sanitised) or after its type.
async fn store_file(
    state: &AppState,
    file: FileBody,
    filename: Option<&str>,
) -> Result<Upload, ApiError> {
    let max_files = state.media.max_files;
    if max_files == 0 {
        return Err(attach::too_many(max_files));
    }
    let filename = filename.and_then(crate::media::sanitize_filename);
    let label = match &filename {
        Some(name) => format!("file {name:?}"),
        None => "the body".to_owned(),
    };
    let blob = match file {
        FileBody::Read(bytes) => {
            let body =
                futures_util::stream::once(
                    async move { Ok::<Bytes, std::convert::Infallible>(bytes) },
                );
            attach::store_body(state, body, &label, |never| match never {}).await?
        }
        FileBody::Stream(body) => {
            attach::store_body(state, body.into_data_stream(), &label, |err| {
                if attach::is_length_limit(&err) {
                    ApiError::PayloadTooLarge("request body is too large".into())
                } else {
                    ApiError::BadRequest(format!("could not read the body: {err}"))
                }
            })
            .await?
        }
    };
    let filename = filename.unwrap_or_else(|| attach::made_up_name(&blob, false, 1));
    Ok(Upload {
        blob,
        filename,
        declared_image: false,
    })
}

/// A message's first attachment as ntfy describes one: name, type, size.
async fn first_attachment(
    state: &AppState,
    id: &crate::domain::MessageId,
) -> Result<Option<(String, String, u64)>, ApiError> {
    let Some(first) = state.store.attachments_of(id).await?.into_iter().next() else {
        return Ok(None);
    };
    let Some(blob) = state.store.blob_info(&first.blob_id).await? else {
        return Ok(None);
    };
    Ok(Some((
        first.filename.unwrap_or_default(),
        blob.mime,
        blob.size,
    )))
}

/// `PUT|POST /{topic}`: the body is the message (or a file, see [`Payload`]).
pub async fn publish_path(
    state: &AppState,
    topic: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NtfyError> {
    let body = body.map_err(ApiError::from_body)?;
    refuse_headers(headers)?;
    let options = Options::from_headers(headers).or(Options::from_query(query)?);
    Ok(publish(state, topic, headers, options, Payload::Read(body)).await?)
}

/// `PUT|POST /{topic}` whose body is a file ([`body_is_file`]): streamed into storage, not
/// read whole (the body limit of text does not apply; `media.max_bytes` does).
pub async fn publish_file(
    state: &AppState,
    topic: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, NtfyError> {
    refuse_headers(headers)?;
    let options = Options::from_headers(headers).or(Options::from_query(query)?);
    Ok(publish(state, topic, headers, options, Payload::File(body)).await?)
}

/// `PUT|POST /{topic}` as a request: a file body streamed, any other read within the
/// route's body limit.
pub async fn publish_request(
    state: &AppState,
    topic: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, NtfyError> {
    if body_is_file(headers, query) {
        return publish_file(state, topic, query, headers, request.into_body()).await;
    }
    let body = Bytes::from_request(request, state).await;
    publish_path(state, topic, query, headers, body).await
}

pub async fn put(
    State(state): State<AppState>,
    topic: PathOf<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, NtfyError> {
    let topic = path_value(topic)?;
    publish_request(&state, &topic, query.as_deref(), &headers, request).await
}

/// `GET /{topic}/publish` (`/send`, `/trigger`): everything from the query and headers.
pub async fn publish_get(
    state: &AppState,
    topic: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, NtfyError> {
    refuse_headers(headers)?;
    let options = Options::from_headers(headers).or(Options::from_query(query)?);
    Ok(publish(state, topic, headers, options, Payload::None).await?)
}

/// The second path segment that makes `/{topic}/…` an ntfy publish rather than a Bark
/// message.
pub fn is_publish_verb(segment: &str) -> bool {
    matches!(segment, "publish" | "send" | "trigger")
}

/// A JSON publish's options (the [`REFUSED`] ones refused by name).
fn json_options(body: &[u8]) -> Result<Options, ApiError> {
    let invalid = |err: serde_json::Error| {
        ApiError::BadRequest(format!(
            "the body must be JSON naming a topic (ntfy's JSON publishing): {err}"
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(invalid)?;
    let mut delay = None;
    if let Some(object) = value.as_object() {
        refuse_json(object)?;
        delay = DELAY_KEYS.iter().find_map(|key| {
            let text = match object.get(*key)? {
                Value::String(s) if !s.trim().is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(((*key).to_owned(), text))
        });
    }
    let options: Options = serde_json::from_value(value).map_err(invalid)?;
    Ok(Options { delay, ..options })
}

/// `POST /` with `{"topic": …, "message": …, "title": …, "tags": [...], "priority": 4, …}`.
pub async fn publish_json(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, NtfyError> {
    let from_query = Options::from_query(query.as_deref())?;
    let body = body.map_err(ApiError::from_body)?;
    refuse_headers(&headers)?;
    let options = json_options(&body)?;
    let options = Options {
        auth: options.auth.or(from_query.auth),
        ..options
    };
    let topic = options.topic.clone().unwrap_or_default();
    if topic.trim().is_empty() {
        return Err(ApiError::BadRequest("topic is required".into()).into());
    }
    Ok(publish(&state, &topic, &headers, options, Payload::None).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn escaped_newlines_in_header_and_query_messages() {
        let mut headers = HeaderMap::new();
        headers.insert("x-message", HeaderValue::from_static("line one\\nline two"));
        let options = Options::from_headers(&headers);
        assert_eq!(options.message.as_deref(), Some("line one\nline two"));
        let mut headers = HeaderMap::new();
        headers.insert("m", HeaderValue::from_static("a\\n\\nb"));
        assert_eq!(
            Options::from_headers(&headers).message.as_deref(),
            Some("a\n\nb")
        );
        let options = Options::from_query(Some("message=one%5Cntwo")).unwrap();
        assert_eq!(options.message.as_deref(), Some("one\ntwo"));
        let options = Options::from_query(Some("m=x%5Cny")).unwrap();
        assert_eq!(options.message.as_deref(), Some("x\ny"));
        // A JSON publish's message is left as it is.
        let options = json_options(br#"{"topic":"t","message":"a\\nb"}"#).unwrap();
        assert_eq!(options.message.as_deref(), Some("a\\nb"));
    }

    #[test]
    fn priorities_by_number_or_name() {
        assert_eq!(priority(None).unwrap(), 3);
        assert_eq!(priority(Some(&json!(5))).unwrap(), 5);
        assert_eq!(priority(Some(&json!("urgent"))).unwrap(), 5);
        assert_eq!(priority(Some(&json!("Low"))).unwrap(), 2);
        assert!(priority(Some(&json!("7"))).is_err());
        assert!(priority(Some(&json!("soon"))).is_err());
    }

    #[test]
    fn rfc2047_and_raw_utf8_header_values() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-title",
            HeaderValue::from_static("=?UTF-8?B?56OB55uY5bey5ruh?="),
        );
        headers.insert(
            "tags",
            HeaderValue::from_bytes("警告,warning".as_bytes()).unwrap(),
        );
        let options = Options::from_headers(&headers);
        assert_eq!(options.title.as_deref(), Some("磁盘已满"));
        assert_eq!(
            tags(options.tags.as_ref()),
            vec!["警告".to_owned(), "warning".to_owned()]
        );
    }

    #[test]
    fn tokens_from_bearer_basic_auth_param_or_topic() {
        let tok = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        let none = HeaderMap::new();
        assert_eq!(token(&none, None, tok), Some(tok.to_owned()));
        assert_eq!(token(&none, None, "alerts"), None);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {tok}")).unwrap(),
        );
        assert_eq!(token(&bearer, None, "alerts"), Some(tok.to_owned()));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{tok}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert_eq!(token(&headers, None, "alerts"), Some(tok.to_owned()));
        let param =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("Bearer {tok}"));
        assert_eq!(token(&none, Some(&param), "alerts"), Some(tok.to_owned()));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            "title", "t", "priority", "p", "tags", "message", "m", "click", "markdown", "md",
            "delay", "at", "in", "attach", "a", "filename", "f", "actions", "email", "e", "call",
            "template", "tpl", "auth", "topic", "x-attach", "x-email",
        ];

        /// A header value as a client may send it (visible ASCII, raw UTF-8 bytes).
        fn header_value() -> impl Strategy<Value = HeaderValue> {
            crate::api::compat::tricky(NAMES).prop_filter_map("not a header value", |text| {
                HeaderValue::from_bytes(text.as_bytes()).ok()
            })
        }

        fn bad_request(result: Result<impl std::fmt::Debug, ApiError>) -> bool {
            matches!(result, Ok(_) | Err(ApiError::BadRequest(_)))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any query: options, or a 400 — a refused option set is one, naming it.
            #[test]
            fn any_query_is_options_or_a_400(q in crate::api::compat::tricky(NAMES)) {
                let got = Options::from_query(Some(&q));
                if let Ok(options) = &got {
                    let _ = priority(options.priority.as_ref());
                    let _ = tags(options.tags.as_ref());
                    let _ = is_yes(options.markdown.as_ref());
                }
                prop_assert!(bad_request(got));
            }

            /// Any headers: options (never a panic); a refused one set is a 400 naming it.
            #[test]
            fn any_headers_are_options_or_a_refusal(
                set in prop::collection::vec(
                    (prop::sample::select(NAMES.iter().copied().chain(["x-title", "x-delay", "x-actions", "x-call", "x-template", "authorization"]).collect::<Vec<_>>()), header_value()),
                    0..6,
                ),
            ) {
                let mut headers = HeaderMap::new();
                for (name, value) in &set {
                    headers.insert(*name, value.clone());
                }
                let _ = Options::from_headers(&headers);
                let _ = token(&headers, None, "alerts");
                let refused = refuse_headers(&headers);
                if let Err(e) = &refused {
                    prop_assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
                    prop_assert!(e.to_string().contains("is not supported"), "{e}");
                }
                // Every refused option set (non-empty; a template turned on) is found.
                let set_refused = set.iter().any(|(name, value)| {
                    let text = header_text(&headers, name).unwrap_or_default();
                    let _ = value;
                    REFUSED.iter().any(|(names, _)| names.contains(name))
                        && if matches!(*name, "template" | "tpl" | "x-template") {
                            is_yes(Some(&Value::String(text)))
                        } else {
                            !text.is_empty()
                        }
                });
                prop_assert_eq!(refused.is_err(), set_refused);
            }

            /// Any JSON publish body: options, or a 400.
            #[test]
            fn any_json_publish_is_options_or_a_400(
                text in crate::api::compat::tricky(NAMES),
                object in prop::collection::btree_map(
                    prop::sample::select(NAMES),
                    prop_oneof![
                        any::<String>().prop_map(Value::String),
                        any::<i64>().prop_map(Value::from),
                        any::<bool>().prop_map(Value::Bool),
                        Just(Value::Null),
                    ],
                    0..6,
                ),
            ) {
                prop_assert!(bad_request(json_options(text.as_bytes())));
                let body = serde_json::to_vec(&object).expect("encodes");
                prop_assert!(bad_request(json_options(&body)));
            }

            /// Authorization values and `auth` parameters: a token or none.
            #[test]
            fn any_authorization_is_a_token_or_none(value in crate::api::compat::tricky(NAMES)) {
                let _ = authorization_token(&value);
                let _ = token(&HeaderMap::new(), Some(&value), &value);
                let p = priority(Some(&Value::String(value)));
                prop_assert!(matches!(p, Ok(1..=5) | Err(ApiError::BadRequest(_))), "{p:?}");
            }
        }
    }
}
