//! `GET /m/{id}?k=KEY`: a message's own page, where a message too long for WeCom is read in
//! full (the card in the chat links here). The key is 128 random bits stored with the
//! message: without it the page is a 404, as for a message that does not exist, so ids
//! reveal nothing. A message older than `storage.retention` is gone (410) — told from its
//! id (a UUIDv7 carries its creation time), so this holds after the purge as well.
//!
//! A digest (many messages in one WeCom text) has a page at the same address, with its own
//! key, listing every message it carried in full; it answers exactly as a message page does
//! (404 without the key, 410 past the retention).
//!
//! The page is self-contained (inline style and script, nothing fetched from elsewhere) and
//! served with a strict Content-Security-Policy whose nonce changes with every response.
//!
//! A message's images and files (issue 20) are served at `/m/{id}/files/{idx}?k=KEY`, with
//! the page's key and the page's answers ([`files`]); the page shows the images (its policy
//! then allows images from this server, and only then) and links every file.

mod files;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::send::parse_query;
use crate::domain::Format;
use crate::error::ApiError;
use crate::render::page::{
    DigestPage, Entry, Page, PageFile, content_security_policy,
    content_security_policy_with_images, render, render_digest,
};
use crate::store::{Message, Store, StoreError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/m/{id}", get(show))
        .route("/m/{id}/files/{idx}", get(files::serve))
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    k: Option<String>,
}

async fn show(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let nonce = crate::token::page_key();
    let Ok(Path(id)) = id else {
        return notice(StatusCode::NOT_FOUND, &nonce);
    };
    let key = page_key(query.as_deref());
    if expired(&id, state.retention, SystemTime::now()) {
        return notice(StatusCode::GONE, &nonce);
    }
    // An id names a message or a digest. Both are looked up whatever the first answer, so
    // the time taken does not tell which of them (if any) exists.
    let (message, digest) = match (
        state.store.message(&id).await,
        state.store.digest(&id).await,
    ) {
        (Ok(message), Ok(digest)) => (message, digest),
        (Err(err), _) | (_, Err(err)) => return ApiError::from(err).into_response(),
    };
    if let Some(message) = message.filter(|m| opens(m.page_key.as_deref(), &key)) {
        let files = match files_of(&state.store, &message).await {
            Ok(files) => files,
            Err(err) => return ApiError::from(err).into_response(),
        };
        let shown: Vec<PageFile<'_>> = files
            .iter()
            .map(|f| PageFile {
                name: &f.name,
                size: f.size,
                image: f.image,
                href: &f.href,
            })
            .collect();
        let page = Page {
            title: message.title.as_deref(),
            content: message.content.as_deref().unwrap_or(""),
            markdown: message.format == Format::Markdown,
            created_at_ms: message.created_at,
            nonce: &nonce,
            files: &shown,
        };
        let csp = if page.shows_images() {
            content_security_policy_with_images(&nonce)
        } else {
            content_security_policy(&nonce)
        };
        return respond_with(StatusCode::OK, render(&page), &csp);
    }
    let Some(digest) = digest.filter(|d| opens(d.page_key.as_deref(), &key)) else {
        return notice(StatusCode::NOT_FOUND, &nonce);
    };
    let carried = match state.store.carried_by(&id).await {
        Ok(carried) => carried,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let entries: Vec<Entry<'_>> = carried
        .iter()
        .map(|m| Entry {
            title: m.title.as_deref(),
            content: m.content.as_deref().unwrap_or(""),
            markdown: m.format == Format::Markdown,
            created_at_ms: m.created_at,
        })
        .collect();
    let html = render_digest(&DigestPage {
        entries: &entries,
        // Carried messages older than the digest may be purged before it.
        missing: usize::try_from(digest.carried)
            .unwrap_or(0)
            .saturating_sub(entries.len()),
        sent_at_ms: digest.created_at,
        nonce: &nonce,
    });
    respond(StatusCode::OK, html, &nonce)
}

/// The key given in the query (`k`), empty when there is none.
fn page_key(query: Option<&str>) -> String {
    parse_query::<PageQuery>(query)
        .ok()
        .and_then(|q| q.k)
        .unwrap_or_default()
}

/// Whether `key` is the stored key, compared in constant time (no stored key opens nothing).
fn opens(stored: Option<&str>, key: &str) -> bool {
    stored.is_some_and(|k| bool::from(k.as_bytes().ct_eq(key.as_bytes())))
}

/// A message's file as its page links it.
struct LinkedFile {
    name: String,
    size: u64,
    image: bool,
    href: String,
}

/// The message's files, in order, with what the page shows of each: its name, size, whether
/// it is shown as an image, and its address relative to the page (which the key opened).
async fn files_of(store: &Store, message: &Message) -> Result<Vec<LinkedFile>, StoreError> {
    let key = message.page_key.as_deref().unwrap_or_default();
    let mut files = Vec::new();
    for (idx, attachment) in store
        .attachments_of(&message.id)
        .await?
        .into_iter()
        .enumerate()
    {
        // A blob that is gone (never, while its message is kept: a foreign key) is left
        // out, as `GET /messages/{id}` leaves it out; the others keep their index.
        let Some(blob) = store.blob_info(&attachment.blob_id).await? else {
            continue;
        };
        files.push(LinkedFile {
            name: files::download_name(attachment.filename.as_deref(), idx, &blob.mime),
            size: blob.size,
            image: files::inline_image(&blob.mime).is_some(),
            href: files::href(message.id.as_str(), idx, key),
        });
    }
    Ok(files)
}

/// Whether the message (or digest) with this id is older than the retention (a UUIDv7
/// starts with its creation time in milliseconds).
fn expired(id: &str, retention: Option<Duration>, now: SystemTime) -> bool {
    let Some(retention) = retention else {
        return false;
    };
    let Some((secs, nanos)) = uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| t.to_unix())
    else {
        return false;
    };
    let created = UNIX_EPOCH + Duration::new(secs, nanos);
    now.duration_since(created).is_ok_and(|age| age > retention)
}

/// A short page for 404 and 410: whoever opens a link is a person with a browser.
fn notice(status: StatusCode, nonce: &str) -> Response {
    let (title, text) = if status == StatusCode::GONE {
        (
            "消息已过期 · Message expired",
            "这条消息已超过保存期限并被删除。<br>This message was older than the server keeps messages and has been deleted.",
        )
    } else {
        (
            "找不到消息 · Message not found",
            "链接无效或不完整。<br>This link is not valid (or not complete).",
        )
    };
    let html = format!(
        "<!DOCTYPE html><html lang=\"zh\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>{title}</title>\
         <style nonce=\"{nonce}\">body{{font-family:-apple-system,system-ui,'PingFang SC','Microsoft YaHei',sans-serif;\
         max-width:40rem;margin:3rem auto;padding:0 1.2rem;line-height:1.6}}</style></head>\
         <body><h1>{title}</h1><p>{text}</p></body></html>"
    );
    respond(status, html, nonce)
}

fn respond(status: StatusCode, html: String, nonce: &str) -> Response {
    respond_with(status, html, &content_security_policy(nonce))
}

/// An HTML answer under the policy `csp` (the console's pages too).
pub(crate) fn respond_with(status: StatusCode, html: String, csp: &str) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // A policy that cannot be a header (it cannot happen: the nonce is filtered) fails
    // closed: nothing on the page may run or load.
    let csp = HeaderValue::from_str(csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    headers.insert(CONTENT_SECURITY_POLICY, csp);
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The page is private (whoever has the link); keep it out of shared caches and indexes.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_that_cannot_be_a_header_fails_closed() {
        let response = respond_with(StatusCode::OK, String::new(), "script-src 'nonce-a\nb'");
        assert_eq!(
            response.headers().get(CONTENT_SECURITY_POLICY),
            Some(&HeaderValue::from_static("default-src 'none'"))
        );
        let response = respond_with(StatusCode::OK, String::new(), "default-src 'self'");
        assert_eq!(
            response.headers().get(CONTENT_SECURITY_POLICY),
            Some(&HeaderValue::from_static("default-src 'self'"))
        );
    }

    #[test]
    fn a_message_older_than_the_retention_has_expired() {
        let id = uuid::Uuid::now_v7().to_string();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        assert!(!expired(&id, Some(day), now));
        assert!(expired(&id, Some(day), now + 2 * day));
        assert!(!expired(&id, None, now + 2 * day));
        assert!(!expired("not-a-uuid", Some(day), now + 2 * day));
    }
}
