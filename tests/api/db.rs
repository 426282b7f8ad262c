//! Looking at (and tampering with) the gateway's database from outside, through a
//! connection of our own: what is committed is what counts, whatever the API says.
//!
//! One connection type and one SQL for both engines (`$n` placeholders, BIGINT integers):
//! the URL is the app's own `storage.url` (a SQLite file, or the app's PostgreSQL schema).

use std::str::FromStr as _;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyConnection;
use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

/// An independent connection to the database at `url` (an app's `store_url()`).
pub async fn connect(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnectOptions::from_str(url)
        .unwrap_or_else(|e| panic!("{url} is a database URL: {e}"))
        .disable_statement_logging()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("open the gateway's database at {url}: {e}"));
    if is_sqlite(&conn) {
        // Wait for the gateway's writer (WAL, like the gateway's) rather than fail at once.
        sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await
            .expect("set the busy timeout");
    }
    conn
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One committed message row, as stored.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

pub async fn messages(conn: &mut AnyConnection) -> Vec<StoredMessage> {
    sqlx::query("SELECT id, status, attempts, last_error FROM messages ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .expect("read messages")
        .iter()
        .map(|r| StoredMessage {
            id: r.get("id"),
            status: r.get("status"),
            attempts: r.get("attempts"),
            last_error: r.get("last_error"),
        })
        .collect()
}

pub async fn message(conn: &mut AnyConnection, id: &str) -> StoredMessage {
    messages(conn)
        .await
        .into_iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("message {id} is in the database"))
}

/// Inserts a queued message behind the gateway's back, due now: as if it had been
/// accepted and the task that should deliver it had died.
pub async fn insert_orphan(conn: &mut AnyConnection, id: &str, userid: &str, title: &str) {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO messages (id, userid, title, content, status, attempts, created_at, \
         updated_at, next_attempt_at, deadline_at) \
         VALUES ($1, $2, $3, NULL, 'queued', 0, $4, $4, $4, $5)",
    )
    .bind(id)
    .bind(userid)
    .bind(title)
    .bind(now)
    .bind(now + 60_000)
    .execute(&mut *conn)
    .await
    .expect("insert an orphaned message");
}

/// Makes every later UPDATE of a message fail (as a full disk or a database locked past
/// the busy timeout would), until [`heal_updates`]: a trigger that raises an error, in
/// each engine's own trigger language.
pub async fn fail_updates(conn: &mut AnyConnection) {
    let statements: &[&'static str] = if is_sqlite(conn) {
        &[
            "CREATE TRIGGER test_fail_updates BEFORE UPDATE ON messages \
             BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END",
        ]
    } else {
        &[
            "CREATE FUNCTION test_fail_updates() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'simulated write failure'; END $$",
            "CREATE TRIGGER test_fail_updates BEFORE UPDATE ON messages \
             FOR EACH ROW EXECUTE FUNCTION test_fail_updates()",
        ]
    };
    for sql in statements {
        sqlx::query(*sql)
            .execute(&mut *conn)
            .await
            .expect("install the failing trigger");
    }
}

pub async fn heal_updates(conn: &mut AnyConnection) {
    let statements: &[&'static str] = if is_sqlite(conn) {
        &["DROP TRIGGER IF EXISTS test_fail_updates"]
    } else {
        &[
            "DROP TRIGGER IF EXISTS test_fail_updates ON messages",
            "DROP FUNCTION IF EXISTS test_fail_updates()",
        ]
    };
    for sql in statements {
        sqlx::query(*sql)
            .execute(&mut *conn)
            .await
            .expect("drop the failing trigger");
    }
}

/// What the callback can change: every member with their token, and every claimed
/// callback de-duplication key, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackState {
    pub members: Vec<(String, String)>,
    pub callback_keys: Vec<String>,
}

pub async fn callback_state(conn: &mut AnyConnection) -> CallbackState {
    let members = sqlx::query("SELECT userid, token FROM members ORDER BY userid")
        .fetch_all(&mut *conn)
        .await
        .expect("read members")
        .iter()
        .map(|r| (r.get("userid"), r.get("token")))
        .collect();
    let callback_keys = sqlx::query("SELECT dedup_key FROM callbacks ORDER BY dedup_key")
        .fetch_all(&mut *conn)
        .await
        .expect("read callbacks")
        .iter()
        .map(|r| r.get("dedup_key"))
        .collect();
    CallbackState {
        members,
        callback_keys,
    }
}

fn is_sqlite(conn: &AnyConnection) -> bool {
    conn.backend_name() == "SQLite"
}

pub async fn close(conn: AnyConnection) {
    let _ = conn.close().await;
}
