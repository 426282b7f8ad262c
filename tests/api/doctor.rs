//! `pushbot doctor`: the real binary against the mock WeCom (and, for the callback check,
//! a real `pushbot serve`), reading its output as an admin would.

use std::time::Duration;

use base64::Engine as _;

use crate::helpers::*;
use crate::smtp::SmtpSink;

/// A callback Token of our own: the test configuration's are the documentation samples,
/// which doctor rightly fails.
const OWN_TOKEN: &str = "doctorOwnT0ken";
const SMTP_PASSWORD: &str = "sm7p-pa55word";
/// Doctor waits 3 s for the callback and `request_timeout` (2 s) for WeCom; never longer.
const DOCTOR_WAIT: Duration = Duration::from_secs(30);

/// A 43-character EncodingAESKey that is not the sample.
fn own_key() -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode([0x5a_u8; 32])
}

/// The environment that makes a test config a healthy one (own callback credentials),
/// with `server.public_url` set to `public_url`.
fn healthy_env(public_url: &str) -> Vec<(String, String)> {
    vec![
        ("PUSHBOT_WECOM__CALLBACK_TOKEN".into(), OWN_TOKEN.into()),
        ("PUSHBOT_WECOM__ENCODING_AES_KEY".into(), own_key()),
        ("PUSHBOT_SERVER__PUBLIC_URL".into(), public_url.into()),
    ]
}

/// `public_url` where nothing listens (the callback check is then skipped).
fn nowhere() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

struct Outcome {
    success: bool,
    stdout: String,
}

impl Outcome {
    /// The line of the check whose text contains `needle` (continuation lines joined).
    fn check(&self, needle: &str) -> String {
        self.checks()
            .into_iter()
            .find(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no check mentions {needle:?}:\n{}", self.stdout))
    }

    /// Each check with its indented lines, as one string per check.
    fn checks(&self) -> Vec<String> {
        let mut checks: Vec<String> = Vec::new();
        for line in self.stdout.lines() {
            if line.starts_with(['✓', '✗', '!', '–']) {
                checks.push(line.to_owned());
            } else if line.starts_with(' ')
                && let Some(last) = checks.last_mut()
            {
                last.push(' ');
                last.push_str(line.trim());
            }
        }
        checks
    }

    fn marks(&self) -> Vec<char> {
        self.checks()
            .iter()
            .filter_map(|c| c.chars().next())
            .collect()
    }
}

/// Runs `pushbot doctor --config FILE` to completion (without blocking the runtime the
/// mock runs on).
async fn doctor(setup: &BinSetup, env: &[(String, String)]) -> Outcome {
    let mut cmd = pushbot_command(&refs(env));
    cmd.arg("doctor").arg("--config").arg(&setup.config_path);
    let out = run_captured(cmd, DOCTOR_WAIT).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.stderr.is_empty(),
        "doctor writes to stdout only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines() {
        assert!(
            pushbot::doctor::display_width(line) <= 80,
            "longer than 80 columns: {line:?}"
        );
    }
    Outcome {
        success: out.status.success(),
        stdout,
    }
}

#[tokio::test]
async fn a_healthy_set_up_passes_every_check_and_prints_no_secret() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let env = healthy_env(&format!("http://127.0.0.1:{}", setup.port));
    let _serve = spawn_binary(&setup.config_path, setup.port, &refs(&env)).await;

    let out = doctor(&setup, &env).await;
    assert!(out.success, "{}", out.stdout);
    let marks = out.marks();
    assert_eq!(marks.len(), 11, "one line per check:\n{}", out.stdout);
    assert_eq!(
        marks.iter().filter(|m| **m == '–').count(),
        2,
        "only e-mail and SMS (not configured) are skipped:\n{}",
        out.stdout
    );
    assert!(!marks.contains(&'✗'), "{}", out.stdout);
    let app = out.check("pushbot-test");
    assert!(app.starts_with('✓'), "{app}");
    assert!(app.contains("2 members, 1 department, 0 tags"), "{app}");
    assert!(out.check("gettoken").starts_with('✓'));
    assert!(out.check("database").contains("migrated, writes OK"));
    let callback = out.check("/wecom/callback");
    assert!(callback.starts_with('✓'), "{callback}");
    assert!(out.check("[email]").starts_with('–'));
    assert!(out.stdout.contains("all checks passed"), "{}", out.stdout);
    for secret in [SECRET, OWN_TOKEN, own_key().as_str(), "ACCESS_TOKEN_"] {
        assert!(
            !out.stdout.contains(secret),
            "prints {secret:?}:\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_is_explained_and_the_app_check_skipped() {
    let mock = MockWeCom::start().await;
    let config = settings_with(|c| {
        c.wecom.secret = CorpSecret::try_from("wrong-secret".to_owned()).unwrap();
    });
    let setup = bin_setup(&config, &mock.base_url);
    let out = doctor(&setup, &healthy_env(&nowhere())).await;
    assert!(!out.success, "{}", out.stdout);
    let token = out.check("gettoken");
    assert!(token.starts_with('✗'), "{token}");
    assert!(
        token.contains("invalid secret (errcode 40001)") && token.contains("Secret"),
        "{token}"
    );
    assert!(token.contains("wecom.secret"), "{token}");
    assert!(out.check("app check").starts_with('–'));
    assert!(!out.stdout.contains("wrong-secret"), "{}", out.stdout);
    if let Some(db_path) = setup.db.sqlite_path() {
        // The database file doctor created to test it is not left behind (for `serve` to
        // create as its own user).
        assert!(out.check("database").contains("new, writes OK (not kept)"));
        assert!(!db_path.exists());
        let leftovers: Vec<_> = std::fs::read_dir(db_path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|name| name.to_string_lossy().starts_with("pushbot.db"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    } else {
        let db = out.check("database");
        assert!(db.starts_with('✓') && db.contains("writes OK"), "{db}");
    }
    assert_eq!(mock.unexpected_requests(), Vec::<String>::new());
}

#[tokio::test]
async fn an_untrusted_ip_names_the_ip_the_console_path_and_the_proxy() {
    let mock = MockWeCom::start().await;
    mock.fail_agent_get(Some(SendReply::errcode(
        60020,
        "not allow to access from your ip, hint: [1700000000_13_abcdef], from ip: 203.0.113.7, more info at https://open.work.weixin.qq.com/devtool/query?e=60020",
    )));
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let out = doctor(&setup, &healthy_env(&nowhere())).await;
    assert!(!out.success, "{}", out.stdout);
    assert!(out.check("gettoken").starts_with('✓'));
    let app = out.check("agent/get");
    assert!(app.starts_with('✗'), "{app}");
    for words in [
        "203.0.113.7",
        "60020",
        "应用管理 → 自建应用",
        "企业可信IP",
        "Trusted IPs",
        "2022-06-20",
        "wecom.proxy",
    ] {
        assert!(app.contains(words), "{words:?} missing: {app}");
    }
    // The other checks are not affected: only this one fails.
    assert_eq!(
        out.marks().iter().filter(|m| **m == '✗').count(),
        1,
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_callback_url_nobody_answers_is_skipped_not_failed() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let url = nowhere();
    let out = doctor(&setup, &healthy_env(&url)).await;
    let callback = out.check("/wecom/callback");
    assert!(callback.starts_with('–'), "{callback}");
    assert!(
        callback.contains(&format!("{url}/wecom/callback")) && callback.contains("refused"),
        "{callback}"
    );
    assert!(out.success, "a skip is not a failure:\n{}", out.stdout);
}

#[tokio::test]
async fn a_callback_url_answered_by_something_else_fails() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    // The mock WeCom knows nothing of /wecom/callback.
    let out = doctor(&setup, &healthy_env(&mock.base_url)).await;
    assert!(!out.success, "{}", out.stdout);
    let callback = out.check("/wecom/callback");
    assert!(
        callback.starts_with('✗') && callback.contains("HTTP 404"),
        "{callback}"
    );
    assert!(callback.contains("reverse proxy"), "{callback}");
}

#[tokio::test]
async fn a_callback_answered_by_a_pushbot_with_another_token_fails_naming_it() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let env = healthy_env(&format!("http://127.0.0.1:{}", setup.port));
    let mut other = env.clone();
    other[0].1 = "someOtherT0ken".to_owned();
    let _serve = spawn_binary(&setup.config_path, setup.port, &refs(&other)).await;
    let out = doctor(&setup, &env).await;
    assert!(!out.success, "{}", out.stdout);
    let callback = out.check("/wecom/callback");
    assert!(
        callback.starts_with('✗')
            && callback.contains("HTTP 401")
            && callback.contains("wecom.callback_token"),
        "{callback}"
    );
    assert!(!out.stdout.contains("someOtherT0ken"), "{}", out.stdout);
}

#[tokio::test]
async fn the_documentation_sample_credentials_fail() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let url = nowhere();
    let out = doctor(&setup, &[("PUSHBOT_SERVER__PUBLIC_URL".into(), url)]).await;
    assert!(!out.success, "{}", out.stdout);
    let sample = out.check("public samples");
    assert!(sample.starts_with('✗'), "{sample}");
    assert!(
        sample.contains("callback Token and EncodingAESKey are")
            && sample.contains("wecom.callback_token")
            && sample.contains("随机获取"),
        "{sample}"
    );
    assert!(!out.stdout.contains(ENCODING_AES_KEY), "{}", out.stdout);
}

/// A database doctor cannot open fails its check, naming where it looked: on SQLite a file
/// in an unusable directory, on PostgreSQL a server that does not answer.
#[tokio::test]
async fn a_database_that_cannot_be_opened_fails() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut env = healthy_env(&nowhere());
    let (url, place) = match engine() {
        // Under a file: no directory there, even for root.
        Engine::Sqlite => (
            "sqlite:///dev/null/x/pushbot.db".to_owned(),
            "/dev/null/x".to_owned(),
        ),
        Engine::Postgres => {
            let place = format!("127.0.0.1:{}", free_port());
            (format!("postgres://postgres@{place}/test"), place)
        }
    };
    env.push(("PUSHBOT_STORAGE__URL".into(), url));
    let out = doctor(&setup, &env).await;
    assert!(!out.success, "{}", out.stdout);
    let db = out.check("database");
    assert!(db.starts_with('✗'), "{db}");
    assert!(db.contains(&place) && db.contains("storage.url"), "{db}");
    // The checks after it still run.
    assert!(out.check("gettoken").starts_with('✓'), "{}", out.stdout);
}

/// A SQLite database other users of the machine can read (made by an older pushbot, or
/// copied back from a backup): a warning naming each such file, its mode and the `chmod`
/// that fixes it; the run still succeeds (it works). Once fixed, the check passes.
#[tokio::test]
async fn a_database_other_users_can_read_is_a_warning_with_the_chmod_that_fixes_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    // A SQLite file whatever the engine under test.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pushbot.db");
    let wal = dir.path().join("pushbot.db-wal");
    for (file, mode) in [(&db, 0o644), (&wal, 0o640)] {
        std::fs::write(file, b"").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut env = healthy_env(&nowhere());
    env.push(("PUSHBOT_STORAGE__URL".into(), sqlite_url(&db)));

    let out = doctor(&setup, &env).await;
    assert!(
        out.success,
        "a warning does not fail the run:\n{}",
        out.stdout
    );
    let check = out.check("database");
    assert!(check.starts_with('!'), "{check}");
    for words in [
        "other users can read it",
        &format!("{} (0644)", db.display()),
        &format!("{} (0640)", wal.display()),
        "push token",
        &format!("chmod 600 {} {}", db.display(), wal.display()),
    ] {
        assert!(check.contains(words), "{words:?} in {check}");
    }
    assert!(
        out.stdout.contains("nothing failed, 1 warning"),
        "{}",
        out.stdout
    );
    // Doctor only says: it changes no mode (the -wal is gone: SQLite removes it at close).
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o644
    );

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = doctor(&setup, &env).await;
    assert!(out.check("database").starts_with('✓'), "{}", out.stdout);
    assert!(out.stdout.contains("all checks passed"), "{}", out.stdout);
}

#[tokio::test]
async fn smtp_is_checked_when_configured() {
    let mock = MockWeCom::start().await;
    let env = healthy_env(&nowhere());

    // Up: connected.
    let sink = SmtpSink::start().await;
    let config = settings_with(|c| {
        c.email = Some(local_email(sink.port));
    });
    let setup = bin_setup(&config, &mock.base_url);
    let out = doctor(&setup, &env).await;
    let smtp = out.check("SMTP");
    assert!(smtp.starts_with('✓'), "{smtp}");
    assert!(out.success, "{}", out.stdout);

    // Down: the error, and what to check.
    let config = settings_with(|c| {
        c.email = Some(local_email(free_port()));
    });
    let setup = bin_setup(&config, &mock.base_url);
    let out = doctor(&setup, &env).await;
    assert!(!out.success, "{}", out.stdout);
    let smtp = out.check("SMTP");
    assert!(smtp.starts_with('✗') && smtp.contains("refused"), "{smtp}");

    // A login the server cannot take: failed, and the password never shown.
    let mut login = env.clone();
    login.push(("PUSHBOT_EMAIL__USERNAME".into(), "bot@example.com".into()));
    login.push(("PUSHBOT_EMAIL__PASSWORD".into(), SMTP_PASSWORD.into()));
    let config = settings_with(|c| {
        c.email = Some(local_email(sink.port));
    });
    let setup = bin_setup(&config, &mock.base_url);
    let out = doctor(&setup, &login).await;
    let smtp = out.check("SMTP");
    assert!(smtp.starts_with('✗'), "{smtp}");
    assert!(!out.stdout.contains(SMTP_PASSWORD), "{}", out.stdout);
}

#[tokio::test]
async fn a_configuration_that_does_not_load_stops_there() {
    let mock = MockWeCom::start().await;
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut env = healthy_env(&nowhere());
    env.push(("PUSHBOT_WECOM__AGENT_ID".into(), "abc".into()));
    let out = doctor(&setup, &env).await;
    assert!(!out.success);
    assert_eq!(out.marks(), ['✗'], "{}", out.stdout);
    assert!(out.check("configuration").contains("wecom.agent_id"));
    assert_eq!(mock.gettoken_calls(), 0);
}
