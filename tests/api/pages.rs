//! Long messages, markdown and the message page: what reaches WeCom (text, markdown or a card
//! linking to `/m/{id}?k=…`), what the page serves (whole text, safe HTML, strict headers),
//! who may open it (404 without the key), how long (410 and the purge past
//! `storage.retention`), and the knobs around it (`url`, `format …` in the chat,
//! `server.max_content_bytes`).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::Row as _;

use crate::compat::{app_and_member, assert_nothing_sent, get, the_only_card, the_only_message};
use crate::db;
use crate::helpers::*;

/// WeCom's limit for text and markdown, in bytes.
const MAX_TEXT: usize = 2048;
/// A card's description limit, in bytes.
const CARD_DESCRIPTION: usize = 512;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// `/send` with a JSON body for `token`; the accepted message's id.
async fn send(app: &Api, token: &str, body: Value) -> String {
    accepted_id(app.send_json(Some(token), &body).await).await
}

/// `prefix` padded with `x` to exactly `len` bytes.
fn exactly(prefix: &str, len: usize) -> String {
    assert!(prefix.len() <= len, "{} > {len}", prefix.len());
    format!("{prefix}{}", "x".repeat(len - prefix.len()))
}

/// GETs a page link as the card carries it (under `server.public_url`) from the test server.
async fn open(app: &Api, link: &str) -> reqwest::Response {
    let path = link
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("the link is under server.public_url: {link}"));
    assert!(path.starts_with("/m/"), "{link}");
    get(app, path).await
}

/// An HTML answer with `status`: its headers and body.
async fn html(resp: reqwest::Response, status: u16) -> (HeaderMap, String) {
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("page body");
    assert_eq!(got, status, "{body}");
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    (headers, body)
}

/// The page behind `link` (200).
async fn page(app: &Api, link: &str) -> (HeaderMap, String) {
    html(open(app, link).await, 200).await
}

/// The nonce of the page's Content-Security-Policy, after checking the policy is strict.
fn csp_nonce(headers: &HeaderMap) -> String {
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let nonce_of = |directive: &str| -> String {
        let start = csp
            .find(&format!("{directive} 'nonce-"))
            .unwrap_or_else(|| panic!("{directive} has a nonce: {csp}"));
        let rest = &csp[start + directive.len() + " 'nonce-".len()..];
        rest.split('\'').next().unwrap().to_owned()
    };
    let nonce = nonce_of("script-src");
    assert_eq!(nonce_of("style-src"), nonce, "{csp}");
    assert!(nonce.len() >= 16, "{csp}");
    // No image from anywhere else: the reader's device never fetches a sender's URL.
    for directive in csp.split(';').map(str::trim) {
        if let Some(sources) = directive.strip_prefix("img-src") {
            for source in sources.split_whitespace() {
                assert!(
                    ["'none'", "'self'", "data:"].contains(&source),
                    "img-src {source}: {csp}"
                );
            }
        }
    }
    for remote in ["https:", "http:", "*"] {
        assert!(!csp.contains(remote), "{remote} in {csp}");
    }
    nonce
}

/// Every `nonce="…"` attribute in `body`.
fn nonce_attributes(body: &str) -> Vec<&str> {
    body.split("nonce=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect()
}

/// Whitespace removed: compares an excerpt with the text it comes from whatever the
/// channel does to line breaks.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The inside of every tag in `html` (`<a href=…>` → `a href=…`).
fn tags(html: &str) -> Vec<&str> {
    html.split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap())
        .collect()
}

/// `GET /messages/{id}`'s `page`.
async fn page_link(app: &Api, id: &str, token: &str) -> String {
    let status = app.message_json(id, token).await;
    status["page"]
        .as_str()
        .unwrap_or_else(|| panic!("the owner sees the page link: {status}"))
        .to_owned()
}

/// A WeCom message that is not a card (text or markdown), and its content.
fn plain(sent: &Sent, msgtype: &str) -> String {
    assert_eq!(sent.msgtype, msgtype, "{sent:#?}");
    assert!(sent.card.is_none(), "{sent:#?}");
    sent.content.clone()
}

fn card_of(sent: &Sent) -> SentCard {
    assert_eq!(sent.msgtype, "textcard", "{sent:#?}");
    sent.card.clone().expect("a card")
}

/// Asserts the bot's answer to `text` from `user` contains `expected`.
async fn says(app: &Api, user: &str, text: &str, expected: &str) -> String {
    let reply = app
        .user_says(user, text)
        .await
        .unwrap_or_else(|| panic!("the bot answers {text:?}"));
    assert!(reply.contains(expected), "{text:?} → {reply}");
    reply
}

// ------------------------------------------------------------------------------------------
// 1. a long markdown message: one card, and the page with all of it
// ------------------------------------------------------------------------------------------

const LAST_MARKER: &str = "尾声标记-7f3a";
const REPORT_LINK: &str = "https://example.com/report/42";

/// About 10 KB of Chinese markdown: a heading, a table, code, a link, many paragraphs and
/// a last one with [`LAST_MARKER`].
fn long_report() -> String {
    let mut md = format!(
        "今天的巡检报告如下，请查阅。\n\n## 磁盘与备份\n\n| 主机 | 使用率 |\n|---|---|\n\
         | web-1 | 97% |\n| db-1 | 64% |\n\n```\ndf -h /dev/sda1\n```\n\n详见[完整报告]({REPORT_LINK})。\n\n"
    );
    let mut n = 0;
    while md.len() < 10 * 1024 {
        n += 1;
        md.push_str(&format!(
            "第{n}段：磁盘使用率超过阈值，请尽快清理日志文件，并检查备份任务是否正常完成。\n\n"
        ));
    }
    md.push_str(&format!("最后一段：{LAST_MARKER}，报告结束。\n"));
    md
}

#[tokio::test]
async fn a_long_markdown_message_is_one_card_opening_the_whole_rendered_text() {
    let (app, user, token) = app_and_member().await;
    let title = "每日巡检报告：磁盘";
    let md = long_report();
    let id = send(
        &app,
        &token,
        json!({"title": title, "content": md, "format": "markdown"}),
    )
    .await;

    let card = the_only_card(&app, &user, &token).await;
    assert_eq!(card.title, title);
    assert_eq!(card.btntxt, "阅读全文");
    let d = &card.description;
    assert!(d.len() <= CARD_DESCRIPTION, "{} bytes: {d}", d.len());
    assert!(
        d.len() > CARD_DESCRIPTION / 2,
        "the excerpt uses the room: {d}"
    );
    assert!(!d.contains('\u{FFFD}'), "no character cut in half: {d}");
    let excerpt = d
        .strip_suffix('…')
        .unwrap_or_else(|| panic!("ends with …: {d}"));
    let readable = pushbot::render::markdown::to_plain_text(&md);
    assert!(
        squash(&readable).starts_with(&squash(excerpt)),
        "the description is the start of the readable text:\n{d}\n---\n{readable}"
    );
    assert!(
        !d.contains("##") && !d.contains("|---"),
        "no markdown source: {d}"
    );
    let prefix = format!("{PUBLIC_URL}/m/{id}?k=");
    assert!(card.url.starts_with(&prefix), "{} vs {prefix}", card.url);
    assert!(card.url.len() > prefix.len(), "{}", card.url);
    app.wait_for_status(&id, &token, "delivered", WAIT).await;

    let (headers, body) = page(&app, &card.url).await;
    // all of the text
    for paragraph in md.split("\n\n").filter(|p| p.starts_with('第')) {
        assert!(body.contains(paragraph), "the page has {paragraph:?}");
    }
    assert!(
        body.contains(LAST_MARKER),
        "the page has the last paragraph"
    );
    // rendered markdown
    assert!(body.contains(&format!("<h1>{title}</h1>")), "{body}");
    assert!(body.contains("<h2>磁盘与备份</h2>"), "{body}");
    assert!(
        body.contains("<table>") && body.contains("<td>web-1</td>"),
        "{body}"
    );
    assert!(body.contains("<pre><code>df -h /dev/sda1"), "{body}");
    assert!(body.contains(&format!("href=\"{REPORT_LINK}\"")), "{body}");
    assert!(!body.contains("## ") && !body.contains("|---|"), "{body}");
    // self-contained: the only addresses are the message's own
    let outside = body.replace(REPORT_LINK, "");
    assert!(
        !outside.contains("http://") && !outside.contains("https://"),
        "the page refers to nothing but the message's links: {outside}"
    );
    // headers
    let nonce = csp_nonce(&headers);
    let attributes = nonce_attributes(&body);
    assert_eq!(
        attributes,
        [nonce.as_str(), nonce.as_str()],
        "style and script"
    );
    assert!(
        body.contains(&format!("<style nonce=\"{nonce}\">")),
        "{body}"
    );
    assert!(
        body.contains(&format!("<script nonce=\"{nonce}\">")),
        "{body}"
    );
    let cache = headers["cache-control"].to_str().unwrap();
    assert!(
        cache.contains("private") && cache.contains("no-store"),
        "{cache}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    // a nonce is good for one response only
    let (again, _) = page(&app, &card.url).await;
    assert_ne!(csp_nonce(&again), nonce, "a fresh nonce per response");
}

// ------------------------------------------------------------------------------------------
// 2. the 2048-byte threshold
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn text_up_to_2048_bytes_stays_text_one_byte_more_becomes_a_card() {
    let (app, user, token) = app_and_member().await;
    send(&app, &token, json!({"title": "T", "content": "磁盘已满"})).await;
    // title + blank line + content = 2048 bytes exactly
    let title = "磁盘";
    let fits = exactly(&"磁".repeat(600), MAX_TEXT - title.len() - 2);
    send(&app, &token, json!({"title": title, "content": fits})).await;
    // one byte more; markdown-looking, but sent as text (the default)
    let over = exactly(
        &format!("**不是粗体** {}", "磁".repeat(600)),
        fits.len() + 1,
    );
    let over_id = send(&app, &token, json!({"title": title, "content": over})).await;

    let sent = app.mock.wait_for_sent(3, WAIT).await;
    assert!(sent.iter().all(|s| s.touser == user), "{sent:#?}");
    assert_eq!(plain(&sent[0], "text"), "T\n\n磁盘已满");
    let text = plain(&sent[1], "text");
    assert_eq!(text.len(), MAX_TEXT);
    assert_eq!(text, format!("{title}\n\n{fits}"));
    let card = card_of(&sent[2]);
    assert_eq!(card.title, title);
    assert_eq!(card.btntxt, "阅读全文");
    assert!(
        card.description.starts_with("**不是粗体** 磁磁磁"),
        "text is not read as markdown: {}",
        card.description
    );
    assert!(card.description.len() <= CARD_DESCRIPTION);
    assert_eq!(card.url, page_link(&app, &over_id, &token).await);

    let (_, body) = page(&app, &card.url).await;
    assert!(body.contains(&over), "the page shows the text as sent");
    assert!(!body.contains("<strong>"), "{body}");
}

// ------------------------------------------------------------------------------------------
// 3. hostile markdown on the page
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_markdown_is_shown_as_text_and_never_runs() {
    let (app, user, token) = app_and_member().await;
    let hostile = "<script>alert(1)</script>\n\n\
         text <img src=x onerror=alert(1)> more\n\n\
         [x](javascript:alert(1))\n\n\
         <iframe src=\"https://evil.example\"></iframe>\n\n\
         ![a](http://insecure.example/x.png)\n\n\
         <a href=\"javascript:alert(2)\">y</a>\n\n";
    let content = format!("{hostile}{}", "填充内容。".repeat(150));
    assert!(content.len() > MAX_TEXT);
    send(
        &app,
        &token,
        json!({"title": "<b>标题</b>", "content": content, "format": "markdown"}),
    )
    .await;
    let card = the_only_card(&app, &user, &token).await;

    let (headers, body) = page(&app, &card.url).await;
    csp_nonce(&headers);
    let lower = body.to_lowercase();
    assert_eq!(
        lower.matches("<script").count(),
        1,
        "only our script: {body}"
    );
    assert!(!lower.contains("<iframe"), "{body}");
    assert!(!lower.contains("<img"), "{body}");
    // (the escaped text may show `href="javascript:`; no tag may have it)
    for tag in tags(&lower) {
        for bad in ["onerror", "javascript:", "src=\"http://", "src=x"] {
            assert!(!tag.contains(bad), "{bad} in <{tag}>: {body}");
        }
    }
    // shown, escaped
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(
        body.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{body}"
    );
    assert!(body.contains("&lt;iframe"), "{body}");
    assert!(body.contains("<h1>&lt;b&gt;标题&lt;/b&gt;</h1>"), "{body}");
}

/// A sender's image (a tracking pixel, say) is a link on the page, never loaded: no `<img>`
/// anywhere, and a policy that would block one.
#[tokio::test]
async fn markdown_images_on_the_page_are_links_never_loaded() {
    let (app, user, token) = app_and_member().await;
    let content = format!(
        "![磁盘 disk](https://tracker.example/p.png?u={user})\n\n\
         ![](https://tracker.example/empty.png)\n\n\
         <img src=\"https://tracker.example/raw.png\">\n\n\
         x <img src=https://tracker.example/inline.png> y\n\n{}",
        "填充内容。".repeat(150)
    );
    assert!(content.len() > MAX_TEXT);
    send(
        &app,
        &token,
        json!({"content": content, "format": "markdown"}),
    )
    .await;
    let card = the_only_card(&app, &user, &token).await;

    let (headers, body) = page(&app, &card.url).await;
    csp_nonce(&headers);
    let lower = body.to_lowercase();
    assert!(!lower.contains("<img"), "{body}");
    for tag in tags(&lower) {
        assert!(!tag.contains("src="), "<{tag}>: {body}");
    }
    assert!(
        body.contains(&format!(
            "<a href=\"https://tracker.example/p.png?u={user}\" \
             rel=\"noopener noreferrer nofollow\" target=\"_blank\">🖼 磁盘 disk</a>"
        )),
        "{body}"
    );
    assert!(
        body.contains(
            "<a href=\"https://tracker.example/empty.png\" \
             rel=\"noopener noreferrer nofollow\" target=\"_blank\">🖼 image</a>"
        ),
        "{body}"
    );
    // raw HTML shows as the text it is
    assert!(
        body.contains("&lt;img src=\"https://tracker.example/raw.png\"&gt;"),
        "{body}"
    );
    assert!(
        body.contains("x &lt;img src=https://tracker.example/inline.png&gt; y"),
        "{body}"
    );
}

// ------------------------------------------------------------------------------------------
// 4. no key, no page
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn without_the_right_key_the_page_is_a_404_like_a_missing_message() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let bob = userid("bob");
    let alice_token = app.get_token(&alice).await;
    let bob_token = app.get_token(&bob).await;
    let secret = "机密内容-c41b";
    let id = send(&app, &alice_token, json!({"content": secret})).await;
    let bobs = send(&app, &bob_token, json!({"content": "bob's"})).await;
    let link = page_link(&app, &id, &alice_token).await;
    let bobs_link = page_link(&app, &bobs, &bob_token).await;
    let key = link.split("?k=").nth(1).unwrap();
    let bobs_key = bobs_link.split("?k=").nth(1).unwrap();
    assert_ne!(key, bobs_key);
    let (_, body) = page(&app, &link).await;
    assert!(body.contains(secret), "the right key opens it");

    let unknown = uuid::Uuid::now_v7();
    let wrong = format!("{}x", &key[..key.len() - 1]);
    for path in [
        format!("/m/{id}?k={wrong}"),
        format!("/m/{id}?k="),
        format!("/m/{id}"),
        format!("/m/{id}?key={key}"),
        format!("/m/{id}?k={bobs_key}"),
        format!("/m/{unknown}?k={key}"),
        format!("/m/not-an-id?k={key}"),
    ] {
        let (_, body) = html(get(&app, &path).await, 404).await;
        assert!(!body.contains(secret), "{path}: {body}");
        assert!(body.contains("Message not found"), "{path}: {body}");
    }
}

// ------------------------------------------------------------------------------------------
// 5. retention: the purge and 410
// ------------------------------------------------------------------------------------------

const DAY_MS: i64 = 86_400_000;
const OLD_KEY: &str = "b2xkLXBhZ2Uta2V5LTEyMw";

/// A UUIDv7 of `ms` (unix milliseconds), as the gateway's ids are.
fn uuid_v7_at(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
    uuid::Uuid::new_v7(ts).to_string()
}

/// Stores a message accepted at `at` behind the gateway's back, with a page key.
async fn insert_old(conn: &mut sqlx::AnyConnection, id: &str, userid: &str, status: &str, at: i64) {
    sqlx::query(
        "INSERT INTO messages (id, userid, title, content, status, attempts, channel, \
         created_at, updated_at, next_attempt_at, deadline_at, delivered_at, format, look, \
         page_key) \
         VALUES ($1, $2, 'old', $3, $4, 1, 'wecom', $5, $5, $5, $5 + 60000, $6, 'text', \
         'text', $7)",
    )
    .bind(id)
    .bind(userid)
    .bind(format!("old content of {id}"))
    .bind(status)
    .bind(at)
    .bind((status == "delivered").then_some(at))
    .bind(OLD_KEY)
    .execute(&mut *conn)
    .await
    .expect("insert an old message");
}

async fn stored_ids(conn: &mut sqlx::AnyConnection) -> Vec<String> {
    db::messages(conn).await.into_iter().map(|m| m.id).collect()
}

#[tokio::test]
async fn finished_messages_past_the_retention_are_purged_at_start_up_and_their_pages_gone() {
    let mut app = spawn_app_with(|c| c.storage.retention = None).await;
    let user = userid("keeper");
    let token = app.get_token(&user).await;
    let fresh = send(&app, &token, json!({"content": "recent"})).await;
    app.wait_for_status(&fresh, &token, "delivered", WAIT).await;
    let fresh_link = page_link(&app, &fresh, &token).await;
    app.stop().await;

    let at = db::now_ms() - 2 * DAY_MS;
    let delivered = uuid_v7_at(at);
    let failed = uuid_v7_at(at + 1);
    let queued = uuid_v7_at(at + 2);
    let mut conn = db::connect(app.store_url()).await;
    insert_old(&mut conn, &delivered, &user, "delivered", at).await;
    insert_old(&mut conn, &failed, &user, "failed", at + 1).await;
    sqlx::query(
        "INSERT INTO attempts (message_id, at, channel, outcome, error) \
         VALUES ($1, $2, 'wecom', 'failed', 'old failure')",
    )
    .bind(&failed)
    .bind(at + 1)
    .execute(&mut conn)
    .await
    .unwrap();
    // Still queued (its lane held by another instance, so nobody delivers it meanwhile).
    insert_old(&mut conn, &queued, "waiting", "queued", at + 2).await;
    let far = db::now_ms() + DAY_MS;
    sqlx::query(
        "INSERT INTO lanes (userid, due_at, owner, lease_until) \
         VALUES ('waiting', $1, 'another-instance', $1)",
    )
    .bind(far)
    .execute(&mut conn)
    .await
    .unwrap();
    let old_link = |id: &str| format!("{PUBLIC_URL}/m/{id}?k={OLD_KEY}");

    // retention "0": kept forever, pages served
    app.restart().await;
    let (_, body) = page(&app, &old_link(&delivered)).await;
    assert!(
        body.contains(&format!("old content of {delivered}")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = vec![
        fresh.clone(),
        delivered.clone(),
        failed.clone(),
        queued.clone(),
    ];
    all.sort();
    assert_eq!(stored_ids(&mut conn).await, all, "nothing purged");

    // retention "1d": the start-up purge removes the finished ones
    app.config.storage.retention = Some(Duration::from_secs(86_400));
    app.restart().await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut kept = vec![fresh.clone(), queued.clone()];
    kept.sort();
    loop {
        let ids = stored_ids(&mut conn).await;
        if ids == kept {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old finished messages are purged at start-up; stored: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = db::message(&mut conn, &queued).await;
    assert_eq!(waiting.status, "queued", "a queued message is never purged");
    let attempts: i64 = sqlx::query("SELECT count(*) AS n FROM attempts WHERE message_id = $1")
        .bind(&failed)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("n");
    assert_eq!(attempts, 0, "the history goes with the message");

    for id in [&delivered, &failed] {
        let (_, body) = html(open(&app, &old_link(id)).await, 410).await;
        assert!(body.contains("Message expired"), "{body}");
        assert!(!body.contains("old content"), "{body}");
    }
    let (_, body) = page(&app, &fresh_link).await;
    assert!(body.contains("recent"), "a recent page is still served");
    db::close(conn).await;
}

/// Stores a digest sent at `at` that carried `carried` messages, behind the gateway's back;
/// `messages` (ids) are marked as carried by it, in this order.
async fn insert_digest(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    at: i64,
    carried: i64,
    messages: &[&str],
) {
    sqlx::query(
        "INSERT INTO digests (id, userid, body, carried, created_at, page_key) \
         VALUES ($1, 'someone', 'a digest', $2, $3, $4)",
    )
    .bind(id)
    .bind(carried)
    .bind(at)
    .bind(OLD_KEY)
    .execute(&mut *conn)
    .await
    .expect("insert a digest");
    for (seq, message) in (1_i64..).zip(messages) {
        sqlx::query("UPDATE messages SET via = $1, seq = $2 WHERE id = $3")
            .bind(id)
            .bind(seq)
            .bind(*message)
            .execute(&mut *conn)
            .await
            .expect("mark a message carried");
    }
}

/// A digest's page answers as a message page does past `storage.retention` (410); within
/// it, the page lists what the digest carried in acceptance order, and says how many of its
/// messages are gone (a digest outlives the messages it carried by up to `digest_after`).
#[tokio::test]
async fn a_digest_page_past_the_retention_is_gone_like_a_message_page() {
    let app = spawn_app_with(|c| c.storage.retention = Some(Duration::from_secs(86_400))).await;
    let mut conn = db::connect(app.store_url()).await;
    let now = db::now_ms();

    let old_at = now - 2 * DAY_MS;
    let (old_digest, old_message) = (uuid_v7_at(old_at + 1), uuid_v7_at(old_at));
    insert_old(&mut conn, &old_message, "someone", "delivered", old_at).await;
    insert_digest(&mut conn, &old_digest, old_at + 1, 1, &[&old_message]).await;

    let at = now - 60_000;
    let (first, second, digest) = (uuid_v7_at(at), uuid_v7_at(at + 1), uuid_v7_at(at + 2));
    // Inserted in the other order: the page follows acceptance (seq), not ids.
    insert_old(&mut conn, &second, "someone", "delivered", at + 1).await;
    insert_old(&mut conn, &first, "someone", "delivered", at).await;
    insert_digest(&mut conn, &digest, at + 2, 3, &[&first, &second]).await;

    let link = |id: &str| format!("{PUBLIC_URL}/m/{id}?k={OLD_KEY}");
    let (_, body) = html(open(&app, &link(&old_digest)).await, 410).await;
    assert!(body.contains("Message expired"), "{body}");
    assert!(!body.contains("old content"), "{body}");

    let (_, body) = page(&app, &link(&digest)).await;
    let (a, b) = (
        body.find(&format!("old content of {first}")),
        body.find(&format!("old content of {second}")),
    );
    assert!(
        a.is_some() && b.is_some() && a < b,
        "both, in order: {body}"
    );
    assert!(body.contains("<h1>3 条消息 · 3 messages</h1>"), "{body}");
    assert!(body.contains("另有 1 条已超过保存期限"), "{body}");

    let without_key = format!("/m/{digest}");
    let (_, body) = html(get(&app, &without_key).await, 404).await;
    assert!(!body.contains("old content"), "{body}");
    db::close(conn).await;
}

// ------------------------------------------------------------------------------------------
// 6. a sender's url
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_url_makes_a_card_that_opens_it_and_only_web_links_are_taken() {
    let (app, user, token) = app_and_member().await;
    for (url, why) in [
        ("javascript:alert(1)".to_owned(), "a script"),
        ("ftp://example.com/x".to_owned(), "not http(s)"),
        (exactly("https://example.com/", 2049), "too long"),
    ] {
        let resp = app
            .send_json(
                Some(&token),
                &json!({"title": "Deploy", "content": "v1.2.3", "url": url}),
            )
            .await;
        let body = assert_error(resp, 400, "bad_request").await;
        assert!(
            body["message"].as_str().unwrap().contains("url"),
            "{why}: {body}"
        );
    }
    assert_nothing_sent(&app, &token).await;

    let url = "https://ci.example.com/run/7?step=deploy";
    send(
        &app,
        &token,
        json!({"title": "Deploy", "content": "v1.2.3", "url": url}),
    )
    .await;
    let card = the_only_card(&app, &user, &token).await;
    assert_eq!(card.url, url);
    assert_eq!(card.btntxt, "详情");
    assert_eq!(
        (card.title.as_str(), card.description.as_str()),
        ("Deploy", "v1.2.3")
    );
}

// ------------------------------------------------------------------------------------------
// 7. each member's format, set in the chat
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn format_in_the_chat_chooses_text_markdown_or_card() {
    let (app, user, token) = app_and_member().await;
    let md = "**bold** and [link](https://x.org)";
    let mut seen = 0;
    // Sends and returns what WeCom got, in order.
    let mut next = async |body: Value| -> (String, Sent) {
        let id = send(&app, &token, body).await;
        seen += 1;
        let sent = app.mock.wait_for_sent(seen, WAIT).await;
        assert_eq!(sent.len(), seen, "{sent:#?}");
        (id, sent[seen - 1].clone())
    };

    says(&app, &user, "format markdown", "markdown").await;
    let (_, sent) = next(json!({"title": "Report", "content": md, "format": "markdown"})).await;
    assert_eq!(plain(&sent, "markdown"), format!("### Report\n\n{md}"));
    let (_, sent) = next(json!({"title": "Report", "content": md})).await;
    assert_eq!(
        plain(&sent, "text"),
        format!("Report\n\n{md}"),
        "text stays text"
    );

    says(&app, &user, "format card", "card").await;
    says(&app, &user, "status", "format: card（你的设置 yours）").await;
    let (id, sent) = next(json!({"title": "Short", "content": "short"})).await;
    let card = card_of(&sent);
    assert_eq!(card.btntxt, "阅读全文");
    assert_eq!(card.url, page_link(&app, &id, &token).await);
    assert_eq!(
        (card.title.as_str(), card.description.as_str()),
        ("Short", "short")
    );

    let reply = says(&app, &user, "format bogus", "format text").await;
    assert!(reply.contains("Usage"), "{reply}");
    says(&app, &user, "status", "format: card（你的设置 yours）").await;

    says(&app, &user, "格式 default", "text").await;
    says(&app, &user, "status", "format: text（默认 default）").await;
    let (_, sent) = next(json!({"title": "Short", "content": "short"})).await;
    assert_eq!(plain(&sent, "text"), "Short\n\nshort");
}

// ------------------------------------------------------------------------------------------
// 8. server.max_content_bytes
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn content_over_max_content_bytes_is_413_naming_the_limit() {
    let app = spawn_app_with(|c| c.server.max_content_bytes = 4096).await;
    let user = userid("limit");
    let token = app.get_token(&user).await;
    let resp = app
        .send_json(Some(&token), &json!({"content": exactly("磁盘", 4097)}))
        .await;
    let body = assert_error(resp, 413, "payload_too_large").await;
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("4 KiB") && message.contains("server.max_content_bytes"),
        "{message}"
    );
    assert_nothing_sent(&app, &token).await;
    let at_limit = exactly("磁盘", 4096);
    send(&app, &token, json!({"content": at_limit})).await;
    let card = the_only_card(&app, &user, &token).await;
    let (_, page) = page(&app, &card.url).await;
    assert!(page.contains(&at_limit), "all of it on the page");

    let (default_app, _, token) = app_and_member().await;
    let resp = default_app
        .send_json(Some(&token), &json!({"content": "x".repeat(64 * 1024 + 1)}))
        .await;
    let body = assert_error(resp, 413, "payload_too_large").await;
    assert!(
        body["message"].as_str().unwrap().contains("64 KiB"),
        "{body}"
    );
}

// ------------------------------------------------------------------------------------------
// 9. the owner's view
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_owner_sees_the_page_link_and_the_format() {
    let (app, user, token) = app_and_member().await;
    let content = format!("# 日志\n\n{}", "- 任务完成\n".repeat(300));
    let id = send(
        &app,
        &token,
        json!({"content": content, "format": "markdown"}),
    )
    .await;
    let card = the_only_card(&app, &user, &token).await;
    let status = app.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(status["page"], card.url.as_str(), "{status}");
    assert_eq!(status["format"], "markdown", "{status}");
    let short = send(&app, &token, json!({"content": "plain"})).await;
    let status = app.message_json(&short, &token).await;
    assert_eq!(status["format"], "text", "{status}");
    let (_, body) = page(&app, status["page"].as_str().unwrap()).await;
    assert!(body.contains("plain"), "a short message has its page too");
}

// ------------------------------------------------------------------------------------------
// 10. markdown for a member who reads text
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn markdown_arrives_as_readable_text_by_default() {
    let (app, user, token) = app_and_member().await;
    let md = "**bold** and [link](https://x.org)\n\n- one\n- two\n\n`code` ~~gone~~";
    send(
        &app,
        &token,
        json!({"title": "Report", "content": md, "format": "markdown"}),
    )
    .await;
    let text = the_only_message(&app, &user, &token).await;
    assert!(
        text.starts_with("Report\n\nbold and link (https://x.org)\n"),
        "{text}"
    );
    assert!(text.contains("• one") && text.contains("• two"), "{text}");
    for marker in ["**", "[link]", "`", "~~"] {
        assert!(!text.contains(marker), "{marker} in {text}");
    }
}
