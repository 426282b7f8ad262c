//! "A 200 means durable", tested the way it was broken: a full disk, an unwritable WAL, a
//! deleted database file, then `kill -9` — always checking the answers against what an
//! independent connection sees in the file, and against what survives a restart.
//!
//! The full-disk and immutable-file tests need root (mount, chattr); where that is not
//! available they print SKIPPED. The machine this project is developed and tested on
//! runs them. The tests about the SQLite file itself are skipped on PostgreSQL.

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::db;
use crate::helpers::*;

/// The real binary on a SQLite database at `db_path`, with its config next to it.
struct Service {
    mock: MockWeCom,
    _dir: TempDir,
    port: u16,
    config_path: PathBuf,
    db_path: PathBuf,
}

impl Service {
    async fn new(db_path: Option<PathBuf>) -> Self {
        let mock = MockWeCom::start().await;
        let dir = tempfile::tempdir().unwrap();
        let db_path = db_path.unwrap_or_else(|| dir.path().join("pushbot.db"));
        let port = free_port();
        let config = settings_with(|c| {
            c.delivery.retry_window = Duration::from_secs(120);
            c.delivery.backoff_initial = Duration::from_millis(50);
            c.delivery.backoff_max = Duration::from_millis(200);
        });
        let toml = render(
            &config,
            &format!("127.0.0.1:{port}"),
            &sqlite_url(&db_path),
            &mock.base_url,
        );
        let config_path = dir.path().join("pushbot.toml");
        std::fs::write(&config_path, toml).unwrap();
        Self {
            mock,
            _dir: dir,
            port,
            config_path,
            db_path,
        }
    }

    async fn start(&self) -> BinApp {
        spawn_binary(&self.config_path, self.port, &[]).await
    }

    /// The ids another process sees committed in the database file right now.
    async fn committed_ids(&self) -> Vec<String> {
        let mut conn = db::connect(&sqlite_url(&self.db_path)).await;
        let ids = db::messages(&mut conn)
            .await
            .into_iter()
            .map(|m| m.id)
            .collect();
        db::close(conn).await;
        ids
    }
}

/// POST /send (JSON, Bearer): `Ok(id)` on 200; on 503 checks the documented shape and
/// returns `Err(503)`; any other status fails the test.
async fn send(bin: &BinApp, token: &str, title: &str, content: &str) -> Result<String, u16> {
    let resp = bin
        .send_json(Some(token), &json!({ "title": title, "content": content }))
        .await;
    match resp.status().as_u16() {
        200 => Ok(accepted_id(resp).await),
        503 => {
            assert!(
                resp.headers().contains_key("retry-after"),
                "a 503 says when to retry"
            );
            assert_error(resp, 503, "unavailable").await;
            Err(503)
        }
        other => panic!(
            "/send must answer 200 or 503, got {other}: {:?}",
            resp.text().await
        ),
    }
}

async fn healthz_status(bin: &BinApp) -> u16 {
    bin.healthz().await.unwrap().status().as_u16()
}

/// `/healthz` is 503 and says that storage is unavailable, but not where or why: no path,
/// no file name, no SQLite or OS error (those go to the log).
async fn assert_unavailable_without_detail(api: &Api, db_path: &Path) {
    let resp = api.healthz().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "unavailable", "{body}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("storage unavailable"), "{body}");
    let dir = db_path.parent().unwrap().to_string_lossy().into_owned();
    let file = db_path.file_name().unwrap().to_string_lossy().into_owned();
    for detail in [
        dir.as_str(),
        file.as_str(),
        "sqlite",
        "disk",
        "deleted",
        "error",
    ] {
        assert!(
            !message.to_lowercase().contains(detail),
            "{detail:?} on the wire: {body}"
        );
    }
    assert!(!body.contains(&dir), "{body}");
}

/// Every id answered 200 is in the file for another process to see, survives `kill -9`,
/// and is delivered once WeCom works.
async fn assert_durable(svc: &Service, mut bin: BinApp, token: &str, accepted: &[String]) {
    let committed = svc.committed_ids().await;
    for id in accepted {
        assert!(
            committed.contains(id),
            "{id} was answered 200 but another connection does not see it"
        );
    }
    bin.kill9();
    svc.mock.heal();
    let bin = svc.start().await;
    for id in accepted {
        bin.wait_for_status(id, token, "delivered", WAIT).await;
    }
}

#[tokio::test]
async fn a_full_disk_gets_503_never_a_200_that_is_lost() {
    sqlite_only!("fills the tmpfs under the SQLite file");
    let Some(disk) = Tmpfs::mount("4m") else {
        return;
    };
    let svc = Service::new(Some(disk.path().join("pushbot.db"))).await;
    let bin = svc.start().await;
    let token = bin.get_token(&userid("full")).await;
    // Removed below to make room again: half the disk, so that the retries' writes and the
    // restart's WAL recovery fit even on a slow machine (1 MiB once was not enough).
    std::fs::write(disk.path().join("filler"), vec![0u8; 2 * 1024 * 1024]).unwrap();

    let mut accepted = Vec::new();
    let big = "x".repeat(30_000);
    let mut full = false;
    for i in 0..200 {
        match send(&bin, &token, &format!("big {i}"), &big).await {
            Ok(id) => accepted.push(id),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "4 MiB fill up with 30 KB messages");
    assert_unavailable_without_detail(&bin, &svc.db_path).await;
    // Still full: whatever is answered, a 200 must be true.
    for i in 0..3 {
        if let Ok(id) = send(&bin, &token, &format!("while full {i}"), &big).await {
            accepted.push(id);
        }
    }

    // Room again, WeCom failing so that messages stay queued: the service recovers by
    // itself, and every 200 is real.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    svc.mock.fail_always(SendReply::http(500));
    for i in 0..5 {
        let id = send(&bin, &token, &format!("small {i}"), "hello")
            .await
            .expect("writes work again once there is room");
        accepted.push(id);
    }
    assert_eq!(healthz_status(&bin).await, 200);
    assert_durable(&svc, bin, &token, &accepted).await;
}

/// `chattr +i` on a file; undone on drop so the temp dir can be removed.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Self> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "SKIPPED: cannot chattr +i here (needs root and a filesystem that supports it)"
            );
            return None;
        }
        Some(Self(path.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test]
async fn an_unwritable_wal_gets_503_and_the_service_recovers() {
    sqlite_only!("makes SQLite's -wal file immutable");
    let svc = Service::new(None).await;
    let bin = svc.start().await;
    let token = bin.get_token(&userid("wal")).await;
    svc.mock.fail_always(SendReply::http(500));
    let mut accepted = vec![send(&bin, &token, "warm-up", "x").await.unwrap()];

    let wal = svc.db_path.with_extension("db-wal");
    let Some(lock) = Immutable::set(&wal) else {
        return;
    };
    let refused = send(&bin, &token, "while immutable", "x").await;
    assert_eq!(refused, Err(503), "an unwritable WAL is not a 200");
    assert_unavailable_without_detail(&bin, &svc.db_path).await;
    drop(lock);

    for i in 0..3 {
        accepted.push(
            send(&bin, &token, &format!("after {i}"), "x")
                .await
                .expect("the service recovers by itself"),
        );
    }
    assert_eq!(healthz_status(&bin).await, 200);
    assert_durable(&svc, bin, &token, &accepted).await;
}

#[tokio::test]
async fn a_deleted_database_file_is_noticed() {
    sqlite_only!("deletes the SQLite file");
    let app = spawn_app().await;
    let token = app.get_token(&userid("deleted")).await;
    app.send_ok(&token, "before", "x").await;
    let db_path = app.db.sqlite_path().unwrap().to_owned();
    std::fs::remove_file(&db_path).unwrap();

    // Noticed, said on the wire without the path (the log names it and says to restart).
    assert_unavailable_without_detail(&app, &db_path).await;
    let resp = app
        .send_get(&[("token", &token), ("title", "into the void")])
        .await;
    assert_error(resp, 503, "unavailable").await;
}

/// Runs `serve` until it exits by itself, which must be quick, with one line on stderr.
async fn start_up_error(db_path: &Path) -> String {
    let svc = Service::new(Some(db_path.to_owned())).await;
    let started = Instant::now();
    let child = binary_command(&svc.config_path, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_for_exit(child, WAIT).await;
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a storage error stops start-up at once, not after a pool time-out"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[tokio::test]
async fn start_up_storage_errors_name_the_path_and_the_cause() {
    sqlite_only!("SQLite's errors opening a file: its path, not a database, no directory");
    let dir = tempfile::tempdir().unwrap();

    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "not a database, just some text that is long enough").unwrap();
    let line = start_up_error(&junk).await;
    assert!(
        line.contains("notes.txt") && line.contains("not a SQLite database"),
        "{line}"
    );

    let missing = dir.path().join("no-such-dir").join("pushbot.db");
    let line = start_up_error(&missing).await;
    assert!(
        line.contains("no-such-dir") && line.contains("No such file or directory"),
        "{line}"
    );

    // A read-only directory: a read-only mount (root), else permissions (non-root).
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let line = start_up_error(&ro.join("pushbot.db")).await;
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(&ro).status();
    }
    assert!(
        line.contains("/ro") && line.contains("cannot create files"),
        "{line}"
    );
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The database holds every member's token and every page key: the database file, its
/// `-wal` and `-shm` are 0600 even when pushbot runs under `umask 000` (which would leave
/// anything created with SQLite's default mode readable and writable by everyone).
#[tokio::test]
async fn the_database_files_are_private_whatever_the_umask() {
    sqlite_only!("the SQLite files' permissions");
    let svc = Service::new(None).await;
    let probe = svc.db_path.with_file_name("umask-probe");
    let mut cmd = Command::new("sh");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("PROBE", &probe)
        .arg("-c")
        .arg(r#"umask 000 && : > "$PROBE" && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_pushbot"))
        .args(["serve", "--config"])
        .arg(&svc.config_path);
    let bin = spawn_command(cmd, &svc.config_path, svc.port).await;
    assert_eq!(mode(&probe), 0o666, "the umask really was 000");
    // A write, so that the WAL and its index are in use.
    bin.get_token(&userid("private")).await;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", svc.db_path.display()));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    assert!(!log.contains("chmod"), "nothing to warn about: {log}");
}

/// An existing database other users can read (from an older pushbot, a restore): `serve`
/// starts, and warns naming the file and the `chmod` that fixes it, but leaves the mode
/// alone (it may be someone's choice, e.g. a backup reading through its group).
#[tokio::test]
async fn serve_warns_about_an_existing_database_others_can_read_and_leaves_its_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    sqlite_only!("the SQLite files' permissions");
    let svc = Service::new(None).await;
    std::fs::write(&svc.db_path, b"").unwrap();
    std::fs::set_permissions(&svc.db_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bin = svc.start().await;
    bin.get_token(&userid("exposed")).await;
    bin.kill9();
    let log = std::fs::read_to_string(&bin.log_path).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("other users"))
        .unwrap_or_else(|| panic!("no warning about the permissions: {log}"));
    let shown = svc.db_path.display();
    assert!(
        warning.contains(&format!("{shown} (0644)"))
            && warning.contains(&format!("chmod 600 {shown}")),
        "{warning}"
    );
    assert_eq!(mode(&svc.db_path), 0o644);
}

/// This machine's address on a non-loopback interface, if it has one (no packet is sent).
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn reachable(ip: IpAddr, port: u16) -> bool {
    let addr = std::net::SocketAddr::new(ip, port);
    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn the_public_sample_credentials_only_listen_on_loopback() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: no non-loopback address on this machine");
        return;
    };
    let mock = MockWeCom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let store = TestDb::new(dir.path());
    // The test suite's callback credentials are WeCom's documentation samples.
    let sample = render(
        &test_settings(),
        &format!("0.0.0.0:{port}"),
        store.url(),
        &mock.base_url,
    );
    let config_path = dir.path().join("sample.toml");
    std::fs::write(&config_path, &sample).unwrap();
    let bin = spawn_binary(&config_path, port, &[]).await;
    assert!(reachable("127.0.0.1".parse().unwrap(), port).await);
    assert!(
        !reachable(ip, port).await,
        "with the public sample credentials, {ip} must not reach the service"
    );
    drop(bin);
    let log = std::fs::read_to_string(config_path.with_extension(format!("{port}.log"))).unwrap();
    assert!(log.contains("PUBLIC SAMPLE"), "a loud warning: {log}");

    // With the app's own values, the configured address is used as it is.
    let own = sample.replace(CALLBACK_TOKEN, "OwnToken123").replace(
        ENCODING_AES_KEY,
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    );
    let config_path = dir.path().join("own.toml");
    std::fs::write(&config_path, own).unwrap();
    let _bin = spawn_binary(&config_path, port, &[]).await;
    assert!(reachable(ip, port).await, "{ip} reaches the service");
}
