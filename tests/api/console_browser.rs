//! The console in a real browser (issue 22): headless Chromium driven over WebDriver, with
//! the machinery of `browser.rs`. An operator logs in through the very link the bot
//! answers to `login` (the link's page, then its button), lands on the timeline, opens a
//! message WeCom refused and resends it; then every console page is looked at on a 360 px
//! phone and on a desktop, in light and in dark mode. On every page: no console error (a
//! Content-Security-Policy violation is one), no request to anywhere but the server, no
//! horizontal scrolling, the colour scheme followed (the browser's own request for
//! `/favicon.ico`, a 404 pushbot keeps for paths that are not tokens, is not a page's). Screenshots go to
//! `target/test-artifacts/console-*.png` (the phone-sized ones are in docs/images/).
//!
//! Like `browser.rs`, it installs Chromium with apt-get when missing, and prints `SKIPPED`
//! where it cannot (unless `PUSHBOT_BROWSER_TEST=require`).

use std::path::Path;

use serde_json::{Value, json};

use crate::browser::{DESKTOP, Driver, browser, cdp_event, contrast, luminance, requests, say};
use crate::console::login_link;
use crate::helpers::*;

/// A small phone: the console must fit 360 CSS pixels without scrolling sideways.
const PHONE: (u32, u32, f64) = (360, 740, 2.0);

/// What a page looks like to a reader.
const STATE: &str = r#"
const d = document.documentElement;
const body = getComputedStyle(document.body);
return {
  path: location.pathname,
  scrollWidth: d.scrollWidth,
  innerWidth: window.innerWidth,
  bg: body.backgroundColor,
  fg: body.color,
  text: document.body.innerText,
};
"#;

/// An inline script without the nonce: the page's policy must block it (and the test must
/// see that as a console error, or its "no console error" proves nothing).
const STRAY_SCRIPT: &str = r#"
window.__stray = false;
const s = document.createElement('script');
s.textContent = 'window.__stray = true;';
document.body.appendChild(s);
return window.__stray;
"#;

/// Waits (at most [`WAIT`]) until the browser shows a loaded page whose path is `accept`ed
/// — a click may return before the navigation it started has begun — and answers the path.
async fn wait_for_page(
    driver: &Driver,
    check: &Checker,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let state = driver
            .execute(
                "return document.readyState + ' ' + location.pathname;",
                json!([]),
            )
            .await;
        let state = state.as_str().unwrap_or_default().to_owned();
        if let Some(path) = state.strip_prefix("complete ")
            && accept(path)
        {
            return path.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} page (now: {state}); seen so far: {:#?}",
            check.problems
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Everything wrong seen on one page.
struct Checker {
    origin: String,
    artifacts: std::path::PathBuf,
    problems: Vec<String>,
    saved: Vec<std::path::PathBuf>,
}

impl Checker {
    /// Checks the page the browser shows now (console, requests since the last check,
    /// layout, colours) and saves its screenshot as `console-{name}.png`.
    async fn page(&mut self, driver: &Driver, name: &str, width: u32, dark: bool) -> Value {
        let console = driver.logs("browser").await;
        let performance = driver.logs("performance").await;
        let state = driver.execute(STATE, json!([])).await;
        let file = self.artifacts.join(format!("console-{name}.png"));
        std::fs::write(&file, driver.screenshot().await).expect("write screenshot");
        self.saved.push(file);

        // Chromium asks a new origin for /favicon.ico by itself (no page asks for it; pushbot
        // has none, a 404, as `browser.rs` says): that request and its line are not a page's.
        let favicon = format!("{}/favicon.ico", self.origin);
        for entry in console.iter().filter(|e| {
            (e["level"] == "SEVERE" || e["level"] == "WARNING")
                && !e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&favicon)
        }) {
            let message: String = entry["message"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            self.problems
                .push(format!("{name}: console {}: {message}", entry["level"]));
        }
        for (url, kind) in requests(&performance) {
            if !url.starts_with(&self.origin) {
                self.problems.push(format!(
                    "{name}: a request outside the server: {kind} {url}"
                ));
            }
        }
        let (scroll, inner) = (
            state["scrollWidth"].as_u64().unwrap_or(u64::MAX),
            state["innerWidth"].as_u64().unwrap_or(0),
        );
        if scroll > inner || inner != u64::from(width) {
            self.problems.push(format!(
                "{name}: {scroll} px wide in a {inner} px window (expected {width}): it \
                 scrolls sideways"
            ));
        }
        let (bg, fg) = (
            luminance(state["bg"].as_str().unwrap_or("rgb(0,0,0)")),
            luminance(state["fg"].as_str().unwrap_or("rgb(0,0,0)")),
        );
        if dark != (bg < 0.2) {
            self.problems.push(format!(
                "{name}: background {} in {} mode",
                state["bg"],
                if dark { "dark" } else { "light" }
            ));
        }
        if contrast(bg, fg) < 7.0 {
            self.problems
                .push(format!("{name}: text contrast {:.1} < 7", contrast(bg, fg)));
        }
        state
    }
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let browser = match tokio::task::spawn_blocking(browser).await.expect("join") {
        Ok(browser) => browser,
        Err(why) => {
            if std::env::var("PUSHBOT_BROWSER_TEST").as_deref() == Ok("require") {
                panic!("PUSHBOT_BROWSER_TEST=require, but no browser: {why}");
            }
            say!("SKIPPED: console browser test: {why}");
            return;
        }
    };

    // The server's public URL is where the browser reaches it, so that the link the bot
    // answers is opened as it is.
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let alice = userid("ops");
    let (public, admin) = (origin.clone(), alice.clone());
    let app = spawn_app_with(move |c| {
        c.server.listen = format!("127.0.0.1:{port}").parse().expect("an address");
        c.server.public_url = http_url(&public);
        c.console.admins = vec![admin];
    })
    .await;
    let token = app.get_token(&alice).await;
    let delivered = app
        .send_ok(&token, "每日备份完成 Backup done", "3.2 GB in 4 min")
        .await;
    app.wait_for_status(&delivered, &token, "delivered", WAIT)
        .await;
    // WeCom refuses the next one (once): it fails, to be resent.
    app.mock
        .push_replies_for(&alice, [SendReply::invalid_user(&alice)]);
    let refused = app
        .send_ok(&token, "磁盘空间不足 Disk almost full", "/var 95 %")
        .await;
    app.wait_for_status(&refused, &token, "failed", WAIT).await;
    let reply = app
        .user_says(&alice, "登录")
        .await
        .expect("the bot answers 登录");
    let link = login_link(&reply);
    assert!(link.starts_with(&origin), "{link}");

    let profile = tempfile::tempdir().expect("tempdir");
    let driver = Driver::start(&browser, profile.path()).await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let mut check = Checker {
        origin: origin.clone(),
        artifacts,
        problems: Vec::new(),
        saved: Vec::new(),
    };

    // Log in as a person does, on the phone: the link, then its button.
    driver.emulate(PHONE, false).await;
    driver.drain_logs().await;
    driver.navigate(&link).await;
    let page = check.page(&driver, "flow-1-login", PHONE.0, false).await;
    assert!(
        page["text"].as_str().unwrap_or("").contains(&alice),
        "{page}"
    );
    driver.click("form[action$='/console/login'] button").await;
    wait_for_page(&driver, &check, "timeline", |p| p == "/console").await;
    let page = check.page(&driver, "flow-2-timeline", PHONE.0, false).await;
    assert_eq!(
        page["path"], "/console",
        "logged in, on the timeline: {page}"
    );
    let text = page["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("磁盘空间不足") && text.contains("每日备份完成"),
        "{text}"
    );

    // Open the failed message from the timeline, and resend it.
    driver
        .click(&format!("a[href$='/console/messages/{refused}']"))
        .await;
    let message_path = format!("/console/messages/{refused}");
    wait_for_page(&driver, &check, "message", |p| p == message_path).await;
    let page = check
        .page(&driver, "flow-3-failed-message", PHONE.0, false)
        .await;
    assert_eq!(page["path"], format!("/console/messages/{refused}"));
    let text = page["text"].as_str().unwrap_or_default().to_owned();
    assert!(text.contains("failed"), "{text}");
    driver
        .click(&format!(
            "form[action$='/console/messages/{refused}/resend'] button"
        ))
        .await;
    wait_for_page(&driver, &check, "resent message", |p| {
        p.starts_with("/console/messages/") && p != message_path
    })
    .await;
    let page = check.page(&driver, "flow-4-resent", PHONE.0, false).await;
    let path = page["path"].as_str().unwrap_or_default().to_owned();
    let resent = path
        .strip_prefix("/console/messages/")
        .unwrap_or_else(|| panic!("the resend shows the new message: {page}"))
        .to_owned();
    assert_ne!(resent, refused, "a new message");
    app.wait_for_status(&resent, &token, "delivered", WAIT)
        .await;
    assert_eq!(
        app.message_json(&refused, &token).await["status"],
        "failed",
        "the refused one stays as it was"
    );

    // Every page, on the phone and on a desktop, light and dark.
    for (screen, size) in [(PHONE, "phone"), (DESKTOP, "desktop")] {
        for dark in [false, true] {
            let scheme = if dark { "dark" } else { "light" };
            driver.emulate(screen, dark).await;
            for (page, path) in [
                ("timeline", String::from("/console")),
                ("message", format!("/console/messages/{refused}")),
                ("admin", String::from("/console/admin")),
            ] {
                driver.drain_logs().await;
                driver.navigate(&format!("{origin}{path}")).await;
                let state = check
                    .page(&driver, &format!("{page}-{size}-{scheme}"), screen.0, dark)
                    .await;
                assert_eq!(state["path"], path.as_str(), "{state}");
            }
        }
    }
    // The admin page shows the traffic above, and runs the doctor's checks from its form.
    driver.emulate(PHONE, false).await;
    driver.drain_logs().await;
    driver.navigate(&format!("{origin}/console/admin")).await;
    let state = driver.execute(STATE, json!([])).await;
    let text = state["text"].as_str().unwrap_or_default();
    assert!(text.contains(&refused) && text.contains(&alice), "{text}");
    assert!(!text.contains(&token), "never a push token");
    driver
        .click("form[action$='/console/admin/doctor'] button")
        .await;
    wait_for_page(&driver, &check, "doctor", |p| p == "/console/admin/doctor").await;
    let state = check
        .page(&driver, "admin-doctor-phone-light", PHONE.0, false)
        .await;
    let text = state["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("pushbot doctor") && text.contains("企业微信凭据有效"),
        "{text}"
    );
    assert!(
        !text.contains(&token) && !text.contains(SECRET),
        "no secret"
    );

    // The checks can fail: an inline script without the nonce is blocked, and that is a
    // console error the checks above would have seen.
    driver.drain_logs().await;
    let ran = driver.execute(STRAY_SCRIPT, json!([])).await;
    assert_eq!(ran, false, "the policy blocks a script without the nonce");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let console = driver.logs("browser").await;
        if console.iter().any(|e| {
            e["level"] == "SEVERE"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Content Security Policy"))
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a CSP violation shows as a console error"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And a request outside the server is seen: a navigation no page policy governs.
    driver
        .execute(
            "location.href = 'https://stray.example/console'; return true;",
            json!([]),
        )
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen = driver
            .logs("performance")
            .await
            .iter()
            .filter_map(cdp_event)
            .any(|(method, p)| {
                method == "Network.requestWillBeSent"
                    && p["request"]["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("https://stray.example/"))
            });
        if seen {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a request outside the server is seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    driver.quit().await;

    say!(
        "console browser test: screenshots {}",
        check
            .saved
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        check.problems.is_empty(),
        "{} problems:\n{}",
        check.problems.len(),
        check.problems.join("\n")
    );
}
