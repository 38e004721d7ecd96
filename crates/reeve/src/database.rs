//! Which store a daemon opens, and with which credentials.
//!
//! The URL picks the backend: `sqlite://PATH` (the default, `./reeve.db`)
//! or `postgres://USER@HOST[:PORT]/DB`. A PostgreSQL password is never in the
//! URL or the config file: `[postgres] password_env` or `password_file` name
//! where it is. A PostgreSQL URL without an explicit host is an error, never
//! a silent default. Nothing here ever formats a password: [`Secret`]'s
//! `Debug` is redacted and [`DatabaseConfig::describe`] prints no password.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reeve_store::{Store, StoreConfig};
use serde::Deserialize;

/// `[postgres]` in `reeve.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    pub max_connections: Option<u32>,
    /// Schema to use (default: the server's search_path).
    pub schema: Option<String>,
    /// How long `reeve serve` waits at start for an unreachable or
    /// restarting server (default 60s; "0s" fails at once).
    pub startup_wait: Option<String>,
}

/// A credential; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    Sqlite {
        url: String,
    },
    Postgres {
        url: String,
        password: Option<Secret>,
        max_connections: u32,
        schema: Option<String>,
        startup_wait: Duration,
    },
}

/// The default of `postgres.startup_wait`.
const DEFAULT_STARTUP_WAIT: Duration = Duration::from_secs(60);

impl DatabaseConfig {
    /// Validates the URL and resolves the password's source.
    pub fn from_parts(url: &str, pg: &RawPostgres) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            check_postgres_url(url)?;
            let password = match (&pg.password_env, &pg.password_file) {
                (Some(_), Some(_)) => {
                    bail!("postgres.password_env: give password_env or password_file, not both")
                }
                (Some(var), None) => Some(Secret(std::env::var(var).with_context(|| {
                    format!("postgres.password_env: the environment variable {var} is not set")
                })?)),
                (None, Some(file)) => Some(Secret(
                    std::fs::read_to_string(file)
                        .with_context(|| {
                            format!("postgres.password_file: cannot read {}", file.display())
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                )),
                (None, None) => None,
            };
            let max_connections = pg.max_connections.unwrap_or(8);
            if !(1..=200).contains(&max_connections) {
                bail!("postgres.max_connections: must be between 1 and 200");
            }
            let startup_wait = match &pg.startup_wait {
                None => DEFAULT_STARTUP_WAIT,
                Some(text) => reeve_core::time::parse_duration(text)
                    .map_err(|e| anyhow::anyhow!("postgres.startup_wait: {e}"))?,
            };
            Ok(DatabaseConfig::Postgres {
                url: url.to_string(),
                password,
                max_connections,
                schema: pg.schema.clone(),
                startup_wait,
            })
        } else if url.starts_with("sqlite:") || !url.contains("://") {
            if pg.password_env.is_some()
                || pg.password_file.is_some()
                || pg.schema.is_some()
                || pg.startup_wait.is_some()
            {
                bail!("postgres: this section only applies to a postgres:// database URL");
            }
            reeve_sqlite::SqliteOptions::from_url(url).map_err(|e| anyhow::anyhow!("db: {e}"))?;
            Ok(DatabaseConfig::Sqlite {
                url: url.to_string(),
            })
        } else {
            bail!(
                "db: unsupported database URL scheme (expected sqlite://PATH or postgres://USER@HOST/DB)"
            )
        }
    }

    /// The database, for logs and errors: never a password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Sqlite { url } => url.clone(),
            DatabaseConfig::Postgres { url, .. } => url.clone(),
        }
    }

    /// How long a start waits for an unreachable or restarting database
    /// (`postgres.startup_wait`; SQLite never waits).
    pub fn startup_wait(&self) -> Duration {
        match self {
            DatabaseConfig::Sqlite { .. } => Duration::ZERO,
            DatabaseConfig::Postgres { startup_wait, .. } => *startup_wait,
        }
    }

    /// Runs `step` (a start's database work: opening, migrating, applying
    /// settings) again, with backoff, while it fails for a transient
    /// database error and `startup_wait` has not passed: a daemon restarted
    /// beside a restarting database must wait for it, not exit.
    pub async fn while_unreachable<T, F, Fut>(&self, mut step: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let patience = self.startup_wait();
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            match step().await {
                Ok(value) => return Ok(value),
                Err(e) if is_transient(&e) && started.elapsed() + backoff <= patience => {
                    tracing::warn!(
                        target: "reeve::serve",
                        error = format!("{e:#}"),
                        retry_in_ms = backoff.as_millis() as u64,
                        "the database {} is not reachable yet; waiting",
                        self.describe()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the store (applying migrations), failing at once when the
    /// database cannot be reached (see [`DatabaseConfig::while_unreachable`]).
    pub async fn open(&self, config: StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
        match self {
            DatabaseConfig::Sqlite { url } => {
                let opts = reeve_sqlite::SqliteOptions::from_url(url)
                    .map_err(|e| anyhow::anyhow!("db: {e}"))?;
                let store = reeve_sqlite::SqliteStore::open(&opts, config)
                    .await
                    .with_context(|| format!("cannot open the database {}", opts.path.display()))?;
                Ok(Arc::new(store))
            }
            DatabaseConfig::Postgres { .. } => open_postgres(self, config).await,
        }
    }
}

/// A PostgreSQL URL must name its host and must not carry a password.
fn check_postgres_url(url: &str) -> anyhow::Result<()> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let (authority, query) = {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
        (&rest[..end], query)
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if userinfo.is_some_and(|u| u.contains(':')) {
        bail!(
            "db: the PostgreSQL URL holds a password; remove it and name its source with \
             postgres.password_env or postgres.password_file"
        );
    }
    if query.split('&').any(|kv| kv.starts_with("password=")) {
        bail!(
            "db: the PostgreSQL URL holds a password parameter; use postgres.password_env or postgres.password_file"
        );
    }
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport);
    let host_param = query
        .split('&')
        .any(|kv| kv.starts_with("host=") && kv.len() > 5);
    if host.is_empty() && !host_param {
        bail!(
            "db: the PostgreSQL URL names no host; give one explicitly (postgres://USER@HOST:5432/DB)"
        );
    }
    Ok(())
}

/// Whether `e` comes from a store error that a retry may cure (a lost or
/// refused connection, a restarting server).
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<reeve_store::StoreError>()
            .is_some_and(reeve_store::StoreError::is_transient)
    })
}

async fn open_postgres(db: &DatabaseConfig, config: StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    let DatabaseConfig::Postgres {
        url,
        password,
        max_connections,
        schema,
        ..
    } = db
    else {
        bail!("not a PostgreSQL database");
    };
    let mut opts =
        reeve_postgres::PostgresOptions::from_url(url)?.max_connections(*max_connections);
    if let Some(password) = password {
        opts.connect = opts.connect.password(password.expose());
    }
    if let Some(schema) = schema {
        opts = opts.schema(schema.clone());
    }
    let target = opts.target();
    let store = reeve_postgres::PostgresStore::open_with(opts, config)
        .await
        .with_context(|| format!("cannot open the PostgreSQL database {target}"))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg_waiting(wait: &str) -> DatabaseConfig {
        DatabaseConfig::from_parts(
            "postgres://reeve@127.0.0.1/reeve",
            &RawPostgres {
                startup_wait: Some(wait.into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn store_error(transient: bool) -> anyhow::Error {
        anyhow::Error::new(reeve_store::StoreError::Database {
            message: "connection reset".into(),
            transient,
        })
        .context("queues.serial")
    }

    #[tokio::test]
    async fn a_start_step_is_retried_while_the_database_is_away_and_only_then() {
        let db = pg_waiting("30s");
        let mut tries = 0;
        let out = db
            .while_unreachable(|| {
                tries += 1;
                let n = tries;
                async move { if n < 3 { Err(store_error(true)) } else { Ok(n) } }
            })
            .await
            .unwrap();
        assert_eq!(out, 3, "two transient failures, then success");

        let mut tries = 0;
        let e = db
            .while_unreachable(|| {
                tries += 1;
                async { Err::<(), _>(store_error(false)) }
            })
            .await
            .unwrap_err();
        assert_eq!(tries, 1, "a lasting error is not retried");
        assert!(format!("{e:#}").starts_with("queues.serial"), "{e:#}");

        let mut tries = 0;
        pg_waiting("0s")
            .while_unreachable(|| {
                tries += 1;
                async { Err::<(), _>(store_error(true)) }
            })
            .await
            .unwrap_err();
        assert_eq!(tries, 1, "startup_wait = 0s fails at once");
    }

    #[test]
    fn a_bad_startup_wait_is_refused_naming_the_key() {
        let e = DatabaseConfig::from_parts(
            "postgres://reeve@127.0.0.1/reeve",
            &RawPostgres {
                startup_wait: Some("soon".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("postgres.startup_wait:"), "{e}");
    }

    fn pg(url: &str) -> anyhow::Result<DatabaseConfig> {
        DatabaseConfig::from_parts(url, &RawPostgres::default())
    }

    #[test]
    fn postgres_urls_need_a_host_and_no_password() {
        assert!(pg("postgres://reeve@db.internal:5432/reeve").is_ok());
        assert!(pg("postgres://reeve@127.0.0.1/reeve").is_ok());
        let e = pg("postgres:///reeve").unwrap_err().to_string();
        assert!(e.contains("no host"), "{e}");
        let e = pg("postgres://reeve@/reeve").unwrap_err().to_string();
        assert!(e.contains("no host"), "{e}");
        let e = pg("postgres://reeve:hunter2@db/reeve")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        let e = pg("postgres://reeve@db/reeve?password=hunter2")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(pg("postgres://reeve@/reeve?host=/run/postgresql").is_ok());
    }

    #[test]
    fn passwords_come_by_reference_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let raw = RawPostgres {
            password_file: Some(file),
            ..Default::default()
        };
        let db = DatabaseConfig::from_parts("postgres://reeve@db/reeve", &raw).unwrap();
        let DatabaseConfig::Postgres {
            password: Some(pw), ..
        } = &db
        else {
            panic!("{db:?}")
        };
        assert_eq!(pw.expose(), "s3cret-value");
        assert!(!format!("{db:?}").contains("s3cret"));
        assert!(!db.describe().contains("s3cret"));
        let raw = RawPostgres {
            password_env: Some("REEVE_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        let e = DatabaseConfig::from_parts("postgres://reeve@db/reeve", &raw)
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres.password_env"), "{e}");
    }

    #[test]
    fn sqlite_urls_are_checked() {
        assert!(DatabaseConfig::from_parts("sqlite://reeve.db", &RawPostgres::default()).is_ok());
        assert!(
            DatabaseConfig::from_parts("sqlite://x.db?bogus=1", &RawPostgres::default()).is_err()
        );
        assert!(DatabaseConfig::from_parts("mysql://x", &RawPostgres::default()).is_err());
    }
}
