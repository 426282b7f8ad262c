//! Connections for the hot reads, handed out and put back without a ping.
//!
//! sqlx's pool pings every connection when it comes back (and, on PostgreSQL, before it is
//! handed out): a round trip per query to the server or to SQLite's connection thread,
//! measured at about a quarter of the async runtime's CPU under load. It does so because a
//! query future dropped half-way (a client that hangs up) can leave a connection with a
//! half-read answer. Here the same safety comes from ownership instead: a [`Reader`] goes
//! back only through [`Reader::done`] with a successful result; dropped anywhere else — a
//! future cancelled mid-query, an error, a panic — its connection is closed with it.
//!
//! Used for the reads every request or lane claim makes (token, member settings, lane
//! heads, send history); everything else goes through the pool.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions as _, Connection as _};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{Engine, StoreError};

/// How long a read waits for a free connection (as the pool's `acquire_timeout`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection idle longer than this is pinged before it is used again (the server may
/// have ended it meanwhile); under load none is, so none pays the round trip.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(10);
/// A connection idle longer than this is closed rather than used (as the pool's
/// `idle_timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections are replaced after this long (as the pool's `max_lifetime`): on SQLite, one
/// opened while the files were unwritable stays so until closed.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

struct Idle {
    conn: AnyConnection,
    created: Instant,
    since: Instant,
}

/// At most `size` connections, opened on demand, kept while they stay healthy.
pub(super) struct Readers {
    options: AnyConnectOptions,
    engine: Engine,
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
}

/// One connection lent out; see the module's documentation.
pub(super) struct Reader<'a> {
    conn: AnyConnection,
    created: Instant,
    readers: &'a Readers,
    _permit: SemaphorePermit<'a>,
}

impl Readers {
    pub(super) fn new(options: AnyConnectOptions, engine: Engine, size: u32) -> Self {
        Self {
            options,
            engine,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(usize::try_from(size.max(1)).unwrap_or(1)),
        }
    }

    /// A connection: the most recently used idle one, or a new one.
    pub(super) async fn get(&self) -> Result<Reader<'_>, StoreError> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(mut idle) = idle else { break };
            let idle_for = idle.since.elapsed();
            if idle_for > IDLE_TIMEOUT || idle.created.elapsed() > MAX_LIFETIME {
                let _ = tokio::time::timeout(Duration::from_secs(1), idle.conn.close()).await;
                continue;
            }
            if idle_for > CHECK_AFTER_IDLE && idle.conn.ping().await.is_err() {
                continue;
            }
            return Ok(Reader {
                conn: idle.conn,
                created: idle.created,
                readers: self,
                _permit: permit,
            });
        }
        let conn = tokio::time::timeout(ACQUIRE_TIMEOUT, self.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Reader {
            conn,
            created: Instant::now(),
            readers: self,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<AnyConnection, sqlx::Error> {
        let mut conn = self.options.connect().await?;
        if self.engine == Engine::Sqlite {
            super::sqlite::configure(&mut conn).await?;
        }
        Ok(conn)
    }

    /// Refuses further reads and closes the idle connections.
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for idle in idle {
            let _ = tokio::time::timeout(Duration::from_secs(1), idle.conn.close()).await;
        }
    }

    /// Connections idle now (for the tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Reader<'_> {
    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    /// Ends the read: the connection goes back for the next one if the read succeeded
    /// (its answer was read to the end), else it is closed.
    pub(super) fn done<T>(self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                if !self.readers.permits.is_closed() {
                    self.readers
                        .idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Idle {
                            conn: self.conn,
                            created: self.created,
                            since: Instant::now(),
                        });
                }
                Ok(value)
            }
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Row as _;

    use crate::store::{Engine, Store};

    /// A read that takes a while: long enough to be cancelled half-way.
    fn slow_read(store: &Store) -> &'static str {
        match store.engine() {
            Engine::Postgres => "SELECT CAST(7 AS BIGINT) AS n FROM (SELECT pg_sleep(0.5)) AS s",
            Engine::Sqlite => {
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c \
                 WHERE n < 3000000) SELECT CAST(7 AS BIGINT) AS n FROM c WHERE n = 3000000"
            }
        }
    }

    async fn seven(store: &Store, sql: &'static str) -> Result<i64, crate::store::StoreError> {
        let mut reader = store.readers.get().await?;
        let row = sqlx::query(sql).fetch_one(reader.conn()).await;
        Ok(reader.done(row)?.try_get::<i64, _>("n")?)
    }

    /// A connection goes back only after a read that was answered in full: one cancelled
    /// half-way (the client hung up) or failed is closed, and the next read is right.
    async fn only_finished_reads_give_their_connection_back(store: &Store) {
        let readers = &store.readers;
        assert_eq!(
            seven(store, "SELECT CAST(7 AS BIGINT) AS n").await.unwrap(),
            7
        );
        assert_eq!(readers.idle_count(), 1, "a finished read gives it back");
        let cancelled =
            tokio::time::timeout(Duration::from_millis(50), seven(store, slow_read(store))).await;
        assert!(cancelled.is_err(), "the slow read was cut off");
        assert_eq!(
            readers.idle_count(),
            0,
            "a cancelled read closes its connection"
        );
        assert!(seven(store, "SELECT no_such_column AS n").await.is_err());
        assert_eq!(
            readers.idle_count(),
            0,
            "a failed read closes its connection"
        );
        assert_eq!(
            seven(store, "SELECT CAST(7 AS BIGINT) AS n").await.unwrap(),
            7
        );
        assert_eq!(seven(store, slow_read(store)).await.unwrap(), 7);
        assert_eq!(
            readers.idle_count(),
            1,
            "one connection served both in turn"
        );
    }

    on_both_engines!(only_finished_reads_give_their_connection_back);
}
