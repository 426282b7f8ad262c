//! WeCom media: the client's `media/upload` and image/file messages against the mock WeCom,
//! and the mock's own upload rules (WeCom's errcodes). Nothing in the service uploads yet,
//! so these drive the client directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use pushbot::metrics::Metrics;
use pushbot::wecom::client::{AppMessage, MediaKind, MediaRef, WeComClient, WeComError};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{http_client, http_url, test_settings};
use crate::mock_wecom::{MockWeCom, SendReply};

const MB: usize = 1024 * 1024;

fn client_for(base_url: &str) -> WeComClient {
    client_with_timeout(base_url, test_settings().wecom.request_timeout)
}

fn client_with_timeout(base_url: &str, timeout: Duration) -> WeComClient {
    let mut settings = test_settings();
    settings.wecom.api_base = http_url(base_url);
    settings.wecom.request_timeout = timeout;
    let http =
        pushbot::app::http_client(settings.wecom.request_timeout, pushbot::app::Egress::Direct)
            .expect("http client");
    WeComClient::new(http, &settings.wecom)
}

/// A PNG's signature and IHDR start, then `len - 16` bytes of filler: enough for WeCom's
/// magic-byte check.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.resize(len, 0x42);
    bytes
}

fn jpg(len: usize) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.resize(len, 0x17);
    bytes
}

/// `len` bytes that differ from chunk to chunk (so a chunk lost, repeated or reordered
/// changes the hash).
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn image(media_id: &str) -> AppMessage {
    AppMessage::Image {
        image: MediaRef {
            media_id: media_id.to_owned(),
        },
    }
}

fn file(media_id: &str) -> AppMessage {
    AppMessage::File {
        file: MediaRef {
            media_id: media_id.to_owned(),
        },
    }
}

fn errcode(err: &WeComError) -> Option<i64> {
    match err {
        WeComError::Api { errcode, .. } => Some(*errcode),
        _ => None,
    }
}

#[tokio::test]
async fn an_uploaded_image_and_file_are_sent_as_image_and_file_messages() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);

    let picture = png(2048);
    let image_id = client
        .upload_media_bytes(
            MediaKind::Image,
            "chart.png",
            "image/png",
            Bytes::from(picture.clone()),
        )
        .await
        .expect("image upload");
    let report = pattern(10_000);
    let file_id = client
        .upload_media_bytes(
            MediaKind::File,
            "报告 2026-12.pdf",
            "application/pdf",
            Bytes::from(report.clone()),
        )
        .await
        .expect("file upload");
    assert_ne!(image_id, file_id);

    let uploaded = mock.upload_of(&image_id).expect("the image upload");
    assert_eq!(uploaded.kind.as_deref(), Some("image"));
    assert_eq!(uploaded.filename.as_deref(), Some("chart.png"));
    assert_eq!(uploaded.content_type.as_deref(), Some("image/png"));
    assert_eq!(uploaded.bytes.as_ref(), picture.as_slice());
    let uploaded = mock.upload_of(&file_id).expect("the file upload");
    assert_eq!(uploaded.kind.as_deref(), Some("file"));
    // The name the recipient sees arrives as it was given, Chinese and spaces included.
    assert_eq!(uploaded.filename.as_deref(), Some("报告 2026-12.pdf"));
    assert_eq!(uploaded.sha256, sha256_hex(&report));

    client
        .send("alice", &image(&image_id))
        .await
        .expect("image");
    client.send("alice", &file(&file_id)).await.expect("file");
    let calls = mock.calls();
    assert_eq!(
        calls[0].body,
        serde_json::json!({
            "touser": "alice",
            "agentid": crate::mock_wecom::AGENT_ID,
            "msgtype": "image",
            "image": {"media_id": image_id},
        })
    );
    assert_eq!(calls[1].body["msgtype"], "file");
    assert_eq!(calls[1].body["file"]["media_id"], file_id.as_str());
    let sent = mock.sent();
    assert_eq!(
        sent.iter()
            .map(|s| (s.msgtype.as_str(), s.content.as_str()))
            .collect::<Vec<_>>(),
        [("image", image_id.as_str()), ("file", file_id.as_str())]
    );
    // One token for all four calls.
    assert_eq!(mock.gettoken_calls(), 1);
}

#[tokio::test]
async fn a_filename_cannot_break_the_multipart_header() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);
    let id = client
        .upload_media_bytes(
            MediaKind::File,
            "a\"b\\c/d\r\ne.txt",
            "text/plain",
            Bytes::from_static(b"hello world"),
        )
        .await
        .expect("upload");
    let uploaded = mock.upload_of(&id).unwrap();
    assert_eq!(uploaded.filename.as_deref(), Some("a_b_c_d__e.txt"));
    assert_eq!(uploaded.bytes.as_ref(), b"hello world");

    let id = client
        .upload_media_bytes(
            MediaKind::File,
            " \t ",
            "text/plain",
            Bytes::from_static(b"hello world"),
        )
        .await
        .expect("upload");
    assert_eq!(
        mock.upload_of(&id).unwrap().filename.as_deref(),
        Some("file")
    );
}

#[tokio::test]
async fn a_streamed_upload_arrives_byte_identical_at_the_cap() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);
    // Exactly WeCom's 20 MB file cap, in 64 KiB chunks plus a ragged end.
    let content = Bytes::from(pattern(20 * MB));
    let started = Arc::new(AtomicUsize::new(0));
    let id = client
        .upload_media(
            MediaKind::File,
            "dump.bin",
            "application/octet-stream",
            content.len() as u64,
            || {
                started.fetch_add(1, Ordering::SeqCst);
                let content = content.clone();
                futures_util::stream::iter((0..content.len()).step_by(64 * 1024 - 1).map(
                    move |at| {
                        let end = (at + 64 * 1024 - 1).min(content.len());
                        Ok::<_, std::io::Error>(content.slice(at..end))
                    },
                ))
            },
        )
        .await
        .expect("a 20 MB file is within WeCom's cap");
    assert_eq!(started.load(Ordering::SeqCst), 1);
    let uploaded = mock.upload_of(&id).unwrap();
    assert_eq!(uploaded.len(), 20 * MB);
    assert_eq!(uploaded.sha256, sha256_hex(&content));
    assert_eq!(
        uploaded.content_type.as_deref(),
        Some("application/octet-stream")
    );
}

#[tokio::test]
async fn an_upload_with_an_expired_token_refreshes_it_and_sends_the_content_again() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);
    let metrics = Metrics::new();
    let client = client.with_metrics(metrics.clone());
    client
        .upload_media_bytes(
            MediaKind::Image,
            "a.jpg",
            "image/jpeg",
            Bytes::from(jpg(100)),
        )
        .await
        .expect("first upload");
    mock.expire_tokens();

    let content = Bytes::from(pattern(300 * 1024));
    let started = Arc::new(AtomicUsize::new(0));
    let id = client
        .upload_media(
            MediaKind::File,
            "b.bin",
            "application/octet-stream",
            content.len() as u64,
            || {
                started.fetch_add(1, Ordering::SeqCst);
                let content = content.clone();
                futures_util::stream::iter(
                    content
                        .chunks(10_000)
                        .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                        .collect::<Vec<_>>(),
                )
            },
        )
        .await
        .expect("the upload succeeds with a fresh token");

    // The stream was started again from its beginning for the second try.
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!(mock.gettoken_calls(), 2);
    let calls = mock.upload_calls();
    assert_eq!(
        calls.iter().map(|c| c.errcode).collect::<Vec<_>>(),
        [0, 42001, 0]
    );
    assert_ne!(calls[1].access_token, calls[2].access_token);
    let uploaded = mock.upload_of(&id).unwrap();
    assert_eq!(uploaded.sha256, sha256_hex(&content));
    assert_eq!(uploaded.len(), content.len());
    // The rejected try is counted like a send's.
    let text = metrics.encode(false).unwrap();
    assert!(
        text.contains(r#"pushbot_wecom_errors_total{api="media/upload",errcode="42001"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn an_expired_or_unknown_media_id_is_recognised_for_a_re_upload() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);
    let picture = Bytes::from(png(64));
    let id = client
        .upload_media_bytes(MediaKind::Image, "p.png", "image/png", picture.clone())
        .await
        .unwrap();
    client.send("alice", &image(&id)).await.expect("fresh id");

    mock.expire_media(&id);
    let err = client.send("alice", &image(&id)).await.unwrap_err();
    assert!(err.is_invalid_media(), "{err:?}");
    assert!(!err.is_transient(), "the same id never works again");
    let text = err.to_string();
    assert!(
        text.contains("media_id") && text.contains("3 days"),
        "{text}"
    );
    assert!(
        text.ends_with("(errcode 40007: invalid media_id, hint: [mock])"),
        "{text}"
    );

    // An id never issued, and an image's id in a file message, are refused alike.
    for message in [image("MEDIA_made_up"), file(&id)] {
        let err = client.send("alice", &message).await.unwrap_err();
        assert!(err.is_invalid_media(), "{message:?}: {err:?}");
    }
    // Other failures are not taken for it.
    mock.push_replies([SendReply::errcode(81013, "user & party & tag all invalid")]);
    let err = client
        .send("alice", &image("MEDIA_made_up"))
        .await
        .unwrap_err();
    assert!(
        err.is_invalid_media(),
        "the media check comes first: {err:?}"
    );
    assert!(!WeComError::Transport("x".into()).is_invalid_media());
    assert!(!WeComError::Http(502).is_invalid_media());

    // The caller's remedy: upload again, send with the new id.
    let fresh = client
        .upload_media_bytes(MediaKind::Image, "p.png", "image/png", picture)
        .await
        .unwrap();
    assert_ne!(fresh, id);
    mock.heal();
    client.send("alice", &image(&fresh)).await.expect("new id");
    assert_eq!(mock.sent().len(), 2);
}

#[tokio::test]
async fn uploads_wecom_refuses_are_permanent_errors_naming_the_limit() {
    let mock = MockWeCom::start().await;
    let metrics = Metrics::new();
    let client = client_for(&mock.base_url).with_metrics(metrics.clone());
    let cases: Vec<(MediaKind, Vec<u8>, i64, &str)> = vec![
        // One byte over the file cap.
        (MediaKind::File, pattern(20 * MB + 1), 40006, "20 MB"),
        // One byte over the image cap, a real PNG otherwise.
        (MediaKind::Image, png(10 * MB + 1), 40009, "10 MB"),
        // A GIF is an image, but not one WeCom takes as `image`.
        (
            MediaKind::Image,
            b"GIF89a-and-more".to_vec(),
            40005,
            "JPG or PNG",
        ),
        // Five bytes are not enough ("more than 5 bytes").
        (
            MediaKind::File,
            b"12345".to_vec(),
            40006,
            "more than 5 bytes",
        ),
        (MediaKind::File, Vec::new(), 44001, "empty"),
    ];
    for (kind, content, code, hint) in cases {
        let len = content.len();
        let err = client
            .upload_media_bytes(kind, "x", "application/octet-stream", Bytes::from(content))
            .await
            .unwrap_err();
        assert_eq!(
            errcode(&err),
            Some(code),
            "{kind:?} of {len} bytes: {err:?}"
        );
        assert!(!err.is_transient(), "{err:?}");
        assert!(!err.is_invalid_media(), "{err:?}");
        assert!(err.to_string().contains(hint), "{err}");
    }
    // Six bytes are.
    client
        .upload_media_bytes(
            MediaKind::File,
            "x",
            "text/plain",
            Bytes::from_static(b"123456"),
        )
        .await
        .expect("6 bytes");
    // Exactly 10 MB is an image WeCom takes.
    client
        .upload_media_bytes(
            MediaKind::Image,
            "big.png",
            "image/png",
            Bytes::from(png(10 * MB)),
        )
        .await
        .expect("10 MB image");

    let text = metrics.encode(false).unwrap();
    for code in ["40006", "40009", "40005", "44001"] {
        assert!(
            text.contains(&format!(
                r#"pushbot_wecom_errors_total{{api="media/upload",errcode="{code}"}}"#
            )),
            "{code}: {text}"
        );
    }
    assert_eq!(mock.uploads().len(), 2);
}

#[tokio::test]
async fn busy_or_failing_uploads_are_transient() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);
    mock.push_upload_replies([
        SendReply::errcode(-1, "system busy"),
        SendReply::http(502),
        SendReply::errcode(45009, "api freq out of limit"),
    ]);
    for expected in [
        WeComError::Api {
            errcode: -1,
            message: String::new(),
        },
        WeComError::Http(502),
        WeComError::Api {
            errcode: 45009,
            message: String::new(),
        },
    ] {
        let err = client
            .upload_media_bytes(
                MediaKind::File,
                "x.txt",
                "text/plain",
                Bytes::from_static(b"some text"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), expected.errcode(), "{err:?}");
        assert!(err.is_transient(), "{err:?}");
    }
    // The bodies were read and recorded all the same.
    assert!(mock.upload_calls().iter().all(|c| c.len() == 9));

    // A stream that fails halfway: the upload is a transport error, retried later.
    let err = client
        .upload_media(
            MediaKind::File,
            "x.bin",
            "application/octet-stream",
            20,
            || {
                futures_util::stream::iter([
                    Ok(Bytes::from_static(b"0123456789")),
                    Err(std::io::Error::other("the disk went away")),
                ])
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WeComError::Transport(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(mock.uploads().is_empty());
}

#[tokio::test]
async fn upload_errors_never_show_the_access_token() {
    // Nothing listens there: the connection is refused.
    let port = crate::helpers::free_port();
    let client = client_for(&format!("http://127.0.0.1:{port}"));
    let err = client
        .upload_media_bytes(
            MediaKind::File,
            "x.txt",
            "text/plain",
            Bytes::from_static(b"some text"),
        )
        .await
        .unwrap_err();
    // gettoken failed first; the secret is not in what it says.
    let text = err.to_string();
    assert!(!text.contains(crate::mock_wecom::SECRET), "{text}");
    assert!(!text.contains("corpsecret"), "{text}");

    // With a token in hand, a transport failure of the upload itself (a timeout: the URL
    // holds the token).
    let mock = MockWeCom::start().await;
    let client = client_with_timeout(&mock.base_url, Duration::from_millis(500));
    let token = client.access_token().await.unwrap();
    mock.push_upload_replies([SendReply::ok().delayed(Duration::from_secs(3))]);
    let err = client
        .upload_media_bytes(
            MediaKind::File,
            "x.txt",
            "text/plain",
            Bytes::from_static(b"some text"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WeComError::Transport(_)), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(!format!("{err} {err:?}").contains(&token), "{err:?}");
    assert!(!format!("{err:?}").contains("access_token"), "{err:?}");
}

// ---- the mock itself, over HTTP, as WeCom's documentation describes it ----

async fn raw_upload(mock: &MockWeCom, query: &str, form: reqwest::multipart::Form) -> Value {
    http_client()
        .post(format!("{}/cgi-bin/media/upload?{query}", mock.base_url))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn media_form(bytes: &'static [u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "media",
        reqwest::multipart::Part::bytes(bytes).file_name("wework.txt"),
    )
}

#[tokio::test]
async fn the_mock_answers_uploads_like_wecom() {
    let mock = MockWeCom::start().await;
    let token = client_for(&mock.base_url).access_token().await.unwrap();

    // The documented answer: errcode 0, the type, a media_id and created_at as a string.
    let reply = raw_upload(
        &mock,
        &format!("access_token={token}&type=file"),
        media_form(b"mytext"),
    )
    .await;
    assert_eq!(reply["errcode"], 0, "{reply}");
    assert_eq!(reply["type"], "file");
    let media_id = reply["media_id"].as_str().unwrap();
    assert!(!media_id.is_empty());
    let created_at: u64 = reply["created_at"].as_str().unwrap().parse().unwrap();
    assert!(created_at > 1_700_000_000);
    assert_eq!(
        mock.upload_of(media_id).unwrap().filename.as_deref(),
        Some("wework.txt")
    );

    let refusals = [
        // No access token.
        ("type=file".to_owned(), media_form(b"mytext"), 41001),
        // A token WeCom never issued.
        (
            "access_token=nope&type=file".to_owned(),
            media_form(b"mytext"),
            40014,
        ),
        // A type WeCom does not have.
        (
            format!("access_token={token}&type=pdf"),
            media_form(b"mytext"),
            40005,
        ),
        // No type at all.
        (
            format!("access_token={token}"),
            media_form(b"mytext"),
            40005,
        ),
        // The file under another field name: no media.
        (
            format!("access_token={token}&type=file"),
            reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(&b"mytext"[..]).file_name("a.txt"),
            ),
            44001,
        ),
    ];
    for (query, form, code) in refusals {
        let reply = raw_upload(&mock, &query, form).await;
        assert_eq!(reply["errcode"], code, "{query}: {reply}");
        assert!(reply.get("media_id").is_none(), "{reply}");
    }
    assert_eq!(mock.uploads().len(), 1);
    assert_eq!(mock.upload_calls().len(), 6);
    assert!(mock.unexpected_requests().is_empty());
}

#[tokio::test]
async fn expiring_all_media_refuses_every_earlier_id() {
    let mock = MockWeCom::start().await;
    let client = client_for(&mock.base_url);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            client
                .upload_media_bytes(
                    MediaKind::File,
                    &format!("{n}.txt"),
                    "text/plain",
                    Bytes::from(format!("file number {n}")),
                )
                .await
                .unwrap(),
        );
    }
    mock.expire_all_media();
    let later = client
        .upload_media_bytes(
            MediaKind::File,
            "later.txt",
            "text/plain",
            Bytes::from_static(b"uploaded after"),
        )
        .await
        .unwrap();
    for id in &ids {
        let err = client.send("bob", &file(id)).await.unwrap_err();
        assert!(err.is_invalid_media(), "{err:?}");
    }
    client.send("bob", &file(&later)).await.expect("fresh id");
    let uploads = mock.wait_for_uploads(4, Duration::from_secs(1)).await;
    assert_eq!(uploads.len(), 4);
    // A text message is not checked for media.
    client.send_text("bob", "hello").await.unwrap();
    assert_eq!(
        mock.sent()
            .iter()
            .map(|s| s.msgtype.as_str())
            .collect::<Vec<_>>(),
        ["file", "text"]
    );
}
