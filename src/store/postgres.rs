//! The shared engine: PostgreSQL, for several pushbot instances on one database.
//!
//! Reads go through a sqlx pool (the same SQL as on SQLite); writes through the
//! group-commit writer's own native connection ([`PgBackend`]), driven by a small runtime
//! on the writer's thread. What keeps instances from stepping on each other lives in the
//! SQL: lanes are claimed with `FOR UPDATE SKIP LOCKED` (one instance per lane), the
//! acceptance order comes from a sequence, and callbacks are claimed by a unique key.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgRow};
use sqlx::{ConnectOptions as _, Connection as _, Row as _, TypeInfo as _, ValueRef as _};

use super::readers::Readers;
use super::writer::{Backend, Dialect, Value};
use super::{Engine, OPEN_TIMEOUT, Opened, StoreError, Unreachable};

/// How long the writer waits for a new connection before failing the batch.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one writer statement may take before the batch fails (a stuck server).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer's session never plans a full scan of a table where an index would do (a
/// setting sent with the login: no round trip). Its statements all find their rows by a
/// key or an indexed range, and its prepared statements keep the plan made at their
/// sixth use: on a fresh database, while `messages` is still nearly empty (until
/// autovacuum's first ANALYZE), that plan joins the delivered ids by scanning the whole
/// table, and keeps doing so as it grows — measured at over a thousand full scans, ten
/// million rows read, in a 20,000-message run. Planning every statement afresh instead
/// (`plan_cache_mode = force_custom_plan`) cost more than it saved (measured). A statement
/// with no index to use still scans.
const WRITER_PLANS: (&str, &str) = ("enable_seqscan", "off");

/// Under load the writer opens its next transaction in the round trip that commits the last
/// one (see [`PgBackend::commit`]), so its session may sit in an open transaction for a
/// moment between batches; a server-wide `idle_in_transaction_session_timeout` must not end
/// it for that.
const WRITER_IDLE: (&str, &str) = ("idle_in_transaction_session_timeout", "0");

/// Where a `postgres://` URL points, without its password: `host:port/database`.
pub fn describe(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "PostgreSQL at {}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("(user's database)")
        ),
        Err(_) => "PostgreSQL (unparsable URL)".to_owned(),
    }
}

/// Connects once, asks `SELECT 1` and closes, within [`OPEN_TIMEOUT`]: an unreachable
/// server or a refused login as one reason and its cause.
async fn connect_once(options: &PgConnectOptions) -> Result<(), (String, Option<sqlx::Error>)> {
    let check = async {
        let mut conn = PgConnection::connect_with(options).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    match tokio::time::timeout(OPEN_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            let reason = match &err {
                sqlx::Error::Io(_) => "cannot reach the server",
                sqlx::Error::Database(_) => "the server refused the connection",
                _ => "cannot connect",
            };
            Err((reason.to_owned(), Some(err)))
        }
        Err(_) => Err((
            format!("no answer within {}s", OPEN_TIMEOUT.as_secs()),
            None,
        )),
    }
}

/// Whether the server answers (for `pushbot check-config`).
pub(super) async fn reachability(url: &str) -> Result<String, Unreachable> {
    let target = describe(url);
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return Err(Unreachable::InvalidUrl { target });
    };
    match connect_once(&options.disable_statement_logging()).await {
        Ok(()) => Ok(format!("{target} is reachable")),
        Err((reason, error)) => Err(Unreachable::NoConnection {
            target,
            reason,
            error,
        }),
    }
}

/// Connects, applies migrations (under PostgreSQL's advisory lock, so instances starting
/// together migrate once), and prepares the writer's backend.
pub(super) async fn open(url: &str, pool_size: u32) -> Result<Opened, StoreError> {
    let fail = |reason: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
        StoreError::Open {
            target: describe(url),
            reason,
            source,
        }
    };
    let native = PgConnectOptions::from_str(url)
        .map_err(|e| {
            fail(
                "the URL is not a valid PostgreSQL URL".into(),
                Some(Box::new(e)),
            )
        })?
        .application_name("pushbot")
        .statement_cache_capacity(256)
        .disable_statement_logging();
    // One connection first, so that an unreachable server or a refused login is one clear
    // error at once (a pool retries until its timeout, logging each attempt).
    connect_once(&native).await.map_err(|(reason, source)| {
        fail(
            reason,
            source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
        )
    })?;
    let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
    let pool = AnyPoolOptions::new()
        .max_connections(pool_size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(60))
        .max_lifetime(Duration::from_secs(30 * 60))
        .connect_with(options.clone())
        .await?;
    let readers = Readers::new(options, Engine::Postgres, pool_size);
    sqlx::migrate!("./src/store/migrations/postgres")
        .run(&pool)
        .await?;
    // Before anything is accepted or delivered: see the migration 0011_instances.sql.
    let mark: i64 = sqlx::query_scalar(
        "UPDATE instances SET starts = starts + 1 WHERE id = 1 RETURNING starts",
    )
    .fetch_one(&pool)
    .await?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            fail(
                "cannot start the writer's runtime".into(),
                Some(Box::new(e)),
            )
        })?;
    Ok(Opened {
        pool,
        readers,
        backend: Box::new(PgBackend {
            options: native.options([WRITER_PLANS, WRITER_IDLE]),
            runtime,
            conn: None,
            open: false,
        }),
        file: None,
        wal: None,
        mark: Some(mark),
    })
}

/// The writer's side of PostgreSQL.
struct PgBackend {
    options: PgConnectOptions,
    /// Drives the connection on the writer's thread.
    runtime: tokio::runtime::Runtime,
    conn: Option<PgConnection>,
    /// A transaction is open on `conn` and nothing has run in it yet: the last commit
    /// opened it.
    open: bool,
}

impl PgBackend {
    /// Runs `f` on the connection, bounded by [`STATEMENT_TIMEOUT`].
    fn with_conn<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.as_mut().ok_or(StoreError::WriterGone)?;
        self.runtime
            .block_on(async { tokio::time::timeout(STATEMENT_TIMEOUT, f(conn)).await })
            .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?
            .map_err(StoreError::Db)
    }

    fn execute(&mut self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_owned();
        self.with_conn(async move |conn| {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await?;
            Ok(())
        })
    }
}

/// `?N` placeholders (the writer's shared SQL) as PostgreSQL's `$N`. The writer's SQL has
/// no `?` in literals.
fn numbered(sql: &str) -> String {
    sql.replace('?', "$")
}

fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: &'q [Value<'_>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for arg in args {
        query = match arg {
            Value::Int(v) => query.bind(*v),
            Value::Text(v) => query.bind(v.as_deref()),
            Value::Ints(v) => query.bind(v.as_slice()),
            Value::Texts(v) => query.bind(v.iter().map(Option::as_deref).collect::<Vec<_>>()),
        };
    }
    query
}

/// One row as the writer reads it: integers (of any width) and booleans as `Int`, the
/// rest as text.
fn decode(row: &PgRow) -> Result<Vec<Value<'static>>, sqlx::Error> {
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i)?;
            let is_null = raw.is_null();
            let kind = raw.type_info().name().to_owned();
            Ok(match kind.as_str() {
                "INT8" => Value::Int(row.try_get(i)?),
                "INT4" => Value::Int(row.try_get::<Option<i32>, _>(i)?.map(i64::from)),
                "INT2" => Value::Int(row.try_get::<Option<i16>, _>(i)?.map(i64::from)),
                "BOOL" => Value::Int(row.try_get::<Option<bool>, _>(i)?.map(i64::from)),
                _ if is_null => Value::Text(None),
                _ => Value::from(row.try_get::<String, _>(i)?),
            })
        })
        .collect()
}

impl Backend for PgBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            let options = &self.options;
            // (The timer is made inside the runtime: it needs its clock.)
            let connected = self.runtime.block_on(async {
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await
            });
            self.conn = Some(match connected {
                Ok(conn) => conn?,
                Err(_) => return Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
            });
        }
        if std::mem::take(&mut self.open) {
            return Ok(());
        }
        self.execute("BEGIN")
    }

    /// Commits; with `more` (writes are waiting already), opens the next batch's
    /// transaction in the same round trip (one simple query of two statements: the answer
    /// comes once COMMIT has made the batch durable). A transaction with nothing run in it
    /// holds no snapshot, no transaction id and no lock; it is opened only when the next
    /// batch is there to use it at once, so an idle writer never sits "idle in
    /// transaction" for monitoring to flag.
    fn commit(&mut self, more: bool) -> Result<(), StoreError> {
        let sql = if more { "COMMIT; BEGIN" } else { "COMMIT" };
        self.with_conn(async move |conn| {
            sqlx::raw_sql(sql).execute(conn).await?;
            Ok(())
        })?;
        self.open = more;
        Ok(())
    }

    fn discard(&mut self) {
        // Dropping the connection ends its session, and PostgreSQL rolls back whatever
        // it still had open.
        self.open = false;
        if let Some(conn) = self.conn.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(1), conn.close()).await
            });
        }
    }

    fn close(&mut self) {
        self.discard();
    }

    fn exec(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        let sql = numbered(sql);
        self.with_conn(async move |conn| {
            let done = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
    ) -> Result<Vec<Vec<Value<'static>>>, StoreError> {
        let sql = numbered(sql);
        self.with_conn(async move |conn| {
            let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_all(conn)
                .await?;
            rows.iter().map(decode).collect()
        })
    }

    fn seqs(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let mut seqs: Vec<i64> = self.with_conn(async move |conn| {
            sqlx::query_scalar("SELECT nextval('messages_seq') FROM generate_series(1, $1)")
                .bind(n)
                .fetch_all(conn)
                .await
        })?;
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn is_duplicate_key(&self, err: &StoreError) -> bool {
        is_unique_violation(err, "messages_idempotency")
            || is_unique_violation(err, "group_sends_idempotency")
    }
}

/// Whether `err` is PostgreSQL refusing a row under the unique index `constraint`.
fn is_unique_violation(err: &StoreError, constraint: &str) -> bool {
    let StoreError::Db(sqlx::Error::Database(db)) = err else {
        return false;
    };
    db.try_downcast_ref::<PgDatabaseError>()
        .is_some_and(|pg| pg.code() == "23505" && pg.constraint() == Some(constraint))
}

/// Whether a PostgreSQL error means the database cannot serve right now (rather than a
/// bug): connection trouble (08), a serialization failure or deadlock (40), too little
/// disk, memory or connections (53), the server shutting down or restarting (57), or
/// an I/O error (58).
pub(super) fn is_unavailable(db: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<bool> {
    let pg = db.try_downcast_ref::<PgDatabaseError>()?;
    Some(matches!(
        pg.code().get(..2),
        Some("08" | "40" | "53" | "57" | "58")
    ))
}

/// A schema of its own in the test database, dropped with the value: the store tests
/// that need PostgreSQL (it runs on every development machine and in CI; a test fails
/// loudly when it cannot connect).
#[cfg(test)]
pub(crate) struct TestSchema {
    base: String,
    name: String,
}

#[cfg(test)]
impl TestSchema {
    pub(crate) async fn new() -> Self {
        let base = std::env::var("PUSHBOT_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!("pbu_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {base} (PUSHBOT_TEST_PG_URL) is needed by this test: {e}. Start \
                 PostgreSQL there, point PUSHBOT_TEST_PG_URL at one, or run the tests through \
                 .ci/run (it starts a throwaway PostgreSQL when none answers)."
            )
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Self { base, name }
    }

    /// The URL of a connection whose tables live in this schema.
    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options[search_path]={}", self.base, self.name)
    }
}

#[cfg(test)]
impl Drop for TestSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Its own thread and runtime: Drop may run inside (or outside) any runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&base).await {
                    let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_the_postgresql_way() {
        assert_eq!(
            numbered("UPDATE t SET a = ?1 WHERE b IN (?2,?3) AND c = ?1"),
            "UPDATE t SET a = $1 WHERE b IN ($2,$3) AND c = $1"
        );
    }

    use std::collections::HashSet;

    use crate::domain::{MessageId, UserId};
    use crate::store::{CallbackClaim, Message, Store};
    use crate::time::UnixMillis;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A one-connection pool on `schema` with the migrations before `version` applied: the
    /// database as an older pushbot left it.
    async fn migrated_before(schema: &TestSchema, version: i64) -> sqlx::PgPool {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&schema.url())
            .await
            .unwrap();
        let mut migrator = sqlx::migrate!("./src/store/migrations/postgres");
        migrator.migrations.to_mut().retain(|m| m.version < version);
        migrator.run(&pool).await.unwrap();
        pool
    }

    /// As SQLite's test of the same name: migration 0004 keeps bound addresses, pending
    /// codes and the WeCom send history.
    #[tokio::test]
    async fn migrating_to_bindings_keeps_addresses_codes_and_history() {
        use sqlx::Row as _;
        let schema = TestSchema::new().await;
        let pool = migrated_before(&schema, 4).await;
        for sql in [
            "INSERT INTO members (userid, token, created_at, token_created_at, email) \
             VALUES ('alice', 'ta', 5, 5, 'alice@example.com'), ('bob', 'tb', 6, 6, NULL)",
            "INSERT INTO email_codes (userid, address, code, expires_at, attempts_left) \
             VALUES ('bob', 'bob@example.com', '123456', 99, 4)",
            "INSERT INTO email_requests (userid, address, requested_at) \
             VALUES ('bob', 'bob@example.com', 7)",
            "INSERT INTO sends (userid, sent_at) VALUES ('alice', 8)",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::migrate!("./src/store/migrations/postgres")
            .run(&pool)
            .await
            .unwrap();
        let one = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query(sql).fetch_one(&pool).await.unwrap() }
        };
        let b = one("SELECT userid, channel, address, verified_at FROM member_bindings").await;
        assert_eq!(
            (
                b.get::<String, _>(0),
                b.get::<String, _>(1),
                b.get::<String, _>(2),
                b.get::<i64, _>(3)
            ),
            (
                "alice".into(),
                "email".into(),
                "alice@example.com".into(),
                5
            )
        );
        let c = one("SELECT userid, channel, code, attempts_left FROM binding_codes").await;
        assert_eq!(
            (
                c.get::<String, _>(0),
                c.get::<String, _>(1),
                c.get::<String, _>(2),
                c.get::<i64, _>(3)
            ),
            ("bob".into(), "email".into(), "123456".into(), 4)
        );
        let r = one("SELECT channel, requested_at FROM binding_requests").await;
        assert_eq!(
            (r.get::<String, _>(0), r.get::<i64, _>(1)),
            ("email".into(), 7)
        );
        let h = one("SELECT channel, sent_at FROM sends").await;
        assert_eq!(
            (h.get::<String, _>(0), h.get::<i64, _>(1)),
            ("wecom".into(), 8)
        );
        pool.close().await;
    }

    /// As SQLite's test of the same name: migration 0005 applies to a database that holds
    /// messages, which stay, and the store then keeps files for them.
    #[tokio::test]
    async fn migrating_to_media_keeps_messages_and_stores_files() {
        let schema = TestSchema::new().await;
        let pool = migrated_before(&schema, 5).await;
        sqlx::query(
            "INSERT INTO messages (id, userid, title, status, created_at, updated_at, \
             next_attempt_at, deadline_at, seq) VALUES ('m1', 'alice', 'kept', 'queued', 5, 5, 5, 9, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::media::tests::assert_media_after_migration(&store).await;
        store.close().await;
    }

    /// As SQLite's test of the same name: migration 0007 keeps messages and members.
    #[tokio::test]
    async fn migrating_to_schedules_keeps_messages_and_indexes_the_schedule() {
        let schema = TestSchema::new().await;
        let pool = migrated_before(&schema, 7).await;
        for sql in [
            "INSERT INTO messages (id, userid, title, status, created_at, updated_at, \
             next_attempt_at, deadline_at, seq) VALUES ('m1', 'alice', 'kept', 'queued', 5, 5, 5, 9, 1)",
            "INSERT INTO members (userid, token, created_at, token_created_at) \
             VALUES ('alice', 'ta', 5, 5)",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::schedule::tests::assert_after_schedule_migration(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn scheduled_messages_are_released_when_due_once_in_order() {
        let schema = TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::schedule::tests::assert_release(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_release_wakes_the_lanes_worker_or_the_scheduler() {
        let schema = TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::schedule::tests::assert_release_wakes(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_release_leaves_a_held_lane_to_its_worker() {
        let schema = TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::schedule::tests::assert_release_leaves_held_lanes_to_their_worker(&store)
            .await;
        store.close().await;
    }

    #[tokio::test]
    async fn held_messages_are_retimed_and_messages_cancelled_only_before_they_go() {
        let schema = TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::schedule::tests::assert_hold_retime_cancel(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn the_purge_keeps_scheduled_messages_and_drops_cancelled_ones() {
        let schema = TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        crate::store::schedule::tests::assert_purge(&store).await;
        store.close().await;
    }

    /// Two instances releasing the same due messages at once: each is released once, and
    /// every one is released; one instance releases at a time (the other is told so).
    #[tokio::test]
    async fn two_instances_release_each_scheduled_message_once() {
        let (a, b, _schema) = two_instances().await;
        let now = UnixMillis::now();
        for i in 0..300 {
            let store = if i % 2 == 0 { &a } else { &b };
            let userid = format!("u{}", i % 7);
            let m = crate::store::schedule::tests::scheduled(&userid, &i.to_string(), now);
            store.insert_message(m).await.unwrap();
        }
        let release = |store: Store| async move {
            let mut total = 0;
            // Bounded: a release that released messages again would never end.
            for _ in 0..2_000 {
                match store
                    .release_due(UnixMillis::now(), 16, Duration::from_secs(60))
                    .await
                    .unwrap()
                {
                    Some(0) => break,
                    Some(n) => total += n,
                    // The other instance is releasing: its turn.
                    None => tokio::time::sleep(ms(1)).await,
                }
            }
            total
        };
        let (got_a, got_b) = tokio::join!(release(a.clone()), release(b.clone()));
        assert_eq!(got_a + got_b, 300, "each released once: {got_a} + {got_b}");
        assert_eq!(a.scheduled_count().await.unwrap(), 0);
        assert_eq!(a.queued_count().await.unwrap(), 300);
        let mut seqs = HashSet::new();
        for i in 0..7 {
            for head in a
                .lane_heads(&UserId::new(&format!("u{i}")), 128)
                .await
                .unwrap()
            {
                assert!(seqs.insert(head.message.seq), "a number given twice");
            }
        }
        assert_eq!(seqs.len(), 300);
        a.close().await;
        b.close().await;
    }

    /// While another instance is in the middle of a release (here: a transaction holding
    /// the release lock and the first due message, as its release would), this one
    /// releases nothing — not even the later messages it could lock: committed apart, a
    /// later one could be sent before the earlier one was released.
    #[tokio::test]
    async fn one_instance_releases_at_a_time() {
        use sqlx::Connection as _;
        let schema = TestSchema::new().await;
        let store = Store::connect(&schema.url()).await.unwrap();
        let now = UnixMillis::now();
        let early = crate::store::schedule::tests::scheduled("zoe", "early", now - ms(10));
        let late = crate::store::schedule::tests::scheduled("zoe", "late", now);
        store.insert_message(early.clone()).await.unwrap();
        store.insert_message(late.clone()).await.unwrap();
        let mut other = PgConnection::connect(&schema.url()).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT 1 AS one FROM (SELECT pg_advisory_xact_lock(21, 1)) AS l")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("SELECT id FROM messages WHERE id = $1 FOR UPDATE")
            .bind(early.id.as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
        let busy = store
            .release_due(now, 64, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(busy, None, "the other instance is releasing");
        assert!(
            store
                .lane_heads(&UserId::new("zoe"), 4)
                .await
                .unwrap()
                .is_empty()
        );
        tx.rollback().await.unwrap();
        let released = store
            .release_due(now, 64, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(released, Some(2), "its turn once the other is done");
        let heads = store.lane_heads(&UserId::new("zoe"), 4).await.unwrap();
        let order: Vec<&str> = heads.iter().map(|h| h.message.id.as_str()).collect();
        assert_eq!(order, [early.id.as_str(), late.id.as_str()]);
        store.close().await;
    }

    /// A cancel on one instance while the other claims the lane and reads its head, as a
    /// lane worker does: never both — a message the worker read (and may be sending) is
    /// not cancelled.
    #[tokio::test]
    async fn a_cancel_never_wins_over_a_worker_that_read_the_message() {
        use crate::store::CancelOutcome;
        let (a, b, _schema) = two_instances().await;
        for round in 0..40 {
            let userid = UserId::new(&format!("c{round}"));
            let m = queued(userid.as_str(), "x");
            let id = m.id.clone();
            a.insert_message(m).await.unwrap();
            let now = UnixMillis::now();
            let worker = async {
                let claimed = b.claim_lanes("b", now, now + ms(60_000), 64).await.unwrap();
                if !claimed.contains(&userid) {
                    return Vec::new();
                }
                let heads = b.lane_heads(&userid, 4).await.unwrap();
                heads.into_iter().map(|h| h.message.id).collect()
            };
            let (seen, cancelled) = tokio::join!(worker, a.cancel(&userid, id.as_str(), now));
            // The worker holds the lane until it is done, after both.
            b.release_lane("b", &userid, now).await.unwrap();
            let cancelled = cancelled.unwrap();
            if seen.contains(&id) {
                assert_eq!(cancelled, CancelOutcome::InFlight, "round {round}");
            } else {
                assert!(
                    matches!(
                        cancelled,
                        CancelOutcome::Cancelled { .. } | CancelOutcome::InFlight
                    ),
                    "round {round}: {cancelled:?}"
                );
            }
        }
        a.close().await;
        b.close().await;
    }

    /// A destination's shared turn is one instance's at a time, and a turn dropped without
    /// being released (a panic) does not outlive it.
    #[tokio::test]
    async fn a_shared_turn_is_one_instances_at_a_time() {
        use crate::domain::ChannelName;
        let (a, b, _schema) = two_instances().await;
        let ops: ChannelName = "ops".parse().unwrap();
        let other: ChannelName = "other".parse().unwrap();
        let turn = a
            .shared_turn(ops)
            .await
            .unwrap()
            .expect("PostgreSQL takes turns");
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.shared_turn(ops).await.unwrap() });
        // Another destination is not held up.
        let free = tokio::time::timeout(Duration::from_secs(5), b.shared_turn(other))
            .await
            .expect("another destination's turn is free")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "b waits while a holds the turn");
        turn.release().await;
        let b_turn = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("b gets the turn once a released it")
            .unwrap()
            .expect("a turn");
        drop(free);
        // Dropped, not released: the lock ends with its connection.
        drop(b_turn);
        let again = tokio::time::timeout(Duration::from_secs(5), a.shared_turn(ops))
            .await
            .expect("a dropped turn is not held forever")
            .unwrap();
        assert!(again.is_some());
    }

    /// The writer's session plans no full scan where an index would do; the reads' do not
    /// need the setting (their plans use the indexes as they are).
    #[tokio::test]
    async fn the_writer_plans_with_its_indexes() {
        sqlx::any::install_default_drivers();
        let schema = TestSchema::new().await;
        let Opened { mut backend, .. } = open(&schema.url(), 1).await.unwrap();
        let setting = std::thread::spawn(move || {
            backend.begin().unwrap();
            let rows = backend
                .rows("SELECT current_setting('enable_seqscan')", &[])
                .unwrap();
            backend.close();
            rows
        })
        .join()
        .unwrap();
        assert_eq!(setting, [[Value::from("off".to_owned())]]);
    }

    /// The writer opens the next transaction with the commit only when writes are already
    /// waiting: an idle writer's session is `idle`, never `idle in transaction`.
    #[tokio::test]
    async fn an_idle_writer_holds_no_transaction_open() {
        sqlx::any::install_default_drivers();
        let schema = TestSchema::new().await;
        let Opened {
            mut backend, pool, ..
        } = open(&schema.url(), 1).await.unwrap();
        let (pid, states) = tokio::task::spawn_blocking(move || {
            // Asked on another connection (the pool), as monitoring would.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let state = |pid: i64| {
                runtime.block_on(
                    sqlx::query_scalar::<_, String>(
                        "SELECT state FROM pg_stat_activity WHERE pid = $1",
                    )
                    .bind(pid)
                    .fetch_one(&pool),
                )
            };
            backend.begin().unwrap();
            let rows = backend
                .rows("SELECT CAST(pg_backend_pid() AS BIGINT)", &[])
                .unwrap();
            let Some(Value::Int(Some(pid))) = rows[0].first().cloned() else {
                panic!("no pid: {rows:?}");
            };
            backend.commit(true).unwrap();
            let busy = state(pid).unwrap();
            backend.begin().unwrap();
            backend.exec("SELECT 1", &[]).unwrap();
            backend.commit(false).unwrap();
            let idle = state(pid).unwrap();
            backend.close();
            (pid, [busy, idle])
        })
        .await
        .unwrap();
        assert!(pid > 0);
        assert_eq!(states, ["idle in transaction", "idle"]);
    }

    async fn two_instances() -> (Store, Store, TestSchema) {
        let schema = TestSchema::new().await;
        let a = Store::connect(&schema.url()).await.unwrap();
        let b = Store::connect(&schema.url()).await.unwrap();
        (a, b, schema)
    }

    fn queued(userid: &str, text: &str) -> Message {
        let now = UnixMillis::now();
        Message::new_queued(
            MessageId::generate(),
            UserId::new(userid),
            None,
            Some(text.to_owned()),
            now,
            now + ms(60_000),
        )
    }

    #[tokio::test]
    async fn group_commit_and_the_pool_size_hold_on_postgresql() {
        let schema = TestSchema::new().await;
        let store = Store::connect_with(&schema.url(), 3).await.unwrap();
        crate::store::tests::assert_group_commit(&store, 3).await;
        store.close().await;
    }

    #[tokio::test]
    async fn two_instances_never_hold_the_same_lane() {
        let (a, b, _schema) = two_instances().await;
        for i in 0..200 {
            let store = if i % 2 == 0 { &a } else { &b };
            store
                .insert_message(queued(&format!("m{i}"), "x"))
                .await
                .unwrap();
        }
        let now = UnixMillis::now();
        let claim = |store: Store, owner: &'static str| async move {
            let mut got = Vec::new();
            loop {
                let lanes = store
                    .claim_lanes(owner, now, now + ms(60_000), 7)
                    .await
                    .unwrap();
                if lanes.is_empty() {
                    return got;
                }
                got.extend(lanes);
            }
        };
        let (got_a, got_b) = tokio::join!(claim(a.clone(), "a"), claim(b.clone(), "b"));
        let set_a: HashSet<_> = got_a.iter().collect();
        let set_b: HashSet<_> = got_b.iter().collect();
        assert_eq!(set_a.len(), got_a.len(), "A claimed a lane twice");
        assert_eq!(set_b.len(), got_b.len(), "B claimed a lane twice");
        assert!(set_a.is_disjoint(&set_b), "a lane was claimed by both");
        assert_eq!(set_a.len() + set_b.len(), 200, "every lane was claimed");
        assert!(
            !got_a.is_empty() && !got_b.is_empty(),
            "both instances got work"
        );
        a.close().await;
        b.close().await;
    }

    /// A message accepted by one instance is handed to its lane's worker only while no
    /// other instance uses the database: the first insert on either side after a second
    /// instance started tells both, and from then on workers read every message from the
    /// database (an instance handed its own messages would send them ahead of the other's
    /// earlier ones).
    /// The watch's next arrival (the writer hands a commit over just after it answers).
    async fn arrived(watch: &crate::store::LaneWatch) -> crate::store::arrivals::Taken {
        tokio::time::timeout(ms(5000), watch.arrived())
            .await
            .unwrap();
        watch.take()
    }

    #[tokio::test]
    async fn an_instance_hands_messages_over_only_while_it_is_alone() {
        let schema = TestSchema::new().await;
        let a = Store::connect(&schema.url()).await.unwrap();
        let alice = UserId::new("alice");
        let watch = a.arrivals().watch(&alice);
        a.insert_message(queued("alice", "1")).await.unwrap();
        let taken = arrived(&watch).await;
        assert!(!a.arrivals().is_shared(), "alone, nothing to share");
        assert_eq!(taken.messages.len(), 1, "alone: the message is handed over");
        assert!(!taken.missed);

        let b = Store::connect(&schema.url()).await.unwrap();
        // A's next insert sees B's start; B's own next insert sees A's answer to it.
        a.insert_message(queued("alice", "2")).await.unwrap();
        let taken = arrived(&watch).await;
        assert!(a.arrivals().is_shared(), "A learnt of B");
        assert!(taken.messages.is_empty(), "not handed over: {taken:?}");
        assert!(taken.missed, "the worker is told to read the database");
        let bob = UserId::new("bob");
        let watch_b = b.arrivals().watch(&bob);
        b.insert_message(queued("bob", "3")).await.unwrap();
        assert!(b.arrivals().is_shared(), "B learnt of A");
        let taken = arrived(&watch_b).await;
        assert!(taken.messages.is_empty() && taken.missed, "{taken:?}");
        // A third instance that starts after both: alone until one of the others commits
        // a message (everything they committed before is in the database, where its
        // workers read first); the others' next insert tells it.
        let c = Store::connect(&schema.url()).await.unwrap();
        c.insert_message(queued("carol", "4")).await.unwrap();
        assert!(
            !c.arrivals().is_shared(),
            "nothing was committed since C started"
        );
        a.insert_message(queued("alice", "5")).await.unwrap();
        c.insert_message(queued("carol", "6")).await.unwrap();
        assert!(c.arrivals().is_shared(), "C learnt of the others");
        for store in [a, b, c] {
            store.close().await;
        }
    }

    #[tokio::test]
    async fn acceptance_order_holds_across_instances() {
        let (a, b, _schema) = two_instances().await;
        let mut ids = Vec::new();
        for i in 0..20 {
            let store = if i % 3 == 0 { &a } else { &b };
            let m = queued("alice", &i.to_string());
            ids.push(m.id.clone());
            store.insert_message(m).await.unwrap();
        }
        let heads = a.lane_heads(&UserId::new("alice"), 64).await.unwrap();
        let order: Vec<_> = heads.iter().map(|h| h.message.id.clone()).collect();
        assert_eq!(order, ids, "the lane is in the order the inserts committed");
        a.close().await;
        b.close().await;
    }

    /// `/send`'s lookup keeps the token in memory on PostgreSQL too, and a message sent
    /// with it is stored only if the token is still the member's as it commits: a
    /// rotation on the other instance refuses the old token at once, with nothing stored.
    #[tokio::test]
    async fn a_token_kept_in_memory_is_checked_again_as_the_message_is_stored() {
        let (a, b, _schema) = two_instances().await;
        let alice = UserId::new("alice");
        let old = a.token_for(&alice).await.unwrap();
        let (who, _, verify) = b.sender_by_token(&old).await.unwrap().unwrap();
        assert_eq!(who, alice);
        assert_eq!(verify.as_ref(), Some(&old), "checked as it is stored");
        let sent = queued("alice", "before");
        b.insert_message_verified(sent.clone(), Vec::new(), verify)
            .await
            .unwrap();
        assert!(b.message(sent.id.as_str()).await.unwrap().is_some());

        let new = a.rotate_token(&alice).await.unwrap();
        // B still finds the old token in memory (no read) …
        let (_, _, verify) = b.sender_by_token(&old).await.unwrap().unwrap();
        let refused = queued("alice", "after");
        let err = b
            .insert_message_verified(refused.clone(), Vec::new(), verify)
            .await
            .unwrap_err();
        // … and the insert refuses it, storing nothing (a batch with others in it:
        // `writer::tests::postgresql_leaves_out_of_a_batch_the_rows_whose_token_was_replaced`).
        assert!(matches!(err, StoreError::TokenRevoked), "{err:?}");
        assert!(b.message(refused.id.as_str()).await.unwrap().is_none());
        // Forgotten: the next lookup reads the database, which knows no such token.
        assert_eq!(b.sender_by_token(&old).await.unwrap(), None);
        assert_eq!(b.member_by_token(&old).await.unwrap(), None);
        let (_, _, verify) = b.sender_by_token(&new).await.unwrap().unwrap();
        b.insert_message_verified(queued("alice", "new"), Vec::new(), verify)
            .await
            .unwrap();
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_rotation_on_one_instance_is_seen_at_once_by_the_other() {
        let (a, b, _schema) = two_instances().await;
        let alice = UserId::new("alice");
        let old = a.token_for(&alice).await.unwrap();
        assert_eq!(b.member_by_token(&old).await.unwrap(), Some(alice.clone()));
        let new = a.rotate_token(&alice).await.unwrap();
        assert_eq!(
            b.member_by_token(&old).await.unwrap(),
            None,
            "B refuses the old token"
        );
        assert_eq!(b.member_by_token(&new).await.unwrap(), Some(alice.clone()));
        // `/send`'s read (token and settings together) too, and a change of settings.
        assert_eq!(b.sender_by_token(&old).await.unwrap(), None);
        let order = crate::domain::Route::parse("email,wecom").unwrap();
        a.set_channels(&alice, Some(&order)).await.unwrap();
        let (who, prefs, _) = b.sender_by_token(&new).await.unwrap().unwrap();
        assert_eq!((who, prefs.channels), (alice.clone(), Some(order)));
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_callback_is_claimed_by_one_instance_only() {
        let (a, b, _schema) = two_instances().await;
        let (ca, cb) = tokio::join!(a.claim_callback("msg-1"), b.claim_callback("msg-1"));
        let claims = [ca.unwrap(), cb.unwrap()];
        assert_eq!(
            claims.iter().filter(|c| **c == CallbackClaim::New).count(),
            1,
            "{claims:?}"
        );
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_repeated_idempotency_key_is_refused_as_such() {
        let (a, b, _schema) = two_instances().await;
        let mut first = queued("alice", "1");
        first.idempotency_key = Some("k".into());
        let mut second = queued("alice", "2");
        second.idempotency_key = Some("k".into());
        a.insert_message(first).await.unwrap();
        let err = b.insert_message(second).await.unwrap_err();
        assert!(matches!(err, StoreError::DuplicateKey), "{err:?}");
        a.close().await;
        b.close().await;
    }

    /// Both instances' overdue passes read the same messages of a down channel and move
    /// them at once: each moves once (one attempt, one step along its route), no deadlock.
    #[tokio::test]
    async fn two_instances_move_each_overdue_message_once() {
        use crate::domain::{ChannelName, Route};
        use crate::store::{MoveOn, OverdueMessage};
        let (a, b, _schema) = two_instances().await;
        let now = UnixMillis::now();
        for i in 0..40 {
            let mut m = queued(&format!("o{}", i % 7), "x");
            m.route = Route::parse(if i % 3 == 0 { "wecom" } else { "wecom,email" }).unwrap();
            m.deadline_at = now - ms(10);
            a.insert_message(m).await.unwrap();
        }
        let moves = |read: Vec<OverdueMessage>| -> Vec<(OverdueMessage, MoveOn)> {
            read.into_iter()
                .map(|m| {
                    let step = match m.route.rest() {
                        Some(route) => MoveOn::Next {
                            route,
                            deadline_at: now + ms(60_000),
                        },
                        None => MoveOn::End { failed: true },
                    };
                    (m, step)
                })
                .collect()
        };
        let read_a = a.overdue(ChannelName::WeCom, now, now, 1000).await.unwrap();
        let read_b = b.overdue(ChannelName::WeCom, now, now, 1000).await.unwrap();
        assert_eq!((read_a.len(), read_b.len()), (40, 40));
        let (done_a, done_b) = tokio::join!(
            a.move_overdue(ChannelName::WeCom, now, "down", moves(read_a)),
            b.move_overdue(ChannelName::WeCom, now, "down", moves(read_b)),
        );
        let (done_a, done_b) = (done_a.unwrap(), done_b.unwrap());
        assert_eq!(done_a.handled + done_b.handled, 40);
        assert_eq!(done_a.failed + done_b.failed, 14, "the wecom-only ones");
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM attempts), \
                    (SELECT count(*) FROM messages WHERE status = 'queued' AND route = 'email'), \
                    (SELECT count(*) FROM messages WHERE status = 'failed')",
        )
        .fetch_one(&a.pool)
        .await
        .unwrap();
        let counts: (i64, i64, i64) = (
            row.try_get(0).unwrap(),
            row.try_get(1).unwrap(),
            row.try_get(2).unwrap(),
        );
        assert_eq!(counts, (40, 26, 14));
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn an_unreachable_server_is_one_clear_error_without_the_password() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("postgres://app:hunter2@127.0.0.1:{port}/push");
        let err = Store::connect(&url).await.unwrap_err();
        let shown = crate::error::chain(&err);
        assert!(
            shown.contains(&format!("127.0.0.1:{port}/push")) && shown.contains("cannot reach"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_described_url_never_shows_the_password() {
        let shown = describe("postgres://app:s3cret@db.example:6543/pushbot?sslmode=require");
        assert_eq!(shown, "PostgreSQL at db.example:6543/pushbot");
        assert!(!describe("postgres://u:hunter2@h/d").contains("hunter2"));
    }
}
