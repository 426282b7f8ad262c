//! The operators' page (issue 22): `/console/admin` for the members in `console.admins`
//! only. Its data is produced the way it is in production — members ask for tokens, send
//! messages, the mock WeCom refuses some and goes down for one — and read back from the
//! page: channel health, queues with the oldest waiting message, recent failures with their
//! reasons, members with their token age, and the doctor's checks run from a CSRF-checked
//! form. No push token, session, corp secret or SMTP password is ever in a page.

use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::Value;

use crate::console::{Console, console_login};
use crate::helpers::*;
use crate::smtp::SmtpSink;

const SMTP_PASSWORD: &str = "sm7p-adm1n-pa55word";

/// Every path under the admin page, with the methods a browser (or anyone) may use.
fn admin_paths() -> Vec<(reqwest::Method, &'static str)> {
    use reqwest::Method;
    vec![
        (Method::GET, "/admin"),
        (Method::GET, "/admin/"),
        (Method::GET, "/admin/doctor"),
        (Method::POST, "/admin/doctor"),
        (Method::POST, "/admin"),
        (Method::GET, "/admin/members"),
        (Method::DELETE, "/admin/x/y"),
        (Method::GET, "/admin/%FF%00"),
    ]
}

/// The cells' text of every `<tr class="{class}">` of `html`, tags stripped.
fn rows(html: &str, class: &str) -> Vec<Vec<String>> {
    let marker = format!("<tr class=\"{class}\">");
    html.split(&marker)
        .skip(1)
        .map(|rest| {
            let row = rest.split("</tr>").next().unwrap_or_default();
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let cell = cell.split_once('>').map_or("", |(_, c)| c);
                    let cell = cell.split("</td>").next().unwrap_or_default();
                    strip_tags(cell)
                })
                .collect()
        })
        .collect()
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    // askama's escapes, back to text.
    text.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The row of `rows` whose first cell is `first`.
fn row<'a>(rows: &'a [Vec<String>], first: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row for {first}: {rows:#?}"))
}

/// The member's message `id`, once it has been tried and failed at least once.
async fn wait_for_error(app: &TestApp, id: &str, token: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let body = app.message_json(id, token).await;
        if body["last_error"].is_string() {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message {id} was never tried: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that none of `secrets` is in `html`.
fn assert_no_secret(html: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !html.contains(secret),
            "a secret ({}…) is in the page",
            secret.chars().take(4).collect::<String>()
        );
    }
}

#[tokio::test]
async fn an_operator_sees_health_queues_failures_and_members_from_real_traffic() {
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let app = spawn_app_with(move |c| {
        c.console.admins = admins;
        // Long enough for the page to be read while a message is still being retried.
        c.delivery.retry_window = Duration::from_secs(60);
    })
    .await;
    let (bob, carol, dave) = (userid("bob"), userid("carol"), userid("dave"));
    let bob_token = app.get_token(&bob).await;
    let carol_token = app.get_token(&carol).await;
    let dave_token = app.get_token(&dave).await;

    // bob: two delivered, one scheduled for an hour from now.
    for n in 0..2 {
        let id = app.send_ok(&bob_token, &format!("bob {n}"), "ok").await;
        app.wait_for_status(&id, &bob_token, "delivered", WAIT)
            .await;
    }
    let resp = app
        .send_form(&[
            ("token", &bob_token),
            ("title", "later"),
            ("content", "in an hour"),
            ("delay", "1h"),
        ])
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "scheduled", "{body}");
    let scheduled = body["id"].as_str().unwrap().to_owned();
    // carol: WeCom refuses her for good.
    app.mock
        .fail_always_for(&carol, SendReply::invalid_user(&carol));
    let refused = app.send_ok(&carol_token, "打不开的消息", "refused").await;
    let failed = app
        .wait_for_status(&refused, &carol_token, "failed", WAIT)
        .await;
    let reason = failed["last_error"].as_str().unwrap().to_owned();
    // dave: WeCom answers 503 — down — and his message waits, retried.
    app.mock.fail_always_for(&dave, SendReply::http(503));
    let waiting = app.send_ok(&dave_token, "waiting", "for WeCom").await;
    let tried = wait_for_error(&app, &waiting, &dave_token).await;
    let waiting_error = tried["last_error"].as_str().unwrap().to_owned();

    let console = console_login(&app, &alice).await;
    let html = console.page("/admin").await;

    // Channel health: WeCom is down, since when, and why.
    let health = rows(&html, "health-row");
    let wecom = row(&health, "wecom");
    assert!(wecom[1].contains("down"), "{wecom:?}");
    assert!(wecom[2].contains("ago"), "since when: {wecom:?}");
    assert!(wecom[3].contains("503"), "the reason: {wecom:?}");

    // Queues: one queued (dave's, the oldest, with its error) and one scheduled (bob's).
    let queues = rows(&html, "queue-row");
    let q = row(&queues, "wecom");
    assert_eq!((q[1].as_str(), q[2].as_str()), ("1", "1"), "{q:?}");
    assert!(q[3].contains(&dave) && q[3].contains(&waiting), "{q:?}");
    assert!(q[3].contains(&waiting_error), "{q:?}");
    assert!(!q[4].is_empty(), "the next scheduled time: {q:?}");

    // Recent failures: carol's message with WeCom's reason; dave's failed tries.
    let failed = rows(&html, "failed-row");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0][1], carol);
    assert!(failed[0][2].contains("打不开的消息") && failed[0][2].contains(&refused));
    assert_eq!(failed[0][3], "wecom");
    assert_eq!(failed[0][4], reason);
    let tries = rows(&html, "try-row");
    assert!(
        tries
            .iter()
            .any(|t| t[1] == dave && t[2] == waiting && t[4] == "retry" && t[5].contains("503")),
        "{tries:#?}"
    );
    assert!(
        tries.iter().any(|t| t[1] == carol && t[2] == refused),
        "{tries:#?}"
    );

    // Members: today's and queued counts, the token's age — never the token.
    let members = rows(&html, "member-row");
    let counts = |who: &str| {
        let r = row(&members, who);
        (r[3].clone(), r[4].clone())
    };
    assert_eq!(counts(&bob), ("3".into(), "0".into()));
    assert_eq!(counts(&carol), ("1".into(), "0".into()));
    assert_eq!(counts(&dave), ("1".into(), "1".into()));
    assert!(row(&members, &bob)[2].ends_with(" s"), "{members:?}");
    assert_no_secret(
        &html,
        &[
            &bob_token,
            &carol_token,
            &dave_token,
            SECRET,
            &console.cookie,
        ],
    );
    // Logging in makes nobody a member; asking for a token does.
    assert!(!members.iter().any(|r| r[0] == alice), "{members:?}");
    let alice_token = app.get_token(&alice).await;
    let html = console.page("/admin").await;
    assert_eq!(row(&rows(&html, "member-row"), &alice)[3], "0");
    assert_no_secret(&html, &[&alice_token]);

    // A rotated token is younger; the member is not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = row(&rows(&console.page("/admin").await, "member-row"), &bob).to_vec();
    let new_token = app.rotate(&bob).await;
    let html = console.page("/admin").await;
    let after = row(&rows(&html, "member-row"), &bob).to_vec();
    assert_eq!(before[1], after[1], "joined when it did");
    assert_eq!(after[2], "0 s", "{before:?} → {after:?}");
    assert_no_secret(&html, &[&new_token]);
    // The page shows what is; nothing on it changed anything.
    assert_eq!(
        app.message_json(&scheduled, &new_token).await["status"],
        "scheduled"
    );
}

#[tokio::test]
async fn the_doctor_runs_from_a_csrf_checked_form_and_shows_no_secret() {
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let sink = SmtpSink::start().await;
    let smtp_port = sink.port;
    let app = spawn_app_with(move |c| {
        c.console.admins = admins;
        let mut email = local_email(smtp_port);
        email.username = Some("bot@example.com".into());
        email.password = Some(secret(SMTP_PASSWORD));
        c.email = Some(email);
        // Nothing listens there: the callback check is skipped rather than sent outside.
        c.server.public_url = http_url(&format!("http://127.0.0.1:{}", free_port()));
    })
    .await;
    let token = app.get_token(&alice).await;
    let console = console_login(&app, &alice).await;
    let html = console.page("/admin").await;
    assert!(html.contains("/console/admin/doctor"), "the form is there");
    assert!(!html.contains("id=\"doctor-output\""), "not run by a GET");

    // Without the CSRF field, or with a wrong one: refused, nothing run.
    let calls = app.mock.gettoken_calls();
    for form in [vec![], vec![("csrf", "0000")]] {
        let resp = console.post_raw("/admin/doctor", &form).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = resp.text().await.unwrap();
        assert!(!body.contains("id=\"doctor-output\""), "{body}");
    }
    assert_eq!(app.mock.gettoken_calls(), calls, "no check was made");

    let resp = console.post("/admin/doctor", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    let output = html
        .split("<pre id=\"doctor-output\">")
        .nth(1)
        .and_then(|o| o.split("</pre>").next())
        .unwrap_or_else(|| panic!("the doctor's output is shown: {html}"));
    println!("{output}");
    assert!(output.contains("pushbot doctor"), "{output}");
    assert!(
        output.contains("✓ 企业微信凭据有效"),
        "WeCom's gettoken, against the mock: {output}"
    );
    assert!(
        output.contains("in use by this"),
        "the running store: {output}"
    );
    assert!(
        output.contains("✗ SMTP"),
        "the sink takes no login: {output}"
    );
    assert!(output.contains("仍在使用示例凭据"), "{output}");
    assert!(
        app.mock.gettoken_calls() > calls,
        "the checks reached WeCom"
    );
    assert_no_secret(
        &html,
        &[
            SMTP_PASSWORD,
            SECRET,
            &token,
            &console.cookie["pushbot_console=".len()..],
        ],
    );
    // The running server is as it was.
    assert_eq!(app.healthz().await.unwrap().status(), 200);
}

#[tokio::test]
async fn members_who_are_not_operators_get_403_on_every_admin_path() {
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let app = spawn_app_with(move |c| c.console.admins = admins).await;
    let bob = userid("bob");
    let token = app.get_token(&bob).await;
    app.send_ok(&token, "bob's own", "x").await;
    let console = console_login(&app, &bob).await;
    let timeline = console.page("").await;
    assert!(
        !timeline.contains("/console/admin"),
        "no Admin link for bob"
    );
    let forms = [
        format!("csrf={}", console.csrf),
        String::new(),
        "csrf=%FF%00".to_owned(),
        format!("csrf={}", "x".repeat(2 * 1024 * 1024)),
    ];
    for (method, path) in admin_paths() {
        // With the session's CSRF token, without one, a broken form, one over the size limit:
        // always the same 403 page.
        for form in &forms {
            let resp = console
                .http
                .request(method.clone(), console.url(path))
                .header(COOKIE, &console.cookie)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
            assert!(body.contains("Operators only"), "{method} {path}: {body}");
            assert!(!body.contains("id=\"doctor-output\"") && !body.contains("member-row"));
        }
    }
    // An operator gets a 404 page for what is not there.
    let admin = console_login(&app, &alice).await;
    assert_eq!(
        admin.get("/admin/members").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(admin.get("/admin/").await.status(), StatusCode::NOT_FOUND);
    let resp = admin.get("/admin/doctor").await;
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "a GET goes to the page"
    );

    // With no operators configured, nobody is one.
    let app = spawn_app().await;
    let console = console_login(&app, &alice).await;
    let resp = console.get("/admin").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_session_every_admin_path_asks_to_log_in() {
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let app = spawn_app_with(move |c| c.console.admins = admins).await;
    let http = http_client();
    let base = app.url("/console");
    for (method, path) in admin_paths() {
        for cookie in [
            None,
            Some("pushbot_console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let mut req = http.request(method.clone(), format!("{base}{path}"));
            if let Some(cookie) = cookie {
                req = req.header(COOKIE, cookie);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert!(body.contains("login"), "how to log in: {body}");
            assert!(!body.contains("Operators"), "{body}");
        }
    }
    // A real operator's session works (the refusals above were about the session).
    let console: Console = console_login(&app, &alice).await;
    console.page("/admin").await;
}

/// Under a path prefix (`public_url = "https://…/push"`, a proxy taking `/push` off before
/// pushbot sees the request), every link, form and redirect of the page carries it.
#[tokio::test]
async fn under_a_path_prefix_the_page_links_forms_and_redirects_carry_it() {
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let app = spawn_app_with(move |c| {
        c.console.admins = admins;
        c.server.public_url = http_url("https://push.example.com/push");
    })
    .await;
    // What the proxy would forward: the link's path without the prefix.
    let link = crate::console::login_path(&app, &alice).await;
    let path = link
        .strip_prefix("/push")
        .unwrap_or_else(|| panic!("the link is under the prefix: {link}"));
    let http = http_client();
    let html = http
        .get(app.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let t = crate::console::hidden_field(&html, "t").expect("the login form");
    let resp = http
        .post(app.url("/console/login"))
        .form(&[("t", t.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    assert!(cookie.contains("Path=/push/console"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();

    let resp = http
        .get(app.url("/console/admin"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("action=\"/push/console/admin/doctor\""),
        "the doctor's form: {html}"
    );
    assert!(
        html.contains("href=\"/push/console/admin\""),
        "the navigation"
    );
    assert!(
        !html.contains("\"/console/"),
        "nothing outside the prefix: {html}"
    );
    let resp = http
        .get(app.url("/console/admin/doctor"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/push/console/admin#doctor")
    );
}

/// Hostile bodies and methods on the operators' paths, with an operator's session: never a
/// 5xx, and the doctor runs only for a form whose CSRF field is the session's.
#[tokio::test]
async fn hostile_requests_with_an_operators_session_are_never_a_5xx() {
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let app = spawn_app_with(move |c| {
        c.console.admins = admins;
        c.server.public_url = http_url(&format!("http://127.0.0.1:{}", free_port()));
    })
    .await;
    let console = console_login(&app, &alice).await;
    let csrf = console.csrf.clone();
    let bodies: Vec<(Option<&str>, Vec<u8>)> = vec![
        (None, Vec::new()),
        (
            Some("application/x-www-form-urlencoded"),
            vec![0xff, 0xfe, 0x00],
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"csrf=%FF%00".to_vec(),
        ),
        (Some("application/x-www-form-urlencoded"), b"csrf".to_vec()),
        (
            Some("application/x-www-form-urlencoded"),
            format!("csrf={}", "x".repeat(2 * 1024 * 1024)).into_bytes(),
        ),
        (
            Some("application/json"),
            format!("{{\"csrf\":\"{csrf}\"}}").into_bytes(),
        ),
        (Some("multipart/form-data; boundary=x"), b"--x--".to_vec()),
        (Some("text/plain"), b"x=1&csrf=wrong".to_vec()),
    ];
    let calls = app.mock.gettoken_calls();
    for path in [
        "/admin/doctor",
        "/admin",
        "/admin/%00",
        "/admin/doctor?csrf=x",
    ] {
        for method in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::PATCH,
        ] {
            for (kind, body) in &bodies {
                let mut req = console
                    .http
                    .request(method.clone(), console.url(path))
                    .header(COOKIE, &console.cookie)
                    .body(body.clone());
                if let Some(kind) = kind {
                    req = req.header(reqwest::header::CONTENT_TYPE, *kind);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status();
                let page = resp.text().await.unwrap_or_default();
                assert!(
                    !status.is_server_error(),
                    "{method} {path} ({kind:?}): {status}"
                );
                assert!(
                    !page.contains("id=\"doctor-output\""),
                    "{method} {path} ({kind:?}) ran the doctor"
                );
            }
        }
    }
    assert_eq!(app.mock.gettoken_calls(), calls, "no check was made");
    assert_eq!(app.healthz().await.unwrap().status(), 200);
}

/// A group robot a member added in the chat that stops answering is on the page as that
/// member's, down, with the reason — and the robot's key is not.
#[tokio::test]
async fn a_members_own_robot_that_is_down_is_shown_without_its_key() {
    use crate::mock_destinations::{DestKind, MockDestinations, Scripted};
    let mock = MockDestinations::start().await;
    let section = destinations_at(&mock);
    let alice = userid("admin");
    let admins = vec![alice.clone()];
    let app = spawn_app_with(move |c| {
        c.console.admins = admins;
        c.destinations = section;
        c.delivery.retry_window = Duration::from_secs(60);
    })
    .await;
    let bob = userid("bob");
    let token = app.get_token(&bob).await;
    let key = "bobs-robot-key-0123456789abcdef";
    mock.add_wecom_robot(key);
    let reply = app
        .user_says(&bob, &format!("robot team {}", mock.wecom_url(key)))
        .await
        .unwrap();
    assert!(reply.contains("added"), "{reply}");
    let console = console_login(&app, &alice).await;
    let html = console.page("/admin").await;
    assert_eq!(
        rows(&html, "health-row").len(),
        1,
        "a robot that answers is not listed"
    );

    mock.fail_always(DestKind::WeComRobot, Scripted::Http(503));
    let resp = app
        .send_form(&[
            ("token", &token),
            ("title", "to the group"),
            ("content", "x"),
            ("channel", "team"),
        ])
        .await;
    let id = accepted_id(resp).await;
    wait_for_error(&app, &id, &token).await;
    let html = console.page("/admin").await;
    let health = rows(&html, "health-row");
    let team = row(&health, &format!("team ({bob})"));
    assert!(team[1].contains("down"), "{team:?}");
    assert!(team[3].contains("503"), "{team:?}");
    assert!(row(&health, "wecom")[1].contains("up"), "{health:?}");
    assert_no_secret(&html, &[key, &token]);
}
