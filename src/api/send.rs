//! `GET|POST /send`: accept a message for the token's owner.
//!
//! Accepted forms (fields may also come from the query string, body fields win):
//! `GET /send?token=&title=&content=`, a JSON object, or a form-encoded body. `desp` is an
//! alias of `content` (the ServerChan habit). The token may also come as a Bearer header.
//!
//! Text must be UTF-8 in every form: percent-decoded query and form fields are checked
//! before decoding (serde_urlencoded would silently turn bad bytes into U+FFFD), JSON
//! bodies before parsing. `HEAD /send` is refused (405) without touching anything.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, Request, State};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, RequestExt as _, Router};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::attach::{self, Upload, Uploads};
use super::auth::Sender;
use super::rate_limit::authorized_sender;
use super::when::{self, When};
use super::{AppState, auth, max_send_body};
use crate::delivery::quiet::MemberHours;
use crate::delivery::{ChannelChoice, NewMessage, Reach};
use crate::domain::{ChannelName, Format, Urgency};
use crate::error::ApiError;
use crate::metrics::{Endpoint, TokenRoute};
use crate::render::visible::visible;
use crate::store::{Held, MessageStatus};
use crate::time::UnixMillis;

/// Longest title accepted (bytes).
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest sender link accepted (bytes): WeCom's limit for a card's link.
pub const MAX_URL_BYTES: usize = 2048;

/// Content types a body may have (none at all is sniffed: `{` means JSON, else form).
const ACCEPTED_TYPES: &str =
    "application/json, application/x-www-form-urlencoded or multipart/form-data";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/send",
            get(send_get).post(send_post).head(only_get_and_post),
        )
        .method_not_allowed_fallback(only_get_and_post)
}

/// HEAD (link checkers, chat-app previews) and every other method but GET and POST.
///
/// HEAD must be safe, and the only faithful answer to `HEAD /send` would be to send the
/// message as GET does; so it is refused like any other method, before the token is even
/// looked at (no side effect, and no way to probe tokens without the send rate limit).
async fn only_get_and_post(method: axum::http::Method) -> Response {
    let mut response = ApiError::MethodNotAllowed(format!(
        "{method} /send does nothing: send a message with GET or POST"
    ))
    .into_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, POST"));
    response
}

/// The fields `/send` reads, in every form (JSON, form, multipart, query).
const SEND_FIELDS: &[&str] = &[
    "token",
    "title",
    "content",
    "desp",
    "channel",
    "format",
    "url",
    "idempotency_key",
    "image_url",
    "file_url",
    "delay",
    "at",
    "ack",
    "escalate",
];

/// The name of a multipart part that is a file to attach (`curl -F file=@chart.png`).
const FILE_PART: &str = "file";

/// `/send` refuses any other field: a typo (`tilte`) or an option it does not have
/// (`priority`) would otherwise be lost without a word.
const SEND_RULES: FieldRules = FieldRules {
    known: SEND_FIELDS,
    refused: &[],
    strict: true,
};

/// What a route does with the field names of a request (JSON keys, form, multipart and
/// query names). Names starting with `_` (cache-busters: `?_=1699999`) are always ignored.
#[derive(Debug, Clone, Copy)]
pub(super) struct FieldRules {
    /// The names the route reads.
    pub known: &'static [&'static str],
    /// Names the original service accepts that pushbot cannot honour, with the reason:
    /// refused by name rather than silently dropped.
    pub refused: &'static [(&'static str, &'static str)],
    /// Any other name is refused (the native `/send`), or ignored (a compat route whose
    /// original ignores names it does not know).
    pub strict: bool,
}

impl FieldRules {
    /// Reads whatever the target type has, ignores the rest (status queries, pages, hooks).
    pub const LENIENT: FieldRules = FieldRules {
        known: &[],
        refused: &[],
        strict: false,
    };

    fn is_lenient(&self) -> bool {
        !self.strict && self.refused.is_empty()
    }

    /// The first name in `names` that is refused or unknown, as a 400 that names it (and,
    /// for an unknown one, the nearest known name).
    pub(super) fn check<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        what: &str,
    ) -> Result<(), ApiError> {
        for name in names {
            if name.starts_with('_') {
                continue;
            }
            let shown: String = name.chars().take(64).collect();
            if let Some((_, why)) = self.refused.iter().find(|(refused, _)| *refused == name) {
                return Err(ApiError::BadRequest(format!(
                    "field {shown:?} in the {what} is not supported: {why}"
                )));
            }
            if self.strict && !self.known.contains(&name) {
                let hint = match crate::config::nearest(name, self.known.iter().copied()) {
                    Some(near) => format!("did you mean {near:?}? "),
                    None => String::new(),
                };
                return Err(ApiError::BadRequest(format!(
                    "unknown field {shown:?} in the {what}; {hint}known fields: {} \
                     (names starting with _ are ignored)",
                    self.known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
struct SendFields {
    token: Option<String>,
    title: Option<String>,
    content: Option<String>,
    desp: Option<String>,
    idempotency_key: Option<String>,
    /// `wecom`, `email`, `all` or an ordered list such as `wecom,email`.
    channel: Option<String>,
    /// `text` (default) or `markdown`.
    format: Option<String>,
    /// A link the member should open.
    url: Option<String>,
    /// An image to fetch and attach.
    image_url: Option<String>,
    /// A file to fetch and attach.
    file_url: Option<String>,
    /// Deliver this long after acceptance (`30m`, `2h`, `90` seconds; see [`when::delay`]).
    #[serde(default, deserialize_with = "text_or_number")]
    delay: Option<String>,
    /// Deliver at this time (RFC 3339 with a zone, or unix seconds; see [`when::at`]).
    #[serde(default, deserialize_with = "text_or_number")]
    at: Option<String>,
    /// `true` (or `1`, `yes`): ask the member to acknowledge it.
    #[serde(default, deserialize_with = "text_or_number")]
    ack: Option<String>,
    /// Send it again on the member's next channels when nobody acknowledged it this long
    /// after acceptance (`10m`, `1h`, `90` seconds); implies `ack`.
    #[serde(default, deserialize_with = "text_or_number")]
    escalate: Option<String>,
}

/// A field given as text, or in JSON as a number or a boolean (`"delay": 90`, `"at":
/// 1748739600`, `"ack": true`).
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Visitor)
        }
    }
    d.deserialize_option(Visitor)
}

impl SendFields {
    /// Fields present in `self` win over those in `fallback`.
    fn or(self, fallback: SendFields) -> SendFields {
        SendFields {
            token: self.token.or(fallback.token),
            title: self.title.or(fallback.title),
            content: self.content.or(fallback.content),
            desp: self.desp.or(fallback.desp),
            idempotency_key: self.idempotency_key.or(fallback.idempotency_key),
            channel: self.channel.or(fallback.channel),
            format: self.format.or(fallback.format),
            url: self.url.or(fallback.url),
            image_url: self.image_url.or(fallback.image_url),
            file_url: self.file_url.or(fallback.file_url),
            delay: self.delay.or(fallback.delay),
            at: self.at.or(fallback.at),
            ack: self.ack.or(fallback.ack),
            escalate: self.escalate.or(fallback.escalate),
        }
    }
}

#[derive(Serialize)]
pub(super) struct Accepted {
    ok: bool,
    id: String,
    status: MessageStatus,
    /// When a scheduled message is due (as `GET /messages/{id}` writes times); absent for
    /// one due at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at: Option<String>,
    /// Present (true) when an earlier message with the same idempotency key was found.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    /// A group message: how many members it was taken for (one copy each, muted ones
    /// included); absent for a member's own message.
    #[serde(skip_serializing_if = "Option::is_none")]
    recipients: Option<i64>,
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The `Idempotency-Key` header, else the `idempotency_key` field.
pub(super) fn idempotency_key(
    headers: &HeaderMap,
    field: Option<String>,
) -> Result<Option<String>, ApiError> {
    let header = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .to_owned(),
        ),
        None => None,
    };
    let key = header
        .or(field)
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    if key.as_ref().is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY) {
        return Err(ApiError::BadRequest(format!(
            "idempotency key is longer than {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(key)
}

async fn send_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Accepted>, ApiError> {
    accept(
        &state,
        &headers,
        parse_query_with(query.as_deref(), &SEND_RULES)?,
        Vec::new(),
        None,
    )
    .await
}

/// A JSON or form body is read whole within today's limit ([`max_send_body`]); a
/// multipart body is streamed, its files into storage as they arrive (see
/// [`send_multipart`]), within the route's larger `DefaultBodyLimit`.
async fn send_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<Accepted>, ApiError> {
    let text_limit = max_send_body(state.max_content_bytes);
    // The route's DefaultBodyLimit (room for files), applied as axum's extractors do.
    let body = request.with_limited_body().into_body();
    if is_multipart(&headers) && !announced_empty(&headers) {
        let from_query = parse_query_with(query.as_deref(), &SEND_RULES)?;
        return send_multipart(&state, &headers, from_query, body).await;
    }
    if announced_length(&headers).is_some_and(|length| length > text_limit) {
        return Err(body_too_large());
    }
    let body = axum::body::to_bytes(body, text_limit)
        .await
        .map_err(|err| body_read_error(&err))?;
    let from_query = parse_query_with(query.as_deref(), &SEND_RULES)?;
    let from_body: SendFields = parse_body_with(&headers, body, &SEND_RULES).await?;
    accept(&state, &headers, from_body.or(from_query), Vec::new(), None).await
}

/// The answer to a body over its limit, as axum's own limit gives it ([`ApiError::from_body`]).
fn body_too_large() -> ApiError {
    ApiError::PayloadTooLarge("request body is too large".into())
}

/// A body that could not be read: over its limit (413), or broken.
fn body_read_error(err: &(dyn std::error::Error + 'static)) -> ApiError {
    if attach::is_length_limit(err) {
        body_too_large()
    } else {
        ApiError::BadRequest(format!("could not read request body: {err}"))
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn announced_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Content-Length: 0`: no body, whatever its type says (the query has the fields).
fn announced_empty(headers: &HeaderMap) -> bool {
    announced_length(headers) == Some(0)
}

/// `POST /send` with `multipart/form-data`: text fields as in a form, and parts named
/// `file` stored as they stream in (never whole in memory). The token must be known
/// before the first file part (query, Bearer header or an earlier `token` field): the
/// sender is authenticated there, once, so that nothing is stored for a stranger.
async fn send_multipart(
    state: &AppState,
    headers: &HeaderMap,
    from_query: SendFields,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    let mut uploads = Uploads::new(state.store.clone());
    match read_multipart(state, headers, &from_query, body, &mut uploads).await {
        Ok((from_body, sender)) => {
            accept(
                state,
                headers,
                from_body.or(from_query),
                uploads.into_inner(),
                sender,
            )
            .await
        }
        Err(err) => {
            uploads.discard().await;
            Err(err)
        }
    }
}

/// What [`send_multipart`] reads: the text fields, and the sender if a file part made
/// it authenticate them. Files go into `uploads`.
async fn read_multipart(
    state: &AppState,
    headers: &HeaderMap,
    from_query: &SendFields,
    body: Body,
    uploads: &mut Uploads,
) -> Result<(SendFields, Option<Sender>), ApiError> {
    let bad = |e: multer::Error| multipart_error(&e);
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text_limit = max_send_body(state.max_content_bytes);
    let Some(stream) = skip_blank_start(body.into_data_stream(), text_limit).await? else {
        // A blank body: the fields are the query's, as in every other form.
        return Ok((SendFields::default(), None));
    };
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let text_limit_u64 = u64::try_from(text_limit).unwrap_or(u64::MAX);
    let upload_limit = state.media.max_upload_body(state.max_content_bytes);
    let sizes = multer::SizeLimit::new()
        .whole_stream(u64::try_from(upload_limit).unwrap_or(u64::MAX))
        .per_field(text_limit_u64)
        .for_field(FILE_PART, state.media.limits.max_bytes);
    let mut multipart = multer::Multipart::with_constraints(
        stream,
        boundary,
        multer::Constraints::new().size_limit(sizes),
    );
    let mut fields: Vec<(String, String)> = Vec::new();
    // What names and values of text fields may add up to: the limit of a form body.
    let mut text_left = text_limit;
    let mut sender: Option<Sender> = None;
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name: String = field.name().unwrap_or("").to_owned();
        if name == FILE_PART {
            let max_files = state.media.max_files;
            if uploads.len() >= usize::try_from(max_files).unwrap_or(usize::MAX) {
                return Err(attach::too_many(max_files));
            }
            if sender.is_none() {
                sender = Some(sender_before_files(state, headers, &fields, from_query).await?);
            }
            let part_name = field.file_name().map(str::to_owned);
            let filename = part_name
                .as_deref()
                .and_then(crate::media::sanitize_filename);
            let position = uploads.len() + 1;
            let label = match &filename {
                Some(name) => format!("file {name:?}"),
                None => format!("file {position}"),
            };
            let max_bytes = state.media.limits.max_bytes;
            let blob = attach::store_body(state, field, &label, |e| match e {
                multer::Error::FieldSizeExceeded { .. } => attach::too_large(&label, max_bytes),
                other => multipart_error(&other),
            })
            .await?;
            if blob.size == 0 && part_name.as_deref() == Some("") {
                // A browser's file input left empty: no file at all.
                attach::remove_or_log(&state.store, &blob).await;
                continue;
            }
            let filename = filename.unwrap_or_else(|| attach::made_up_name(&blob, false, position));
            uploads.push(Upload {
                blob,
                filename,
                declared_image: false,
            });
            continue;
        }
        let shown: String = name.chars().take(64).collect();
        if field.file_name().is_some() {
            return Err(ApiError::BadRequest(format!(
                "multipart field {shown:?} is a file; send files as parts named \"{FILE_PART}\" \
                 and text fields (title, content, …) without a file name"
            )));
        }
        SEND_RULES.check([name.as_str()], "multipart body")?;
        if name == "token" && sender.is_some() {
            return Err(ApiError::BadRequest(
                "the \"token\" field must come before the first file part".into(),
            ));
        }
        text_left = text_left
            .checked_sub(name.len())
            .ok_or_else(body_too_large)?;
        let mut value = Vec::new();
        let mut field = field;
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            text_left = text_left
                .checked_sub(chunk.len())
                .ok_or_else(body_too_large)?;
            value.extend_from_slice(&chunk);
        }
        let Ok(value) = String::from_utf8(value) else {
            return Err(ApiError::BadRequest(format!(
                "field {shown:?} in the multipart body is not valid UTF-8; encode text as UTF-8"
            )));
        };
        fields.push((name, value));
    }
    let encoded = serde_urlencoded::to_string(&fields)
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
    let from_body = serde_urlencoded::from_str(&encoded)
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
    Ok((from_body, sender))
}

/// The sender of a request whose first file part has arrived: the token must be known by
/// now (Bearer header, a `token` field before the part, or the query).
async fn sender_before_files(
    state: &AppState,
    headers: &HeaderMap,
    fields: &[(String, String)],
    from_query: &SendFields,
) -> Result<Sender, ApiError> {
    let field = fields
        .iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.as_str());
    let Some(token) = auth::find_token(headers, &[field, from_query.token.as_deref()]) else {
        auth::refused(state, TokenRoute::Send(Endpoint::Native));
        return Err(ApiError::Unauthorized(
            "missing push token: it must be known before the first file part; pass ?token=…, \
             an Authorization: Bearer header, or a \"token\" field placed before the files"
                .into(),
        ));
    };
    authorized_sender(state, Some(token), Endpoint::Native).await
}

/// A multipart body's own error: over a size limit (413) or malformed (400).
fn multipart_error(err: &multer::Error) -> ApiError {
    match err {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            body_too_large()
        }
        other if attach::is_length_limit(other) => body_too_large(),
        other => ApiError::BadRequest(format!("invalid multipart body: {other}")),
    }
}

/// The body's stream, unless it is empty or blank (whitespace only, read up to `limit`).
async fn skip_blank_start(
    mut stream: axum::body::BodyDataStream,
    limit: usize,
) -> Result<
    Option<impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static>,
    ApiError,
> {
    let mut blank: Vec<Bytes> = Vec::new();
    let mut read = 0usize;
    loop {
        match stream.next().await {
            None => return Ok(None),
            Some(Err(err)) => return Err(body_read_error(&err)),
            Some(Ok(chunk)) => {
                read = read.saturating_add(chunk.len());
                let is_blank = chunk.iter().all(u8::is_ascii_whitespace);
                blank.push(chunk);
                if !is_blank {
                    let start = futures_util::stream::iter(blank.into_iter().map(Ok));
                    return Ok(Some(start.chain(stream)));
                }
                if read > limit {
                    return Err(body_too_large());
                }
            }
        }
    }
}

/// The query string into `T`, every name accepted (see [`parse_query_with`]).
pub(crate) fn parse_query<T: serde::de::DeserializeOwned + Default>(
    query: Option<&str>,
) -> Result<T, ApiError> {
    parse_query_with(query, &FieldRules::LENIENT)
}

/// The query string into `T`, its names checked against `rules`.
pub(super) fn parse_query_with<T: serde::de::DeserializeOwned + Default>(
    query: Option<&str>,
    rules: &FieldRules,
) -> Result<T, ApiError> {
    match query {
        None | Some("") => Ok(T::default()),
        Some(q) => {
            require_utf8_form(q.as_bytes(), "query string")?;
            decode_form(q, rules, "query string")
        }
    }
}

/// Form-encoded `input` (UTF-8 already checked) into `T`, its names checked first.
fn decode_form<T: serde::de::DeserializeOwned>(
    input: &str,
    rules: &FieldRules,
    what: &str,
) -> Result<T, ApiError> {
    let invalid =
        |e: serde_urlencoded::de::Error| ApiError::BadRequest(format!("invalid {what}: {e}"));
    if !rules.is_lenient() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(input).map_err(invalid)?;
        rules.check(pairs.iter().map(|(name, _)| name.as_str()), what)?;
    }
    serde_urlencoded::from_str(input).map_err(invalid)
}

/// Every name and value of `application/x-www-form-urlencoded` input must be UTF-8 once
/// percent-decoded. The value itself is never echoed (it may be a token).
pub(super) fn require_utf8_form(input: &[u8], what: &str) -> Result<(), ApiError> {
    for pair in input.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let name = percent_encoding::percent_decode(name).collect::<Vec<u8>>();
        let Ok(name) = String::from_utf8(name) else {
            return Err(ApiError::BadRequest(format!(
                "a field name in the {what} is not valid UTF-8 after percent-decoding; \
                 encode text as UTF-8"
            )));
        };
        let value: Vec<u8> = percent_encoding::percent_decode(value).collect();
        if std::str::from_utf8(&value).is_err() {
            let name: String = name.chars().take(64).collect();
            return Err(ApiError::BadRequest(format!(
                "field {name:?} in the {what} is not valid UTF-8 after percent-decoding; \
                 encode text as UTF-8"
            )));
        }
    }
    Ok(())
}

fn require_utf8_json(body: &[u8]) -> Result<(), ApiError> {
    std::str::from_utf8(body).map(|_| ()).map_err(|e| {
        ApiError::BadRequest(format!(
            "the JSON body is not valid UTF-8 (at byte {}); encode text as UTF-8",
            e.valid_up_to()
        ))
    })
}

/// The fields of a compat route's request: from the body, then from the query string
/// (in that order; the caller decides which wins). Errors come in the order a client fixes
/// them: the query, a body that could not be read, then the body's content.
pub(super) async fn body_and_query<T: serde::de::DeserializeOwned + Default>(
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    rules: &FieldRules,
) -> Result<(T, T), ApiError> {
    let from_query = parse_query_with(query, rules)?;
    let body = body.map_err(ApiError::from_body)?;
    Ok((parse_body_with(headers, body, rules).await?, from_query))
}

/// A JSON, form-encoded or multipart body into `T` (every form checked for UTF-8 first,
/// then its names against `rules`).
pub(super) async fn parse_body_with<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Bytes,
    rules: &FieldRules,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence == "multipart/form-data" {
        // The boundary is case-sensitive: parse it from the header as sent.
        let raw = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return parse_multipart(raw, body, rules).await;
    }
    let body: &[u8] = &body;
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let is_json = match essence {
        "application/json" => true,
        "application/x-www-form-urlencoded" => false,
        // Some clients send no type at all (curl -d without -H sends form-encoding).
        "" => looks_like_json,
        // Browsers' no-preflight requests send JSON as text/plain; other text is not ours.
        "text/plain" if looks_like_json => true,
        e if e.ends_with("+json") => true,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported Content-Type {other:?}: send {ACCEPTED_TYPES}"
            )));
        }
    };
    if is_json {
        require_utf8_json(body)?;
        let invalid =
            |e: serde_json::Error| ApiError::BadRequest(format!("invalid JSON body: {e}"));
        if rules.is_lenient() {
            return serde_json::from_slice(body).map_err(invalid);
        }
        let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
        if let Some(object) = value.as_object() {
            rules.check(object.keys().map(String::as_str), "JSON body")?;
        }
        serde_json::from_value(value).map_err(invalid)
    } else {
        require_utf8_form(body, "form body")?;
        // UTF-8 was checked just above (raw bytes included).
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::BadRequest("the form body is not valid UTF-8".into()))?;
        decode_form(text, rules, "form body")
    }
}

/// `multipart/form-data` (curl -F): text fields become the same fields as a form; file
/// parts are not messages and are refused.
async fn parse_multipart<T: serde::de::DeserializeOwned + Default>(
    content_type: &str,
    body: Bytes,
    rules: &FieldRules,
) -> Result<T, ApiError> {
    let fields = multipart_fields(content_type, body).await?;
    rules.check(
        fields.iter().map(|(name, _)| name.as_str()),
        "multipart body",
    )?;
    let encoded = serde_urlencoded::to_string(&fields)
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
    serde_urlencoded::from_str(&encoded)
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))
}

/// The text fields of a `multipart/form-data` body, in order; a file part, text that is
/// not UTF-8 or a malformed body is a 400.
pub(super) async fn multipart_fields(
    content_type: &str,
    body: Bytes,
) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |e: multer::Error| ApiError::BadRequest(format!("invalid multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields: Vec<(String, String)> = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        if field.file_name().is_some() {
            let name: String = name.chars().take(64).collect();
            return Err(ApiError::BadRequest(format!(
                "multipart field {name:?} is a file; send text fields (title, content, …)"
            )));
        }
        let bytes = field.bytes().await.map_err(bad)?;
        let Ok(value) = String::from_utf8(bytes.to_vec()) else {
            let name: String = name.chars().take(64).collect();
            return Err(ApiError::BadRequest(format!(
                "field {name:?} in the multipart body is not valid UTF-8; encode text as UTF-8"
            )));
        };
        fields.push((name, value));
    }
    Ok(fields)
}

/// Empty or whitespace-only counts as absent.
pub(super) fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `attachments`: files already stored (multipart parts), removed unless accepted;
/// `sender`: already authenticated (before the files were stored).
async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    fields: SendFields,
    attachments: Vec<Upload>,
    sender: Option<Sender>,
) -> Result<Json<Accepted>, ApiError> {
    let uploads = Uploads::adopt(state.store.clone(), attachments);
    let checked = idempotency_key(headers, fields.idempotency_key)
        .and_then(|key| Ok((key, format(fields.format.as_deref())?)));
    let checked = checked.and_then(|(key, format)| {
        let when = schedule(fields.delay.as_deref(), fields.at.as_deref())?;
        let ack = ack_ask(
            fields.ack.as_deref(),
            fields.escalate.as_deref(),
            state.ack.escalate_min,
        )?;
        Ok((key, format, when, ack))
    });
    let (idempotency_key, format, when, ack) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            uploads.discard().await;
            return Err(err);
        }
    };
    let token = auth::find_token(headers, &[fields.token.as_deref()]);
    let accepted = submit(
        state,
        Submission {
            token,
            title: fields.title,
            content: fields.content.or(fields.desp),
            channel: fields.channel,
            idempotency_key,
            format,
            url: fields.url,
            image_url: fields.image_url,
            file_url: fields.file_url,
            attachments: uploads.into_inner(),
            sender,
            when,
            ack,
            ..Submission::default()
        },
    )
    .await?;
    Ok(answer(&accepted))
}

/// `/send`'s `format` (none or empty: text); the console's compose page reads it the same.
pub(super) fn format(typed: Option<&str>) -> Result<Format, ApiError> {
    typed
        .unwrap_or("")
        .parse::<Format>()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `/send`'s `ack` and `escalate` (empty counts as absent): `ack` a yes or a no; `escalate`
/// a duration from `ack.escalate_min` to 24 hours, which implies `ack`.
pub(super) fn ack_ask(
    ack: Option<&str>,
    escalate: Option<&str>,
    escalate_min: std::time::Duration,
) -> Result<Option<crate::store::AckAsk>, ApiError> {
    fn given(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let asked = match given(ack).map(str::to_ascii_lowercase).as_deref() {
        None => false,
        Some("true" | "1" | "yes" | "on") => true,
        Some("false" | "0" | "no" | "off") => false,
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(ApiError::BadRequest(format!(
                "ack {shown:?} is not a yes or a no: use ack=true (or false)"
            )));
        }
    };
    let bounds = || {
        format!(
            "between {} and {}",
            humantime::format_duration(escalate_min),
            humantime::format_duration(crate::config::ESCALATE_MAX)
        )
    };
    let escalate_after = match given(escalate) {
        None => None,
        Some(typed) => {
            let shown: String = typed.chars().take(32).collect();
            let after = when::duration(typed).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "escalate {shown:?} is not a duration such as 10m, 1h or 90 (seconds); \
                     give one {}",
                    bounds()
                ))
            })?;
            if after < escalate_min || after > crate::config::ESCALATE_MAX {
                return Err(ApiError::BadRequest(format!(
                    "escalate {shown:?} is out of bounds: give a time {}",
                    bounds()
                )));
            }
            Some(after)
        }
    };
    Ok((asked || escalate_after.is_some()).then_some(crate::store::AckAsk { escalate_after }))
}

/// `/send`'s `delay` or `at` (not both; empty counts as absent).
fn schedule(delay: Option<&str>, at: Option<&str>) -> Result<Option<When>, ApiError> {
    fn given(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.trim().is_empty())
    }
    match (given(delay), given(at)) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give delay or at, not both: delay is a time from now, at a time of day".into(),
        )),
        (Some(delay), None) => when::delay(delay).map(Some).map_err(ApiError::BadRequest),
        (None, Some(at)) => when::at(at).map(Some).map_err(ApiError::BadRequest),
        (None, None) => Ok(None),
    }
}

/// The native answer to an accepted message (`/send`, the alert webhooks).
pub(super) fn answer(accepted: &crate::delivery::Accepted) -> Json<Accepted> {
    Json(Accepted {
        ok: true,
        id: accepted.message.id.to_string(),
        status: accepted.message.status,
        deliver_at: accepted.message.deliver_at.map(super::messages::rfc3339),
        duplicate: accepted.duplicate,
        recipients: accepted.group.map(|g| g.recipients),
    })
}

/// A message as any route that creates one hands it over: the native `/send` and every
/// compatibility route end here, so they share checks, limits, channels and durability.
#[derive(Debug, Default)]
pub(crate) struct Submission {
    pub token: Option<String>,
    pub title: Option<String>,
    pub content: Option<String>,
    /// `wecom`, `email`, `all` or an ordered list; none: the member's order.
    pub channel: Option<String>,
    pub idempotency_key: Option<String>,
    /// A link the member should open: the message becomes a card that opens it.
    pub url: Option<String>,
    pub urgency: Urgency,
    /// The content's syntax (`format=markdown`; ServerChan's `desp` is markdown).
    pub format: Format,
    /// The route it came in on (for the metrics).
    pub endpoint: Endpoint,
    /// An image to fetch (after the token is checked) and attach: 415 unless it is one.
    pub image_url: Option<String>,
    /// A file to fetch and attach.
    pub file_url: Option<String>,
    /// The name to give the file fetched from `file_url` (ntfy's `Filename`); none: the
    /// server's name for it.
    pub file_name: Option<String>,
    /// Images and files stored already (multipart parts), in order: attached, or removed
    /// when the message is refused or is a duplicate.
    pub attachments: Vec<Upload>,
    /// The sender, when the route authenticated them already (before storing files):
    /// [`authorized_sender`] counts a request once.
    pub sender: Option<Sender>,
    /// When to deliver it (`delay`, `at`, ntfy's `X-Delay`…), resolved once the sender is
    /// known (their time zone, `delivery.max_delay`); none: at once.
    pub when: Option<When>,
    /// Ask the member to acknowledge it (`ack=true`), and escalate when nobody does
    /// (`escalate=10m`).
    pub ack: Option<crate::store::AckAsk>,
}

/// Checks, authenticates (with the per-member send rate) and stores a message; answers
/// once it is durable. Its attachments (given, or fetched here) are committed with it, or
/// removed when it is refused or a duplicate.
pub(crate) async fn submit(
    state: &AppState,
    mut sub: Submission,
) -> Result<crate::delivery::Accepted, ApiError> {
    let mut uploads = Uploads::adopt(state.store.clone(), std::mem::take(&mut sub.attachments));
    match submit_with(state, sub, &mut uploads).await {
        Ok(accepted) if !accepted.duplicate => {
            drop(uploads.into_inner());
            Ok(accepted)
        }
        other => {
            uploads.discard().await;
            other
        }
    }
}

async fn submit_with(
    state: &AppState,
    sub: Submission,
    uploads: &mut Uploads,
) -> Result<crate::delivery::Accepted, ApiError> {
    // U+0000 shows nothing and PostgreSQL cannot store it in text: it is dropped (a 400
    // would lose an alert whose labels carry one; Alertmanager does not retry a 4xx).
    let strip_nul = |text: Option<String>| text.map(|t| t.replace('\0', ""));
    // Text that shows nothing (spaces, zero-width and other invisible characters) is absent.
    let title = visible(strip_nul(sub.title)).map(|t| sub.urgency.mark(&t));
    let url = present(strip_nul(sub.url)).map(|u| u.trim().to_owned());
    if let Some(url) = &url {
        check_url(url)?;
    }
    // A bare link is a message too: the link is its content.
    let content =
        visible(strip_nul(sub.content)).or_else(|| url.clone().filter(|_| title.is_none()));
    if title.as_ref().is_some_and(|t| t.len() > MAX_TITLE_BYTES) {
        return Err(ApiError::PayloadTooLarge(format!(
            "title is longer than {MAX_TITLE_BYTES} bytes"
        )));
    }
    if content
        .as_ref()
        .is_some_and(|c| c.len() > state.max_content_bytes)
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "content is longer than {} (server.max_content_bytes)",
            describe_bytes(state.max_content_bytes)
        )));
    }
    if sub
        .idempotency_key
        .as_ref()
        .is_some_and(|k| !crate::store::storable(k))
    {
        return Err(ApiError::BadRequest(
            "idempotency key contains a NUL character (U+0000); use printable text".into(),
        ));
    }
    if sub
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(ApiError::BadRequest(format!(
            "idempotency key is longer than {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    let choice = ChannelChoice::parse(sub.channel.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("invalid channel: {e} (or all)")))?;
    // URLs to fetch: checked now (a refused address costs nothing), fetched once the
    // sender is known.
    let to_fetch: Vec<(&str, String, bool)> = [
        ("image_url", sub.image_url, true),
        ("file_url", sub.file_url, false),
    ]
    .into_iter()
    .filter_map(|(what, url, image)| {
        present(strip_nul(url)).map(|url| (what, url.trim().to_owned(), image))
    })
    .collect();
    let max_files = state.media.max_files;
    if uploads.len() + to_fetch.len() > usize::try_from(max_files).unwrap_or(usize::MAX) {
        return Err(attach::too_many(max_files));
    }
    for (what, url, _) in &to_fetch {
        state
            .media
            .fetcher
            .check(url)
            .map_err(|e| attach::fetch_error(what, e))?;
    }
    // Authenticating reads the member's preferences too where that saves a round trip.
    let sender = match sub.sender {
        Some(sender) => sender,
        None => authorized_sender(state, sub.token, sub.endpoint).await?,
    };
    // An urgent message with no title still shows its urgency.
    let title = title.or_else(|| {
        (sub.urgency >= Urgency::High && content.is_some()).then(|| sub.urgency.mark(""))
    });
    let has_files = !uploads.is_empty() || !to_fetch.is_empty();
    if title.as_deref().is_none_or(|t| t.trim().is_empty()) && content.is_none() && !has_files {
        return Err(ApiError::BadRequest(
            "nothing to send: give a title or content (or desp) with visible text, or a file"
                .into(),
        ));
    }
    // The compatible routes' own urgency asks for an acknowledgement (`ack.urgent`).
    let ack = sub.ack.or_else(|| {
        (state.ack.urgent
            && sub.urgency == Urgency::Urgent
            && matches!(
                sub.endpoint,
                Endpoint::Bark | Endpoint::Gotify | Endpoint::Ntfy
            ))
        .then_some(crate::store::AckAsk {
            escalate_after: None,
        })
    });
    let (userid, prefs, verify_token) = match sender {
        Sender::Member(userid, prefs, verify) => (userid, prefs, verify),
        Sender::Group(group) => {
            let prepared = super::group_send::Prepared {
                title,
                content,
                url,
                choice,
                to_fetch,
                when: sub.when,
                file_name: sub.file_name,
                format: sub.format,
                urgency: sub.urgency,
                idempotency_key: sub.idempotency_key,
                endpoint: sub.endpoint,
                ack,
            };
            return super::group_send::submit_group(state, group, prepared, uploads).await;
        }
    };
    let prefs = match prefs {
        Some(prefs) => prefs,
        None => state.store.member_prefs(&userid).await?,
    };
    let reach = Reach {
        userid: Some(userid.clone()),
        bound: prefs.bound(),
        own_order: prefs.channels,
    };
    let (route, deliver_all) = state
        .outbox
        .route(&choice, &reach)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Before anything is fetched: a time that cannot be is refused with nothing stored.
    let deliver_at = due_for(
        state,
        sub.when,
        crate::time::UnixMillis::now(),
        prefs.utc_offset,
    )?;
    fetch_all(state, to_fetch, sub.file_name.as_deref(), uploads).await?;
    let attachments = attach::attachments(
        uploads.as_slice(),
        route.channels().contains(&ChannelName::WeCom),
    )?;
    let title = files_title(title, content.as_deref(), uploads, sub.urgency);
    let request_digest = sub.idempotency_key.as_ref().map(|_| {
        request_digest(
            title.as_deref(),
            content.as_deref(),
            sub.format,
            url.as_deref(),
            &choice,
            &uploaded(uploads),
            sub.when,
        )
    });
    // The member's quiet hours: a message they hold waits for the window's end.
    let urgent = sub.urgency == Urgency::Urgent;
    let quiet = MemberHours::of(
        prefs.quiet,
        prefs.utc_offset,
        state.quiet_hours,
        state.utc_offset,
    );
    let (deliver_at, held) = due_time(deliver_at, quiet, urgent, UnixMillis::now());
    let accepted = state
        .outbox
        .accept(NewMessage {
            userid,
            title,
            content,
            idempotency_key: sub.idempotency_key,
            request_digest,
            route,
            deliver_all,
            address_to: None,
            format: sub.format,
            look: prefs.look,
            url,
            attachments,
            deliver_at,
            urgent,
            held,
            resent_from: None,
            verify_token,
            ack,
        })
        .await
        .inspect_err(|err| {
            // The token was rotated (on another instance) while it was kept in memory:
            // refused like any other revoked token, and counted as such.
            if matches!(
                err,
                crate::delivery::AcceptError::Store(crate::store::StoreError::TokenRevoked)
            ) {
                auth::refused(state, TokenRoute::Send(sub.endpoint));
            }
        })?;
    if !accepted.duplicate {
        state.metrics.accepted(sub.endpoint);
    }
    Ok(accepted)
}

/// When a message accepted `now` is due, and why it waits. A time the sender chose
/// (`sender_at`: `delay`, `at`) that is still to come stands as it is: should it fall in
/// the member's quiet window, the lane holds the message then, by the window as it is then
/// (holding it now until the end of that window would lose the sender's time: `quiet off`
/// would make it due at once, before that time). Otherwise, inside the member's quiet
/// window, a message the window holds (any, when `strict`; else all but urgent ones) is
/// due at the window's end, held for quiet hours; else when the sender said, or at once.
pub(super) fn due_time(
    sender_at: Option<UnixMillis>,
    quiet: MemberHours,
    urgent: bool,
    now: UnixMillis,
) -> (Option<UnixMillis>, Option<Held>) {
    if let Some(at) = sender_at.filter(|at| *at > now) {
        return (Some(at), None);
    }
    match quiet.hold_until(now, urgent) {
        Some(end) => (Some(end), Some(Held::Quiet)),
        None => (sender_at, None),
    }
}

/// When a message sent with `when` is due for a member whose clock is `utc_offset` (secs;
/// `None`: the server's) — `10am` is the member's — or a 400 when it cannot be.
pub(super) fn due_for(
    state: &AppState,
    when: Option<When>,
    now: crate::time::UnixMillis,
    utc_offset: Option<i32>,
) -> Result<Option<crate::time::UnixMillis>, ApiError> {
    match when {
        Some(when) => when
            .resolve(
                now,
                utc_offset.unwrap_or(state.outbox.utc_offset()),
                state.outbox.max_delay(),
            )
            .map_err(ApiError::BadRequest),
        None => Ok(None),
    }
}

/// Fetches `image_url`/`file_url` (`(field, URL, image)`) into `uploads`, after the files
/// sent with the request; a fetched file (not an image) takes `file_name` when given.
pub(super) async fn fetch_all(
    state: &AppState,
    to_fetch: Vec<(&'static str, String, bool)>,
    file_name: Option<&str>,
    uploads: &mut Uploads,
) -> Result<(), ApiError> {
    for (what, url, image) in to_fetch {
        let position = uploads.len() + 1;
        let mut upload = attach::fetch(state, what, &url, image, position).await?;
        if let Some(name) = file_name.filter(|_| !image)
            && let Some(name) = crate::media::sanitize_filename(name)
        {
            upload.filename = name;
        }
        uploads.push(upload);
    }
    Ok(())
}

/// The title: the sender's, or for a message of files alone their names (with the
/// urgency mark), so that every channel has text.
pub(super) fn files_title(
    title: Option<String>,
    content: Option<&str>,
    uploads: &Uploads,
    urgency: Urgency,
) -> Option<String> {
    match title {
        None if content.is_none() && !uploads.is_empty() => {
            Some(urgency.mark(&attach::title(uploads.as_slice(), MAX_TITLE_BYTES)))
        }
        title => title,
    }
}

/// The files as [`request_digest`] takes them: (SHA-256, name) each, in order.
pub(super) fn uploaded(uploads: &Uploads) -> Vec<(&str, &str)> {
    uploads
        .as_slice()
        .iter()
        .map(|u| (u.blob.sha256.as_str(), u.filename.as_str()))
        .collect()
}

/// The digest of what a request determines of its message — title (with its urgency
/// mark), content, format, link, channel choice, files and schedule — as SHA-1 hex: a
/// repeated idempotency key must come with the same digest. Each part is length-prefixed
/// (absent ≠ empty). The schedule counts as the sender wrote it (`delay=30m` retried a
/// minute later is the same request), and only when given, so that the digest of a
/// message without one is as it was before schedules existed.
pub(super) fn request_digest(
    title: Option<&str>,
    content: Option<&str>,
    format: Format,
    url: Option<&str>,
    choice: &ChannelChoice,
    files: &[(&str, &str)],
    when: Option<When>,
) -> String {
    use sha1::Digest as _;
    let choice = match choice {
        ChannelChoice::Default => String::new(),
        ChannelChoice::All => "all".to_owned(),
        ChannelChoice::Order(route) => route.to_stored(),
    };
    let schedule = when.map(|w| match w {
        When::In(d) => format!("in {}", d.as_millis()),
        When::At(at) => format!("at {}", at.as_millis()),
        When::Clock { secs, tomorrow } => format!("clock {secs} {tomorrow}"),
    });
    let mut hasher = sha1::Sha1::new();
    hasher.update(b"pushbot-request-v1");
    let texts = [title, content, Some(format.as_str()), url, Some(&choice)];
    // Each file's hash and name (none: the digest of a message without files is as it was
    // before files existed, so a repeat across an upgrade is still one).
    let files = files
        .iter()
        .flat_map(|(sha256, name)| [Some(*sha256), Some(*name)]);
    let schedule = schedule.as_deref().map(|w| [Some("schedule"), Some(w)]);
    for part in texts
        .into_iter()
        .chain(files)
        .chain(schedule.into_iter().flatten())
    {
        match part {
            None => hasher.update([0u8]),
            Some(text) => {
                hasher.update([1u8]);
                hasher.update(u64::try_from(text.len()).unwrap_or(u64::MAX).to_be_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    hex::encode(hasher.finalize())
}

/// A sender's link must be one a phone can open.
fn check_url(url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::BadRequest(format!(
            "url is longer than {MAX_URL_BYTES} bytes"
        )));
    }
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        _ => Err(ApiError::BadRequest(
            "url must be an absolute http:// or https:// link".into(),
        )),
    }
}

/// `65536` → "64 KiB", `1000` → "1000 bytes".
fn describe_bytes(n: usize) -> String {
    if n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    mod ack {
        use std::time::Duration;

        use proptest::prelude::*;

        use super::super::ack_ask;
        use crate::store::AckAsk;

        const MIN: Duration = Duration::from_secs(60);

        fn asked(escalate_after: Option<u64>) -> Option<AckAsk> {
            Some(AckAsk {
                escalate_after: escalate_after.map(Duration::from_secs),
            })
        }

        #[test]
        fn ack_and_escalate_read_as_documented() {
            assert_eq!(ack_ask(None, None, MIN).unwrap(), None);
            assert_eq!(ack_ask(Some(" "), Some(""), MIN).unwrap(), None);
            for yes in ["true", "TRUE", "1", "yes", "on", " true "] {
                assert_eq!(ack_ask(Some(yes), None, MIN).unwrap(), asked(None), "{yes}");
            }
            for no in ["false", "0", "no", "off"] {
                assert_eq!(ack_ask(Some(no), None, MIN).unwrap(), None, "{no}");
            }
            // escalate implies ack, even with ack=false.
            assert_eq!(ack_ask(None, Some("10m"), MIN).unwrap(), asked(Some(600)));
            assert_eq!(
                ack_ask(Some("false"), Some("90"), MIN).unwrap(),
                asked(Some(90))
            );
            assert_eq!(
                ack_ask(None, Some("1h30m"), MIN).unwrap(),
                asked(Some(5400))
            );
            assert_eq!(ack_ask(None, Some("1m"), MIN).unwrap(), asked(Some(60)));
            assert_eq!(
                ack_ask(None, Some("24h"), MIN).unwrap(),
                asked(Some(86_400))
            );
            for (typed, says) in [
                ("59s", "between 1m and 1day"),
                ("24h1s", "between 1m and 1day"),
                ("0", "between 1m and 1day"),
                ("soon", "not a duration"),
                ("-5m", "not a duration"),
            ] {
                let err = ack_ask(None, Some(typed), MIN).unwrap_err().to_string();
                assert!(err.contains(says), "{typed}: {err}");
            }
            let err = ack_ask(Some("maybe"), None, MIN).unwrap_err().to_string();
            assert!(err.contains("ack \"maybe\""), "{err}");
        }

        proptest! {
            /// Whatever is typed: an answer (never a panic), and an escalation only within
            /// the bounds.
            #[test]
            fn any_input_is_read_or_refused(ack in ".{0,12}", escalate in ".{0,16}") {
                if let Ok(Some(AckAsk { escalate_after: Some(after) })) =
                    ack_ask(Some(&ack), Some(&escalate), MIN)
                {
                    prop_assert!(after >= MIN && after <= crate::config::ESCALATE_MAX);
                }
            }

            #[test]
            fn whole_seconds_in_bounds_are_taken_as_given(secs in 60u64..=86_400) {
                prop_assert_eq!(
                    ack_ask(None, Some(&secs.to_string()), MIN).unwrap(),
                    asked(Some(secs))
                );
            }
        }
    }

    use super::*;
    use axum::http::HeaderValue;

    async fn body(h: &HeaderMap, b: &'static [u8]) -> Result<SendFields, ApiError> {
        parse_body_with(h, Bytes::from_static(b), &SEND_RULES).await
    }

    fn query(q: Option<&str>) -> Result<SendFields, ApiError> {
        parse_query_with(q, &SEND_RULES)
    }

    fn multipart(fields: &[(&str, &str)]) -> (HeaderMap, Bytes) {
        let mut body = String::new();
        for (name, value) in fields {
            body.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str("--XyZ--\r\n");
        (
            headers("multipart/form-data; boundary=XyZ"),
            Bytes::from(body),
        )
    }

    /// Inside the member's window a message waits for its end, held for quiet hours;
    /// urgent ones go at once unless `strict`; outside it, or without quiet hours, nothing
    /// waits.
    #[test]
    fn a_message_the_members_quiet_hours_hold_is_due_at_their_end() {
        use crate::delivery::quiet::QuietSetting;
        // 2026-03-02T17:00:00Z: 01:00 at +08:00; the window ends at 07:00 there, 23:00Z.
        let now = UnixMillis::from_millis(1_772_470_800_000);
        let end = UnixMillis::from_millis(1_772_492_400_000);
        let night = "23:00-07:00".parse::<QuietSetting>().unwrap();
        let strict = "23:00-07:00 strict".parse::<QuietSetting>().unwrap();
        let cst = 8 * 3600;
        let of = |own, default| MemberHours::of(own, None, default, cst);
        let QuietSetting::On(server) = night else {
            unreachable!()
        };
        assert_eq!(
            due_time(None, of(Some(night), None), false, now),
            (Some(end), Some(Held::Quiet))
        );
        assert_eq!(
            due_time(None, of(Some(night), None), true, now),
            (None, None)
        );
        assert_eq!(
            due_time(None, of(Some(strict), None), true, now),
            (Some(end), Some(Held::Quiet))
        );
        // The server's default, unless the member turned quiet hours off.
        assert_eq!(
            due_time(None, of(None, Some(server)), false, now),
            (Some(end), Some(Held::Quiet))
        );
        assert_eq!(
            due_time(None, of(Some(QuietSetting::Off), Some(server)), false, now),
            (None, None)
        );
        assert_eq!(due_time(None, of(None, None), false, now), (None, None));
        // At the member's own offset, 01:00 Beijing time is 12:00 in New York: not quiet.
        let ny = MemberHours::of(Some(night), Some(-5 * 3600), None, cst);
        assert_eq!(due_time(None, ny, false, now), (None, None));
        // At the window's end it is over.
        assert_eq!(
            due_time(None, of(Some(night), None), false, end),
            (None, None)
        );
        // The sender's time stands, inside the window or not (the lane holds it then);
        // a time that has come is now.
        let later = now + std::time::Duration::from_secs(600);
        assert_eq!(
            due_time(Some(later), of(Some(strict), None), true, now),
            (Some(later), None)
        );
        assert_eq!(
            due_time(Some(now), of(Some(night), None), false, now),
            (Some(end), Some(Held::Quiet))
        );
        assert_eq!(
            due_time(Some(now), of(None, None), false, now),
            (Some(now), None)
        );
    }

    #[tokio::test]
    async fn unknown_fields_are_refused_in_every_form_naming_the_nearest() {
        let check = |e: ApiError, field: &str, near: Option<&str>| {
            assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(&format!("{field:?}")), "{text}");
            if let Some(near) = near {
                assert!(text.contains(&format!("did you mean {near:?}")), "{text}");
            }
        };
        let e = body(&headers("application/json"), br#"{"tilte":"t"}"#)
            .await
            .unwrap_err();
        check(e, "tilte", Some("title"));
        let e = body(
            &headers("application/json"),
            br#"{"title":"t","sleep":"1h"}"#,
        )
        .await
        .unwrap_err();
        check(e, "sleep", None);
        let e = body(&HeaderMap::new(), b"content=c&priority=high")
            .await
            .unwrap_err();
        check(e, "priority", None);
        let e = query(Some("token=x&contnet=c")).unwrap_err();
        check(e, "contnet", Some("content"));
        let (h, b) = multipart(&[("title", "t"), ("idempotencykey", "k")]);
        let e = parse_body_with::<SendFields>(&h, b, &SEND_RULES)
            .await
            .unwrap_err();
        check(e, "idempotencykey", Some("idempotency_key"));
        // Cache-busters and every known field pass.
        let ok = query(Some("_=1699999&_cb=2&title=t&format=markdown&url=x")).unwrap();
        assert_eq!(ok.title.as_deref(), Some("t"));
        let ok = body(
            &headers("application/json"),
            br#"{"_":1,"content":"c","channel":"all"}"#,
        )
        .await
        .unwrap();
        assert_eq!(ok.content.as_deref(), Some("c"));
        let (h, b) = multipart(&[("title", "t"), ("_ts", "1")]);
        let ok: SendFields = parse_body_with(&h, b, &SEND_RULES).await.unwrap();
        assert_eq!(ok.title.as_deref(), Some("t"));
        // delay and at are fields of every form; JSON may give them as numbers.
        let ok = query(Some("delay=30m&at=1")).unwrap();
        assert_eq!(
            (ok.delay.as_deref(), ok.at.as_deref()),
            (Some("30m"), Some("1"))
        );
        let ok = body(&headers("application/json"), br#"{"delay":90,"at":null}"#)
            .await
            .unwrap();
        assert_eq!((ok.delay.as_deref(), ok.at), (Some("90"), None));
        let ok = body(&headers("application/json"), br#"{"at":1748739600}"#)
            .await
            .unwrap();
        assert_eq!(ok.at.as_deref(), Some("1748739600"));
        let (h, b) = multipart(&[("title", "t"), ("delay", "2h")]);
        let ok: SendFields = parse_body_with(&h, b, &SEND_RULES).await.unwrap();
        assert_eq!(ok.delay.as_deref(), Some("2h"));
        let e = body(&headers("application/json"), br#"{"delay":["1h"]}"#)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
    }

    /// A request without a schedule has the digest it had before schedules existed (a key
    /// repeated across the upgrade is still the same request); with one, the schedule as
    /// written counts.
    #[test]
    fn the_request_digest_covers_the_schedule_only_when_given() {
        let digest = |when| {
            request_digest(
                Some("t"),
                Some("c"),
                Format::Text,
                None,
                &ChannelChoice::Default,
                &[],
                when,
            )
        };
        assert_eq!(digest(None), "d8986e88199fd9be216bbf4c36c85ad7e873af05");
        let half_hour = digest(Some(When::In(std::time::Duration::from_secs(1800))));
        assert_ne!(half_hour, digest(None));
        assert_ne!(
            half_hour,
            digest(Some(When::In(std::time::Duration::from_secs(3600))))
        );
        assert_eq!(
            half_hour,
            digest(Some(When::In(std::time::Duration::from_secs(1800))))
        );
    }

    #[test]
    fn delay_or_at_but_not_both() {
        assert_eq!(schedule(None, None).unwrap(), None);
        assert_eq!(schedule(Some(" "), Some("")).unwrap(), None);
        assert_eq!(
            schedule(Some("90"), None).unwrap(),
            Some(When::In(std::time::Duration::from_secs(90)))
        );
        assert!(schedule(Some("1h"), Some("1748739600")).is_err());
        let e = schedule(Some("-1"), None).unwrap_err();
        assert!(
            e.to_string().contains("delay \"-1\" is not a duration"),
            "{e}"
        );
        let e = schedule(None, Some("garbage")).unwrap_err();
        assert!(
            e.to_string().contains("at \"garbage\" is not a time"),
            "{e}"
        );
    }

    #[test]
    fn lenient_rules_ignore_unknown_names_but_refuse_the_refused() {
        let rules = FieldRules {
            known: &[],
            refused: &[("delete", "cannot")],
            strict: false,
        };
        let ok: SendFields = parse_query_with(Some("title=t&whatever=1"), &rules).unwrap();
        assert_eq!(ok.title.as_deref(), Some("t"));
        let e = parse_query_with::<SendFields>(Some("title=t&delete=1"), &rules).unwrap_err();
        assert!(e.to_string().contains("\"delete\""), "{e}");
    }

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[tokio::test]
    async fn body_forms() {
        let json = body(&headers("application/json"), br#"{"title":"t","desp":"d"}"#)
            .await
            .unwrap();
        assert_eq!(json.title.as_deref(), Some("t"));
        assert_eq!(json.desp.as_deref(), Some("d"));
        let form = body(
            &headers("application/x-www-form-urlencoded"),
            b"token=abc&content=%E4%BD%A0%E5%A5%BD",
        )
        .await
        .unwrap();
        assert_eq!(form.content.as_deref(), Some("你好"));
        let sniffed = body(&HeaderMap::new(), br#" {"content":"c"}"#)
            .await
            .unwrap();
        assert_eq!(sniffed.content.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn bad_bodies_are_client_errors() {
        let e = body(&headers("application/json"), b"{nope")
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let e = body(&headers("application/json"), b"[1,2]")
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let e = body(&headers("image/png"), b"\x89PNG").await.unwrap_err();
        assert!(matches!(e, ApiError::UnsupportedMediaType(_)));
    }

    #[tokio::test]
    async fn plain_text_is_415_naming_the_accepted_types() {
        let e = body(&headers("text/plain"), b"disk full")
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::UnsupportedMediaType(_)), "{e:?}");
        let message = e.to_string();
        assert!(message.contains("application/json"), "{message}");
        assert!(
            message.contains("application/x-www-form-urlencoded"),
            "{message}"
        );
        // JSON sent as text/plain (a browser's no-preflight request) is still JSON.
        let json = body(&headers("text/plain"), br#"{"title":"t"}"#)
            .await
            .unwrap();
        assert_eq!(json.title.as_deref(), Some("t"));
        // No Content-Type: `{` means JSON, anything else is a form.
        let form = body(&HeaderMap::new(), b"title=t").await.unwrap();
        assert_eq!(form.title.as_deref(), Some("t"));
    }

    #[tokio::test]
    async fn invalid_utf8_is_400_in_every_form() {
        // %FF is not UTF-8 once decoded; serde_urlencoded alone would make it U+FFFD.
        let e = query(Some("token=x&title=%FF")).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("\"title\""), "{e}");
        assert!(e.to_string().contains("UTF-8"), "{e}");

        let e = body(
            &headers("application/x-www-form-urlencoded"),
            b"content=%C3%28",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("\"content\""), "{e}");

        // Raw (not percent-encoded) bad bytes and bad names count too.
        let e = body(&HeaderMap::new(), b"title=\xff").await.unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        let e = query(Some("%FF=1")).unwrap_err();
        assert!(e.to_string().contains("field name"), "{e}");

        let e = body(&headers("application/json"), b"{\"title\":\"\xff\"}")
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("UTF-8"), "{e}");

        // Valid multi-byte text passes.
        let ok = query(Some("title=%E4%BD%A0%E5%A5%BD+ok")).unwrap();
        assert_eq!(ok.title.as_deref(), Some("你好 ok"));
    }

    #[test]
    fn the_token_is_not_echoed_in_utf8_errors() {
        let e = query(Some("token=secret%FFtoken")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn body_fields_win_over_query() {
        let q = query(Some("title=q&token=qt")).unwrap();
        let b = body(&headers("application/json"), br#"{"title":"b"}"#)
            .await
            .unwrap();
        let merged = b.or(q);
        assert_eq!(merged.title.as_deref(), Some("b"));
        assert_eq!(merged.token.as_deref(), Some("qt"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a test runtime")
        }

        /// Text built from what matters to form and JSON parsers: separators, bad and good
        /// percent-escapes, field names (known, `_`-prefixed, near misses) and any text.
        pub(crate) fn tricky_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                prop::sample::select(vec![
                    "&",
                    "=",
                    "%",
                    "%FF",
                    "%E4%BD",
                    "%E4%BD%A0",
                    "+",
                    "_",
                    "{",
                    "}",
                    "\"",
                    ":",
                    ",",
                    "[",
                    "]",
                    "\\",
                    "\r\n",
                    "--XyZ",
                    "\u{0}",
                    "\u{feff}",
                ])
                .prop_map(str::to_owned),
                prop::sample::select(SEND_FIELDS).prop_map(str::to_owned),
                "[a-z_]{0,8}",
                any::<String>(),
            ];
            prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
        }

        fn content_type() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                prop::sample::select(vec![
                    "application/json",
                    "application/x-www-form-urlencoded",
                    "text/plain",
                    "application/merge-patch+json",
                    "multipart/form-data; boundary=XyZ",
                    "multipart/form-data",
                    "image/png",
                ])
                .prop_map(|t| Some(t.to_owned())),
                any::<String>().prop_map(Some),
            ]
        }

        fn typed(e: &ApiError) -> bool {
            matches!(
                e,
                ApiError::BadRequest(_)
                    | ApiError::UnsupportedMediaType(_)
                    | ApiError::PayloadTooLarge(_)
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any query string: fields, or a 400 — never a panic, never another error.
            #[test]
            fn any_query_is_fields_or_a_400(q in tricky_text()) {
                if let Err(e) = parse_query_with::<SendFields>(Some(&q), &SEND_RULES) {
                    prop_assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
                }
            }

            /// Any body under any content type: fields, or a typed client error.
            #[test]
            fn any_body_is_fields_or_a_typed_error(
                text in tricky_text(),
                raw in prop::collection::vec(any::<u8>(), 0..64),
                use_raw in any::<bool>(),
                ct in content_type(),
            ) {
                let mut h = HeaderMap::new();
                if let Some(ct) = ct.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
                    h.insert(CONTENT_TYPE, ct);
                }
                let bytes = if use_raw { Bytes::from(raw) } else { Bytes::from(text) };
                let got = runtime().block_on(parse_body_with::<SendFields>(&h, bytes, &SEND_RULES));
                if let Err(e) = got {
                    prop_assert!(typed(&e), "{e:?}");
                }
            }

            /// Multipart bodies with any names and values: fields, or a 400 (an unknown
            /// name among them is one).
            #[test]
            fn any_multipart_is_fields_or_a_400(
                parts in prop::collection::vec((tricky_text(), tricky_text()), 0..5),
            ) {
                let mut body = String::new();
                for (name, value) in &parts {
                    body.push_str(&format!(
                        "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                    ));
                }
                body.push_str("--XyZ--\r\n");
                let h = headers("multipart/form-data; boundary=XyZ");
                let got = runtime().block_on(parse_body_with::<SendFields>(&h, Bytes::from(body), &SEND_RULES));
                if let Err(e) = got {
                    prop_assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
                }
            }

            /// Known and `_`-prefixed names with any values always parse, in a form, the
            /// query and JSON; one unknown name more is a 400 that names it.
            #[test]
            fn known_names_pass_and_an_unknown_one_is_named(
                fields in prop::collection::btree_map(
                    prop_oneof![
                        prop::sample::select(SEND_FIELDS).prop_map(str::to_owned),
                        "_[a-z]{0,6}",
                    ],
                    any::<String>(),
                    0..6,
                ),
                unknown in "[a-zA-Z][a-zA-Z0-9_]{0,12}",
            ) {
                let form = serde_urlencoded::to_string(&fields).expect("encodes");
                prop_assert!(parse_query_with::<SendFields>(Some(&form), &SEND_RULES).is_ok());
                let json = serde_json::to_vec(&fields).expect("encodes");
                let h = headers("application/json");
                let got = runtime().block_on(parse_body_with::<SendFields>(&h, Bytes::from(json), &SEND_RULES));
                prop_assert!(got.is_ok(), "{got:?}");

                prop_assume!(!SEND_FIELDS.contains(&unknown.as_str()));
                let mut more = fields.clone();
                more.insert(unknown.clone(), "x".to_owned());
                let form = serde_urlencoded::to_string(&more).expect("encodes");
                let e = parse_query_with::<SendFields>(Some(&form), &SEND_RULES)
                    .expect_err("an unknown name is refused");
                prop_assert!(e.to_string().contains(&format!("{unknown:?}")), "{e}");
                let json = serde_json::to_vec(&more).expect("encodes");
                let got = runtime().block_on(parse_body_with::<SendFields>(&h, Bytes::from(json), &SEND_RULES));
                prop_assert!(matches!(got, Err(ApiError::BadRequest(_))), "{got:?}");
            }
        }
    }
}
