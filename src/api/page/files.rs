//! `GET /m/{id}/files/{idx}?k=KEY`: a message's image or file (issue 20), `idx` from 0 in the
//! order sent, opened by the page's key.
//!
//! **Who may.** Whoever may open the page, and nobody else: the key is compared in constant
//! time, and a wrong key, an id that names no message (or a digest, which has no files) and
//! an index past the message's files all get the page's own 404, byte for byte the same, so
//! neither ids nor the number of files can be probed. Past `storage.retention` it is the
//! page's 410.
//!
//! **What the browser may do with it.** The content type is the one sniffed from the bytes
//! when the file was stored, never the sender's word, and only a raster image (PNG, JPEG, GIF,
//! WebP) is served as what it is, `inline`, for the page's `<img>`. Everything else — SVG (it
//! can carry script), HTML, PDF, text — is `application/octet-stream` and `attachment`: it
//! is saved, never rendered from this origin, where it could read other pages' keys. Every
//! answer is `nosniff` and has its own policy, `default-src 'none'; sandbox`, so even a file
//! a browser did render could run nothing and fetch nothing.
//!
//! **Memory.** The file is streamed from the database a chunk at a time
//! ([`Store::blob_stream`]), never held whole; `Content-Length` is the stored size. `HEAD`
//! answers the same headers (axum drops the body, which then was never read).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{AppState, expired, notice, opens, page_key};
use crate::error::ApiError;
use crate::media::sanitize_filename;
use crate::store::{Store, StoredBlob};

/// The policy of every file answer: nothing loads, nothing runs, whatever the browser makes
/// of the bytes.
const FILE_POLICY: &str = "default-src 'none'; sandbox";

/// The longest a browser keeps a file. The page itself is `no-store` (it is fetched again
/// each time it is opened), but its images would then be fetched again each time too; a file
/// at an address never changes, so it may be kept, privately (never by a shared cache), for
/// as long as reading a message takes — and never past the message's retention, when the
/// server answers 410 for it.
pub(super) const FILE_MAX_AGE: Duration = Duration::from_secs(3600);

/// Characters left as they are in the key of a file's address: base64url's (the key is one)
/// and the other unreserved ones. Anything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// RFC 5987's `attr-char`: what `filename*` may carry unencoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

pub(super) async fn serve(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let nonce = crate::token::page_key();
    let Ok(Path((id, idx))) = path else {
        return notice(StatusCode::NOT_FOUND, &nonce);
    };
    let key = page_key(query.as_deref());
    let now = SystemTime::now();
    if expired(&id, state.retention, now) {
        return notice(StatusCode::GONE, &nonce);
    }
    let message = match state.store.message(&id).await {
        Ok(message) => message,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let Some(message) = message.filter(|m| opens(m.page_key.as_deref(), &key)) else {
        return notice(StatusCode::NOT_FOUND, &nonce);
    };
    let Some(idx) = parse_index(&idx) else {
        return notice(StatusCode::NOT_FOUND, &nonce);
    };
    let attachment = match state.store.attachments_of(&message.id).await {
        Ok(attachments) => attachments.into_iter().nth(idx),
        Err(err) => return ApiError::from(err).into_response(),
    };
    let Some(attachment) = attachment else {
        return notice(StatusCode::NOT_FOUND, &nonce);
    };
    // A blob that is gone (never, while its message is kept: a foreign key) is not there.
    let blob = match state.store.blob_info(&attachment.blob_id).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return notice(StatusCode::NOT_FOUND, &nonce),
        Err(err) => return ApiError::from(err).into_response(),
    };
    let created = UNIX_EPOCH
        + Duration::from_millis(u64::try_from(message.created_at.as_millis()).unwrap_or(0));
    let max_age = max_age(created, state.retention, now);
    let name = download_name(attachment.filename.as_deref(), idx, &blob.mime);
    file_response(&state.store, &blob, &name, max_age)
}

/// The answer for `blob`, saved as `name`: its headers, and its bytes streamed.
fn file_response(store: &Store, blob: &StoredBlob, name: &str, max_age: Duration) -> Response {
    let (content_type, disposition) = match inline_image(&blob.mime) {
        Some(mime) => (mime, "inline"),
        None => ("application/octet-stream", "attachment"),
    };
    let id = blob.id.clone();
    let body = store.blob_stream(&blob.id).inspect_err(move |err| {
        // The headers are sent: the connection is cut, and the browser sees a failed download.
        tracing::warn!(blob = %id, error = %crate::error::chain(err), "could not read a file being served");
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(blob.size));
    // Always valid (ASCII without controls); a name that were not would go unnamed.
    let disposition = HeaderValue::from_str(&content_disposition(disposition, name))
        .unwrap_or(HeaderValue::from_static("attachment"));
    headers.insert(CONTENT_DISPOSITION, disposition);
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_POLICY),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from(CacheControl(max_age.as_secs())),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `private, max-age=N`.
struct CacheControl(u64);

impl From<CacheControl> for HeaderValue {
    fn from(CacheControl(secs): CacheControl) -> Self {
        // Digits and ASCII: always a valid value.
        HeaderValue::from_str(&format!("private, max-age={secs}"))
            .unwrap_or(HeaderValue::from_static("private, no-store"))
    }
}

/// How long a browser may keep a file of a message made at `created`: [`FILE_MAX_AGE`], or
/// less when the message is gone sooner.
fn max_age(created: SystemTime, retention: Option<Duration>, now: SystemTime) -> Duration {
    let Some(retention) = retention else {
        return FILE_MAX_AGE;
    };
    let age = now.duration_since(created).unwrap_or_default();
    retention.saturating_sub(age).min(FILE_MAX_AGE)
}

/// An index as written in a file's address: decimal digits, no sign or leading zero, so that
/// each file has one address.
fn parse_index(text: &str) -> Option<usize> {
    text.parse::<usize>()
        .ok()
        .filter(|idx| idx.to_string() == text)
}

/// The content type a file is served as inline: a raster image by its sniffed type, which
/// any browser shows and none runs. `None` for everything else (SVG too), served as a
/// download.
pub(super) fn inline_image(mime: &str) -> Option<&'static str> {
    match mime {
        "image/png" => Some("image/png"),
        "image/jpeg" => Some("image/jpeg"),
        "image/gif" => Some("image/gif"),
        "image/webp" => Some("image/webp"),
        _ => None,
    }
}

/// The name a file is shown and saved under: the stored one made safe again (it was when
/// stored; this does not trust that), else `file-N` with the extension of its type.
pub(super) fn download_name(stored: Option<&str>, idx: usize, mime: &str) -> String {
    if let Some(name) = stored.and_then(sanitize_filename) {
        return name;
    }
    let extension = match mime {
        "image/png" => ".png",
        "image/jpeg" => ".jpg",
        "image/gif" => ".gif",
        "image/webp" => ".webp",
        "application/pdf" => ".pdf",
        _ => "",
    };
    format!("file-{}{extension}", idx.saturating_add(1))
}

/// A file's address relative to its page (`/m/{id}?k=KEY` → `/m/{id}/files/{idx}?k=KEY`), so
/// that it holds under whatever path a reverse proxy serves the page.
pub(super) fn href(id: &str, idx: usize, key: &str) -> String {
    format!(
        "{}/files/{idx}?k={}",
        utf8_percent_encode(id, QUERY_VALUE),
        utf8_percent_encode(key, QUERY_VALUE)
    )
}

/// `Content-Disposition` for a file saved (or shown) as `name` (RFC 6266): the name as UTF-8
/// in `filename*` (RFC 5987, percent-encoded), and an ASCII stand-in in `filename` for the
/// few clients that know only that (non-ASCII, `%` and `\` as `_`). The name is sanitised
/// first, as every stored name was: no path, control characters (CR and LF among them),
/// quotes or bidirectional overrides get into the header or the saved file's name.
pub(crate) fn content_disposition(disposition: &str, name: &str) -> String {
    let name = sanitize_filename(name).unwrap_or_else(|| "file".to_owned());
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='$' | '&'..='[' | ']'..='~' => c,
            _ => '_',
        })
        .collect();
    format!(
        "{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(&name, ATTR_CHAR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_names_the_file_in_utf8_with_an_ascii_fallback() {
        let cases = [
            (
                "report.pdf",
                "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf",
            ),
            (
                "图表 2026.png",
                "attachment; filename=\"__ 2026.png\"; \
                 filename*=UTF-8''%E5%9B%BE%E8%A1%A8%202026.png",
            ),
            (
                "a\"b'c%20d;e.txt",
                "attachment; filename=\"a_b'c_20d;e.txt\"; filename*=UTF-8''a_b%27c%2520d%3Be.txt",
            ),
            (
                "evil\r\nSet-Cookie: x=1\r\n.txt",
                "attachment; filename=\"evilSet-Cookie_ x=1.txt\"; \
                 filename*=UTF-8''evilSet-Cookie_%20x%3D1.txt",
            ),
            (
                "..\\..\\boot.ini",
                "attachment; filename=\"boot.ini\"; filename*=UTF-8''boot.ini",
            ),
            (
                "invoice\u{202E}gnp.exe",
                "attachment; filename=\"invoicegnp.exe\"; filename*=UTF-8''invoicegnp.exe",
            ),
            (
                "\r\n",
                "attachment; filename=\"file\"; filename*=UTF-8''file",
            ),
            (
                "ü`|~^!#$&+.x",
                "attachment; filename=\"_`_~^!#$&+.x\"; filename*=UTF-8''%C3%BC`_~^!#$&+.x",
            ),
        ];
        for (name, want) in cases {
            let got = content_disposition("attachment", name);
            assert_eq!(got, want, "{name:?}");
            let value = HeaderValue::from_str(&got).expect("a valid header value");
            assert!(value.to_str().is_ok(), "ASCII only: {got}");
            assert_eq!(got.matches('"').count(), 2, "one quoted string: {got}");
        }
        assert_eq!(
            content_disposition("inline", "chart.png"),
            "inline; filename=\"chart.png\"; filename*=UTF-8''chart.png"
        );
    }

    /// The filename* value decodes back to the sanitised name, whatever it holds.
    #[test]
    fn filename_star_round_trips() {
        for name in [
            "周报 (final) 100%.pdf",
            "naïve café.txt",
            "a+b=c&d.csv",
            "😀.png",
        ] {
            let header = content_disposition("attachment", name);
            let encoded = header.split("filename*=UTF-8''").nth(1).expect("filename*");
            let decoded = percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .expect("UTF-8");
            assert_eq!(decoded, name);
            // and pushbot's own parser (used on fetched files) reads it back the same
            assert_eq!(
                crate::media::filename::from_content_disposition(header.as_bytes()).as_deref(),
                Some(name)
            );
        }
    }

    #[test]
    fn only_raster_images_are_inline_and_they_agree_with_the_sniffer() {
        let heads: [&[u8]; 8] = [
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0",
            b"\xff\xd8\xff\xe0\0\x10JFIF\0",
            b"GIF89a\x01\0\x01\0\0\0\0",
            b"RIFF\x1a\0\0\0WEBPVP8 ",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
            b"<!DOCTYPE html><html><script>alert(1)</script>",
            b"%PDF-1.7\n",
            b"hello",
        ];
        for head in heads {
            let sniffed = crate::media::sniff(head);
            assert_eq!(
                inline_image(sniffed.mime).is_some(),
                sniffed.image,
                "{}",
                sniffed.mime
            );
        }
        for mime in [
            "image/svg+xml",
            "text/html",
            "application/pdf",
            "image/bmp",
            "",
        ] {
            assert_eq!(inline_image(mime), None, "{mime}");
        }
        assert_eq!(inline_image("image/png"), Some("image/png"));
    }

    #[test]
    fn names_and_addresses() {
        assert_eq!(
            download_name(Some("chart.png"), 0, "image/png"),
            "chart.png"
        );
        assert_eq!(
            download_name(Some("../x\r\n.txt"), 0, "text/plain"),
            "x.txt"
        );
        assert_eq!(download_name(None, 0, "image/png"), "file-1.png");
        assert_eq!(
            download_name(Some(".."), 2, "application/pdf"),
            "file-3.pdf"
        );
        assert_eq!(download_name(None, 4, "image/svg+xml"), "file-5");
        assert_eq!(
            href("0190c0de-0000-7000-8000-000000000001", 3, "Ab-_9"),
            "0190c0de-0000-7000-8000-000000000001/files/3?k=Ab-_9"
        );
        assert_eq!(href("i d", 0, "a&b=c#"), "i%20d/files/0?k=a%26b%3Dc%23");
    }

    #[test]
    fn an_index_has_one_spelling() {
        assert_eq!(parse_index("0"), Some(0));
        assert_eq!(parse_index("12"), Some(12));
        for bad in [
            "",
            "+1",
            "01",
            "-1",
            "1.0",
            " 1",
            "x",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_index(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn files_are_kept_an_hour_at_most_and_never_past_the_retention() {
        let now = SystemTime::now();
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        assert_eq!(max_age(now, None, now), FILE_MAX_AGE);
        assert_eq!(max_age(now, Some(day), now), FILE_MAX_AGE);
        assert_eq!(max_age(now - day + minute, Some(day), now), minute);
        assert_eq!(max_age(now - 2 * day, Some(day), now), Duration::ZERO);
        // a clock that went back: as if just made
        assert_eq!(max_age(now + minute, Some(day), now), FILE_MAX_AGE);
        assert_eq!(
            HeaderValue::from(CacheControl(3600)),
            "private, max-age=3600"
        );
    }
}
