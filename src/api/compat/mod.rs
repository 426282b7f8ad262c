//! Drop-in endpoints for the push services scripts already speak: a script switching to
//! pushbot changes the host and puts its pushbot token where the old key went.
//!
//! Every route ends in [`super::send::submit`] — the same checks, per-member rate, channels
//! and durable outbox as `/send` — and answers in the original service's shapes (success
//! and error bodies, HTTP status), so clients that parse the answer keep working.
//!
//! Path routing (static segments always win over captures, so `/send`, `/messages`,
//! `/wecom`, `/healthz`, `/push`, `/ping` are never taken for a token):
//! - `/{token}.send`, `/send/{token}.send`: ServerChan ([`serverchan`]); `GET /push`: its
//!   status query.
//! - `/{token}/{body}`, `/{token}/{title}/{body}`, `/{token}/{title}/{subtitle}/{body}`,
//!   `POST /push`, `/ping`: Bark ([`bark`]).
//! - `POST /message`, `GET /version`: gotify ([`gotify`]).
//! - `PUT|POST /{topic}` (a `{key}` without `.send`), `/{topic}/publish|send|trigger`,
//!   `POST /`: ntfy ([`ntfy`]).
//! - A bare `/{key}` is shared by three originals; [`key_api`] decides which one serves it.
//! - `POST /hooks/alertmanager`, `POST /hooks/grafana`: alert webhooks ([`hooks`]).
//!
//! A first segment that is not shaped like a token is a 404 before anything is looked up.

pub mod bark;
pub mod gotify;
pub mod hooks;
pub mod ntfy;
pub mod serverchan;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest as _, Path, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};

use super::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{key}", get(key_get).post(key_post).put(ntfy::put))
        .route(
            "/send/{key}",
            get(serverchan::send_get).post(serverchan::send_post),
        )
        .route("/", post(ntfy::publish_json))
        .route("/push", get(serverchan::status).post(bark::push_json))
        .route("/ping", get(bark::ping))
        .route("/message", post(gotify::message))
        .route("/version", get(gotify::version))
        .route("/hooks/alertmanager", post(hooks::alertmanager))
        .route("/hooks/grafana", post(hooks::grafana))
        .route("/{token}/{body}", get(pair_get).post(pair_post))
        .route(
            "/{token}/{title}/{body}",
            get(bark::path_get).post(bark::path_post),
        )
        .route(
            "/{token}/{title}/{subtitle}/{body}",
            get(bark::path_get).post(bark::path_post),
        )
}

/// Which original serves a bare `/{key}` (see [`key_api`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyApi {
    /// `/{token}.send` (and, for `GET`, everything not Bark's: its 404 hint).
    ServerChan,
    /// Bark's `GET|POST /:device_key` with its parameters in the query, a form or JSON.
    Bark,
    /// ntfy's `PUT|POST /{topic}`: the body is the message.
    Ntfy,
}

/// Bark's parameter names (lower-case: Bark's server reads them case-insensitively):
/// those pushbot reads, those only the phone acts on, and those refused by name.
const BARK_NAMES: &[&str] = &[
    "title",
    "subtitle",
    "body",
    "markdown",
    "url",
    "level",
    "image",
    "device_key",
    "device_keys",
    "sound",
    "volume",
    "badge",
    "call",
    "autocopy",
    "copy",
    "icon",
    "group",
    "isarchive",
    "action",
    "id",
    "ciphertext",
    "iv",
    "delete",
    "channel",
];

/// Whether `names` are Bark's parameters: every one is a Bark name and one of them is
/// `body` (or, when `title_counts`, `title`).
fn bark_shaped<'a>(names: impl IntoIterator<Item = &'a str>, title_counts: bool) -> bool {
    let mut decisive = false;
    for name in names {
        let name = name.to_ascii_lowercase();
        if !BARK_NAMES.contains(&name.as_str()) {
            return false;
        }
        decisive |= name == "body" || (title_counts && name == "title");
    }
    decisive
}

/// The names of `text` when the whole of it parses strictly as a form: `name=value` pairs
/// joined by `&` (an empty pair, as a trailing `&`, is skipped), each with a non-empty name
/// and exactly one `=`, no control characters (a trailing line break is dropped), every `%`
/// a valid `%XX` escape and the decoded text UTF-8. Raw spaces and UTF-8 are accepted, as
/// `curl -d 'title=推送标题&body=推送内容'` sends them; whether the names are Bark's is
/// [`bark_shaped`]'s question. Text with a line in it, `cpu=95%` (a bad escape) or
/// `x=1=2` is not a form.
fn strict_form_names(text: &str) -> Option<Vec<String>> {
    let text = text.trim_end_matches(['\r', '\n']);
    let mut names = Vec::new();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        if name.is_empty() || value.contains('=') {
            return None;
        }
        for part in [name, value] {
            if part.chars().any(char::is_control) {
                return None;
            }
            let bytes = part.as_bytes();
            for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
            }
            let spaced = part.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .ok()?;
        }
        let spaced = name.replace('+', " ");
        let decoded = percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()?;
        names.push(decoded.into_owned());
    }
    (!names.is_empty()).then_some(names)
}

/// The keys of a JSON object body.
fn json_keys(body: &[u8]) -> Option<Vec<String>> {
    match serde_json::from_slice::<serde_json::Value>(body).ok()? {
        serde_json::Value::Object(object) => Some(object.keys().cloned().collect()),
        _ => None,
    }
}

/// Whether a body is Bark's parameters: a JSON object (labelled JSON, `text/plain` or
/// not at all), a strict form (labelled form-encoded or not at all) or a multipart body
/// (its field names read by the caller: `multipart`) whose names are [`bark_shaped`]
/// (`body` or `title` among them).
fn bark_body(content_type: Option<&str>, body: &[u8], multipart: Option<&[String]>) -> bool {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json_label = matches!(essence.as_str(), "" | "application/json" | "text/plain")
        || essence.ends_with("+json");
    let form_label = matches!(essence.as_str(), "" | "application/x-www-form-urlencoded");
    let names = if essence == "multipart/form-data" {
        multipart.map(<[String]>::to_vec)
    } else if json_label && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        json_keys(body)
    } else if form_label {
        std::str::from_utf8(body).ok().and_then(strict_form_names)
    } else {
        None
    };
    names.is_some_and(|names| bark_shaped(names.iter().map(String::as_str), true))
}

/// The names in a query string (none when it does not decode).
fn query_names(query: Option<&str>) -> Vec<String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    pairs.into_iter().map(|(name, _)| name).collect()
}

/// The one rule for a bare `/{key}`, which ServerChan, Bark and ntfy all claim:
///
/// 1. `{key}` ending in `.send` is ServerChan's, whatever the method.
/// 2. `GET`: Bark when the query, or a body, holds Bark's parameters — names that are all
///    Bark's, `body` or `title` among them (a body: a JSON object, or a whole body that
///    parses strictly as a form); else ServerChan (its 404 hint).
/// 3. `POST`: a non-empty body decides: Bark's parameters as in 2 make it Bark's;
///    anything else (plain text, even with `=` in it or labelled form-encoded, as
///    `ntfy-sh` sends) is an ntfy message. An empty body: Bark when the query holds Bark's
///    parameters with `body` among them (`title` alone is also ntfy's), else ntfy.
/// 4. `PUT` (and anything else): ntfy.
///
/// A multipart body (`curl -F`) counts by its field names, read by the caller
/// ([`multipart_names`]) and passed as `multipart`.
pub fn key_api(
    method: &Method,
    key: &str,
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    multipart: Option<&[String]>,
) -> KeyApi {
    if key.ends_with(".send") {
        return KeyApi::ServerChan;
    }
    let empty = body.iter().all(u8::is_ascii_whitespace);
    let names = query_names(query);
    let query_is = |title_counts| bark_shaped(names.iter().map(String::as_str), title_counts);
    if method == Method::GET {
        if query_is(true) || (!empty && bark_body(content_type, body, multipart)) {
            KeyApi::Bark
        } else {
            KeyApi::ServerChan
        }
    } else if method == Method::POST {
        let bark = if empty {
            query_is(false)
        } else {
            bark_body(content_type, body, multipart)
        };
        if bark { KeyApi::Bark } else { KeyApi::Ntfy }
    } else {
        KeyApi::Ntfy
    }
}

/// The field names of a `multipart/form-data` body (`None` for any other body, or one
/// that is not valid multipart).
async fn multipart_names(content_type: Option<&str>, body: &[u8]) -> Option<Vec<String>> {
    let raw = content_type?;
    let essence = raw.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let fields = super::send::multipart_fields(raw, Bytes::copy_from_slice(body))
        .await
        .ok()?;
    Some(fields.into_iter().map(|(name, _)| name).collect())
}

/// [`key_api`] for a request, a multipart body's field names read first.
async fn decide(
    method: Method,
    key: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> KeyApi {
    let multipart = multipart_names(content_type(headers), body).await;
    key_api(
        &method,
        key,
        query,
        content_type(headers),
        body,
        multipart.as_deref(),
    )
}

/// The request's `Content-Type`, when it is text.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// `GET /{key}`: Bark's when it carries Bark's parameters, else ServerChan's (see
/// [`key_api`]).
async fn key_get(
    state: State<AppState>,
    key: PathOf<String>,
    query: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bark = match (&key, &body) {
        (Ok(Path(name)), Ok(bytes)) => {
            let api = decide(Method::GET, name, query.0.as_deref(), &headers, bytes).await;
            (api == KeyApi::Bark).then(|| name.clone())
        }
        _ => None,
    };
    if let Some(name) = bark {
        return bark::bare_key(&state, name, query.0.as_deref(), &headers, body)
            .await
            .into_response();
    }
    serverchan::send_get(state, key, query, headers)
        .await
        .into_response()
}

/// `POST /{key}`: ServerChan's `TOKEN.send`, Bark's `/:device_key` with Bark's parameters,
/// else an ntfy publish to topic `key` (see [`key_api`]). An ntfy file (a file name given,
/// [`ntfy::body_is_file`]) is streamed, not read first: neither ServerChan nor Bark takes
/// one.
async fn key_post(
    state: State<AppState>,
    key: PathOf<String>,
    query: RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Response {
    if let Ok(Path(topic)) = &key
        && !topic.ends_with(".send")
        && ntfy::body_is_file(&headers, query.0.as_deref())
    {
        return ntfy::publish_file(
            &state,
            topic,
            query.0.as_deref(),
            &headers,
            request.into_body(),
        )
        .await
        .into_response();
    }
    let body = Bytes::from_request(request, &*state).await;
    let key = match key {
        Ok(Path(key)) => key,
        // Not decodable: ServerChan's error shape, as for any other malformed key.
        Err(_) => {
            return serverchan::send_post(state, key, query, headers, body)
                .await
                .into_response();
        }
    };
    let bytes: &[u8] = body.as_ref().map(|b| b.as_ref()).unwrap_or_default();
    match decide(Method::POST, &key, query.0.as_deref(), &headers, bytes).await {
        KeyApi::ServerChan => serverchan::send_post(state, Ok(Path(key)), query, headers, body)
            .await
            .into_response(),
        KeyApi::Bark => bark::bare_key(&state, key, query.0.as_deref(), &headers, body)
            .await
            .into_response(),
        KeyApi::Ntfy => ntfy::publish_path(&state, &key, query.0.as_deref(), &headers, body)
            .await
            .into_response(),
    }
}

/// `GET /{topic}/publish` (`send`, `trigger`) is ntfy's; any other pair is Bark's
/// `/{token}/{body}`.
async fn pair_get(
    state: State<AppState>,
    pair: PathOf<Vec<String>>,
    query: RawQuery,
    headers: HeaderMap,
) -> Response {
    match publish_topic(&pair) {
        Some(topic) => ntfy::publish_get(&state, topic, query.0.as_deref(), &headers)
            .await
            .into_response(),
        None => bark::path_get(state, pair, query, headers)
            .await
            .into_response(),
    }
}

async fn pair_post(
    state: State<AppState>,
    pair: PathOf<Vec<String>>,
    query: RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Response {
    match publish_topic(&pair) {
        Some(topic) => ntfy::publish_request(&state, topic, query.0.as_deref(), &headers, request)
            .await
            .into_response(),
        None => {
            let body = Bytes::from_request(request, &*state).await;
            bark::path_post(state, pair, query, headers, body)
                .await
                .into_response()
        }
    }
}

/// The topic of `/{topic}/publish` (`send`, `trigger`); `None` for a Bark pair (or a path
/// that does not decode, which Bark's handler answers).
fn publish_topic(pair: &PathOf<Vec<String>>) -> Option<&str> {
    match pair {
        Ok(Path(segments)) => match segments.as_slice() {
            [topic, verb] if ntfy::is_publish_verb(verb) => Some(topic),
            _ => None,
        },
        Err(_) => None,
    }
}

/// A path capture that may not decode (`%FF`): handlers answer that in their own shape.
type PathOf<T> = Result<Path<T>, PathRejection>;

fn path_value<T>(path: PathOf<T>) -> Result<T, ApiError> {
    path.map(|Path(value)| value).map_err(|rejection| {
        ApiError::BadRequest(format!(
            "the path does not decode: {}",
            rejection.body_text()
        ))
    })
}

/// First path segments that are routes of their own; any other first segment is a token
/// (or a mistyped one) in one of the compat shapes.
const ROUTE_NAMES: &[&str] = &[
    "", "send", "messages", "m", "wecom", "hooks", "healthz", "metrics", "push", "ping", "message",
    "version", "console",
];

/// Whether `name` is a route of its own (and so can never be a topic or a token).
fn is_route_name(name: &str) -> bool {
    ROUTE_NAMES.contains(&name)
}

/// The request path as it may be logged: a path under a route name keeps its segments
/// except those shaped like a token (`TOKEN` or `TOKEN.send`, also percent-encoded); a
/// path starting with anything else (a token in the compat shapes, or a mistyped one) is
/// logged as `/…` per segment, which also keeps Bark's message text out of the log.
pub fn redact_path(path: &str) -> String {
    let decode = |segment: &str| {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .into_owned()
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let first = decode(segments.first().copied().unwrap_or_default());
    if !is_route_name(&first) {
        return segments.iter().map(|_| "/…").collect();
    }
    let kept: Vec<String> = segments
        .iter()
        .map(|segment| {
            let decoded = decode(segment);
            match decoded.strip_suffix(".send") {
                Some(bare) if crate::token::looks_valid(bare) => "….send".to_owned(),
                _ if crate::token::looks_valid(&decoded) => "…".to_owned(),
                _ => (*segment).to_owned(),
            }
        })
        .collect();
    format!("/{}", kept.join("/"))
}

/// Seconds since the epoch, as Bark and ServerChan report times.
fn unix_seconds() -> i64 {
    crate::time::UnixMillis::now().as_secs()
}

/// Text for the compat parsers' property tests: separators, escapes (good, bad, MIME
/// encoded-word), the route's own field names, short names and any text.
#[cfg(test)]
pub(crate) fn tricky(
    names: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        prop::sample::select(vec![
            "&",
            "=",
            "%",
            "%FF",
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
            " ",
            "=?UTF-8?B?",
            "?=",
            "=?",
            "yes",
            "1",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(names).prop_map(str::to_owned),
        "[a-zA-Z_-]{0,8}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json");

    fn api(method: Method, query: Option<&str>, content_type: Option<&str>, body: &str) -> KeyApi {
        key_api(&method, KEY, query, content_type, body.as_bytes(), None)
    }

    #[test]
    fn multipart_counts_by_its_field_names() {
        let multipart = Some("multipart/form-data; boundary=x");
        let bark = ["title".to_owned(), "body".to_owned()];
        let other = ["file".to_owned()];
        let body = b"--x\r\n...";
        let got =
            |names: Option<&[String]>| key_api(&Method::POST, KEY, None, multipart, body, names);
        assert_eq!(got(Some(&bark)), KeyApi::Bark);
        assert_eq!(got(Some(&other)), KeyApi::Ntfy);
        assert_eq!(got(None), KeyApi::Ntfy, "not valid multipart: ntfy's text");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn method() -> impl Strategy<Value = Method> {
            prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE])
        }

        fn content_type() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                prop::sample::select(vec![
                    "application/json",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "text/plain",
                ])
                .prop_map(|t| Some(t.to_owned())),
                any::<String>().prop_map(Some),
            ]
        }

        proptest! {
            /// Any request decides one API and never panics; PUT is always ntfy's, a
            /// `.send` key always ServerChan's, and a POST body that is plain text (no
            /// `=`, not a JSON object) is never Bark's.
            #[test]
            fn any_request_decides_one_api(
                method in method(),
                key in crate::api::compat::tricky(BARK_NAMES),
                query in proptest::option::of(crate::api::compat::tricky(BARK_NAMES)),
                content_type in content_type(),
                body in prop_oneof![
                    crate::api::compat::tricky(BARK_NAMES).prop_map(String::into_bytes),
                    any::<Vec<u8>>(),
                ],
                multipart in proptest::option::of(prop::collection::vec(
                    prop::sample::select(BARK_NAMES).prop_map(str::to_owned), 0..4)),
            ) {
                let api = key_api(&method, &key, query.as_deref(), content_type.as_deref(), &body, multipart.as_deref());
                if key.ends_with(".send") {
                    prop_assert_eq!(api, KeyApi::ServerChan);
                } else if method == Method::PUT {
                    prop_assert_eq!(api, KeyApi::Ntfy);
                }
                let plain = !body.contains(&b'=') && !body.contains(&b'{')
                    && !body.iter().all(u8::is_ascii_whitespace)
                    && !content_type.as_deref().is_some_and(|t| t.starts_with("multipart/"));
                if method == Method::POST && plain {
                    prop_assert_ne!(api, KeyApi::Bark, "plain text is ntfy's");
                }
            }
        }
    }

    #[test]
    fn dot_send_is_always_serverchan() {
        let key = format!("{KEY}.send");
        for method in [Method::GET, Method::POST, Method::PUT] {
            let got = key_api(
                &method,
                &key,
                Some("title=T&body=B"),
                FORM,
                b"title=T&body=B",
                None,
            );
            assert_eq!(got, KeyApi::ServerChan, "{method}");
        }
    }

    #[test]
    fn get_with_bark_parameters_is_bark() {
        use KeyApi::*;
        // bark-python: a form body on GET.
        assert_eq!(api(Method::GET, None, FORM, "title=T&body=B"), Bark);
        assert_eq!(api(Method::GET, None, None, "body=B"), Bark);
        assert_eq!(api(Method::GET, Some("title=T&body=B"), None, ""), Bark);
        assert_eq!(
            api(Method::GET, Some("body=B&group=g&sound=bell"), None, ""),
            Bark
        );
        assert_eq!(api(Method::GET, Some("title=T"), None, ""), Bark);
        assert_eq!(api(Method::GET, None, JSON, r#"{"body":"B"}"#), Bark);
        // Case-insensitive names, as Bark's server reads them.
        assert_eq!(api(Method::GET, Some("Body=B&isArchive=1"), None, ""), Bark);
    }

    #[test]
    fn get_without_bark_parameters_stays_serverchan() {
        use KeyApi::*;
        assert_eq!(api(Method::GET, None, None, ""), ServerChan);
        assert_eq!(api(Method::GET, Some("desp=x"), None, ""), ServerChan);
        // A name Bark does not know: not Bark's parameters.
        assert_eq!(
            api(Method::GET, Some("title=T&desp=x"), None, ""),
            ServerChan
        );
        // Bark names without body or title.
        assert_eq!(
            api(Method::GET, Some("group=g&sound=x"), None, ""),
            ServerChan
        );
        assert_eq!(api(Method::GET, None, FORM, "hello"), ServerChan);
    }

    #[test]
    fn post_with_a_bark_body_is_bark() {
        use KeyApi::*;
        assert_eq!(api(Method::POST, None, FORM, "title=T&body=B"), Bark);
        assert_eq!(api(Method::POST, None, None, "title=T&body=B"), Bark);
        assert_eq!(
            api(Method::POST, None, FORM, "body=%E4%BD%A0+%E5%A5%BD\r\n"),
            Bark
        );
        assert_eq!(api(Method::POST, None, FORM, "title=T"), Bark);
        // curl -d sends spaces and UTF-8 as they are (Bark's tutorial); a trailing `&`.
        assert_eq!(
            api(
                Method::POST,
                None,
                None,
                "title=推送 标题&body=a b: https://x/y&"
            ),
            Bark
        );
        assert_eq!(api(Method::POST, None, FORM, "body=server is down"), Bark);
        assert_eq!(
            api(
                Method::POST,
                None,
                JSON,
                r#"{"title":"T","body":"B","group":"g"}"#
            ),
            Bark
        );
        assert_eq!(api(Method::POST, None, None, r#" {"body":"B"}"#), Bark);
        assert_eq!(
            api(Method::POST, None, Some("text/plain"), r#"{"body":"B"}"#),
            Bark
        );
        // A refused Bark name still routes to Bark, which refuses it by name.
        assert_eq!(
            api(Method::POST, None, JSON, r#"{"body":"B","ciphertext":"x"}"#),
            Bark
        );
        // An empty body with `body` in the query.
        assert_eq!(api(Method::POST, Some("body=B&title=T"), None, ""), Bark);
    }

    #[test]
    fn every_other_post_stays_ntfy() {
        use KeyApi::*;
        // Plain text, also labelled form-encoded (ntfy-sh 1.0.0 labels it so).
        assert_eq!(api(Method::POST, None, FORM, "disk full"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "a=b is fine"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "cpu=95%"), Ntfy);
        assert_eq!(
            api(Method::POST, None, FORM, "server is down\nbody=x"),
            Ntfy
        );
        assert_eq!(
            api(Method::POST, None, FORM, "body=line one\nline two"),
            Ntfy
        );
        assert_eq!(api(Method::POST, None, FORM, "&"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "=B"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "title=T&body=B&x=1"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "title=T&body=a=b"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "body=%ZZ"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "body=%FF"), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, "group=g"), Ntfy);
        assert_eq!(api(Method::POST, None, None, "message=hi"), Ntfy);
        // JSON that is not Bark's, or not labelled as JSON.
        assert_eq!(api(Method::POST, None, JSON, r#"{"message":"hi"}"#), Ntfy);
        assert_eq!(
            api(Method::POST, None, JSON, r#"{"title":"T","extra":1}"#),
            Ntfy
        );
        assert_eq!(api(Method::POST, None, JSON, r#"["body"]"#), Ntfy);
        assert_eq!(api(Method::POST, None, FORM, r#"{"body":"B"}"#), Ntfy);
        assert_eq!(api(Method::POST, None, Some("text/csv"), "body=B"), Ntfy);
        // ntfy options in the query, with a text body or none (a trigger).
        assert_eq!(api(Method::POST, Some("title=T"), None, "disk full"), Ntfy);
        assert_eq!(api(Method::POST, Some("title=T"), None, ""), Ntfy);
        assert_eq!(api(Method::POST, Some("title=T&message=M"), None, ""), Ntfy);
        assert_eq!(api(Method::POST, None, None, ""), Ntfy);
        // The body decides when there is one.
        assert_eq!(api(Method::POST, Some("body=B"), None, "disk full"), Ntfy);
    }

    #[test]
    fn put_is_ntfy() {
        assert_eq!(api(Method::PUT, None, FORM, "title=T&body=B"), KeyApi::Ntfy);
        assert_eq!(api(Method::PUT, Some("body=B"), None, ""), KeyApi::Ntfy);
    }

    #[test]
    fn token_shaped_segments_are_redacted() {
        let token = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        assert_eq!(redact_path(&format!("/{token}.send")), "/…");
        assert_eq!(redact_path(&format!("/send/{token}.send")), "/send/….send");
        assert_eq!(
            redact_path("/send/%41bCdEfGhIjKlMnOpQrStUvWxYz012345.send"),
            "/send/….send"
        );
        assert_eq!(
            redact_path(&format!("/hooks/grafana/{token}")),
            "/hooks/grafana/…"
        );
        assert_eq!(redact_path(&format!("/{token}/Title/body")), "/…/…/…");
        assert_eq!(redact_path("/%41bCdEfGhIjKlMnOpQrStUvWxYz012345/x"), "/…/…");
        // A mistyped token is not logged either.
        assert_eq!(redact_path("/AbCdEf!.send"), "/…");
        assert_eq!(redact_path("/messages/abc"), "/messages/abc");
        assert_eq!(redact_path("/healthz"), "/healthz");
    }
}
