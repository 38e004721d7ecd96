//! The shared conformance suite, run against the PostgreSQL server named by
//! `REEVE_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Each test runs in a schema of its own, dropped when the test ends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reeve_postgres::PostgresStore;
use reeve_store::conformance::Harness;
use reeve_store::{Store, StoreConfig};

struct PgHarness {
    store: Arc<PostgresStore>,
    others: std::sync::Mutex<Vec<Arc<PostgresStore>>>,
    /// Last: dropped after the stores, taking the schema with it.
    db: common::TestDb,
}

async fn harness() -> PgHarness {
    let Some(db) = common::TestDb::new().await else {
        // The suite's macro gives the harness no way to skip a test, and the
        // server is unreachable outside CI (`common::server` said so on
        // stderr): end the test binary successfully instead of failing it.
        std::process::exit(0);
    };
    let store = db.open().await;
    PgHarness {
        store,
        others: Default::default(),
        db,
    }
}

#[async_trait]
impl Harness for PgHarness {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn advance(&self, by: Duration) {
        self.store.advance_clock(by);
        for other in self.others.lock().unwrap().iter() {
            other.advance_clock(by);
        }
    }

    async fn connect_with(&self, config: StoreConfig) -> Arc<dyn Store> {
        let other = self.db.open_with(config).await;
        // A new handle starts where the harness's clock is now.
        let offset = self.store.clock_offset();
        other.advance_clock(offset);
        self.others.lock().unwrap().push(other.clone());
        other
    }
}

reeve_store::conformance_suite!(harness);
