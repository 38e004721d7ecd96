//! Test support shared by the PostgreSQL test files: whether the server is
//! reachable (one decision, in [`server`]) and a fresh schema per test that
//! is dropped, with everything in it, when the test ends.
//!
//! **Invariants.** Every test works in its own schema `reeve_t_<hex>`, so
//! runs (and tests within a run) never see each other's rows; the schema is
//! dropped by [`TestDb`]'s `Drop`, also when the test panics.

#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reeve_postgres::{PgConnectOptions, PostgresOptions, PostgresStore};
use reeve_store::StoreConfig;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::OnceCell;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether the server answered, decided once per test binary.
static REACHABLE: OnceCell<Result<(), String>> = OnceCell::const_new();

/// The connection settings of the test server, or `None` when it cannot be
/// reached and the tests should be skipped: then one line on stderr says
/// so. Under CI (env `CI` set) an unreachable server is a failure instead,
/// since CI must run these tests.
pub async fn server() -> Option<PostgresOptions> {
    let url = std::env::var("REEVE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let opts = match PostgresOptions::from_url(&url) {
        Ok(opts) => opts,
        Err(e) => panic!("REEVE_TEST_PG_URL is not a PostgreSQL URL: {e}"),
    };
    let target = opts.target();
    let reachable = REACHABLE
        .get_or_init(|| async {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                PgConnection::connect_with(&opts.connect),
            )
            .await;
            let result = match attempt {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out after 5s".to_string()),
            };
            if let Err(e) = &result
                && std::env::var_os("CI").is_none()
            {
                // Straight to the stderr stream: the test harness captures
                // `eprintln!`, and this line must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL tests: cannot connect to {target} ({e}); set REEVE_TEST_PG_URL"
                );
            }
            result
        })
        .await;
    match reachable {
        Ok(()) => Some(opts),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but PostgreSQL at {target} cannot be reached ({e}); set REEVE_TEST_PG_URL"
            )
        }
        Err(_) => None,
    }
}

/// A fresh, random schema name.
fn schema_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("reeve_t_{:016x}", h.finish())
}

/// One test's schema on the test server; dropped (CASCADE) on drop.
pub struct TestDb {
    pub opts: PostgresOptions,
    pub schema: String,
}

impl TestDb {
    /// A fresh schema, or `None` when the server is unreachable (see
    /// [`server`]).
    pub async fn new() -> Option<TestDb> {
        let server = server().await?;
        let schema = schema_name();
        let db = TestDb {
            opts: server.schema(schema.clone()),
            schema,
        };
        // Created here (not only by open) so that Drop always has something
        // to drop, whatever happens next.
        let mut conn = db.admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {}", db.schema)))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        let _ = conn.close().await;
        Some(db)
    }

    /// A plain connection, outside the test schema.
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect_with(&self.opts.connect)
            .await
            .expect("connect to the test server")
    }

    /// A store on this schema, as another process would open it.
    pub async fn open(&self) -> Arc<PostgresStore> {
        self.open_with(StoreConfig::default()).await
    }

    /// Like [`TestDb::open`], with settings of its own.
    pub async fn open_with(&self, config: StoreConfig) -> Arc<PostgresStore> {
        Arc::new(
            PostgresStore::open_with(self.opts.clone(), config)
                .await
                .expect("open the PostgreSQL store"),
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // do the drop on a thread with a runtime of its own, and wait for it.
        let connect: PgConnectOptions = self.opts.connect.clone();
        let schema = self.schema.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test schema");
            rt.block_on(async move {
                let mut conn = PgConnection::connect_with(&connect).await?;
                sqlx::query("SET lock_timeout = '20s'")
                    .execute(&mut conn)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test schema {}: {e}", self.schema),
            Err(_) => eprintln!(
                "could not drop test schema {}: the thread panicked",
                self.schema
            ),
        }
    }
}
