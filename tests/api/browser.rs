//! The message page in a real browser: Debian's chromium, headless, driven over WebDriver by
//! chromedriver (plain HTTP and JSON, so reqwest is all it takes). A long markdown message is
//! sent, and the link of the card WeCom receives is opened on a phone-sized screen in light and
//! in dark mode, and on a desktop-sized one. The page must load without console errors (a
//! Content-Security-Policy violation is one), request nothing but itself, and have run its
//! script (the sent time is shown in the reader's zone). A message with an image and a file
//! (issue 20) is opened on a 360 px phone in light and dark mode: the image loads from
//! pushbot's file route, is decoded and fits, and nothing else is requested. Screenshots are
//! saved to `target/test-artifacts/message-page-*.png`.
//!
//! Chromium is installed with apt-get when missing (as root, once). Where that is impossible
//! (not root, no apt-get, no package registry) the test prints `SKIPPED: …` and passes, unless
//! `PUSHBOT_BROWSER_TEST=require` is set.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::compat::app_and_member;
use crate::helpers::*;

/// Like `eprintln!`, but shown by a plain `cargo test` too (the test harness captures only
/// the print macros): a skip, or a long install, must not go unnoticed.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
#[allow(unused_imports)] // used by console_browser.rs
pub(crate) use say;

/// Phone-ish viewport (CSS pixels) and device pixel ratio.
pub(crate) const PHONE: (u32, u32, f64) = (390, 844, 2.0);
pub(crate) const DESKTOP: (u32, u32, f64) = (1280, 900, 1.0);
/// The reader's zone and locale; the sent time must be shown in these.
const TIMEZONE: &str = "Asia/Shanghai";
const TIMEZONE_OFFSET_SECS: i64 = 8 * 3600;
const LOCALE: &str = "zh-CN";

const TITLE: &str = "【周报】支付网关 2026 年第 48 周运行报告";

#[tokio::test]
async fn message_page_in_a_real_browser() {
    let browser = match tokio::task::spawn_blocking(browser).await.expect("join") {
        Ok(browser) => browser,
        Err(why) => {
            if std::env::var("PUSHBOT_BROWSER_TEST").as_deref() == Ok("require") {
                panic!("PUSHBOT_BROWSER_TEST=require, but no browser: {why}");
            }
            say!("SKIPPED: message page browser test: {why}");
            return;
        }
    };
    let started = Instant::now();

    // A long markdown message becomes a card linking to its page.
    let (app, _user, token) = app_and_member().await;
    let content = long_markdown();
    assert!(content.len() > 10_000, "{} bytes", content.len());
    let resp = app
        .send_json(
            Some(&token),
            &json!({ "title": TITLE, "content": content, "format": "markdown" }),
        )
        .await;
    accepted_id(resp).await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    let card = sent[0]
        .card
        .clone()
        .unwrap_or_else(|| panic!("a long message arrives as a card: {sent:#?}"));
    let path = card
        .url
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("the card links under public_url: {card:?}"));
    assert!(path.starts_with("/m/"), "{card:?}");
    let page_url = app.url(path);
    let origin = app.url("/");

    let profile = tempfile::tempdir().expect("tempdir");
    let driver = Driver::start(&browser, profile.path()).await;
    driver
        .cdp(
            "Emulation.setTimezoneOverride",
            json!({ "timezoneId": TIMEZONE }),
        )
        .await;
    driver
        .cdp("Emulation.setLocaleOverride", json!({ "locale": LOCALE }))
        .await;

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let mut saved = Vec::new();
    // Every phase is checked in full and its screenshots saved before the test fails, so one
    // run shows all that is wrong.
    let mut problems = Vec::new();

    for (name, screen, dark, full_page) in [
        ("light", PHONE, false, true),
        ("dark", PHONE, true, true),
        ("desktop", DESKTOP, false, false),
    ] {
        driver.emulate(screen, dark).await;
        driver.drain_logs().await;
        driver.navigate(&page_url).await;
        let console = driver.logs("browser").await;
        let requests = requests(&driver.logs("performance").await);
        let state = driver.execute(PAGE_STATE, json!([])).await;

        let file = artifacts.join(format!("message-page-{name}.png"));
        std::fs::write(&file, driver.screenshot().await).expect("write screenshot");
        saved.push(file);
        if full_page {
            let file = artifacts.join(format!("message-page-{name}-full.png"));
            std::fs::write(&file, driver.full_page_screenshot().await).expect("write screenshot");
            saved.push(file);
        }

        // No console errors: CSP violations, failed loads and script errors are all SEVERE.
        let errors: Vec<&Value> = console
            .iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .collect();
        for entry in errors.iter().take(5) {
            let message = entry["message"].as_str().unwrap_or_default();
            let short: String = message.chars().take(300).collect();
            problems.push(format!("{name}: console {}: {short}", entry["level"]));
        }
        if errors.len() > 5 {
            problems.push(format!(
                "{name}: … and {} more console errors",
                errors.len() - 5
            ));
        }
        // Nothing requested but the page itself.
        if requests != [(page_url.clone(), "Document".to_owned())] {
            problems.push(format!(
                "{name}: the page itself must be the only request, got {requests:#?}"
            ));
        }
        check_page(&mut problems, name, &state, dark, screen.0);
    }

    // The checks above can fail: a blocked inline script or image is a console error, and a
    // stray request shows in the network log and cannot reach anything (the resolver knows no
    // host).
    driver.drain_logs().await;
    let ran = driver.execute(STRAY_SCRIPT_AND_IMAGE, json!([])).await;
    assert_eq!(
        ran, false,
        "the CSP blocks an inline script without the nonce"
    );
    let deadline = Instant::now() + WAIT;
    let (mut console, mut network) = (Vec::new(), Vec::new());
    loop {
        console.extend(driver.logs("browser").await);
        network.extend(driver.logs("performance").await);
        let csp_error = |directive: &str| {
            console.iter().any(|e| {
                e["level"] == "SEVERE"
                    && e["message"].as_str().is_some_and(|m| {
                        m.contains("Content Security Policy") && m.contains(directive)
                    })
            })
        };
        let (script_blocked, image_blocked) = (csp_error("script-src"), csp_error("img-src"));
        if script_blocked && image_blocked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stray script and image must be blocked: script={script_blocked} \
             image={image_blocked}\nconsole={console:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The blocked image never left the browser: DevTools lists it, failed for the CSP. Then a
    // navigation (which no page policy governs) shows that a request that does go out is seen.
    let events: Vec<(String, Value)> = network.iter().filter_map(cdp_event).collect();
    for (method, p) in &events {
        let url = p["request"]["url"].as_str().unwrap_or_default();
        if method != "Network.requestWillBeSent" || url.starts_with(&origin) {
            continue;
        }
        let blocked = events.iter().any(|(m, f)| {
            m == "Network.loadingFailed"
                && f["requestId"] == p["requestId"]
                && f["blockedReason"] == "csp"
        });
        assert!(blocked && url == STRAY_IMAGE, "{url} went out: {events:#?}");
    }
    driver.execute(STRAY_NAVIGATION, json!([])).await;
    let deadline = Instant::now() + WAIT;
    loop {
        network.extend(driver.logs("performance").await);
        let stray = requests(&network).iter().any(|(url, _)| url == STRAY_PAGE);
        let unresolved = network.iter().filter_map(cdp_event).any(|(method, p)| {
            method == "Network.loadingFailed"
                && p["errorText"]
                    .as_str()
                    .is_some_and(|t| t.contains("NAME_NOT_RESOLVED"))
        });
        if stray && unresolved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stray navigation must show: stray={stray} unresolved={unresolved}\n\
             requests={:#?}",
            requests(&network)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    driver.quit().await;
    for file in &saved {
        println!("screenshot: {}", file.display());
    }
    println!(
        "browser test took {:.1?} (not counting any install)",
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "the message page has {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// A message with an image and a PDF (issue 20), on the narrowest phone we design for
/// (360 px), light and dark: the image is loaded from the file route and decoded
/// (`naturalWidth`), fits the screen, and is the only request besides the page; the policy
/// that lets it load lets nothing else (no console error). Screenshots:
/// `target/test-artifacts/message-page-image-*.png`.
#[tokio::test]
async fn message_page_with_an_image_in_a_real_browser() {
    let browser = match tokio::task::spawn_blocking(browser).await.expect("join") {
        Ok(browser) => browser,
        Err(why) => {
            if std::env::var("PUSHBOT_BROWSER_TEST").as_deref() == Ok("require") {
                panic!("PUSHBOT_BROWSER_TEST=require, but no browser: {why}");
            }
            say!("SKIPPED: message page image browser test: {why}");
            return;
        }
    };
    let (app, _user, token) = app_and_member().await;
    let (width, height) = (640, 360);
    let image = crate::page_files::png(width, height);
    let id = crate::page_files::send_files(
        &app,
        &token,
        "构建耗时曲线",
        &[
            ("构建耗时 build-duration-2026-week-48.png", &image),
            (
                "完整日志 full-build-log-with-a-very-long-name.pdf",
                b"%PDF-1.7\n%%EOF\n",
            ),
        ],
    )
    .await;
    let path = crate::page_files::page_path(&app, &id, &token).await;
    let page_url = app.url(&path);
    let key = path.split("?k=").nth(1).expect("a key");
    let image_url = app.url(&format!("/m/{id}/files/0?k={key}"));

    let profile = tempfile::tempdir().expect("tempdir");
    let driver = Driver::start(&browser, profile.path()).await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/test-artifacts");
    let mut problems = Vec::new();
    for (name, dark) in [("light", false), ("dark", true)] {
        driver.emulate(NARROW_PHONE, dark).await;
        driver.drain_logs().await;
        driver.navigate(&page_url).await;
        // The image may still be arriving after the load event: wait for it to be decoded.
        let deadline = Instant::now() + WAIT;
        let state = loop {
            let state = driver.execute(IMAGE_STATE, json!([])).await;
            if state["complete"] == true || Instant::now() > deadline {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Chromium asks a new origin for /favicon.ico by itself (no page asks for it; pushbot
        // has none, a 404): that request and its console line are not the page's.
        let favicon = app.url("/favicon.ico");
        let console: Vec<Value> = driver
            .logs("browser")
            .await
            .into_iter()
            .filter(|e| {
                !e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&favicon)
            })
            .collect();
        let requests: Vec<(String, String)> = requests(&driver.logs("performance").await)
            .into_iter()
            .filter(|(url, _)| *url != favicon)
            .collect();
        let file = artifacts.join(format!("message-page-image-{name}.png"));
        std::fs::write(&file, driver.full_page_screenshot().await).expect("write screenshot");
        println!("screenshot: {}", file.display());

        let mut expect = |ok: bool, problem: String| {
            if !ok {
                problems.push(format!("{name}: {problem}"));
            }
        };
        expect(
            state["naturalWidth"] == width && state["naturalHeight"] == height,
            format!("the image is not decoded at {width}×{height}: {state}"),
        );
        expect(
            state["alt"] == "构建耗时 build-duration-2026-week-48.png",
            format!("alt: {}", state["alt"]),
        );
        let viewport = state["viewportWidth"].as_u64().unwrap_or(0);
        expect(
            viewport == u64::from(NARROW_PHONE.0)
                && state["pageWidth"].as_u64() <= Some(viewport)
                && state["imageRight"].as_f64() <= Some(viewport as f64),
            format!("the page or the image is wider than the screen: {state}"),
        );
        expect(
            state["imageRatio"]
                .as_f64()
                .is_some_and(|r| (r - f64::from(width) / f64::from(height)).abs() < 0.02),
            format!("the image is distorted: {state}"),
        );
        expect(
            state["downloads"] == 2,
            format!("both files are download links: {state}"),
        );
        expect(
            state["dark"] == dark,
            format!("prefers-color-scheme dark: {}", state["dark"]),
        );
        let background = luminance(state["background"].as_str().unwrap_or("rgb(0,0,0)"));
        expect(
            (background < 0.3) == dark,
            format!("background {} in {name} mode", state["background"]),
        );
        let size = luminance(state["sizeColor"].as_str().unwrap_or("rgb(0,0,0)"));
        expect(
            contrast(size, background) >= 4.5,
            format!("the size's colour {}: contrast too low", state["sizeColor"]),
        );
        for entry in console
            .iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        {
            let message = entry["message"].as_str().unwrap_or_default();
            expect(false, format!("console {}: {message}", entry["level"]));
        }
        let want = [
            (page_url.clone(), "Document".to_owned()),
            (image_url.clone(), "Image".to_owned()),
        ];
        expect(
            requests == want,
            format!("the page and its image must be the only requests, got {requests:#?}"),
        );
    }
    driver.quit().await;
    assert!(
        problems.is_empty(),
        "the message page with an image has {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The narrowest phone the page is designed for.
pub(crate) const NARROW_PHONE: (u32, u32, f64) = (360, 740, 3.0);

/// What the page with an image shows, read in the browser.
const IMAGE_STATE: &str = r#"
var img = document.querySelector(".files img");
if (img) { img.scrollIntoView(); }
var rect = img ? img.getBoundingClientRect() : null;
var size = document.querySelector(".size");
return {
  complete: !!img && img.complete && img.naturalWidth > 0,
  naturalWidth: img ? img.naturalWidth : null,
  naturalHeight: img ? img.naturalHeight : null,
  alt: img ? img.alt : null,
  imageRight: rect ? rect.right : null,
  imageRatio: rect && rect.height > 0 ? rect.width / rect.height : null,
  downloads: document.querySelectorAll(".downloads a[download]").length,
  pageWidth: document.documentElement.scrollWidth,
  viewportWidth: document.documentElement.clientWidth,
  dark: window.matchMedia("(prefers-color-scheme: dark)").matches,
  background: getComputedStyle(document.body).backgroundColor,
  sizeColor: size ? getComputedStyle(size).color : null
};
"#;

// ------------------------------------------------------------------------------------------
// the message and the checks
// ------------------------------------------------------------------------------------------

/// About 10 KB of Chinese markdown with everything the page styles, and no image (an image
/// is the one thing the page may fetch from elsewhere).
fn long_markdown() -> String {
    let mut md = String::from(
        "# 本周概况\n\n\
         本周支付网关整体运行**平稳**，共处理交易 `1,284,506` 笔，成功率 *99.982%*。\
         详细数据见[监控面板](https://grafana.example.com/d/payments?orgId=1&from=now-7d)，\
         原始日志地址：https://logs.example.com/app/discover#/view/9f1c2d3e-4b5a-6789-abcd-ef0123456789?_g=(time:(from:now-7d,to:now))\n\n\
         > 注意：周三凌晨的数据库切换导致约 3 分钟的写入延迟，已在复盘会议中讨论。\n\n\
         ![上周成功率曲线](https://stray.example/chart.png)\n\n\
         ## 各渠道指标\n\n\
         | 渠道 | 交易笔数 | 成功率 | 平均耗时 | P99 耗时 | 备注 |\n\
         |:-----|-------:|:----:|------:|------:|------|\n\
         | 微信支付 | 812,330 | 99.991% | 182 ms | 640 ms | 正常 |\n\
         | 支付宝 | 401,877 | 99.985% | 201 ms | 702 ms | 周三有抖动 |\n\
         | 银联云闪付 | 58,204 | 99.870% | 355 ms | 1,480 ms | 第三方通道偶发超时，已提工单 |\n\
         | 数字人民币 | 12,095 | 99.640% | 410 ms | 2,050 ms | 新接入，观察中 |\n\n\
         ## 待办事项\n\n\
         - [x] 升级连接池配置，将最大连接数从 `64` 调整为 `128`\n\
         - [x] 为退款接口增加幂等键校验\n\
         - [ ] 银联通道超时重试策略评审（负责人：王磊）\n\
         - [ ] 数字人民币对账脚本上线\n\n\
         ## 故障时间线\n\n\
         1. 03:12 主库开始切换，写入请求排队\n\
         2. 03:13 告警触发，值班同学介入\n\
         3. 03:15 切换完成，排队请求全部处理完毕\n\
         4. 03:40 确认无数据丢失，关闭事件\n\n\
         ## 相关配置\n\n\
         ```toml\n\
         [database]\n\
         url = \"postgres://payments@db-primary.internal:5432/payments?sslmode=verify-full&application_name=gateway\"\n\
         max_connections = 128   # 原为 64\n\
         statement_timeout = \"5s\"\n\
         ```\n\n\
         ---\n\n\
         ## 每日明细\n\n",
    );
    let days = ["周一", "周二", "周三", "周四", "周五", "周六", "周日"];
    let mut day = 0;
    while md.len() < 10_500 {
        md.push_str(&format!(
            "### {}\n\n\
             当日共处理交易 {} 万笔，高峰出现在 20:00 至 21:00 之间，峰值每秒 {} 笔。\
             所有渠道均在服务等级协议范围内，未出现需要人工介入的异常。\
             退款请求共 {} 笔，全部在一分钟内完成；对账文件已于次日 06:00 前生成并上传。\
             风控系统拦截可疑交易 {} 笔，经人工复核后确认误拦 2 笔，已调整规则阈值。\n\n",
            days[day % days.len()],
            17 + day % 5,
            950 + 37 * day,
            1200 + 13 * day,
            40 + day
        ));
        day += 1;
    }
    md.push_str("以上，如有疑问请在群里联系值班同学。\n");
    md
}

/// What the page shows, read in the browser.
const PAGE_STATE: &str = r#"
var sent = document.getElementById("sent");
var body = getComputedStyle(document.body);
var link = document.querySelector(".content a");
var table = document.querySelector(".content table");
var pre = document.querySelector(".content pre");
return {
  title: document.title,
  heading: (document.querySelector("header h1") || {}).textContent || null,
  time: sent ? sent.textContent : null,
  timeTitle: sent ? sent.getAttribute("title") : null,
  sentMs: sent ? sent.getAttribute("data-ms") : null,
  dark: window.matchMedia("(prefers-color-scheme: dark)").matches,
  background: body.backgroundColor,
  color: body.color,
  sentColor: sent ? getComputedStyle(sent.parentNode).color : null,
  linkColor: link ? getComputedStyle(link).color : null,
  pageWidth: document.documentElement.scrollWidth,
  viewportWidth: document.documentElement.clientWidth,
  tables: document.querySelectorAll(".content table").length,
  tableFits: table ? table.getBoundingClientRect().right <= document.documentElement.clientWidth : null,
  codeFits: pre ? pre.getBoundingClientRect().right <= document.documentElement.clientWidth : null,
  checkboxes: document.querySelectorAll(".content input[type=checkbox]").length,
  images: document.images.length,
  imageLink: (document.querySelector(".content a[href='https://stray.example/chart.png']") || {}).textContent || null,
  brokenInTables: brokenWords(document.querySelectorAll(".content th, .content td"))
};

// The runs of printable ASCII (numbers, words) in these elements that span lines.
function brokenWords(elements) {
  var broken = [];
  for (var i = 0; i < elements.length; i++) {
    var walker = document.createTreeWalker(elements[i], NodeFilter.SHOW_TEXT, null);
    for (var node = walker.nextNode(); node; node = walker.nextNode()) {
      var words = /[!-~]+/g, word;
      while ((word = words.exec(node.data))) {
        var range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        var rects = range.getClientRects(), tops = {}, lines = 0;
        for (var r = 0; r < rects.length; r++) {
          var top = Math.round(rects[r].top);
          if (!tops[top]) { tops[top] = true; lines++; }
        }
        if (lines > 1) { broken.push(word[0]); }
      }
    }
  }
  return broken;
}
"#;

const STRAY_IMAGE: &str = "https://stray.example/pixel.png";
const STRAY_PAGE: &str = "https://stray.example/page";

/// Leaves the page for [`STRAY_PAGE`].
const STRAY_NAVIGATION: &str = r#"
window.location.href = "https://stray.example/page";
return null;
"#;

/// Adds an inline script without the nonce and an outside image; true if the script ran.
const STRAY_SCRIPT_AND_IMAGE: &str = r#"
var s = document.createElement("script");
s.textContent = "window.strayScriptRan = true;";
document.body.appendChild(s);
var i = document.createElement("img");
i.src = "https://stray.example/pixel.png";
document.body.appendChild(i);
return window.strayScriptRan === true;
"#;

fn check_page(problems: &mut Vec<String>, name: &str, state: &Value, dark: bool, width: u32) {
    let mut expect = |ok: bool, problem: String| {
        if !ok {
            problems.push(format!("{name}: {problem}"));
        }
    };
    let s = |key: &str| state[key].as_str().unwrap_or_default().to_owned();
    expect(
        s("title") == TITLE,
        format!("document title {:?}", s("title")),
    );
    expect(s("heading") == TITLE, format!("heading {:?}", s("heading")));
    expect(
        state["dark"] == dark,
        format!("prefers-color-scheme dark: {}", state["dark"]),
    );
    expect(state["tables"] == 1, format!("tables: {}", state["tables"]));
    expect(
        state["checkboxes"] == 4,
        format!("task list checkboxes: {}", state["checkboxes"]),
    );
    // The markdown image is a link, never loaded (the request log has only the page).
    expect(state["images"] == 0, format!("images: {}", state["images"]));
    expect(
        s("imageLink") == "🖼 上周成功率曲线",
        format!("the image's link: {:?}", s("imageLink")),
    );

    // The script ran: the UTC text became the reader's local time, and stays as a tooltip.
    let time = s("time");
    let fallback = s("timeTitle");
    expect(
        fallback.ends_with(" UTC"),
        format!("the UTC text is not kept as the tooltip: title={fallback:?}"),
    );
    expect(
        !time.is_empty() && time != fallback && !time.contains("UTC"),
        format!("the sent time is not localised by the script: {time:?}"),
    );
    if let Ok(ms) = s("sentMs").parse::<i64>() {
        let local = ms.div_euclid(1000) + TIMEZONE_OFFSET_SECS;
        let (hour, minute) = (local.rem_euclid(86_400) / 3600, local.rem_euclid(3600) / 60);
        let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
        expect(
            time.contains(&format!("{hour}:{minute:02}"))
                || time.contains(&format!("{h12}:{minute:02}")),
            format!("{time:?} is not {hour:02}:{minute:02} in {TIMEZONE}"),
        );
    } else {
        expect(false, format!("no data-ms on <time>: {:?}", s("sentMs")));
    }

    // Colours follow the scheme, with readable contrast (WCAG AA for text).
    let background = luminance(&s("background"));
    if dark {
        expect(
            background < 0.3,
            format!("background {} is not dark", s("background")),
        );
    } else {
        expect(
            background > 0.7,
            format!("background {} is not light", s("background")),
        );
    }
    for key in ["color", "sentColor", "linkColor"] {
        let ratio = contrast(luminance(&s(key)), background);
        expect(
            ratio >= 4.5,
            format!(
                "{key} {} on {}: contrast {ratio:.2} < 4.5",
                s(key),
                s("background")
            ),
        );
    }

    // Nothing makes the page wider than the screen; wide tables and code scroll in place.
    let (page, viewport) = (state["pageWidth"].as_u64(), state["viewportWidth"].as_u64());
    expect(
        page <= viewport && viewport <= Some(u64::from(width)),
        format!("the page is {page:?} px wide on a {viewport:?} px screen"),
    );
    expect(
        state["tableFits"] == true,
        "the table sticks out of the page".to_owned(),
    );
    expect(
        state["codeFits"] == true,
        "the code block sticks out of the page".to_owned(),
    );
    // A table cell may wrap, but never inside a number or a word ("812,3|30", "P9|9").
    expect(
        state["brokenInTables"]
            .as_array()
            .is_some_and(Vec::is_empty),
        format!(
            "words and numbers in table cells broken across lines: {}",
            state["brokenInTables"]
        ),
    );
}

/// Relative luminance (WCAG) of a CSS `rgb(…)`/`rgba(…)` colour.
pub(crate) fn luminance(css: &str) -> f64 {
    let inner = css
        .strip_prefix("rgba(")
        .or_else(|| css.strip_prefix("rgb("))
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not an rgb() colour: {css:?}"));
    let channels: Vec<f64> = inner
        .split(',')
        .take(3)
        .map(|c| c.trim().parse::<f64>().expect("colour channel") / 255.0)
        .map(|c| {
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        })
        .collect();
    assert_eq!(channels.len(), 3, "{css:?}");
    0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
}

pub(crate) fn contrast(a: f64, b: f64) -> f64 {
    (a.max(b) + 0.05) / (a.min(b) + 0.05)
}

/// A CDP event from a performance log entry: (method, params).
pub(crate) fn cdp_event(entry: &Value) -> Option<(String, Value)> {
    let message: Value = serde_json::from_str(entry["message"].as_str()?).ok()?;
    let message = &message["message"];
    Some((
        message["method"].as_str()?.to_owned(),
        message["params"].clone(),
    ))
}

/// Every request the page made, as (URL, resource type), in order.
pub(crate) fn requests(performance: &[Value]) -> Vec<(String, String)> {
    performance
        .iter()
        .filter_map(cdp_event)
        .filter(|(method, _)| method == "Network.requestWillBeSent")
        .map(|(_, p)| {
            (
                p["request"]["url"].as_str().unwrap_or_default().to_owned(),
                p["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// chromium: found or installed
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub(crate) struct Browser {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// Installed once per test binary; a second caller waits for the first.
static BROWSER: Mutex<Option<Result<Browser, String>>> = Mutex::new(None);

pub(crate) fn browser() -> Result<Browser, String> {
    let mut cached = BROWSER.lock().unwrap_or_else(PoisonError::into_inner);
    cached.get_or_insert_with(find_or_install).clone()
}

fn find_or_install() -> Result<Browser, String> {
    let found = || {
        Some(Browser {
            chromium: which("chromium")?,
            chromedriver: which("chromedriver")?,
        })
    };
    let mut packages = Vec::new();
    if found().is_none() {
        packages.extend(["chromium", "chromium-driver"]);
    }
    // Without a CJK font the screenshots show boxes instead of Chinese (1.6 MB).
    if !has_cjk_font() {
        packages.push("fonts-wqy-microhei");
    }
    if !packages.is_empty() {
        match apt_install(&packages) {
            Ok(()) => {}
            Err(why) if found().is_some() => {
                say!("browser test: no CJK font, Chinese shows as boxes in screenshots: {why}");
            }
            Err(why) => return Err(why),
        }
    }
    found().ok_or_else(|| "chromium or chromedriver still missing after installing".to_owned())
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let list = packages.join(" ");
    if !is_root() {
        return Err(format!("not root, cannot apt-get install {list}"));
    }
    let Some(apt) = which("apt-get") else {
        return Err(format!("no apt-get to install {list}"));
    };
    say!("browser test: installing {list} with apt-get (once; the first time takes a while) …");
    let started = Instant::now();
    let mut install = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=300",
    ];
    install.extend(packages);
    if let Err(first) = run(&apt, &install) {
        say!("browser test: apt-get install failed, running apt-get update first: {first}");
        run(&apt, &["update", "-q", "-o", "DPkg::Lock::Timeout=300"])
            .map_err(|e| format!("apt-get update failed: {e}"))?;
        run(&apt, &install).map_err(|e| format!("apt-get install {list} failed: {e}"))?;
    }
    say!(
        "browser test: installed {list} in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// Runs `program args…` without a terminal; the tail of its output on failure.
fn run(program: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(format!(
        "{} ({}):\n{tail}",
        program.display(),
        output.status
    ))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn has_cjk_font() -> bool {
    Command::new("fc-list")
        .args([":lang=zh", "family"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

// ------------------------------------------------------------------------------------------
// WebDriver
// ------------------------------------------------------------------------------------------

/// chromedriver with one headless chromium session. Dropping it kills chromedriver's process
/// group (chromium included), so nothing outlives a failed test.
pub(crate) struct Driver {
    child: Child,
    http: reqwest::Client,
    session: String,
}

impl Driver {
    pub(crate) async fn start(browser: &Browser, profile: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(&browser.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.chromedriver.display()));
        let mut driver = Driver {
            child,
            http: http_client(),
            session: format!("http://127.0.0.1:{port}"),
        };

        let deadline = Instant::now() + WAIT;
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.session))
                .send()
                .await;
            if let Ok(resp) = ready
                && let Ok(status) = resp.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
            "goog:chromeOptions": {
                "binary": browser.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--no-proxy-server",
                    // Any host name fails to resolve: a stray request cannot succeed.
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={},{}", PHONE.0, PHONE.1),
                ],
            },
        }}});
        let value = driver
            .request(Method::POST, "/session", Some(capabilities))
            .await;
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session: {value:#}"));
        driver.session = format!("{}/session/{id}", driver.session);
        driver
    }

    /// A WebDriver command; its `value`. Panics on an error answer.
    pub(crate) async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("WebDriver answer");
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {text}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status}: {answer:#}"
        );
        answer["value"].clone()
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Value {
        self.request(Method::POST, path, Some(body)).await
    }

    /// A Chrome DevTools Protocol command, through chromedriver.
    pub(crate) async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.post("/goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .await
    }

    /// Screen size, pixel ratio and colour scheme for the pages opened next.
    pub(crate) async fn emulate(&self, (width, height, scale): (u32, u32, f64), dark: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width,
                "height": height,
                "deviceScaleFactor": scale,
                "mobile": width < 600,
            }),
        )
        .await;
        let scheme = if dark { "dark" } else { "light" };
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await;
    }

    /// Opens `url` and waits for it to load.
    pub(crate) async fn navigate(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Clicks the first element matching the CSS `selector` as a person would: WebDriver's
    /// own click, which waits for a navigation it starts (a form submitted, a link).
    pub(crate) async fn click(&self, selector: &str) {
        let found = self
            .post(
                "/element",
                json!({ "using": "css selector", "value": selector }),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_owned();
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    pub(crate) async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The log entries of `kind` (`browser`: console; `performance`: DevTools events) since
    /// the last call.
    pub(crate) async fn logs(&self, kind: &str) -> Vec<Value> {
        match self.post("/se/log", json!({ "type": kind })).await {
            Value::Array(entries) => entries,
            other => panic!("{kind} log: {other:#}"),
        }
    }

    pub(crate) async fn drain_logs(&self) {
        self.logs("browser").await;
        self.logs("performance").await;
    }

    /// The viewport as PNG.
    pub(crate) async fn screenshot(&self) -> Vec<u8> {
        let data = self.request(Method::GET, "/screenshot", None).await;
        decode_png(&data)
    }

    /// The whole page as PNG.
    pub(crate) async fn full_page_screenshot(&self) -> Vec<u8> {
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        decode_png(&shot["data"])
    }

    /// Ends the session (chromium exits) and chromedriver.
    pub(crate) async fn quit(mut self) {
        self.request(Method::DELETE, "", None).await;
        self.stop();
    }

    fn stop(&mut self) {
        // chromedriver leads its own process group, which chromium and its helpers join.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn decode_png(data: &Value) -> Vec<u8> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(data.as_str().expect("screenshot is base64"))
        .expect("screenshot is base64");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    png
}
