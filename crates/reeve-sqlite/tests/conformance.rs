//! The shared conformance suite, run against SQLite files.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::conformance::Harness;
use reeve_store::{Store, StoreConfig};

struct SqliteHarness {
    _dir: tempfile::TempDir,
    opts: SqliteOptions,
    store: Arc<SqliteStore>,
    others: std::sync::Mutex<Vec<Arc<SqliteStore>>>,
}

async fn harness() -> SqliteHarness {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SqliteOptions::from_url(&format!(
        "sqlite://{}",
        dir.path().join("reeve.db").display()
    ))
    .unwrap();
    let store = Arc::new(
        SqliteStore::open(&opts, StoreConfig::default())
            .await
            .expect("open"),
    );
    SqliteHarness {
        _dir: dir,
        opts,
        store,
        others: Default::default(),
    }
}

#[async_trait]
impl Harness for SqliteHarness {
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
        let other = Arc::new(SqliteStore::open(&self.opts, config).await.expect("open"));
        // A new handle starts where the harness's clock is now.
        other.advance_clock(self.store.clock_offset());
        self.others.lock().unwrap().push(other.clone());
        other
    }
}

reeve_store::conformance_suite!(harness);
