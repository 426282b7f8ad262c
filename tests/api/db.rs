//! Looking at (and tampering with) the gateway's SQLite file from outside, through a
//! connection of our own: what is committed is what counts, whatever the API says.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

/// An independent connection to the database at `path` (WAL, like the gateway's).
pub async fn connect(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging()
        .connect()
        .await
        .expect("open the gateway's database")
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

pub async fn messages(conn: &mut SqliteConnection) -> Vec<StoredMessage> {
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

pub async fn message(conn: &mut SqliteConnection, id: &str) -> StoredMessage {
    messages(conn)
        .await
        .into_iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("message {id} is in the database"))
}

/// Inserts a queued message behind the gateway's back, due now: as if it had been
/// accepted and the task that should deliver it had died.
pub async fn insert_orphan(conn: &mut SqliteConnection, id: &str, userid: &str, title: &str) {
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
/// the busy timeout would), until [`heal_updates`].
pub async fn fail_updates(conn: &mut SqliteConnection) {
    sqlx::query(
        "CREATE TRIGGER test_fail_updates BEFORE UPDATE ON messages \
         BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END",
    )
    .execute(&mut *conn)
    .await
    .expect("install the failing trigger");
}

pub async fn heal_updates(conn: &mut SqliteConnection) {
    sqlx::query("DROP TRIGGER IF EXISTS test_fail_updates")
        .execute(&mut *conn)
        .await
        .expect("drop the failing trigger");
}

pub async fn close(conn: SqliteConnection) {
    let _ = conn.close().await;
}
