#!/usr/bin/env bash
# The chaos harness (crates/reeve-chaos): a PostgreSQL-backed fleet of
# daemons and `reeve worker`s under seeded faults, checked from its history.
#
#   scripts/chaos.sh ci        # the short run CI makes (fixed seed, ~3 min),
#                              # then the fencing-disabled run that must be caught
#   scripts/chaos.sh report    # the 10-minute run of docs/chaos/REPORT.md
#   scripts/chaos.sh soak [D]  # a long soak (default 30m), seed from $SEED
#
# Needs the PostgreSQL server binaries (a throwaway server is started under
# target/chaos) and, for the network faults, root with `ip` and `iptables`
# (worker namespaces); without them the run says so and uses loopback.
# The reeve binary is the debug build of `cargo test` (built with the
# test-only `fault-injection` feature, which the fencing run needs).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-ci}
cargo build -q -p reeve-chaos
# The reeve binary as `cargo test` builds it (with the test-only fault switch).
cargo test -q -p reeve --no-run >/dev/null 2>&1 || cargo build -q -p reeve
bin=target/debug/reeve-chaos
case "$mode" in
  ci)
    echo "== chaos: short run, seed 42"
    "$bin" run --seed 42 --calm 20s --duration 150s --per-kind 12 --out target/chaos/ci
    echo "== chaos: fencing disabled (the checker must report violations)"
    "$bin" run --seed 43 --calm 5s --duration 60s --per-kind 8 \
      --faults pause_worker,pause_daemon,net_cut,kill_worker \
      --fault-switches skip_fencing --expect-violations --out target/chaos/no-fencing
    ;;
  report)
    "$bin" run --seed 2026 --calm 60s --duration 10m --per-kind 100 --workers 4 --out target/chaos/report
    ;;
  soak)
    "$bin" run --seed "${SEED:-$(date +%s)}" --calm 60s --duration "${2:-30m}" --out target/chaos/soak
    ;;
  *) echo "usage: scripts/chaos.sh ci|report|soak [DURATION]" >&2; exit 2 ;;
esac
