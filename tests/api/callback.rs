//! `/wecom/callback`: the URL check and the authenticity checks on POSTed messages.

use pushbot::wecom::crypto::WeComCrypto;

use crate::helpers::*;

// ---- GET: URL verification ----

#[tokio::test]
async fn url_check_answers_the_decrypted_echostr_and_nothing_else() {
    let app = spawn_app().await;
    // What WeCom sends (a random number), what `pushbot doctor` sends, and the longest echo
    // answered. The ciphertexts contain `+`, `/` and `=` in practice; the query encoder
    // percent-encodes them as WeCom does.
    let longest = "Az09-_".repeat(22)[..128].to_owned();
    for echo in [
        "1616140317555161061",
        "pushbot-doctor-0123456789abcdef",
        &longest,
    ] {
        let resp = app.verify_url(echo).await;
        assert_eq!(resp.status(), 200, "{echo:?}");
        assert_eq!(resp.text().await.unwrap(), echo);
    }
}

/// `pushbot_callbacks_total{outcome}` as `/metrics` shows it now (0 when not shown).
async fn callbacks_counted(app: &TestApp, outcome: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let series = format!("pushbot_callbacks_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// The URL check is no decryption oracle: a correctly signed `echostr` that decrypts to
/// anything but an echo (our own passive reply with a member's token in it, a captured
/// message, an echo-like text with other characters) is refused and never shown.
#[tokio::test]
async fn url_check_never_decrypts_a_reply_or_a_message() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let user = userid("oracle");

    // The bot's encrypted answer to `token`, as seen on the wire.
    let resp = app
        .post_sealed(&seal_with(
            &app.crypto,
            &text_message(&user, "token", next_msg_id()),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let token = token_from_reply(&open_reply(&body).expect("a token reply").content);
    let captured = CapturedReply::from_body(&body);

    // A member's message, as WeCom sealed it.
    let secret_text = "the quarterly numbers are 4711";
    let message = seal_with(
        &app.crypto,
        &text_message(&user, secret_text, next_msg_id()),
    );
    let message_check = vec![
        ("msg_signature", message.msg_signature.clone()),
        ("timestamp", message.timestamp.clone()),
        ("nonce", message.nonce.clone()),
        ("echostr", message.encrypt.clone()),
    ];

    let bad_before = callbacks_counted(&app, "bad_request").await;
    let checks_before = callbacks_counted(&app, "url_check").await;
    for (what, query) in [
        ("our reply to `token`", captured.as_url_check()),
        ("a member's message", message_check),
    ] {
        let resp = app.verify_url_raw(&query).await;
        let error = assert_error(resp, 400, "bad_request").await.to_string();
        for secret in [token.as_str(), secret_text, user.as_str(), "<xml>", "CDATA"] {
            assert!(!error.contains(secret), "{what}: {secret:?} in {error}");
        }
    }
    // Decrypts, but has a character no echo has.
    for plain in [
        "echo with spaces",
        "1616140317555161061\n",
        "a+b/c=",
        "中文",
    ] {
        let resp = app.verify_url(plain).await;
        let error = assert_error(resp, 400, "bad_request").await.to_string();
        assert!(!error.contains(plain.trim()), "{plain:?} in {error}");
    }
    let too_long = "9".repeat(129);
    assert_error(app.verify_url(&too_long).await, 400, "bad_request").await;

    assert_eq!(
        callbacks_counted(&app, "bad_request").await - bad_before,
        7.0,
        "each refusal counts as bad_request"
    );
    assert_eq!(callbacks_counted(&app, "url_check").await, checks_before);
    // The token the reply carried is still the member's (nothing rotated), and a real
    // URL check is still answered.
    assert_eq!(app.get_token(&user).await, token);
    assert_eq!(app.verify_url("1616140317555161061").await.status(), 200);
}

/// The URL check keeps to `wecom.callback_max_age` like messages do: a captured check
/// (or anything else signed long ago) is not answered.
#[tokio::test]
async fn a_stale_url_check_is_refused() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let echo = "1616140317555161061";
    let echostr = app.crypto.encrypt(echo);
    let nonce = nonce();
    let now: i64 = unix_now().parse().unwrap();
    for (what, timestamp) in [
        ("30 days ago", now - 30 * 24 * 3600),
        ("25 hours ago", now - 25 * 3600),
        ("a day ahead", now + 25 * 3600),
    ] {
        let timestamp = timestamp.to_string();
        let resp = app
            .verify_url_raw(&[
                (
                    "msg_signature",
                    app.crypto.signature(&timestamp, &nonce, &echostr),
                ),
                ("timestamp", timestamp),
                ("nonce", nonce.clone()),
                ("echostr", echostr.clone()),
            ])
            .await;
        let error = assert_error(resp, 400, "bad_request").await;
        assert!(
            error["message"].as_str().unwrap().contains("stale"),
            "{what}: {error}"
        );
        assert!(!error.to_string().contains(echo), "{what}: {error}");
    }
    assert_eq!(callbacks_counted(&app, "stale").await, 3.0);
    assert_eq!(callbacks_counted(&app, "url_check").await, 0.0);

    // Tencent's sample check is from 2014.
    let resp = app.verify_url_raw(&official_url_check()).await;
    assert_eq!(resp.status(), 400);
    assert!(!resp.text().await.unwrap().contains(echo));

    // Within the limit it is answered.
    let recent = (now - 3600).to_string();
    let resp = app
        .verify_url_raw(&[
            (
                "msg_signature",
                app.crypto.signature(&recent, &nonce, &echostr),
            ),
            ("timestamp", recent),
            ("nonce", nonce),
            ("echostr", echostr),
        ])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), echo);
}

#[tokio::test]
async fn url_check_with_a_bad_signature_is_401() {
    let app = spawn_app().await;
    let echostr = app.crypto.encrypt("12345");
    let timestamp = unix_now();
    let nonce = nonce();
    let good = app.crypto.signature(&timestamp, &nonce, &echostr);
    let forged = "0".repeat(good.len());
    let resp = app
        .verify_url_raw(&[
            ("msg_signature", forged),
            ("timestamp", timestamp.clone()),
            ("nonce", nonce.clone()),
            ("echostr", echostr.clone()),
        ])
        .await;
    assert_eq!(resp.status(), 401);
    assert_ne!(resp.text().await.unwrap(), "12345");

    // A signature made with another token is just as bad.
    let other = WeComCrypto::new("OtherToken1", ENCODING_AES_KEY, CORP_ID).unwrap();
    let resp = app
        .verify_url_raw(&[
            (
                "msg_signature",
                other.signature(&timestamp, &nonce, &echostr),
            ),
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("echostr", echostr),
        ])
        .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn url_check_with_missing_parameters_is_400() {
    let app = spawn_app().await;
    let echostr = app.crypto.encrypt("12345");
    let timestamp = unix_now();
    let nonce = nonce();
    let sig = app.crypto.signature(&timestamp, &nonce, &echostr);
    let full = [
        ("msg_signature", sig),
        ("timestamp", timestamp),
        ("nonce", nonce),
        ("echostr", echostr),
    ];
    for missing in 0..full.len() {
        let query: Vec<_> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, p)| p.clone())
            .collect();
        let resp = app.verify_url_raw(&query).await;
        assert_eq!(resp.status(), 400, "without {}", full[missing].0);
    }
}

#[tokio::test]
async fn url_check_with_an_echostr_that_does_not_decrypt_is_400() {
    let app = spawn_app().await;
    let timestamp = unix_now();
    let nonce = nonce();
    // No spaces: a decoded space may legitimately be read back as an unencoded `+`.
    for echostr in ["not-base64-at-all!", "AAAA", "QUJDREVGR0hJSktMTU5PUA=="] {
        // Correctly signed, so only decryption can fail.
        let sig = app.crypto.signature(&timestamp, &nonce, echostr);
        let resp = app
            .verify_url_raw(&[
                ("msg_signature", sig),
                ("timestamp", timestamp.clone()),
                ("nonce", nonce.clone()),
                ("echostr", echostr.to_owned()),
            ])
            .await;
        assert_eq!(resp.status(), 400, "echostr {echostr:?}");
    }
}

#[tokio::test]
async fn url_check_for_another_corp_is_400() {
    let app = spawn_app().await;
    let other = WeComCrypto::new(CALLBACK_TOKEN, ENCODING_AES_KEY, "wwOtherCorp0000000").unwrap();
    let echostr = other.encrypt("12345");
    let timestamp = unix_now();
    let nonce = nonce();
    let sig = app.crypto.signature(&timestamp, &nonce, &echostr);
    let resp = app
        .verify_url_raw(&[
            ("msg_signature", sig),
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("echostr", echostr),
        ])
        .await;
    assert_eq!(resp.status(), 400);
}

/// Tencent's published WXBizMsgCrypt sample vectors use exactly our test credentials, so
/// they check the gateway end to end without trusting the crate's own crypto.
const OFFICIAL_URL_SIGNATURE: &str = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
const OFFICIAL_URL_TIMESTAMP: &str = "1409659589";
const OFFICIAL_URL_NONCE: &str = "263014780";
const OFFICIAL_URL_ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
const OFFICIAL_POST_SIGNATURE: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const OFFICIAL_POST_TIMESTAMP: &str = "1409659813";
const OFFICIAL_POST_NONCE: &str = "1372623149";
const OFFICIAL_POST_BODY: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>";

fn official_url_check() -> Vec<(&'static str, String)> {
    vec![
        ("msg_signature", OFFICIAL_URL_SIGNATURE.to_owned()),
        ("timestamp", OFFICIAL_URL_TIMESTAMP.to_owned()),
        ("nonce", OFFICIAL_URL_NONCE.to_owned()),
        ("echostr", OFFICIAL_URL_ECHOSTR.to_owned()),
    ]
}

#[tokio::test]
async fn official_url_check_vector_is_answered_within_a_second() {
    // The vector is signed with a 2014 timestamp: turn the replay check off for it.
    let app = spawn_app_with(|c| c.wecom.callback_max_age = Duration::ZERO).await;
    let started = std::time::Instant::now();
    let resp = app.verify_url_raw(&official_url_check()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "1616140317555161061");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[tokio::test]
async fn official_url_check_vector_with_an_unencoded_plus_still_works() {
    // Some proxies and WeCom itself have been seen passing `+` through unencoded; the
    // form decoder turns it into a space.
    let app = spawn_app_with(|c| c.wecom.callback_max_age = Duration::ZERO).await;
    let url = format!(
        "{}?msg_signature={OFFICIAL_URL_SIGNATURE}&timestamp={OFFICIAL_URL_TIMESTAMP}&nonce={OFFICIAL_URL_NONCE}&echostr={OFFICIAL_URL_ECHOSTR}",
        app.url("/wecom/callback")
    );
    let resp = app.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "1616140317555161061");
}

async fn post_official_vector(app: &TestApp) -> reqwest::Response {
    app.post_callback_raw(
        &[
            ("msg_signature", OFFICIAL_POST_SIGNATURE.to_owned()),
            ("timestamp", OFFICIAL_POST_TIMESTAMP.to_owned()),
            ("nonce", OFFICIAL_POST_NONCE.to_owned()),
        ],
        OFFICIAL_POST_BODY,
    )
    .await
}

#[tokio::test]
async fn official_post_vector_is_accepted_and_answered() {
    // The vector is signed with a 2014 timestamp: turn the replay check off for it. It is
    // a message for app 218.
    let app = spawn_app_with(|c| {
        c.wecom.callback_max_age = Duration::ZERO;
        c.wecom.agent_id = AgentId::try_from(218).unwrap();
    })
    .await;
    let resp = post_official_vector(&app).await;
    assert_eq!(resp.status(), 200);
    // The sample message is the text "hello" from member "mycreate": help text.
    let reply = open_reply(&resp.text().await.unwrap()).expect("a reply to hello");
    assert_eq!(reply.to_user, "mycreate");
    assert!(reply.content.contains("token"), "{}", reply.content);
}

#[tokio::test]
async fn official_post_vector_is_refused_by_another_app() {
    // Same corp, same keys, but we are app 1000002 and the message is for app 218.
    let app = spawn_app_with(|c| c.wecom.callback_max_age = Duration::ZERO).await;
    let error = assert_error(post_official_vector(&app).await, 400, "bad_request").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("wecom.agent_id"),
        "{error}"
    );
}

// ---- POST: the decrypted message must be addressed to us ----

/// A text message as WeCom would send it, with the address parts chosen by the test.
fn addressed(to: &str, agent: Option<&str>, from: &str, content: &str) -> String {
    let agent = agent
        .map(|a| format!("<AgentID>{a}</AgentID>"))
        .unwrap_or_default();
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName>\
         <FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{}</MsgId>{agent}</xml>",
        next_msg_id()
    )
}

/// A passive reply is signed and encrypted for our corp just like WeCom's messages. Posted
/// back, it is not a message "from" a member named after the corp: refused, nothing stored.
#[tokio::test]
async fn our_own_reply_posted_back_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let user = userid("echoed");
    let resp = app
        .post_sealed(&seal_with(
            &app.crypto,
            &text_message(&user, "rotate", next_msg_id()),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let token = token_from_reply(&open_reply(&body).expect("a reply to rotate").content);
    let captured = CapturedReply::from_body(&body);

    let mut conn = crate::db::connect(app.store_url()).await;
    let before = crate::db::callback_state(&mut conn).await;
    let bad_before = callbacks_counted(&app, "bad_request").await;
    let answered_before = callbacks_counted(&app, "answered").await;

    let resp = app.post_sealed(&captured.as_callback()).await;
    let error = assert_error(resp, 400, "bad_request").await;
    assert!(!error.to_string().contains(&token), "{error}");

    // A reply to a member whose userid is the corp id looks addressed to us: it is still
    // from the corp itself.
    let reply_to_corp = seal_with(
        &app.crypto,
        &format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>\
             <FromUserName><![CDATA[{CORP_ID}]]></FromUserName>\
             <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[token]]></Content></xml>"
        ),
    );
    assert_error(app.post_sealed(&reply_to_corp).await, 400, "bad_request").await;

    assert_eq!(crate::db::callback_state(&mut conn).await, before);
    crate::db::close(conn).await;
    assert_eq!(
        callbacks_counted(&app, "bad_request").await - bad_before,
        2.0
    );
    assert_eq!(callbacks_counted(&app, "answered").await, answered_before);
    assert_eq!(app.get_token(&user).await, token, "nothing rotated");
}

/// A message that decrypts with our key but is addressed to another corp or another app of
/// ours is not answered and creates nothing: no member, no token, no de-duplication key.
#[tokio::test]
async fn a_message_for_another_corp_or_app_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|c| c.server.metrics = true).await;
    let user = userid("elsewhere");
    let agent = AGENT_ID.to_string();
    let mut conn = crate::db::connect(app.store_url()).await;
    let before = crate::db::callback_state(&mut conn).await;
    for (what, inner, setting) in [
        (
            "another corp",
            addressed("wwOtherCorp0000000", Some(&agent), &user, "token"),
            "wecom.corp_id",
        ),
        (
            "another corp, no AgentID",
            addressed("wwOtherCorp0000000", None, &user, "token"),
            "wecom.corp_id",
        ),
        (
            "a member instead of the corp",
            addressed(&user, Some(&agent), &user, "token"),
            "wecom.corp_id",
        ),
        (
            "another app",
            addressed(CORP_ID, Some("1000003"), &user, "token"),
            "wecom.agent_id",
        ),
        (
            "an AgentID that is no number",
            addressed(CORP_ID, Some("x1000002"), &user, "token"),
            "wecom.agent_id",
        ),
    ] {
        let resp = app.post_sealed(&seal_with(&app.crypto, &inner)).await;
        let error = assert_error(resp, 400, "bad_request").await;
        assert!(
            error["message"].as_str().unwrap().contains(setting),
            "{what}: {error}"
        );
    }
    assert_eq!(
        crate::db::callback_state(&mut conn).await,
        before,
        "nothing stored"
    );
    crate::db::close(conn).await;
    assert_eq!(callbacks_counted(&app, "bad_request").await, 5.0);
    assert_eq!(callbacks_counted(&app, "answered").await, 0.0);
}

/// Some WeCom events carry no AgentID (or an empty one): those are still ours.
#[tokio::test]
async fn a_message_without_an_agent_id_still_works() {
    let app = spawn_app().await;
    let user = userid("noagent");
    let reply = app
        .callback(&addressed(CORP_ID, None, &user, "token"))
        .await
        .expect("a token reply");
    assert_eq!(reply.to_user, user);
    let token = token_from_reply(&reply.content);
    let reply = app
        .callback(&addressed(CORP_ID, Some(""), &user, "token"))
        .await
        .expect("a token reply");
    assert_eq!(token_from_reply(&reply.content), token);
    let subscribe = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>\
         <FromUserName><![CDATA[{user}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[subscribe]]></Event></xml>",
        next_create_time()
    );
    let welcome = app.callback(&subscribe).await.expect("a welcome");
    assert_eq!(welcome.to_user, user);
    let id = app.send_ok(&token, "no agent id", "still works").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

// ---- POST: messages ----

#[tokio::test]
async fn reply_is_signed_encrypted_and_addressed_to_the_member() {
    let app = spawn_app().await;
    let user = userid("zhangsan");
    let resp = app
        .post_sealed(&seal_with(
            &app.crypto,
            &text_message(&user, "help", next_msg_id()),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    // `open_reply` verifies MsgSignature over TimeStamp/Nonce/Encrypt and decrypts with our
    // corp id as ReceiveId.
    let reply = open_reply(&body).expect("help gets a reply");
    assert_eq!(reply.to_user, user);
    assert_eq!(
        reply.from_user, CORP_ID,
        "passive replies come from the corp"
    );
    assert_eq!(reply.msg_type, "text");
    assert!(!reply.content.is_empty());
}

/// Every way of tampering with a callback is refused and changes nothing: a forged
/// `rotate` must leave the member's token alone.
#[tokio::test]
async fn forged_or_hostile_callbacks_are_refused_without_changing_state() {
    let app = spawn_app().await;
    let user = userid("lisi");
    let token = app.get_token(&user).await;
    let rotate = || text_message(&user, "rotate", next_msg_id());

    // 1. Bad signature.
    let mut sealed = seal_with(&app.crypto, &rotate());
    sealed.msg_signature = "f".repeat(40);
    let resp = app.post_sealed(&sealed).await;
    assert_eq!(resp.status(), 401, "bad signature");

    // 2. Signature over a different timestamp (replay with a changed query).
    let mut sealed = seal_with(&app.crypto, &rotate());
    sealed.timestamp = (sealed.timestamp.parse::<u64>().unwrap() + 1).to_string();
    assert_eq!(
        app.post_sealed(&sealed).await.status(),
        401,
        "tampered timestamp"
    );

    // 3. Signed with another callback token.
    let other_token = WeComCrypto::new("OtherToken1", ENCODING_AES_KEY, CORP_ID).unwrap();
    let resp = app.post_sealed(&seal_with(&other_token, &rotate())).await;
    assert_eq!(resp.status(), 401, "other callback token");

    // 4. Properly signed but encrypted for another corp (ReceiveId mismatch).
    let other_corp =
        WeComCrypto::new(CALLBACK_TOKEN, ENCODING_AES_KEY, "wwOtherCorp0000000").unwrap();
    let mut sealed = seal_with(&other_corp, &rotate());
    sealed.msg_signature = app
        .crypto
        .signature(&sealed.timestamp, &sealed.nonce, &sealed.encrypt);
    assert_eq!(
        app.post_sealed(&sealed).await.status(),
        400,
        "wrong corp id"
    );

    // 5. Signed garbage in <Encrypt>.
    for garbage in ["bm90IGEgY2lwaGVydGV4dA==", "%%%", ""] {
        let timestamp = unix_now();
        let nonce = nonce();
        let sig = app.crypto.signature(&timestamp, &nonce, garbage);
        let resp = app
            .post_callback_raw(
                &[
                    ("msg_signature", sig),
                    ("timestamp", timestamp),
                    ("nonce", nonce),
                ],
                envelope_body(garbage),
            )
            .await;
        assert_eq!(resp.status(), 400, "undecryptable {garbage:?}");
    }

    // 6. Hostile decrypted content: a DTD with an entity that would expand to "rotate".
    let hostile_inner = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY cmd \"rotate\">]>\
         <xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>{user}</FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType>text</MsgType>\
         <Content>&cmd;</Content><MsgId>{}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>",
        next_msg_id()
    );
    let resp = app
        .post_sealed(&seal_with(&app.crypto, &hostile_inner))
        .await;
    assert_eq!(resp.status(), 400, "DOCTYPE inside the encrypted message");

    // 7. Hostile outer envelope (DTD around a validly signed rotate).
    let sealed = seal_with(&app.crypto, &rotate());
    let body = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY e \"{}\">]>\
         <xml><ToUserName>{CORP_ID}</ToUserName><Encrypt>&e;</Encrypt></xml>",
        sealed.encrypt
    );
    let resp = app.post_callback_raw(&sealed.query(), body).await;
    assert_eq!(resp.status(), 400, "DOCTYPE in the envelope");

    // 8. Malformed / non-XML / invalid UTF-8 envelopes.
    let sealed = seal_with(&app.crypto, &rotate());
    for body in [
        b"this is not xml".to_vec(),
        b"<xml><Encrypt>".to_vec(),
        b"<xml><ToUserName>x</ToUserName></xml>".to_vec(),
        {
            let mut b = b"<xml><ToUserName>\xff\xfe</ToUserName><Encrypt><![CDATA[".to_vec();
            b.extend_from_slice(sealed.encrypt.as_bytes());
            b.extend_from_slice(b"]]></Encrypt></xml>");
            b
        },
    ] {
        let resp = app.post_callback_raw(&sealed.query(), body.clone()).await;
        assert_eq!(
            resp.status(),
            400,
            "malformed envelope {:?}",
            String::from_utf8_lossy(&body)
        );
    }

    // 9. Decrypted message that is not a WeCom message.
    for inner in ["just text", "<xml><MsgType>text</MsgType></xml>", "<xml>"] {
        let resp = app.post_sealed(&seal_with(&app.crypto, inner)).await;
        assert_eq!(resp.status(), 400, "inner {inner:?}");
    }

    // 10. Missing query parameters.
    let sealed = seal_with(&app.crypto, &rotate());
    let resp = app
        .post_callback_raw(&sealed.query()[1..], sealed.body.clone())
        .await;
    assert!(
        resp.status() == 400 || resp.status() == 401,
        "no msg_signature: {}",
        resp.status()
    );

    // Nothing rotated: the bot still hands out the same token, and it still works.
    assert_eq!(app.get_token(&user).await, token);
    let id = app.send_ok(&token, "still", "works").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn oversized_callback_body_is_413() {
    let app = spawn_app().await;
    let sealed = seal_with(&app.crypto, &text_message("big", "token", next_msg_id()));
    let padding = "A".repeat(65 * 1024);
    let body = format!(
        "<xml><ToUserName>{CORP_ID}</ToUserName><Pad>{padding}</Pad><Encrypt>{}</Encrypt></xml>",
        sealed.encrypt
    );
    let resp = app.post_callback_raw(&sealed.query(), body).await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn a_correctly_signed_but_stale_callback_is_refused_without_changing_state() {
    let app = spawn_app().await;
    let user = userid("replayed");
    let token = app.get_token(&user).await;
    let two_days_ago = (unix_now().parse::<i64>().unwrap() - 2 * 24 * 3600).to_string();
    let sealed = seal_at(
        &app.crypto,
        &text_message(&user, "rotate", next_msg_id()),
        two_days_ago,
    );
    let resp = app.post_sealed(&sealed).await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("stale"),
        "{body}"
    );
    assert_eq!(
        app.get_token(&user).await,
        token,
        "the replayed rotate did nothing"
    );
}
