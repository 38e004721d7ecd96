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
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(self.key)
                .fetch_one(conn)
                .await
                .map_err(db_error)
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
