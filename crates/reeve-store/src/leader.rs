//! Leadership among daemons sharing one store (SPEC §9): exactly one daemon
//! at a time runs the duties that must not run twice at once (schedule
//! firing, reaping, pruning), and another takes over when it dies.
//!
//! A backend hands out a [`Leadership`]; the engine asks it to
//! [`try_acquire`](Leadership::try_acquire) while following and to
//! [`confirm`](Leadership::confirm) while leading, and stops leading the
//! moment a confirmation fails. On PostgreSQL this is a session advisory lock
//! held on a dedicated connection: the lock dies with the connection.
//! A single-process store leads alone ([`SoleLeader`]).

use async_trait::async_trait;

use crate::Result;

#[async_trait]
pub trait Leadership: Send + Sync + 'static {
    /// Tries to become the leader. `Ok(true)`: this process now leads (or
    /// already did).
    async fn try_acquire(&self) -> Result<bool>;

    /// Whether this process still holds leadership. Any doubt (an error, a
    /// timeout) must answer `false`: a leader that cannot confirm stops.
    async fn confirm(&self) -> bool;

    /// Gives leadership up (at shutdown), so another can take over at once.
    async fn release(&self);

    /// Whether other processes can compete for leadership. When not, the
    /// engine leads from the start and never checks again.
    fn contested(&self) -> bool {
        true
    }

    /// How long a new leader waits after acquiring before it acts, so that a
    /// deposed leader (which confirms at least this often) has stopped first.
    fn takeover_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
}

/// Leadership for a store that has no rival leaders to fear: every claim
/// and reap is an atomic, fenced transaction anyway, so each process may run
/// maintenance (SQLite, even with several processes on one file).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoleLeader;

#[async_trait]
impl Leadership for SoleLeader {
    async fn try_acquire(&self) -> Result<bool> {
        Ok(true)
    }

    async fn confirm(&self) -> bool {
        true
    }

    async fn release(&self) {}

    fn contested(&self) -> bool {
        false
    }
}
