//! `/wecom/callback`: WeCom's URL check (GET) and member messages/events (POST).
//!
//! Order of checks on GET: signature, freshness, decryption, and the plaintext must be an
//! echo (never a message or one of our replies: the URL check is no decryption oracle).
//!
//! Order of checks on POST: size, envelope XML, signature, freshness, decryption (which also
//! checks the ReceiveId is our corp id), inner XML, inner address (our corp and app, not from
//! the corp itself: our own replies decrypt too). Nothing is stored before all of them pass,
//! so a forged, replayed or misaddressed request changes nothing. A retried callback (same
//! MsgId, or for events the same sender + time + event + key) is answered with the first
//! reply, not processed again.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use crate::bot::{self, Command};
use crate::domain::UserId;
use crate::error::ApiError;
use crate::metrics::CallbackOutcome;
use crate::store::CallbackClaim;
use crate::time::UnixMillis;
use crate::wecom::checks;
use crate::wecom::crypto::CryptoError;
use crate::wecom::xml::{self, Inbound, XmlError};

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/wecom/callback",
        get(verify_url)
            .post(receive)
            // WeCom's callbacks are small; anything near this is not from WeCom.
            .layer(DefaultBodyLimit::max(xml::MAX_XML_BYTES)),
    )
}

#[derive(Deserialize)]
struct UrlCheck {
    msg_signature: String,
    timestamp: String,
    nonce: String,
    echostr: String,
}

#[derive(Deserialize)]
struct Signed {
    msg_signature: String,
    timestamp: String,
    nonce: String,
}

fn query_error(rejection: QueryRejection) -> Failure {
    (
        CallbackOutcome::BadRequest,
        ApiError::BadRequest(format!(
            "expected msg_signature, timestamp and nonce query parameters: {}",
            rejection.body_text()
        )),
    )
}

fn crypto_error(err: CryptoError) -> Failure {
    match err {
        CryptoError::BadSignature => (
            CallbackOutcome::BadSignature,
            ApiError::Unauthorized(
                "msg_signature does not match: check wecom.callback_token".into(),
            ),
        ),
        // Decrypted fine, so not a key problem: a request that is not a URL check.
        CryptoError::NotAnEcho => (
            CallbackOutcome::BadRequest,
            ApiError::BadRequest(format!("not a URL check: {}", CryptoError::NotAnEcho)),
        ),
        other => (
            CallbackOutcome::DecryptError,
            ApiError::BadRequest(format!("cannot decrypt callback: {other}")),
        ),
    }
}

fn xml_error(err: XmlError) -> Failure {
    let error = match err {
        XmlError::TooLarge => ApiError::PayloadTooLarge("callback body is too large".into()),
        other => ApiError::BadRequest(format!("invalid callback XML: {other}")),
    };
    (CallbackOutcome::BadRequest, error)
}

/// A refused or failed callback: how it counts in the metrics, and the answer.
type Failure = (CallbackOutcome, ApiError);

/// Storage trouble while processing: WeCom's retry tries again.
fn failed(err: impl Into<ApiError>) -> Failure {
    (CallbackOutcome::Error, err.into())
}

/// Counts how the request ended, then answers it.
fn counted(state: &AppState, result: Result<(CallbackOutcome, Response), Failure>) -> Response {
    let (outcome, response) = match result {
        Ok((outcome, response)) => (outcome, response),
        Err((outcome, error)) => (outcome, error.into_response()),
    };
    state.metrics.callback(outcome);
    response
}

/// The URL check: answer the decrypted `echostr` as the whole body, if it is an echo.
async fn verify_url(
    State(state): State<AppState>,
    query: Result<Query<UrlCheck>, QueryRejection>,
) -> Response {
    let result = check_url(&state, query);
    counted(&state, result)
}

fn check_url(
    state: &AppState,
    query: Result<Query<UrlCheck>, QueryRejection>,
) -> Result<(CallbackOutcome, Response), Failure> {
    let Query(q) = query.map_err(query_error)?;
    // A `+` that reached us unencoded was turned into a space by form decoding; base64
    // has no spaces, so putting it back is safe.
    let echostr = q.echostr.replace(' ', "+");
    state
        .crypto
        .verify_signature(&q.msg_signature, &q.timestamp, &q.nonce, &echostr)
        .map_err(crypto_error)?;
    check_fresh(&q.timestamp, state.callback_max_age)?;
    // Only an echo is answered: anything else that decrypts is a captured message or one
    // of our own replies, and echoing it would hand out its plaintext.
    let plain = state.crypto.decrypt_echo(&echostr).map_err(crypto_error)?;
    tracing::info!("WeCom callback URL verified");
    Ok((
        CallbackOutcome::UrlCheck,
        ([(CONTENT_TYPE, "text/plain; charset=utf-8")], plain).into_response(),
    ))
}

async fn receive(
    State(state): State<AppState>,
    query: Result<Query<Signed>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = process(&state, query, body).await;
    counted(&state, result)
}

async fn process(
    state: &AppState,
    query: Result<Query<Signed>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(CallbackOutcome, Response), Failure> {
    let Query(q) = query.map_err(query_error)?;
    let body = body.map_err(|e| (CallbackOutcome::BadRequest, ApiError::from_body(e)))?;
    let envelope = xml::parse_envelope(&body).map_err(xml_error)?;
    state
        .crypto
        .verify_signature(&q.msg_signature, &q.timestamp, &q.nonce, &envelope.encrypt)
        .map_err(crypto_error)?;
    check_fresh(&q.timestamp, state.callback_max_age)?;
    let plain = state
        .crypto
        .decrypt(&envelope.encrypt)
        .map_err(crypto_error)?;
    let inbound = xml::parse_inbound(&plain).map_err(xml_error)?;
    // Before anything is stored: a message for another app, or our own reply posted back.
    checks::check_address(&inbound, &state.corp_id, state.agent_id).map_err(|err| {
        (
            CallbackOutcome::BadRequest,
            ApiError::BadRequest(err.to_string()),
        )
    })?;

    let Some(command) = bot::interpret(&inbound) else {
        return Ok((CallbackOutcome::Ignored, empty()));
    };
    let key = inbound.dedup_key();
    let (outcome, reply) = match state.store.claim_callback(&key).await.map_err(failed)? {
        CallbackClaim::Seen(Some(reply)) => {
            tracing::debug!("repeated callback; sending the first reply again");
            (CallbackOutcome::Duplicate, reply)
        }
        // Still being processed: wait a little for the first run's reply, so that this
        // copy (which may be the one WeCom is still waiting on) carries the same answer.
        CallbackClaim::Seen(None) => match wait_for_reply(state, &key).await.map_err(failed)? {
            Some(reply) => (CallbackOutcome::Duplicate, reply),
            // The first run died or is slow: WeCom needs no second answer.
            None => return Ok((CallbackOutcome::Duplicate, empty())),
        },
        CallbackClaim::New => match run(state, &inbound, command).await {
            Ok(reply) => {
                state
                    .store
                    .complete_callback(&key, Some(&reply))
                    .await
                    .map_err(failed)?;
                (CallbackOutcome::Answered, reply)
            }
            Err(err) => {
                // Let WeCom's retry try again rather than being swallowed as a duplicate.
                if let Err(release) = state.store.release_callback(&key).await {
                    tracing::error!(error = %release, "could not release callback claim");
                }
                return Err(failed(err));
            }
        },
    };
    Ok((outcome, encrypted_reply(state, &inbound, &reply)))
}

/// A copy of a callback arriving while the first is processed waits this long for the
/// first one's reply (WeCom gives up on an answer after 5 s).
const DUPLICATE_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn wait_for_reply(state: &AppState, key: &str) -> Result<Option<String>, ApiError> {
    let deadline = tokio::time::Instant::now() + DUPLICATE_REPLY_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        if let Some(reply) = state.store.callback_reply(key).await? {
            return Ok(Some(reply));
        }
    }
    Ok(None)
}

/// Refuses a (correctly signed) callback whose timestamp is too far from our clock: a
/// replay of a captured callback after its de-duplication key was pruned.
fn check_fresh(timestamp: &str, max_age: std::time::Duration) -> Result<(), Failure> {
    if max_age.is_zero() {
        return Ok(());
    }
    let ts: i64 = timestamp.trim().parse().map_err(|_| {
        (
            CallbackOutcome::BadRequest,
            ApiError::BadRequest("timestamp must be unix seconds".into()),
        )
    })?;
    let skew = UnixMillis::now().as_secs().abs_diff(ts);
    if skew > max_age.as_secs() {
        return Err((
            CallbackOutcome::Stale,
            ApiError::BadRequest(format!(
                "stale callback: timestamp is {skew} s away from this server's clock (limit {} s); \
                 check the server clock",
                max_age.as_secs()
            )),
        ));
    }
    Ok(())
}

async fn run(state: &AppState, inbound: &Inbound, command: Command) -> Result<String, ApiError> {
    let userid = UserId::new(&inbound.from_user_name);
    super::chat::run(state, &userid, command).await
}

/// WeCom treats an empty 200 as "received, no reply".
fn empty() -> Response {
    StatusCode::OK.into_response()
}

fn encrypted_reply(state: &AppState, inbound: &Inbound, text: &str) -> Response {
    let now_s = UnixMillis::now().as_secs();
    let reply_xml = xml::text_reply_xml(&inbound.from_user_name, &state.corp_id, now_s, text);
    let nonce = rand::random_range(100_000_000u64..10_000_000_000u64).to_string();
    let body = state
        .crypto
        .encrypt_reply(&reply_xml, &now_s.to_string(), &nonce);
    ([(CONTENT_TYPE, "application/xml; charset=utf-8")], body).into_response()
}
