//! Images and files arriving with a message (issue 20): stored as blobs while they arrive
//! (a multipart `file` part, a fetched `image_url`), checked once their first bytes are
//! known, and removed again unless the message that names them is committed.
//!
//! Every route that accepts attachments holds them in an [`Uploads`]: a refusal, a
//! repeated idempotency key or a dropped request removes what was stored for it, so a
//! refused request leaves nothing behind (the hourly orphan purge is only the last resort).

use std::error::Error as StdError;

use bytes::Bytes;
use futures_util::Stream;

use super::AppState;
use crate::error::ApiError;
use crate::media::{self, FetchError, MediaError, MediaKind, Sniffed};
use crate::store::{Attachment, BlobError, BlobInfo, Store};

/// One image or file stored for a request that is not committed yet.
#[derive(Debug)]
pub(crate) struct Upload {
    pub blob: BlobInfo,
    /// The sender's name for it (sanitised), or one made up from its type.
    pub filename: String,
    /// The sender said it is an image (`image_url`, Bark's `image`, …): it must be one.
    pub declared_image: bool,
}

impl Upload {
    /// What its first bytes say it is.
    pub fn sniffed(&self) -> Sniffed {
        media::sniff(&self.blob.head)
    }
}

/// A name for a file the sender did not name: `file-2.png`, `image-1.jpg`.
pub(crate) fn made_up_name(blob: &BlobInfo, declared_image: bool, position: usize) -> String {
    let stem = if declared_image { "image" } else { "file" };
    format!("{stem}-{position}.{}", media::sniff(&blob.head).extension)
}

/// The blobs stored for one request. Removed by [`discard`](Self::discard) (a refusal, a
/// duplicate), kept by [`into_inner`](Self::into_inner) once a message names them; if
/// dropped holding any (the request timed out, the client went away), they are removed in
/// a task of their own.
pub(crate) struct Uploads {
    store: Store,
    stored: Vec<Upload>,
}

impl Uploads {
    pub fn new(store: Store) -> Self {
        Self::adopt(store, Vec::new())
    }

    /// Takes over uploads handed on by [`into_inner`](Self::into_inner).
    pub fn adopt(store: Store, stored: Vec<Upload>) -> Self {
        Self { store, stored }
    }

    pub fn push(&mut self, upload: Upload) {
        self.stored.push(upload);
    }

    pub fn len(&self) -> usize {
        self.stored.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stored.is_empty()
    }

    pub fn as_slice(&self) -> &[Upload] {
        &self.stored
    }

    /// The uploads, no longer removed when this is dropped: for a message that names them,
    /// or to hand them on to [`Uploads::adopt`].
    pub fn into_inner(mut self) -> Vec<Upload> {
        std::mem::take(&mut self.stored)
    }

    /// Removes every blob stored for the request (one a committed message names stays).
    pub async fn discard(mut self) {
        let stored = std::mem::take(&mut self.stored);
        remove_all(&self.store, stored).await;
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        if self.stored.is_empty() {
            return;
        }
        let stored = std::mem::take(&mut self.stored);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move { remove_all(&store, stored).await });
        }
    }
}

async fn remove_all(store: &Store, stored: Vec<Upload>) {
    for upload in stored {
        remove_or_log(store, &upload.blob).await;
    }
}

pub(crate) async fn remove_or_log(store: &Store, blob: &BlobInfo) {
    if let Err(err) = store.delete_blob(&blob.id).await {
        tracing::warn!(blob = %blob.id, error = %crate::error::chain(&err), "could not remove a refused file; the hourly purge will");
    }
}

/// Stores `body` as a blob within `media.max_bytes` and `media.total_bytes`. `label` names
/// the file in errors (`file "chart.png"`); `body_error` says what a failure of the body
/// itself means.
pub(crate) async fn store_body<S, E>(
    state: &AppState,
    body: S,
    label: &str,
    body_error: impl FnOnce(E) -> ApiError,
) -> Result<BlobInfo, ApiError>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let limits = state.media.limits;
    state
        .store
        .put_blob(body, limits, |head| media::sniff(head).mime)
        .await
        .map_err(|err| match err {
            BlobError::TooLarge { max_bytes } => too_large(label, max_bytes),
            BlobError::QuotaExceeded { .. } => ApiError::StorageFull(format!(
                "the storage for images and files is full (media.total_bytes), so {label} \
                 was not stored and nothing was sent; retry later, once older messages are purged"
            )),
            BlobError::TooSlow => ApiError::BadRequest(format!("receiving {label} took too long")),
            BlobError::Body(err) => body_error(err),
            BlobError::Store(err) => err.into(),
        })
}

/// `20 MiB`, `64 KiB`, `1000 bytes`: a limit as a sender reads it.
fn describe_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes >= KIB * KIB && bytes.is_multiple_of(KIB * KIB) {
        format!("{} MiB", bytes / (KIB * KIB))
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// `file "x.bin" is larger than the limit of 20 MiB (media.max_bytes)`.
pub(crate) fn too_large(label: &str, max_bytes: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "{label} is larger than the limit of {} (media.max_bytes)",
        describe_size(max_bytes)
    ))
}

/// More than `media.max_files` images and files in one message.
pub(crate) fn too_many(max_files: u32) -> ApiError {
    if max_files == 0 {
        ApiError::PayloadTooLarge(
            "this server takes no images or files (media.max_files = 0)".into(),
        )
    } else {
        ApiError::PayloadTooLarge(format!(
            "too many images and files: at most {max_files} per message (media.max_files)"
        ))
    }
}

/// A fetch that failed, as the answer to the request that named the URL (`what`: the
/// field, `image_url`). Refusals the sender can fix are 400, a file over the limit 413,
/// the remote server's errors 502 and its slowness 504.
pub(crate) fn fetch_error(what: &str, err: FetchError) -> ApiError {
    let message = format!("{what}: {err}");
    match err.status().as_u16() {
        413 => ApiError::PayloadTooLarge(message),
        502 => ApiError::BadGateway(message),
        504 => ApiError::GatewayTimeout(message),
        _ => ApiError::BadRequest(message),
    }
}

fn media_error(label: &str, err: MediaError) -> ApiError {
    let message = format!("{label}: {err}");
    match err.status().as_u16() {
        413 => ApiError::PayloadTooLarge(message),
        415 => ApiError::UnsupportedMediaType(message),
        _ => ApiError::BadRequest(message),
    }
}

/// Fetches `url` (the field `what`) once, stores what it answers and names it: the
/// server's name for it, else one made up. `position` is its place among the message's
/// attachments, from 1.
pub(crate) async fn fetch(
    state: &AppState,
    what: &str,
    url: &str,
    declared_image: bool,
    position: usize,
) -> Result<Upload, ApiError> {
    let fetched = state
        .media
        .fetcher
        .fetch(url)
        .await
        .map_err(|err| fetch_error(what, err))?;
    let label = format!("the file at {what}");
    let blob = store_body(state, fetched.body, &label, |err| fetch_error(what, err)).await?;
    let filename = fetched
        .filename
        .unwrap_or_else(|| made_up_name(&blob, declared_image, position));
    Ok(Upload {
        blob,
        filename,
        declared_image,
    })
}

/// The attachments to commit, in order, each as it goes to WeCom: checked against WeCom's
/// limits when WeCom is on the message's route (`wecom`), so that a file WeCom would refuse
/// is refused now, not at delivery. Off WeCom an image is one whatever its size.
pub(crate) fn attachments(uploads: &[Upload], wecom: bool) -> Result<Vec<Attachment>, ApiError> {
    uploads
        .iter()
        .map(|upload| {
            let label = format!("file {:?}", upload.filename);
            let sniffed = upload.sniffed();
            if upload.declared_image {
                sniffed
                    .require_image()
                    .map_err(|err| media_error(&label, err))?;
            }
            if upload.blob.size == 0 {
                return Err(ApiError::BadRequest(format!("{label} is empty")));
            }
            let kind = if wecom {
                media::kind_for_wecom(&sniffed, upload.blob.size)
                    .map_err(|err| media_error(&format!("{label} (for WeCom)"), err))?
            } else if sniffed.image {
                MediaKind::Image
            } else {
                MediaKind::File
            };
            Ok(Attachment {
                blob_id: upload.blob.id.clone(),
                filename: Some(upload.filename.clone()),
                kind,
            })
        })
        .collect()
}

/// The title of a message that is attachments only: `📎 chart.png, log.txt`, cut to
/// `max_bytes` on a character boundary.
pub(crate) fn title(uploads: &[Upload], max_bytes: usize) -> String {
    let names: Vec<&str> = uploads.iter().map(|u| u.filename.as_str()).collect();
    let full = format!("📎 {}", names.join(", "));
    if full.len() <= max_bytes {
        return full;
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &full[..end])
}

/// Whether `err` or one of its causes is a body over its size limit (axum's
/// `DefaultBodyLimit`, or a limit this module's callers put on a body).
pub(crate) fn is_length_limit(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(cause) = next {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobId;

    fn upload(name: &str, head: &[u8], size: u64, declared_image: bool) -> Upload {
        Upload {
            blob: BlobInfo {
                id: BlobId::from_stored(format!("id-{name}")),
                sha256: String::new(),
                size,
                mime: media::sniff(head).mime.to_owned(),
                head: head.to_vec(),
            },
            filename: name.to_owned(),
            declared_image,
        }
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const GIF: &[u8] = b"GIF89a\x01\0\x01\0";

    #[test]
    fn kinds_follow_the_content_and_wecoms_limits() {
        let uploads = [
            upload("chart.png", PNG, 100, false),
            upload("a.png", b"just text", 100, false),
            upload("anim.gif", GIF, 100, false),
        ];
        let kinds = |wecom| -> Vec<MediaKind> {
            attachments(&uploads, wecom)
                .unwrap()
                .iter()
                .map(|a| a.kind)
                .collect()
        };
        assert_eq!(
            kinds(true),
            [MediaKind::Image, MediaKind::File, MediaKind::File]
        );
        assert_eq!(
            kinds(false),
            [MediaKind::Image, MediaKind::File, MediaKind::Image]
        );

        let big = [upload("big.png", PNG, 21 * 1024 * 1024, false)];
        let err = attachments(&big, true).unwrap_err();
        assert_eq!(err.status().as_u16(), 413, "{err}");
        assert!(err.to_string().contains("big.png"), "{err}");
        assert_eq!(attachments(&big, false).unwrap()[0].kind, MediaKind::Image);

        let tiny = [upload("t.txt", b"abc", 3, false)];
        assert_eq!(attachments(&tiny, true).unwrap_err().status().as_u16(), 400);
        let empty = [upload("e.txt", b"", 0, false)];
        assert_eq!(
            attachments(&empty, false).unwrap_err().status().as_u16(),
            400
        );
    }

    #[test]
    fn a_declared_image_must_be_one() {
        let not = [upload("x.png", b"<html>", 100, true)];
        let err = attachments(&not, false).unwrap_err();
        assert_eq!(err.status().as_u16(), 415, "{err}");
        let gif = [upload("x.gif", GIF, 100, true)];
        assert_eq!(attachments(&gif, true).unwrap()[0].kind, MediaKind::File);
    }

    #[test]
    fn titles_name_the_files_and_fit() {
        let uploads = [
            upload("chart.png", PNG, 100, false),
            upload("log.txt", b"x", 1, false),
        ];
        assert_eq!(title(&uploads, 1024), "📎 chart.png, log.txt");
        let long: Vec<Upload> = (0..10)
            .map(|i| upload(&format!("{i}{}", "图".repeat(80)), b"x", 1, false))
            .collect();
        let cut = title(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(describe_size(20 * 1024 * 1024), "20 MiB");
        assert_eq!(describe_size(64 * 1024), "64 KiB");
        assert_eq!(describe_size(1000), "1000 bytes");
        assert_eq!(describe_size(0), "0 bytes");
    }

    #[test]
    fn fetch_errors_keep_their_status() {
        let cases = [
            (
                FetchError::Credentials,
                400,
                "image_url: a URL with a user name",
            ),
            (FetchError::TooLarge { limit: 1024 }, 413, "image_url: "),
            (
                FetchError::Status {
                    host: "h".into(),
                    status: 500,
                },
                502,
                "h answered",
            ),
            (
                FetchError::Timeout {
                    after: std::time::Duration::from_secs(1),
                },
                504,
                "longer than",
            ),
        ];
        for (err, status, says) in cases {
            let api = fetch_error("image_url", err);
            assert_eq!(api.status().as_u16(), status, "{api}");
            assert!(api.to_string().contains(says), "{api}");
        }
    }
}
