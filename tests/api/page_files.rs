//! A message's images and files on its page (issue 20): sent with `POST /send` as multipart
//! file parts (`curl -F file=@…`), shown on `/m/{id}?k=KEY` (images inline, every file a
//! download link with its size) and served at `/m/{id}/files/{idx}?k=KEY`: the exact bytes,
//! raster images inline and everything else a sandboxed download, the page's key and the
//! page's 404 for anything else, so a member never opens another member's file.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use sha2::{Digest as _, Sha256};

use crate::compat::{app_and_member, get};
use crate::helpers::*;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// A real PNG of `width` × `height` (8-bit RGB, a colour gradient), stored without
/// compression so that it is large: what a browser decodes, and spans several of the
/// store's chunks once it is bigger than 256 KiB.
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[
                (x * 255 / width.max(1)) as u8,
                (y * 255 / height.max(1)) as u8,
                0x80,
            ]);
        }
    }
    // zlib: header, stored deflate blocks of at most 65,535 bytes, Adler-32.
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(block.len()).unwrap();
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PDF-looking file of exactly `len` bytes (what the sniffer calls `application/pdf`).
fn pdf(len: usize) -> Vec<u8> {
    let mut bytes =
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n".to_vec();
    let mut n: u32 = 0;
    while bytes.len() < len {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        bytes.push((n >> 16) as u8);
    }
    bytes.truncate(len);
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `POST /send?token=…` as multipart, as `curl -F title=… -F file=@name` sends it; the
/// accepted message's id.
pub(crate) async fn send_files(
    app: &Api,
    token: &str,
    title: &str,
    files: &[(&str, &[u8])],
) -> String {
    let mut form = Form::new().text("title", title.to_owned());
    for (name, bytes) in files {
        let part = Part::bytes(bytes.to_vec())
            .file_name((*name).to_owned())
            .mime_str("application/octet-stream")
            .unwrap();
        form = form.part("file", part);
    }
    let resp = app
        .http
        .post(app.url("/send"))
        .query(&[("token", token)])
        .multipart(form)
        .send()
        .await
        .expect("POST /send (multipart)");
    accepted_id(resp).await
}

/// The message's page address (a path with its key), from `GET /messages/{id}`.
pub(crate) async fn page_path(app: &Api, id: &str, token: &str) -> String {
    let status = app.message_json(id, token).await;
    let link = status["page"]
        .as_str()
        .unwrap_or_else(|| panic!("the owner sees the page link: {status}"));
    let path = link
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("under server.public_url: {link}"));
    assert!(path.starts_with(&format!("/m/{id}?k=")), "{link}");
    path.to_owned()
}

/// The key in a page's path.
fn key_of(path: &str) -> &str {
    path.split("?k=").nth(1).expect("a key")
}

/// `/m/{id}/files/{idx}?k={key}`.
fn file_path(id: &str, idx: usize, key: &str) -> String {
    format!("/m/{id}/files/{idx}?k={key}")
}

async fn head(app: &Api, path: &str) -> reqwest::Response {
    app.http
        .head(app.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD {path}: {e}"))
}

/// A file answer (200): its headers and bytes.
async fn fetch(app: &Api, path: &str) -> (HeaderMap, Vec<u8>) {
    let resp = get(app, path).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("file body").to_vec();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    (headers, body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {headers:#?}"))
        .to_str()
        .unwrap()
}

/// What every file answer carries, whatever the file.
fn assert_file_headers(headers: &HeaderMap, len: usize) {
    assert_eq!(header(headers, "content-length"), len.to_string());
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(headers, "content-security-policy"),
        "default-src 'none'; sandbox"
    );
    assert_eq!(header(headers, "referrer-policy"), "no-referrer");
    let cache = header(headers, "cache-control");
    let max_age: u64 = cache
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("private, with a max-age: {cache}"))
        .parse()
        .unwrap_or_else(|_| panic!("{cache}"));
    assert!((1..=3600).contains(&max_age), "{cache}");
    assert!(headers.get("set-cookie").is_none());
}

/// An HTML answer with `status`: its headers and body.
async fn html(resp: reqwest::Response, status: u16) -> (HeaderMap, String) {
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("page body");
    assert_eq!(got, status, "{body}");
    assert!(header(&headers, "content-type").starts_with("text/html"));
    (headers, body)
}

/// `body` with its nonces blanked: two answers that differ only in them are the same.
fn without_nonces(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(at) = rest.find("nonce=\"") {
        out.push_str(&rest[..at + 7]);
        rest = &rest[at + 7..];
        rest = &rest[rest.find('"').unwrap_or(0)..];
    }
    out.push_str(rest);
    out
}

/// The `img-src` directive of a page's policy.
fn img_src(headers: &HeaderMap) -> String {
    let csp = header(headers, "content-security-policy");
    csp.split(';')
        .map(str::trim)
        .find(|d| d.starts_with("img-src"))
        .unwrap_or_else(|| panic!("no img-src: {csp}"))
        .to_owned()
}

const PNG_NAME: &str = "图表 chart.png";
const PDF_NAME: &str = "周报 2026.pdf";

// ------------------------------------------------------------------------------------------
// the page and the files
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_page_shows_the_image_and_links_both_files_which_come_back_byte_for_byte() {
    let (app, _user, token) = app_and_member().await;
    // 400 × 300 RGB: about 352 KiB, two of the store's chunks; the PDF five and a bit.
    let image = png(400, 300);
    let document = pdf(5 * 256 * 1024 + 3);
    let id = send_files(
        &app,
        &token,
        "夜间构建",
        &[(PNG_NAME, &image), (PDF_NAME, &document)],
    )
    .await;
    let path = page_path(&app, &id, &token).await;
    let key = key_of(&path);

    // The page: the image shown, both files linked with their sizes, in order.
    let (headers, body) = html(get(&app, &path).await, 200).await;
    let href = |idx: usize| format!("{id}/files/{idx}?k={key}");
    assert!(
        body.contains(&format!(
            "<img src=\"{}\" alt=\"{PNG_NAME}\" loading=\"lazy\"",
            href(0)
        )),
        "{body}"
    );
    assert_eq!(
        body.matches("<img").count(),
        1,
        "the PDF is no image: {body}"
    );
    let size = |bytes: usize| pushbot::render::page::human_size(bytes as u64);
    for (idx, name, len) in [(0, PNG_NAME, image.len()), (1, PDF_NAME, document.len())] {
        let link = format!(
            "<a href=\"{}\" download=\"{name}\">{name}</a> <span class=\"size\">{}</span>",
            href(idx),
            size(len)
        );
        assert!(body.contains(&link), "{link} in {body}");
    }
    assert_eq!(size(document.len()), "1.3 MiB");
    assert!(body.find(PNG_NAME) < body.find(PDF_NAME));
    // Images from this server, and only on a page that shows one.
    assert_eq!(img_src(&headers), "img-src 'self'");
    let csp = header(&headers, "content-security-policy");
    assert!(csp.starts_with("default-src 'none'; "), "{csp}");
    assert!(!csp.contains("http") && !csp.contains('*'), "{csp}");
    let plain = app.send_ok(&token, "no files", "just text").await;
    let plain_path = page_path(&app, &plain, &token).await;
    let (plain_headers, plain_body) = html(get(&app, &plain_path).await, 200).await;
    assert_eq!(img_src(&plain_headers), "img-src 'none'");
    assert!(!plain_body.contains("class=\"files\""), "{plain_body}");

    // The image: the exact bytes, as a PNG, inline.
    let (headers, bytes) = fetch(&app, &file_path(&id, 0, key)).await;
    assert_eq!(sha256(&bytes), sha256(&image));
    assert_file_headers(&headers, image.len());
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"__ chart.png\"; filename*=UTF-8''%E5%9B%BE%E8%A1%A8%20chart.png"
    );

    // The PDF: the exact bytes, as a download under its name.
    let (headers, bytes) = fetch(&app, &file_path(&id, 1, key)).await;
    assert_eq!(bytes.len(), document.len());
    assert_eq!(sha256(&bytes), sha256(&document));
    assert_file_headers(&headers, document.len());
    assert_eq!(header(&headers, "content-type"), "application/octet-stream");
    assert_eq!(
        header(&headers, "content-disposition"),
        "attachment; filename=\"__ 2026.pdf\"; filename*=UTF-8''%E5%91%A8%E6%8A%A5%202026.pdf"
    );

    // HEAD: the same headers, no body.
    for (idx, len) in [(0, image.len()), (1, document.len())] {
        let path = file_path(&id, idx, key);
        let (got, _) = fetch(&app, &path).await;
        let resp = head(&app, &path).await;
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has no body");
        assert_file_headers(&headers, len);
        for name in ["content-type", "content-disposition", "cache-control"] {
            assert_eq!(headers.get(name), got.get(name), "{name}");
        }
    }
}

#[tokio::test]
async fn a_wrong_key_another_message_or_an_index_past_the_files_is_the_pages_404() {
    let app = spawn_app().await;
    let (alice, bob) = (userid("alice"), userid("bob"));
    let alice_token = app.get_token(&alice).await;
    let bob_token = app.get_token(&bob).await;
    let alices_file = pdf(4000);
    let mut bobs_file = pdf(5000);
    bobs_file[100..120].copy_from_slice(b"bob's secret content");
    let alices = send_files(&app, &alice_token, "a", &[("a.pdf", &alices_file)]).await;
    let bobs = send_files(&app, &bob_token, "b", &[("b.pdf", &bobs_file)]).await;
    let alices_key = key_of(&page_path(&app, &alices, &alice_token).await).to_owned();
    let bobs_key = key_of(&page_path(&app, &bobs, &bob_token).await).to_owned();
    let text_only = app.send_ok(&alice_token, "t", "no files").await;
    let text_key = key_of(&page_path(&app, &text_only, &alice_token).await).to_owned();

    // Each opens its own.
    let (_, bytes) = fetch(&app, &file_path(&alices, 0, &alices_key)).await;
    assert_eq!(bytes, alices_file);
    let (_, bytes) = fetch(&app, &file_path(&bobs, 0, &bobs_key)).await;
    assert_eq!(bytes, bobs_file);

    // The page's own 404 for a message that does not exist.
    let unknown = uuid::Uuid::now_v7();
    let (want_headers, want) = html(get(&app, &format!("/m/{unknown}?k=x")).await, 404).await;
    let want = without_nonces(&want);
    let wrong = format!("{}x", &alices_key[..alices_key.len() - 1]);
    for path in [
        format!("/m/{alices}/files/0?k={wrong}"),
        format!("/m/{alices}/files/0?k="),
        format!("/m/{alices}/files/0"),
        format!("/m/{alices}/files/0?key={alices_key}"),
        // Bob's key, on Alice's file; Alice's key on Bob's; a key for the wrong message.
        format!("/m/{alices}/files/0?k={bobs_key}"),
        format!("/m/{bobs}/files/0?k={alices_key}"),
        format!("/m/{alices}/files/0?k={text_key}"),
        // No such message, or one without files.
        format!("/m/{unknown}/files/0?k={alices_key}"),
        format!("/m/not-an-id/files/0?k={alices_key}"),
        format!("/m/{text_only}/files/0?k={text_key}"),
        // Past the files, or not an index.
        format!("/m/{alices}/files/1?k={alices_key}"),
        format!("/m/{alices}/files/18446744073709551616?k={alices_key}"),
        format!("/m/{alices}/files/-1?k={alices_key}"),
        format!("/m/{alices}/files/00?k={alices_key}"),
        format!("/m/{alices}/files/+0?k={alices_key}"),
        format!("/m/{alices}/files/x?k={alices_key}"),
    ] {
        let resp = get(&app, &path).await;
        let (headers, body) = html(resp, 404).await;
        assert_eq!(without_nonces(&body), want, "{path}");
        for name in ["cache-control", "referrer-policy", "x-content-type-options"] {
            assert_eq!(headers.get(name), want_headers.get(name), "{path}: {name}");
        }
        assert!(headers.get("content-disposition").is_none(), "{path}");
        let head = head(&app, &path).await;
        assert_eq!(head.status(), 404, "HEAD {path}");
    }
    // Other paths under the page are not files either.
    for path in [
        format!("/m/{alices}/files?k={alices_key}"),
        format!("/m/{alices}/files/?k={alices_key}"),
        format!("/m/{alices}/files/0/x?k={alices_key}"),
    ] {
        let status = get(&app, &path).await.status();
        assert_eq!(status, 404, "{path}");
    }
}

/// An SVG (which can carry script) and an HTML file sent under an image's name are files:
/// never shown on the page, served only as downloads; a page with files but no image keeps
/// the strictest policy.
#[tokio::test]
async fn svg_and_html_are_downloads_never_shown() {
    let (app, _user, token) = app_and_member().await;
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\">\
                <script>alert(document.cookie)</script></svg>";
    let page = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>";
    let id = send_files(
        &app,
        &token,
        "not images",
        &[("logo.svg", svg), ("photo.png", page)],
    )
    .await;
    let path = page_path(&app, &id, &token).await;
    let key = key_of(&path);
    let (headers, body) = html(get(&app, &path).await, 200).await;
    assert!(!body.contains("<img"), "{body}");
    assert_eq!(img_src(&headers), "img-src 'none'");
    for (idx, bytes) in [(0, &svg[..]), (1, &page[..])] {
        let (headers, got) = fetch(&app, &file_path(&id, idx, key)).await;
        assert_eq!(got, bytes);
        assert_file_headers(&headers, bytes.len());
        assert_eq!(header(&headers, "content-type"), "application/octet-stream");
        let disposition = header(&headers, "content-disposition");
        assert!(disposition.starts_with("attachment; "), "{disposition}");
    }
}

/// Past `storage.retention` a file is gone as its page is (410), told from the id alone.
#[tokio::test]
async fn past_the_retention_a_file_is_gone_like_its_page() {
    let app = spawn_app_with(|c| c.storage.retention = Some(Duration::from_secs(86_400))).await;
    let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(db_now_secs() - 2 * 86_400).unwrap(),
        0,
    ));
    let (_, page) = html(get(&app, &format!("/m/{old}?k=x")).await, 410).await;
    let (_, file) = html(get(&app, &format!("/m/{old}/files/0?k=x")).await, 410).await;
    assert_eq!(without_nonces(&file), without_nonces(&page));
    assert!(file.contains("Message expired"), "{file}");
}

fn db_now_secs() -> i64 {
    crate::db::now_ms() / 1000
}

/// The page shows what `GET /messages/{id}` lists, in the same order, and each link serves
/// the bytes whose hash the status gives.
#[tokio::test]
async fn the_page_shows_what_the_status_lists() {
    let (app, _user, token) = app_and_member().await;
    let (image, document) = (png(16, 16), pdf(64));
    let id = send_files(
        &app,
        &token,
        "t",
        &[("a.png", &image), ("b.pdf", &document)],
    )
    .await;
    let status = app.message_json(&id, &token).await;
    let listed = status["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let want = [
        ("a.png", "image", image.len(), "image/png", sha256(&image)),
        (
            "b.pdf",
            "file",
            document.len(),
            "application/pdf",
            sha256(&document),
        ),
    ];
    assert_eq!(listed.len(), want.len(), "{status}");
    let path = page_path(&app, &id, &token).await;
    let key = key_of(&path);
    let (_, body) = html(get(&app, &path).await, 200).await;
    for (idx, (view, (name, kind, size, mime, hash))) in listed.iter().zip(want).enumerate() {
        assert_eq!(view["filename"], name, "{view}");
        assert_eq!(view["kind"], kind, "{view}");
        assert_eq!(view["size"], size, "{view}");
        assert_eq!(view["mime"], mime, "{view}");
        assert_eq!(view["sha256"], hash.as_str(), "{view}");
        let link = format!(
            "<a href=\"{id}/files/{idx}?k={key}\" download=\"{name}\">{name}</a> \
             <span class=\"size\">{} B</span>",
            size
        );
        assert!(body.contains(&link), "{link} in {body}");
        let (_, bytes) = fetch(&app, &file_path(&id, idx, key)).await;
        assert_eq!(sha256(&bytes), hash);
    }
}
