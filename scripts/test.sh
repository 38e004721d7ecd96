#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace:
# the domain, the storage conformance suite on SQLite files and on
# PostgreSQL, the engine, the executor, the HTTP API, and black-box tests of
# the `reeve` binary (single and several daemons), property tests of every
# parser and of the job state machine; then schemathesis against a live
# daemon, a short fuzzing pass and the chaos harness.
#
# PostgreSQL tests use REEVE_TEST_PG_URL (default
# postgres://postgres@127.0.0.1:5432/test), each in its own schema; without a
# reachable server they are skipped with a message, except under CI (CI set),
# where that fails. One test starts and restarts a throwaway server with
# scripts/pg-throwaway.sh. The clock-skew test needs libfaketime, installed
# here when missing and possible.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing faketime (for the clock-skew test)"
    timeout 300 apt-get install -y -qq faketime >/dev/null 2>&1 \
      || { timeout 300 apt-get update -qq >/dev/null 2>&1 && timeout 300 apt-get install -y -qq faketime >/dev/null 2>&1; } \
      || echo "could not install faketime; the clock-skew test will say so"
  fi
fi

# The dashboard's browser tests drive a headless Chromium through
# chromedriver (tests/common/browser.rs); they skip without it, except under CI.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { timeout 600 apt-get update -qq >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }; then
      echo "== installed chromium and chromium-driver (for the browser tests)"
    else
      echo "could not install chromium/chromium-driver; the browser tests will say so"
    fi
  else
    echo "chromium/chromedriver missing and not installable here (needs root and apt-get); the browser tests will say so"
  fi
fi

# The chaos run's packet-loss fault uses iptables' statistic match in the
# worker namespaces when the kernel has no netem.
if ! command -v iptables >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq iptables >/dev/null 2>&1 \
    || echo "could not install iptables; the chaos run's packet loss will be skipped and say so"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The steps after the cargo tests, each only while everything passed so far,
# its output added to the log and its status folded into the run's.
after_tests() {
  local name=$1
  shift
  [ "$status" = 0 ] || return 0
  echo "== $name"
  set +e
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || status=$rc
}
# Contract fuzzing of the HTTP API against a live daemon: schemathesis on
# /v1/openapi.json, no 5xx and answers as documented (scripts/schemathesis.sh).
after_tests schemathesis bash scripts/schemathesis.sh
# A short coverage-guided fuzzing pass over the parsers (cron, interval,
# durations, schedule files), 15 s per target; longer runs with
# FUZZ_SECONDS (docs/fuzzing.md). Skipped, saying so, without nightly.
after_tests fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh
# The chaos harness: a short fixed-seed run under faults, then a run with
# fencing switched off that the checker must catch (scripts/chaos.sh).
after_tests chaos bash scripts/chaos.sh ci
# One closing line for the whole run: the sum over every test binary.
passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
