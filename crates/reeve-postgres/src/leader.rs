//! Leadership among daemons sharing one PostgreSQL schema (SPEC §9): a
//! session advisory lock held on a dedicated connection.
//!
//! **Invariants.**
//! - The lock lives exactly as long as the leader's session: if the daemon
//!   dies or its connection drops, PostgreSQL releases the lock, and another
//!   daemon's `try_acquire` succeeds.
//! - A leader that cannot prove it still holds the lock — the check fails or
//!   takes longer than [`CONFIRM_TIMEOUT`] — answers `false` and drops its
//!   connection (so the server releases whatever it still held). The timeout
//!   is well under the engine's takeover grace (2s) minus its confirmation
//!   interval, so a deposed leader stops before a new one acts.
//! - The lock is taken at most once per session (`pg_try_advisory_lock`
//!   stacks), and its key is derived from the schema, so daemons on other
//!   schemas of the same database never compete.
//! - *A stalled leader is deposed.* A leader whose process is frozen
//!   (SIGSTOP, a swapped-out VM) keeps its session, and so the lock, while
//!   doing nothing: reaping would stop for as long as it is frozen. Its
//!   confirmations run every 500 ms on the lock's connection, so that
//!   session's `query_start` shows when it last proved itself alive. A
//!   daemon that fails to take the lock ends the holder's session
//!   (`pg_terminate_backend`) once that is older than [`STALE_AFTER`], and
//!   takes the lock on its next try. A frozen leader that wakes finds its
//!   connection gone and steps down at its next confirmation; meanwhile
//!   every maintenance statement it may still run is conditional and safe
//!   to run twice. (Seeing and ending another session needs the same role,
//!   or `pg_read_all_stats` and `pg_signal_backend`.)

use std::time::Duration;

use async_trait::async_trait;
use reeve_store::{Leadership, Result, StoreError};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::Mutex;

use crate::rows::db_error;

/// How long connecting and taking the lock may take.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a leader's confirmation may take before it counts as a doubt.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);
/// A leader session that has not confirmed for this long is deposed: six
/// confirmation intervals, and three times [`CONFIRM_TIMEOUT`], after which
/// a live leader has already stepped down on its own.
const STALE_AFTER: Duration = Duration::from_secs(3);

/// The leader lock of one schema.
pub struct PgLeadership {
    connect: PgConnectOptions,
    key: i64,
    session: Mutex<Session>,
}

#[derive(Default)]
struct Session {
    conn: Option<PgConnection>,
    /// Whether `conn` holds the lock.
    held: bool,
}

impl Session {
    /// Forgets the connection (closing it in the background ends the
    /// session, and with it the lock).
    fn drop_connection(&mut self) {
        self.conn = None;
        self.held = false;
    }
}

impl std::fmt::Debug for PgLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLeadership")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PgLeadership {
    pub(crate) fn new(connect: PgConnectOptions, key: i64) -> Self {
        PgLeadership {
            connect,
            key,
            session: Mutex::new(Session::default()),
        }
    }

    /// Whether `conn`'s session holds the lock, per `pg_locks` (a bigint
    /// key shows as classid = high half, objid = low half, objsubid = 1).
    async fn holds(&self, conn: &mut PgConnection) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
               AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
               AND classid::bigint = $1 AND objid::bigint = $2)",
        )
        .bind(i64::from((self.key >> 32) as u32))
        .bind(i64::from(self.key as u32))
        .fetch_one(conn)
        .await
        .map_err(db_error)
    }

    /// Ends the session holding the lock if it has not confirmed for
    /// [`STALE_AFTER`]; answers whether one was ended.
    async fn depose_stale(&self, conn: &mut PgConnection) -> Result<bool> {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(pg_terminate_backend(a.pid)), false) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
               AND a.pid <> pg_backend_pid() \
               AND a.query_start < clock_timestamp() - make_interval(secs => $3)",
        )
        .bind(i64::from((self.key >> 32) as u32))
        .bind(i64::from(self.key as u32))
        .bind(STALE_AFTER.as_secs_f64())
        .fetch_one(conn)
        .await
        .map_err(db_error)
    }
}

fn timed_out(what: &str) -> StoreError {
    StoreError::Database {
        message: format!("{what} timed out"),
        transient: true,
    }
}

#[async_trait]
impl Leadership for PgLeadership {
    async fn try_acquire(&self) -> Result<bool> {
        let mut session = self.session.lock().await;
        if session.held {
            drop(session);
            return Ok(self.confirm().await);
        }
        let attempt = async {
            if session.conn.is_none() {
                session.conn = Some(
                    PgConnection::connect_with(&self.connect)
                        .await
                        .map_err(db_error)?,
                );
            }
            let conn = session.conn.as_mut().expect("just connected");
            let held = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(self.key)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
            if !held && self.depose_stale(conn).await? {
                tracing::warn!(
                    event = "leader_deposed",
                    "the leader had not confirmed its lock for {}s; its session was ended",
                    STALE_AFTER.as_secs()
                );
            }
            Ok(held)
        };
        let acquired = tokio::time::timeout(ACQUIRE_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(timed_out("taking the leader lock")));
        match acquired {
            Ok(held) => {
                session.held = held;
                Ok(held)
            }
            Err(e) => {
                session.drop_connection();
                Err(e)
            }
        }
    }

    async fn confirm(&self) -> bool {
        let mut session = self.session.lock().await;
        if !session.held {
            return false;
        }
        let Some(conn) = session.conn.as_mut() else {
            return false;
        };
        let held = matches!(
            tokio::time::timeout(CONFIRM_TIMEOUT, self.holds(conn)).await,
            Ok(Ok(true))
        );
        if !held {
            session.drop_connection();
        }
        held
    }

    async fn release(&self) {
        let mut session = self.session.lock().await;
        if let Some(mut conn) = session.conn.take() {
            if session.held {
                let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(self.key)
                    .execute(&mut conn);
                let _ = tokio::time::timeout(CONFIRM_TIMEOUT, unlock).await;
            }
            // Ending the session releases the lock in any case.
            let _ = tokio::time::timeout(CONFIRM_TIMEOUT, conn.close()).await;
        }
        session.held = false;
    }
}
