//! Cross-process wake-ups: LISTEN/NOTIFY turned into local [`Signals`].
//!
//! Every transaction that changes what is claimable or when something is due
//! runs `pg_notify('reeve_work' | 'reeve_deadlines', <schema>)` (see
//! `write::Notify`); PostgreSQL delivers it at commit to every listening
//! connection. This module owns the listening side: one task per store, on
//! its own connection (application name `reeve-listener-<schema>`), that
//! raises the matching local signal for each notification whose payload is
//! this store's schema (other schemas in the same database are ignored).
//!
//! **Invariants.**
//! - A wake-up is never lost for good: notifications sent while the listener
//!   is away cannot be replayed, so after *every* (re)connect it raises both
//!   signals once, and waiters re-read the store.
//! - A lost connection is re-established with backoff (100ms doubling to
//!   5s), forever, until the task is stopped (store closed or dropped); then
//!   it unsubscribes and closes its connection. An idle connection is pinged
//!   every 30s so a silently dead one is noticed.
//! - The task never holds a pool connection of the store: it has a
//!   one-connection pool of its own, replaced at every reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use reeve_store::Signals;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

pub(crate) const WORK_CHANNEL: &str = "reeve_work";
pub(crate) const DEADLINES_CHANNEL: &str = "reeve_deadlines";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the connection may stay silent before a ping checks it.
const PING_AFTER: Duration = Duration::from_secs(30);
/// How long a ping or a connect may take before the connection is given up.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the store can observe of its listener.
#[derive(Debug, Default)]
pub(crate) struct ListenerState {
    connects: AtomicU64,
    /// The listening backend's pid; 0 while disconnected.
    backend_pid: AtomicI32,
}

impl ListenerState {
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }

    pub(crate) fn backend_pid(&self) -> Option<i32> {
        match self.backend_pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }
}

/// A subscribed listener, the private pool it came from, and the backend
/// pid of its connection.
struct Connected {
    listener: PgListener,
    pool: PgPool,
    pid: i32,
}

impl Connected {
    /// Unsubscribes and closes the connection (bounded: a dead connection is
    /// simply dropped).
    async fn close(self) {
        let Connected { listener, pool, .. } = self;
        // PgListener's drop sends UNLISTEN and returns the connection to the
        // pool, which `close` then waits for and closes.
        drop(listener);
        let _ = tokio::time::timeout(IO_TIMEOUT, pool.close()).await;
    }
}

async fn connect(opts: &PgConnectOptions) -> Result<Connected, sqlx::Error> {
    let attempt = async {
        // A pool of one, private to this listener: PgListener needs a pool,
        // and a fresh one per connect never hands back a dead connection.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(IO_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        // Reconnection is ours (with backoff and the catch-up signals).
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener
            .listen_all([WORK_CHANNEL, DEADLINES_CHANNEL])
            .await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut listener)
            .await?;
        Ok(Connected {
            listener,
            pool,
            pid,
        })
    };
    tokio::time::timeout(IO_TIMEOUT, attempt)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// The running listener task and the switch that stops it.
pub(crate) struct Handle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Asks the task to stop (it unsubscribes and closes its connection in
    /// the background). Safe without a runtime.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops the task and waits for its connection to close.
    pub(crate) async fn shutdown(self) {
        self.stop();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(IO_TIMEOUT + Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Connects once (so `open` fails loudly if it cannot listen at all), then
/// spawns the task that listens, and reconnects, until stopped.
pub(crate) async fn start(
    opts: PgConnectOptions,
    schema: String,
    signals: Arc<Signals>,
    state: Arc<ListenerState>,
) -> Result<Handle, sqlx::Error> {
    let first = connect(&opts).await?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(first, opts, schema, signals, state, stopped));
    Ok(Handle { stop, task })
}

async fn run(
    first: Connected,
    opts: PgConnectOptions,
    schema: String,
    signals: Arc<Signals>,
    state: Arc<ListenerState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut next = Some(first);
    let mut backoff = BACKOFF_START;
    loop {
        let mut conn = match next.take() {
            Some(conn) => conn,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                let attempt = tokio::select! {
                    attempt = connect(&opts) => attempt,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                match attempt {
                    Ok(conn) => conn,
                    Err(e) => {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        tracing::warn!(
                            target: "reeve::store",
                            error = %e,
                            retry_in_ms = backoff.as_millis() as u64,
                            "cannot reconnect the PostgreSQL notification listener"
                        );
                        continue;
                    }
                }
            }
        };
        backoff = BACKOFF_START;
        // Whatever was notified while we were away is lost: look again. (The
        // signals go first, so a reader that sees the new connect count has
        // seen them too.)
        signals.work_changed();
        signals.deadlines_changed();
        state.backend_pid.store(conn.pid, Ordering::SeqCst);
        let connects = state.connects.fetch_add(1, Ordering::SeqCst) + 1;
        if connects > 1 {
            tracing::info!(
                target: "reeve::store",
                "PostgreSQL notification listener reconnected"
            );
        }
        let lost = tokio::select! {
            reason = listen(&mut conn, &schema, &signals) => Some(reason),
            _ = stopped.wait_for(|s| *s) => None,
        };
        state.backend_pid.store(0, Ordering::SeqCst);
        match lost {
            Some(reason) => {
                tracing::warn!(
                    target: "reeve::store",
                    reason = %reason,
                    "PostgreSQL notification listener lost its connection; reconnecting"
                );
                // A dead connection: nothing to say goodbye to.
                drop(conn);
            }
            None => {
                conn.close().await;
                return;
            }
        }
    }
}

/// Relays notifications until the connection is lost; returns why.
async fn listen(conn: &mut Connected, schema: &str, signals: &Signals) -> String {
    loop {
        match tokio::time::timeout(PING_AFTER, conn.listener.try_recv()).await {
            Ok(Ok(Some(n))) => {
                if n.payload() != schema {
                    continue;
                }
                match n.channel() {
                    WORK_CHANNEL => signals.work_changed(),
                    DEADLINES_CHANNEL => signals.deadlines_changed(),
                    _ => {}
                }
            }
            Ok(Ok(None)) => return "connection closed".into(),
            Ok(Err(e)) => return e.to_string(),
            Err(_silent) => {
                let ping = sqlx::query("SELECT 1").execute(&mut conn.listener);
                match tokio::time::timeout(IO_TIMEOUT, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return "ping timed out".into(),
                }
            }
        }
    }
}
