//! A PostgreSQL schema of its own per test, through `psql`, on the server
//! of `REEVE_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Without a server a test is skipped with a line saying so, except under
//! CI (`CI` set), where that is a failure.

use std::io::Write;
use std::process::Command;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url() -> String {
    std::env::var("REEVE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// Runs SQL through psql; returns its output (unaligned, tuples only).
pub fn psql(sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url())
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A schema dropped when the test ends.
pub struct Schema(pub String);

impl Schema {
    /// A fresh schema; `None` (after saying why) without a server outside CI.
    pub fn new(tag: &str) -> Option<Schema> {
        if let Err(e) = psql("SELECT 1") {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI is set but PostgreSQL at {} cannot be reached: {e}",
                    url()
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipping PostgreSQL test {tag}: cannot reach {} ({e}); set REEVE_TEST_PG_URL",
                url()
            );
            return None;
        }
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("reeve_bb_{tag}_{:x}", nonce & 0xffff_ffff);
        psql(&format!("CREATE SCHEMA {name}")).expect("create schema");
        Some(Schema(name))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}
