//! The real binary: `serve --config`, environment overrides, start-up errors, SIGKILL.

use std::path::PathBuf;

use tempfile::TempDir;

use crate::helpers::*;

struct BinSetup {
    mock: MockWeCom,
    dir: TempDir,
    _db: TestDb,
    port: u16,
    config_path: PathBuf,
}

/// Runs a command to completion, asserts it succeeded, returns its stdout.
fn succeeds(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the binary until it exits by itself; returns its output and stderr text.
async fn run_to_exit(
    config_path: &std::path::Path,
    envs: &[(&str, &str)],
) -> (std::process::Output, String) {
    let out = run_captured(binary_command(config_path, envs), WAIT).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// The binary's config file: [`test_settings`] with `tweak`'s changes.
async fn setup(tweak: impl FnOnce(&mut Settings)) -> BinSetup {
    setup_file(tweak, |text| text).await
}

/// The same, the file's text then changed by `edit` (to make it what no `Settings` is).
async fn setup_file(
    tweak: impl FnOnce(&mut Settings),
    edit: impl FnOnce(String) -> String,
) -> BinSetup {
    let mock = MockWeCom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = settings_with(tweak);
    let db = TestDb::new(dir.path());
    let toml = edit(render(
        &config,
        &format!("127.0.0.1:{port}"),
        db.url(),
        &mock.base_url,
    ));
    let config_path = dir.path().join("pushbot.toml");
    std::fs::write(&config_path, toml).unwrap();
    BinSetup {
        mock,
        dir,
        _db: db,
        port,
        config_path,
    }
}

#[tokio::test]
async fn an_accepted_message_survives_sigkill() {
    let s = setup(|c| c.delivery.retry_window = Duration::from_secs(60)).await;
    let mut bin = spawn_binary(&s.config_path, s.port, &[]).await;
    let user = userid("killed");
    let token = bin.get_token(&user).await;

    // WeCom is unreachable for now, so the message can only be in the outbox on disk.
    s.mock.fail_always(SendReply::errcode(-1, "system busy"));
    let id = bin.send_ok(&token, "survivor", "of kill -9").await;
    bin.kill9();
    assert!(s.mock.sent().is_empty());

    s.mock.heal();
    let bin = spawn_binary(&s.config_path, s.port, &[]).await;
    let sent = s.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].touser, user);
    assert_eq!(sent[0].content, "survivor\n\nof kill -9");
    bin.wait_for_status(&id, &token, "delivered", WAIT).await;
    drop(s.dir);
}

#[tokio::test]
async fn environment_overrides_the_config_file() {
    // The file has the wrong secret; the environment has the right one.
    let s =
        setup(|c| c.wecom.secret = CorpSecret::try_from("wrong-secret".to_owned()).unwrap()).await;
    let bin = spawn_binary(&s.config_path, s.port, &[("PUSHBOT_WECOM__SECRET", SECRET)]).await;
    let token = bin.get_token(&userid("env")).await;
    let id = bin.send_ok(&token, "from", "env").await;
    bin.wait_for_status(&id, &token, "delivered", WAIT).await;
    assert_eq!(s.mock.sent().len(), 1);
}

#[tokio::test]
async fn without_the_override_the_wrong_secret_is_not_used_successfully() {
    // Control for the test above: the file's secret really is wrong.
    let s = setup(|c| {
        c.wecom.secret = CorpSecret::try_from("wrong-secret".to_owned()).unwrap();
        c.delivery.retry_window = Duration::from_millis(300);
    })
    .await;
    let bin = spawn_binary(&s.config_path, s.port, &[]).await;
    let token = bin.get_token(&userid("noenv")).await;
    let id = bin.send_ok(&token, "from", "file").await;
    let status = bin.wait_for_status(&id, &token, "failed", WAIT).await;
    assert!(
        status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    assert!(s.mock.gettoken_calls() >= 1);
    assert!(s.mock.sent().is_empty());
}

#[tokio::test]
async fn a_missing_required_key_exits_non_zero_naming_it() {
    let s = setup_file(
        |_| {},
        |text| {
            let line = format!("corp_id = \"{CORP_ID}\"\n");
            assert!(text.contains(&line), "{text}");
            text.replace(&line, "")
        },
    )
    .await;
    let (out, stderr) = run_to_exit(&s.config_path, &[]).await;
    assert!(!out.status.success(), "must fail; stderr: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of explanation: {stderr:?}");
    assert!(lines[0].contains("corp_id"), "names the key: {stderr:?}");
}

#[tokio::test]
async fn a_misspelt_key_is_refused_with_the_nearest_valid_one() {
    let s = setup(|_| {}).await;
    let text = std::fs::read_to_string(&s.config_path)
        .unwrap()
        .replace("listen =", "lisen =");
    std::fs::write(&s.config_path, text).unwrap();
    let (out, stderr) = run_to_exit(&s.config_path, &[]).await;
    assert!(!out.status.success(), "must not start on a default address");
    assert_eq!(
        stderr.trim(),
        "pushbot: unknown setting `server.lisen`; did you mean `server.listen`?"
    );
    // The same from the environment.
    let s = setup(|_| {}).await;
    let (out, stderr) =
        run_to_exit(&s.config_path, &[("PUSHBOT_DELIVERY__RETRY_WINDOWS", "1m")]).await;
    assert!(!out.status.success());
    assert!(
        stderr.contains("`delivery.retry_windows`") && stderr.contains("`delivery.retry_window`"),
        "{stderr}"
    );
}

/// What Kubernetes puts in every pod of a namespace with the Services `pushbot` (port 8080,
/// named `http`) and `pushbot-server` (ports 80 and 9090/UDP, unnamed).
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("PUSHBOT_SERVICE_HOST", "10.96.0.12"),
    ("PUSHBOT_SERVICE_PORT", "8080"),
    ("PUSHBOT_SERVICE_PORT_HTTP", "8080"),
    ("PUSHBOT_PORT", "tcp://10.96.0.12:8080"),
    ("PUSHBOT_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("PUSHBOT_PORT_8080_TCP_PROTO", "tcp"),
    ("PUSHBOT_PORT_8080_TCP_PORT", "8080"),
    ("PUSHBOT_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ("PUSHBOT_SERVER_SERVICE_HOST", "10.96.0.13"),
    ("PUSHBOT_SERVER_SERVICE_PORT", "80"),
    ("PUSHBOT_SERVER_PORT", "tcp://10.96.0.13:80"),
    ("PUSHBOT_SERVER_PORT_80_TCP", "tcp://10.96.0.13:80"),
    ("PUSHBOT_SERVER_PORT_80_TCP_PROTO", "tcp"),
    ("PUSHBOT_SERVER_PORT_80_TCP_PORT", "80"),
    ("PUSHBOT_SERVER_PORT_80_TCP_ADDR", "10.96.0.13"),
    ("PUSHBOT_SERVER_PORT_9090_UDP", "udp://10.96.0.13:9090"),
    ("PUSHBOT_SERVER_PORT_9090_UDP_PROTO", "udp"),
    ("PUSHBOT_SERVER_PORT_9090_UDP_PORT", "9090"),
    ("PUSHBOT_SERVER_PORT_9090_UDP_ADDR", "10.96.0.13"),
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
    ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
];

/// Kubernetes service links are not settings: `serve` starts (it used to answer `unknown
/// setting 'port'` and exit 1, a crash loop), says at DEBUG which it ignored, and the real
/// settings beside them still apply.
#[tokio::test]
async fn kubernetes_service_links_do_not_stop_start_up() {
    // The file has the wrong secret; the environment has the right one.
    let s =
        setup(|c| c.wecom.secret = CorpSecret::try_from("wrong-secret".to_owned()).unwrap()).await;
    let mut env = SERVICE_LINKS.to_vec();
    env.extend([("PUSHBOT_WECOM__SECRET", SECRET), ("RUST_LOG", "debug")]);
    let bin = spawn_binary(&s.config_path, s.port, &env).await;
    let health = bin.healthz().await.unwrap();
    assert_eq!(health.status(), 200);
    let token = bin.get_token(&userid("k8s")).await;
    let id = bin.send_ok(&token, "in", "kubernetes").await;
    bin.wait_for_status(&id, &token, "delivered", WAIT).await;

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("DEBUG") && l.contains("service-link"))
        .unwrap_or_else(|| panic!("no DEBUG line naming the ignored variables:\n{log}"));
    let words: Vec<&str> = line.split([' ', '"', '=']).collect();
    for (name, _) in SERVICE_LINKS {
        assert_eq!(
            words.contains(name),
            name.starts_with("PUSHBOT_"),
            "{name} in {line}"
        );
    }
    assert!(!line.contains("WECOM__SECRET"), "{line}");

    // check-config too (and `pushbot healthcheck`, the image's HEALTHCHECK).
    let config = s.config_path.to_str().unwrap();
    let mut env = SERVICE_LINKS.to_vec();
    env.push(("PUSHBOT_CONFIG", config));
    succeeds(pushbot_command(&env).arg("check-config"));
    succeeds(pushbot_command(&env).arg("healthcheck"));
}

/// Beside the service links, a misspelt setting is still refused with the nearest valid
/// key, and exit code 1.
#[tokio::test]
async fn a_misspelt_setting_beside_service_links_is_refused_naming_the_nearest() {
    let s = setup(|_| {}).await;
    for (name, value, message) in [
        (
            "PUSHBOT_SERVER__LISTN",
            "0.0.0.0:8080",
            "unknown setting `server.listn`; did you mean `server.listen`?",
        ),
        (
            "PUSHBOT_WECOM__SECRT",
            "s3cr3t",
            "unknown setting `wecom.secrt`; did you mean `wecom.secret`?",
        ),
    ] {
        let mut env = SERVICE_LINKS.to_vec();
        env.push((name, value));
        let (out, stderr) = run_to_exit(&s.config_path, &env).await;
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim(), format!("pushbot: {message}"));
    }
}

#[tokio::test]
async fn a_missing_config_file_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let (out, stderr) = run_to_exit(&path, &[]).await;
    assert!(!out.status.success(), "must fail; stderr: {stderr}");
    assert!(stderr.contains("nope.toml"), "names the file: {stderr:?}");
}

#[tokio::test]
async fn an_invalid_value_from_the_environment_is_named() {
    let s = setup(|_| {}).await;
    let (out, stderr) = run_to_exit(
        &s.config_path,
        &[("PUSHBOT_DELIVERY__RETRY_WINDOW", "soon")],
    )
    .await;
    assert!(!out.status.success(), "must fail; stderr: {stderr}");
    assert!(stderr.contains("retry_window"), "names the key: {stderr:?}");
}

/// The load benchmark is part of the repository's promises; keep it working (a small run).
/// On PostgreSQL (a schema of loadgen's own) with two instances on the one database.
#[test]
fn the_load_benchmark_runs_and_loses_nothing() {
    let mut loadgen = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    loadgen
        .args([
            "--clients",
            "8",
            "--messages",
            "300",
            "--drain-timeout",
            "30",
        ])
        .env_remove("RUST_LOG");
    if engine() == Engine::Postgres {
        loadgen
            .arg("--storage")
            .arg(pg_base_url())
            .args(["--instances", "2"]);
    }
    let stdout = succeeds(&mut loadgen);
    assert!(stdout.contains("lost:           0"), "{stdout}");
    assert!(
        stdout.contains("database: 300 delivered, 0 not delivered"),
        "{stdout}"
    );
}

/// Secrets, access tokens and push tokens never reach the log, even at debug level and
/// through failures whose reasons are logged.
#[tokio::test]
async fn secrets_and_tokens_never_appear_in_the_log() {
    let s = setup(|_| {}).await;
    let mut bin = spawn_binary(&s.config_path, s.port, &[("RUST_LOG", "debug")]).await;
    let user = userid("quiet");
    let old_token = bin.get_token(&user).await;
    let token = bin.rotate(&user).await;
    // Delivered (gettoken + send), refreshed after expiry, failed permanently, and 401s.
    let id = bin.send_ok(&token, "hello", "world").await;
    bin.wait_for_status(&id, &token, "delivered", WAIT).await;
    s.mock.expire_tokens();
    let id = bin.send_ok(&token, "after", "expiry").await;
    bin.wait_for_status(&id, &token, "delivered", WAIT).await;
    s.mock.push_replies([SendReply::errcode(
        60020,
        "not allow to access from your ip, from ip: 1.2.3.4",
    )]);
    let id = bin.send_ok(&token, "blocked", "ip").await;
    bin.wait_for_status(&id, &token, "failed", WAIT).await;
    let resp = bin
        .send_get(&[("token", old_token.as_str()), ("title", "old")])
        .await;
    assert_eq!(resp.status(), 401);
    bin.kill9();

    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    let access_tokens: Vec<String> = s
        .mock
        .calls()
        .into_iter()
        .filter_map(|c| c.access_token)
        .collect();
    assert!(!access_tokens.is_empty());
    let mut secrets = vec![
        SECRET.to_owned(),
        ENCODING_AES_KEY.to_owned(),
        old_token,
        token,
    ];
    secrets.extend(access_tokens);
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "log leaks {secret:?}:\n{log}"
        );
    }
}

/// `PUSHBOT_CONFIG` names the file like `--config`; `check-config` validates it and prints
/// the settings with every secret redacted.
#[tokio::test]
async fn check_config_reads_pushbot_config_and_redacts_secrets() {
    let s = setup(|_| {}).await;
    let config = s.config_path.to_str().unwrap();
    let stdout = succeeds(pushbot_command(&[("PUSHBOT_CONFIG", config)]).arg("check-config"));
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(
        stdout.contains(&format!("listen: 127.0.0.1:{}", s.port)),
        "settings from that file are shown: {stdout}"
    );
    for secret in [SECRET, CALLBACK_TOKEN, ENCODING_AES_KEY] {
        assert!(!stdout.contains(secret), "prints {secret:?}: {stdout}");
    }
}

/// `check-config` names the engine and whether the database answers; with a PostgreSQL
/// that cannot be reached, `serve` exits at once with one line. Neither prints the
/// password in the URL.
#[tokio::test]
async fn the_engine_and_its_reachability_are_reported_without_the_password() {
    let s = setup(|_| {}).await;
    let config = s.config_path.to_str().unwrap();
    let stdout = succeeds(pushbot_command(&[("PUSHBOT_CONFIG", config)]).arg("check-config"));
    let engine = engine().name();
    assert!(
        stdout.contains(&format!("storage: {engine}, ")),
        "the engine is named: {stdout}"
    );
    if engine == "postgres" {
        assert!(stdout.contains("is reachable"), "{stdout}");
    }

    // Nothing listens on this port.
    let port = free_port();
    let url = format!("postgres://pushbot:hunter2@127.0.0.1:{port}/push");
    let env = [
        ("PUSHBOT_CONFIG", config),
        ("PUSHBOT_STORAGE__URL", url.as_str()),
    ];
    let stdout = succeeds(pushbot_command(&env).arg("check-config"));
    assert!(
        stdout.contains(&format!(
            "storage: postgres, PostgreSQL at 127.0.0.1:{port}/push is not reachable"
        )),
        "{stdout}"
    );
    let started = std::time::Instant::now();
    let (out, stderr) =
        run_to_exit(&s.config_path, &[("PUSHBOT_STORAGE__URL", url.as_str())]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < WAIT, "it gave up at once");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("PostgreSQL at 127.0.0.1:{port}/push"))
            && stderr.contains("cannot reach the server"),
        "{stderr}"
    );
    for leaked in [stdout.as_str(), stderr.as_str()] {
        assert!(
            !leaked.contains("hunter2"),
            "the password is printed: {leaked}"
        );
    }
}

/// Docker's HEALTHCHECK: `pushbot healthcheck` succeeds while the service answers
/// `/healthz` on the configured port and fails once it is gone.
#[tokio::test]
async fn healthcheck_follows_the_running_service() {
    let s = setup(|_| {}).await;
    let healthcheck = || {
        pushbot_command(&[])
            .arg("healthcheck")
            .arg("--config")
            .arg(&s.config_path)
            .output()
            .unwrap()
    };
    let mut bin = spawn_binary(&s.config_path, s.port, &[]).await;
    let up = healthcheck();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    bin.kill9();
    let down = healthcheck();
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", s.port)),
        "{stderr}"
    );
}
