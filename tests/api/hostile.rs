//! A handler that panics anywhere is a bug the suite finds (issue 26, item 8): every route,
//! with every method, is driven with a corpus of hostile bodies, content types, headers and
//! queries — with a valid token, a wrong one and none — and no answer may be a 5xx. The
//! cases the issue found (alert times past year 9999, a huge description, mixed Bark keys,
//! invisible text, unknown fields, an Idempotency-Key reused for another body) are in the
//! corpus. Afterwards the service is still healthy.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::helpers::*;

/// Bodies: empty, truncated, wrongly typed, nested, huge, invalid UTF-8, invisible text,
/// and shapes of every API with hostile values.
fn bodies(token: &str) -> Vec<Vec<u8>> {
    let big = "x".repeat(200 * 1024);
    let desc = "d".repeat(17 * 1024);
    let alert = |starts: &str, name: &str, annotations: &str| {
        format!(
            r#"{{"receiver":"r","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"{name}","severity":"critical"}},"annotations":{{"description":"{desc}"}},"startsAt":"{starts}","endsAt":"{starts}"}}],"commonLabels":{{}},"commonAnnotations":{{"a":"{annotations}"}},"externalURL":"http://x"}}"#
        )
    };
    let mut out: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"{\"title\":".to_vec(),
        b"\0\0\0".to_vec(),
        vec![0xff, 0xfe, 0xfd],
        b"title=T&body=B&device_key=".to_vec(),
        b"<xml><ToUserName><![CDATA[x]]></ToUserName>".to_vec(),
        "[".repeat(5_000).into_bytes(),
        big.into_bytes(),
        br#"{"title":123,"content":["a"],"format":{}}"#.to_vec(),
        br#"{"title":null,"content":null}"#.to_vec(),
        "{\"title\":\"\u{200b}\u{200f}\u{feff}\",\"content\":\"\u{2060}\u{180e}\u{3164}\"}"
            .as_bytes()
            .to_vec(),
        br#"{"tilte":"typo","delay":"1h","priority":"high"}"#.to_vec(),
        format!(r#"{{"device_keys":["{token}","nosuchkey",1,null],"body":"b"}}"#).into_bytes(),
        format!(r#"{{"device_key":"{token}","title":"t","body":"b","ciphertext":"x"}}"#)
            .into_bytes(),
        br#"{"topic":"t","message":"m","attach":"http://127.0.0.1/x","actions":[{}]}"#.to_vec(),
        br#"{"message":"m","priority":"nine","extras":{"client::display":{"contentType":7}}}"#
            .to_vec(),
        alert("9999-12-31T23:59:59Z", "Y10K", "a").into_bytes(),
        alert("0000-01-01T00:00:00Z", &"n".repeat(1_100), "b").into_bytes(),
        alert("not a time", "x", &"c".repeat(70 * 1024)).into_bytes(),
        br#"{"state":"alerting","title":"g","message":"m","alerts":[{"startsAt":"9999-12-31T23:59:59Z","labels":null}]}"#.to_vec(),
        b"--x\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nT\r\n--x--".to_vec(),
        b"--x\r\nContent-Disposition: form-data; name=\"\xff\"\r\n\r\n".to_vec(),
        // Groups: names and invites of every wrong shape.
        br#"{"name":"a\u0000b","invite":"\u0000"}"#.to_vec(),
        format!(r#"{{"name":"{}","invite":"K7QM-3XPA"}}"#, "\u{ff2f}".repeat(40)).into_bytes(),
        br#"{"name":["ops"],"invite":12345678}"#.to_vec(),
        b"name=..%2F..&invite=%FF".to_vec(),
    ];
    out.dedup();
    out
}

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    Some("multipart/form-data"),
    Some("text/plain; charset=utf-8"),
    Some("application/json; charset=gbk"),
    Some("\u{0}/\u{0}"),
];

/// Paths of every route, with the token (a member's, a group's, or a wrong one) where the
/// route takes it.
fn paths(token: &str, group_token: &str) -> Vec<String> {
    let mut out = Vec::new();
    // A NUL inside a token, id or key: PostgreSQL refuses to store or compare one.
    for key in [
        token,
        group_token,
        "wrongtoken0000000000000000000000",
        "%FF%00",
        "..",
        "ab%00cd",
    ] {
        out.extend([
            format!("/send?token={key}&title=%E2%80%8B&content=%00&_=1"),
            format!("/send?token={key}&tilte=x&channel=sms&format=%FF"),
            format!("/{key}.send?title=t&desp=%ef%bf%bf"),
            format!("/send/{key}.send?text=t&channel=9|66"),
            format!("/{key}"),
            format!("/{key}?title=t&body=b&message=line%5Cnline"),
            format!("/{key}/body%00"),
            format!("/{key}/title/body?level=critical&group=g&id=1"),
            format!("/{key}/t/s/b?url=javascript:alert(1)"),
            format!("/message?token={key}"),
            format!("/hooks/alertmanager?token={key}"),
            format!("/hooks/grafana?token={key}"),
            format!("/messages?token={key}&status=%FF&limit=-1&before=x"),
            format!("/messages/x?token={key}"),
            format!("/m/{key}?k=%FF"),
            format!("/m/{key}?k=%00"),
            format!("/m/{key}/files/%FF?k={key}"),
            format!("/m/{key}/files/99999999999999999999999?k=%00"),
            format!("/m/%00/files/-1?k={key}"),
            format!("/messages/%00?token={key}"),
            format!("/console/login?t={key}"),
            format!("/console/login?t={key}&t=%00"),
            format!("/messages/{key}/resend?token={key}"),
            format!("/console/messages/{key}"),
            format!("/console/messages/{key}/resend?csrf={key}"),
            format!("/console/messages/{key}/cancel"),
            format!("/console?before={key}&status={key}&channel={key}&q={key}&fragment=1"),
            format!("/console/admin/{key}"),
            format!("/console/admin/doctor?csrf={key}"),
            format!("/groups?token={key}"),
            format!("/groups/join?token={key}&invite={key}"),
            format!("/groups/{key}?token={key}"),
            format!("/groups/{key}/leave?token={key}"),
            format!("/groups/{key}/rotate?token={key}"),
            format!("/groups/{key}/invite?token={key}"),
            format!("/groups/{key}/mute?token={key}"),
            format!("/groups/{key}/unmute?token={key}"),
            format!("/groups/{key}/members/{key}?token={key}"),
            format!("/groups/%FF%00/members/..%2f?token={key}"),
        ]);
    }
    out.extend(
        [
            "/",
            "/push",
            "/ping",
            "/version",
            "/healthz",
            "/metrics",
            "/wecom/callback?msg_signature=x&timestamp=9999999999999&nonce=n&echostr=%FF",
            "/wecom/callback",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/a/b/c/d/e/f",
            "/console",
            "/console/",
            "/console/timeline",
            "/console/timeline?q=%00%25%5C_&status=&channel=&before=",
            "/console?q=%FF%FE&fragment=%00",
            "/console/login",
            "/console/logout",
            "/console/settings",
            "/console/compose",
            "/console/admin",
            "/console/settings/bind",
            "/console/settings/verify",
            "/console/settings/unbind",
            "/console/settings/destination",
            "/console/settings/destination/remove",
            "/console/settings/fallback",
            "/console/settings/format",
            "/console/settings/quiet",
            "/console/settings/timezone",
            "/console/settings/%FF%00",
            "/console/compose?channel=%FF&format=%00",
            "/console/admin/",
            "/console/admin/doctor",
            "/console/admin/%FF%00/..%2f..",
        ]
        .map(str::to_owned),
    );
    out
}

fn headers(token: &str) -> Vec<HeaderMap> {
    let mut all = Vec::new();
    let cases: &[&[(&str, &str)]] = &[
        &[],
        &[("authorization", "Bearer TOKEN")],
        &[("authorization", "Basic Og==")],
        &[(
            "cookie",
            "pushbot_console=TOKEN; pushbot_console=\u{7f}; pushbot_console",
        )],
        &[
            ("idempotency-key", "same-key"),
            ("authorization", "Bearer TOKEN"),
        ],
        &[
            ("x-title", "\u{200b}"),
            ("x-delay", "1h"),
            ("x-attach", "http://127.0.0.1/x"),
            ("x-actions", "view, x, y"),
            ("x-email", "a@b.c"),
            ("x-priority", "99"),
            ("x-tags", ",,,"),
            ("authorization", "Bearer TOKEN"),
        ],
    ];
    for case in cases {
        let mut map = HeaderMap::new();
        for (name, value) in *case {
            let value = value.replace("TOKEN", token);
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                map.insert(n, v);
            }
        }
        all.push(map);
    }
    all
}

#[tokio::test]
async fn no_route_answers_a_hostile_request_with_a_5xx() {
    let app = spawn_app_with(|c| {
        c.server.metrics = true;
        c.server.send_rate = SendRate {
            count: 1_000_000,
            per: Duration::from_secs(1),
        };
    })
    .await;
    let token = app.get_token(&userid("hostile")).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // A group of the member's, so that its token goes through every route too.
    let made: serde_json::Value = client
        .post(app.url("/groups"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "hostile" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group_token = made["token"].as_str().expect("a group token").to_owned();
    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
    let bodies = bodies(&token);
    let headers = headers(&token);
    let mut requests = 0;
    let mut failures = Vec::new();
    for path in paths(&token, &group_token) {
        for method in &methods {
            // Every body as JSON and under one other content type (in turn); GET with a
            // sample.
            for (b, body) in bodies.iter().enumerate() {
                for c in [1, 2 + b % (CONTENT_TYPES.len() - 2)] {
                    let content_type = CONTENT_TYPES[c];
                    if *method == Method::GET && b > 1 {
                        continue;
                    }
                    let extra = &headers[(b + c) % headers.len()];
                    let mut req = client
                        .request(method.clone(), app.url(&path))
                        .headers(extra.clone())
                        .body(body.clone());
                    if let Some(ct) = content_type
                        && let Ok(v) = HeaderValue::from_bytes(ct.as_bytes())
                    {
                        req = req.header(CONTENT_TYPE, v);
                    }
                    requests += 1;
                    match req.send().await {
                        Ok(resp) if resp.status().is_server_error() => {
                            let status = resp.status();
                            let text = resp.text().await.unwrap_or_default();
                            failures.push(format!(
                                "{method} {path} body#{b} {content_type:?}: {status} {}",
                                text.chars().take(200).collect::<String>()
                            ));
                        }
                        Ok(_) => {}
                        Err(err) => failures.push(format!(
                            "{method} {path} body#{b} {content_type:?}: no answer: {err}"
                        )),
                    }
                }
            }
        }
    }
    assert!(requests > 8_000, "the corpus ran: {requests} requests");
    assert!(
        failures.is_empty(),
        "{} of {requests} hostile requests got a 5xx or no answer:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let health = app.healthz().await.unwrap();
    assert_eq!(health.status(), 200, "still healthy afterwards");
    // The corpus reached the handlers, not only their token checks: the alert whose times
    // are past year 9999 was delivered.
    let deadline = std::time::Instant::now() + WAIT;
    while !app.mock.sent().iter().any(|s| s.content.contains("Y10K")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the Y10K alert was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// U+0000 shows nothing and PostgreSQL cannot store it: it is dropped from the text (a
/// webhook's alert must not be lost over it), and a lookup by an id holding one finds
/// nothing — on both engines alike.
#[tokio::test]
async fn a_nul_character_is_dropped_from_text_and_finds_nothing() {
    let app = spawn_app().await;
    let token = app.get_token(&userid("nul")).await;
    let id = app.send_ok(&token, "ti\0tle", "con\0tent").await;
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert!(sent[0].content.contains("title"), "{:?}", sent[0].content);
    assert!(sent[0].content.contains("content"), "{:?}", sent[0].content);
    assert!(!sent[0].content.contains('\0'), "{:?}", sent[0].content);
    let resp = app.message("a\0b", Some(&token)).await;
    assert_eq!(resp.status(), 404);
    let body = serde_json::json!({"title": "t", "idempotency_key": "k\u{0}"});
    let resp = app.send_json(Some(&token), &body).await;
    assert_eq!(resp.status(), 400, "a key with NUL is refused by name");
}
