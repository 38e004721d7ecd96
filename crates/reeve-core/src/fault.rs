//! Test-only fault switches: named points where a test build of reeve can be
//! told to misbehave (crash right after a commit), so black-box tests can
//! prove what survives such a crash.
//!
//! **Invariants.**
//! - Only a build with the cargo feature `fault-injection` can reach a
//!   fault. Without it, [`active`] is a `const fn` that answers `false`, so
//!   every fault point compiles to nothing: a production build ignores
//!   `REEVE_FAULTS` entirely. The feature is enabled only from
//!   dev-dependencies, so `cargo test` builds have it and `cargo build`
//!   (release or not) does not.
//! - With the feature, the set of active faults is read once, from the
//!   environment variable `REEVE_FAULTS` (comma-separated names), the first
//!   time any fault point is reached; it never changes afterwards.
//!
//! The names are the constants below; ARCHITECTURE.md lists them too.

/// The process aborts right after a transaction that finished runs
/// committed, before anything else happens: the engine's completer after
/// `Store::finish` returns, and the API's complete/fail handlers before they
/// answer.
pub const CRASH_AFTER_FINISH_COMMIT: &str = "crash_after_finish_commit";

/// Write-backs skip their epoch and state fence: a stale executor's
/// completion or failure applies as if it still held the run. It exists so
/// the chaos harness can show that its checker catches a fencing bug; the
/// fences it switches off are `reeve_store::transition::fence` (every
/// failure write-back, both backends) and PostgreSQL's completion statement.
pub const SKIP_FENCING: &str = "skip_fencing";

/// Whether the fault `name` is switched on for this process.
#[cfg(feature = "fault-injection")]
pub fn active(name: &str) -> bool {
    static ACTIVE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ACTIVE
        .get_or_init(|| {
            std::env::var("REEVE_FAULTS")
                .map(|list| parse(&list))
                .unwrap_or_default()
        })
        .iter()
        .any(|n| n == name)
}

/// Whether the fault `name` is switched on: never, in a build without the
/// `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub const fn active(_name: &str) -> bool {
    false
}

/// Aborts the process (no unwinding, no destructors, no flush) when the
/// fault `name` is switched on, as a crash at this point would.
#[inline]
pub fn abort_if(name: &str) {
    if active(name) {
        eprintln!("reeve: fault {name} is switched on: aborting");
        std::process::abort();
    }
}

/// The names in a `REEVE_FAULTS` value: comma-separated, blanks ignored.
#[cfg(feature = "fault-injection")]
fn parse(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;

    #[test]
    fn names_are_comma_separated_and_trimmed() {
        assert_eq!(parse(" a,b ,, c "), vec!["a", "b", "c"]);
        assert!(parse("").is_empty());
        assert!(parse(" , ").is_empty());
    }

    /// Runs this test binary again with `REEVE_FAULTS` set (the environment
    /// of this process cannot be changed safely), asking it to run only the
    /// probe below, which checks what `active` answers there.
    #[test]
    fn active_reads_reeve_faults_of_the_process() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fault::tests::probe_of_the_child", "--nocapture"])
            .env("REEVE_FAULTS", "first, crash_after_finish_commit")
            .env("REEVE_FAULT_PROBE", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the probe failed: {stdout}");
        assert!(
            stdout.contains("1 passed"),
            "the probe did not run: {stdout}"
        );
        assert!(stdout.contains("probe: checked"), "{stdout}");
    }

    #[test]
    fn probe_of_the_child() {
        if std::env::var_os("REEVE_FAULT_PROBE").is_none() {
            return;
        }
        assert!(active("first"));
        assert!(active(CRASH_AFTER_FINISH_COMMIT));
        assert!(!active("crash_after"));
        assert!(!active("other"));
        println!("probe: checked");
    }
}
