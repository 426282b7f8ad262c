//! Conformance table: one row per documented request form of each original (ServerChan,
//! Bark, gotify, ntfy), driven over HTTP against the real server and the mock WeCom, with
//! the text the member receives. A 200 must never deliver a request's encoding (a raw
//! `title=…&body=…` form or a raw JSON object) as the message.

use reqwest::Method;

use crate::helpers::*;

/// `{key}` in a row's path, query or body stands for the member's token.
struct Row {
    /// Where the original documents this request.
    source: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// Content-Type and body.
    body: Option<(&'static str, &'static str)>,
    /// What the member's WeCom shows: the title, a blank line, the content.
    want: &'static str,
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

fn row(source: &'static str, method: Method, path: &'static str, want: &'static str) -> Row {
    Row {
        source,
        method,
        path,
        headers: &[],
        body: None,
        want,
    }
}

impl Row {
    fn body(self, content_type: &'static str, body: &'static str) -> Row {
        Row {
            body: Some((content_type, body)),
            ..self
        }
    }

    fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Row {
        Row { headers, ..self }
    }
}

fn rows() -> Vec<Row> {
    vec![
        // ---- ServerChan ----
        // sct.ftqq.com "发送消息": GET https://sctapi.ftqq.com/SENDKEY.send?title=&desp=
        row(
            "ServerChan Turbo docs: GET /SENDKEY.send?title&desp",
            Method::GET,
            "/{key}.send?title=T&desp=D",
            "T\n\nD",
        ),
        // sct.ftqq.com: POST with a form (title, desp)
        row(
            "ServerChan Turbo docs: POST /SENDKEY.send form",
            Method::POST,
            "/{key}.send",
            "T\n\nD",
        )
        .body(FORM, "title=T&desp=D"),
        // sct.ftqq.com: POST with JSON
        row(
            "ServerChan Turbo docs: POST /SENDKEY.send JSON",
            Method::POST,
            "/{key}.send",
            "T\n\nD",
        )
        .body(JSON, r#"{"title":"T","desp":"D"}"#),
        // Server酱³ (sc3.ft07.com/doc): https://<uid>.push.ft07.com/send/<sendkey>.send, GET
        row(
            "Server酱³ docs: GET /send/SENDKEY.send?title&desp",
            Method::GET,
            "/send/{key}.send?title=T&desp=D",
            "T\n\nD",
        ),
        // Server酱³ SDK (serverchan-sdk): POST JSON {title, desp, tags}
        row(
            "Server酱³ SDK: POST /send/SENDKEY.send JSON",
            Method::POST,
            "/send/{key}.send",
            "T\n\nD",
        )
        .body(JSON, r#"{"title":"T","desp":"D"}"#),
        // Server酱³ docs: POST form
        row(
            "Server酱³ docs: POST /send/SENDKEY.send form",
            Method::POST,
            "/send/{key}.send",
            "T\n\nD",
        )
        .body(FORM, "title=T&desp=D"),
        // Server酱³: POST with the fields in the query
        row(
            "Server酱³ docs: POST /send/SENDKEY.send?title&desp",
            Method::POST,
            "/send/{key}.send?title=T&desp=D",
            "T\n\nD",
        ),
        // ---- Bark (bark-server README "API V2" and route_push.go routes) ----
        // route_push.go: GET /:device_key/:body
        row(
            "bark-server route_push.go: GET /:device_key/:body",
            Method::GET,
            "/{key}/B",
            "B",
        ),
        // route_push.go: GET /:device_key/:title/:body
        row(
            "bark-server route_push.go: GET /:device_key/:title/:body",
            Method::GET,
            "/{key}/T/B",
            "T\n\nB",
        ),
        // route_push.go: GET /:device_key/:title/:subtitle/:body
        row(
            "bark-server route_push.go: /:device_key/:title/:subtitle/:body",
            Method::GET,
            "/{key}/T/S/B",
            "T\n\nS\nB",
        ),
        // Bark app tutorial: /KEY/body?group=…&sound=… (phone-only options are ignored)
        row(
            "Bark tutorial: GET /KEY/body?group&sound",
            Method::GET,
            "/{key}/B?group=g&sound=bell",
            "B",
        ),
        // route_push.go: POST /:device_key/:title/:body
        row(
            "bark-server route_push.go: POST /:device_key/:title/:body",
            Method::POST,
            "/{key}/T/B",
            "T\n\nB",
        ),
        // route_push.go: GET /:device_key with the parameters in the query
        row(
            "bark-server route_push.go: GET /:device_key?title&body",
            Method::GET,
            "/{key}?title=T&body=B",
            "T\n\nB",
        ),
        // bark-python: GET /:device_key with a form body
        row(
            "bark-python: GET /:device_key, form body",
            Method::GET,
            "/{key}",
            "T\n\nB",
        )
        .body(FORM, "title=T&body=B"),
        // Bark tutorial "POST /your_key" with a form body
        row(
            "Bark tutorial: POST /:device_key form",
            Method::POST,
            "/{key}",
            "T\n\nB",
        )
        .body(FORM, "title=T&body=B"),
        // Bark tutorial: curl -d 'title=…&body=…' sends spaces and UTF-8 unencoded
        row(
            "Bark tutorial: curl -d raw form to /:device_key",
            Method::POST,
            "/{key}",
            "推送 标题\n\n推送 内容",
        )
        .body(FORM, "title=推送 标题&body=推送 内容"),
        // bark-server route.go: V1 parameters are read with c.FormValue / c.BodyParser,
        // which take multipart too (curl -F title=… -F body=…)
        row(
            "bark-server V1: POST /:device_key multipart (curl -F)",
            Method::POST,
            "/{key}",
            "T\n\nB",
        )
        .body(
            "multipart/form-data; boundary=XyZ",
            "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nT\r\n--XyZ\r\nContent-Disposition: form-data; name=\"body\"\r\n\r\nB\r\n--XyZ--\r\n",
        ),
        // Bark tutorial "POST /your_key" with JSON
        row(
            "Bark tutorial: POST /:device_key JSON",
            Method::POST,
            "/{key}",
            "T\n\nB",
        )
        .body(JSON, r#"{"title":"T","body":"B","group":"g"}"#),
        // bark-server README "API V2": POST /push with JSON naming device_key
        row(
            "bark-server README API V2: POST /push JSON",
            Method::POST,
            "/push",
            "T\n\nB",
        )
        .body(JSON, r#"{"device_key":"{key}","title":"T","body":"B"}"#),
        // ---- gotify (gotify.net/docs/pushmsg, swagger POST /message) ----
        row(
            "gotify docs pushmsg: POST /message?token= JSON",
            Method::POST,
            "/message?token={key}",
            "T\n\nM",
        )
        .body(JSON, r#"{"title":"T","message":"M"}"#),
        row(
            "gotify docs pushmsg: POST /message?token= form (curl -F/-d)",
            Method::POST,
            "/message?token={key}",
            "T\n\nM",
        )
        .body(FORM, "title=T&message=M"),
        // ---- ntfy (docs.ntfy.sh/publish, server/server.go) ----
        // docs.ntfy.sh/publish "Publishing": POST /topic with the message as the body
        row(
            "ntfy docs publish: POST /topic, text body",
            Method::POST,
            "/{key}",
            "Backup done",
        )
        .body("text/plain", "Backup done"),
        // docs.ntfy.sh/publish: PUT works as POST
        row(
            "ntfy docs publish: PUT /topic, text body",
            Method::PUT,
            "/{key}",
            "Backup done",
        )
        .body("text/plain", "Backup done"),
        // docs.ntfy.sh/publish "Message title": X-Title header
        row(
            "ntfy docs publish: X-Title header",
            Method::POST,
            "/{key}",
            "T\n\nBackup done",
        )
        .headers(&[("x-title", "T")])
        .body("text/plain", "Backup done"),
        // ntfy-sh 1.0.0 (PyPI): plain text labelled form-encoded (urllib's default)
        row(
            "ntfy-sh 1.0.0: text with '=' labelled form-encoded",
            Method::POST,
            "/{key}",
            "cpu=95%",
        )
        .body(FORM, "cpu=95%"),
        row(
            "ntfy-sh 1.0.0: text with '=' labelled form-encoded",
            Method::POST,
            "/{key}",
            "a=b is fine",
        )
        .body(FORM, "a=b is fine"),
        // server.go: only X-Message/query messages are unescaped; a body keeps its `\n`
        row(
            "ntfy server.go: a body's \\n stays as it is",
            Method::POST,
            "/{key}",
            "C:\\new\\dir",
        )
        .body("text/plain", "C:\\new\\dir"),
        // server.go parsePublishParams: X-Message header, `\n` becomes a line break
        row(
            "ntfy server.go: X-Message header with \\n",
            Method::POST,
            "/{key}",
            "line one\nline two",
        )
        .headers(&[("x-message", "line one\\nline two")]),
        // docs.ntfy.sh/publish "Message": the `m` query parameter, `\n` escaped
        row(
            "ntfy docs publish: ?m= with \\n",
            Method::POST,
            "/{key}?m=line%20one%5Cnline%20two",
            "line one\nline two",
        ),
        // docs.ntfy.sh/publish "Publish via GET": /topic/publish?message=&title=
        row(
            "ntfy docs publish via GET: /topic/publish?message&title",
            Method::GET,
            "/{key}/publish?title=T&message=a%5Cnb",
            "T\n\na\nb",
        ),
        // docs.ntfy.sh/publish "Publish as JSON": POST / naming the topic; `\n` stays
        row(
            "ntfy docs publish as JSON: POST /",
            Method::POST,
            "/",
            "T\n\nM",
        )
        .body(JSON, r#"{"topic":"{key}","title":"T","message":"M"}"#),
    ]
}

#[tokio::test]
async fn every_documented_request_form_delivers_its_title_and_body() {
    let app = spawn_app().await;
    let mut failures = Vec::new();
    let mut delivered = 0;
    for (i, row) in rows().into_iter().enumerate() {
        let user = userid(&format!("conf{i}"));
        let token = app.get_token(&user).await;
        let path = row.path.replace("{key}", &token);
        let mut request = app.http.request(row.method.clone(), app.url(&path));
        for (name, value) in row.headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, body)) = row.body {
            request = request
                .header("content-type", content_type)
                .body(body.replace("{key}", &token));
        }
        let resp = request.send().await.expect("request");
        let status = resp.status();
        let answer = resp.text().await.unwrap_or_default();
        if status != 200 {
            failures.push(format!("{}: HTTP {status}: {answer}", row.source));
            continue;
        }
        delivered += 1;
        app.mock.wait_for_sent(delivered, WAIT).await;
        let got: Vec<String> = app
            .mock
            .sent()
            .into_iter()
            .filter(|s| s.touser == user)
            .map(|s| s.content)
            .collect();
        if got != [row.want] {
            failures.push(format!(
                "{} {} {}: the member got {got:?}, want {:?}",
                row.source, row.method, row.path, row.want
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A request the rule gives to Bark but Bark cannot honour is refused in Bark's shape and
/// stores nothing; a bare `GET /KEY` without Bark's parameters keeps ServerChan's hint.
#[tokio::test]
async fn bark_shaped_requests_bark_refuses_store_nothing() {
    let app = spawn_app().await;
    let user = userid("confbad");
    let token = app.get_token(&user).await;
    let cases: &[(Method, &str, &str, &str, u16)] = &[
        // Encrypted: refused by name.
        (
            Method::POST,
            "",
            JSON,
            r#"{"body":"B","ciphertext":"x"}"#,
            400,
        ),
        // A title and nothing to show.
        (Method::POST, "", FORM, "title=T&body=", 400),
        (Method::GET, "?title=T", "", "", 400),
        // Not a token: not a Bark key.
        (Method::GET, "?body=B", "", "", 404),
    ];
    for (method, query, content_type, body, want) in cases {
        let key = if *want == 404 { "not-a-token" } else { &token };
        let mut request = app
            .http
            .request(method.clone(), app.url(&format!("/{key}{query}")));
        if !content_type.is_empty() {
            request = request
                .header("content-type", *content_type)
                .body(body.to_string());
        }
        let resp = request.send().await.expect("request");
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.expect("a JSON error");
        assert_eq!(status, *want, "{method} {query} {body}: {answer}");
        if *want == 400 {
            assert_eq!(answer["code"], 400, "Bark's error shape: {answer}");
        }
    }
    let resp = app
        .http
        .get(app.url(&format!("/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let hint = resp.text().await.unwrap_or_default();
    assert!(hint.contains(".send"), "ServerChan's hint: {hint}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.mock.send_calls(), 0, "{:#?}", app.mock.calls());
    assert!(crate::compat::messages_of(&app, &token).await.is_empty());
}

/// Bark's bare `POST /KEY` honours `Idempotency-Key` as every route does: a repeat is one
/// message, another message under the key is a `409`.
#[tokio::test]
async fn bare_bark_key_honours_idempotency_key() {
    let app = spawn_app().await;
    let user = userid("confidem");
    let token = app.get_token(&user).await;
    let post = |body: &'static str| {
        app.http
            .post(app.url(&format!("/{token}")))
            .header("content-type", FORM)
            .header("idempotency-key", "bark-bare-1")
            .body(body)
            .send()
    };
    assert_eq!(post("title=T&body=B").await.unwrap().status(), 200);
    assert_eq!(post("title=T&body=B").await.unwrap().status(), 200);
    assert_eq!(post("title=T&body=other").await.unwrap().status(), 409);
    app.mock.wait_for_sent(1, WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let sent: Vec<String> = app.mock.sent().into_iter().map(|s| s.content).collect();
    assert_eq!(sent, ["T\n\nB"]);
    assert_eq!(crate::compat::messages_of(&app, &token).await.len(), 1);
}
