#!/usr/bin/env bash
# Fuzzes reeve's parsers with cargo-fuzz (libFuzzer): the cron and interval
# rules, human durations and timestamps, and schedule files (TOML and JSON).
# The targets live in fuzz/ (a workspace of its own) and are described in
# docs/fuzzing.md.
#
# Usage:
#   bash scripts/fuzz.sh                    # every target, FUZZ_SECONDS each
#   bash scripts/fuzz.sh cron_rule          # one target
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh apply_file
#
# Environment:
#   FUZZ_SECONDS      seconds per target (default 60)
#   CARGO_TARGET_DIR  where the fuzz build goes (default fuzz/target)
#   FUZZ_WORK_DIR     where the corpus grown during the run is kept (default
#                     $CARGO_TARGET_DIR/fuzz-corpus, or fuzz/target/fuzz-corpus);
#                     the committed seeds in fuzz/corpus/TARGET are read, never
#                     written
#
# Needs a nightly toolchain (`cargo +nightly`); without one it says so and
# exits 0. cargo-fuzz is installed (cargo install --locked) when missing.
# Exits 1 if any target finds a crash, a failed assertion or an input slower
# than 10 s; the input is saved under fuzz/artifacts/TARGET/ and can be
# replayed with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(cron_rule interval_rule duration apply_file)
seconds=${FUZZ_SECONDS:-60}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz: FUZZ_SECONDS must be a whole number of seconds above 0, got '$seconds'" >&2
  exit 2
fi

if [ $# -gt 1 ]; then
  echo "usage: $0 [${targets[*]// /|}]" >&2
  exit 2
fi
if [ $# -eq 1 ]; then
  known=0
  for t in "${targets[@]}"; do [ "$t" = "$1" ] && known=1; done
  if [ "$known" = 0 ]; then
    echo "fuzz: unknown target '$1'; the targets are: ${targets[*]}" >&2
    exit 2
  fi
  targets=("$1")
fi

# With rustup, ask it (`cargo +nightly` could install a missing toolchain);
# without it, plain cargo does not take `+nightly` at all.
has_nightly() {
  if command -v rustup >/dev/null 2>&1; then
    rustup toolchain list 2>/dev/null | grep -q '^nightly'
  else
    cargo +nightly --version >/dev/null 2>&1
  fi
}
if ! has_nightly; then
  echo "fuzz: no nightly toolchain found (cargo +nightly); fuzzing needs one, skipping."
  echo "fuzz: install it with 'rustup toolchain install nightly' to run the fuzz targets."
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

work=${FUZZ_WORK_DIR:-${CARGO_TARGET_DIR:-fuzz/target}/fuzz-corpus}

# -a: debug assertions and overflow checks on, so arithmetic overflow is a
# finding too.
mkdir -p "$work"
echo "== building the fuzz targets"
build=("${targets[@]}")
[ "${#targets[@]}" -gt 1 ] && build=()
if ! cargo +nightly fuzz build --fuzz-dir fuzz -a "${build[@]}" >"$work/build.log" 2>&1; then
  echo "fuzz: the fuzz build failed; the last lines of $work/build.log:"
  tail -n 30 "$work/build.log" | sed 's/^/   | /'
  exit 1
fi

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  echo "== fuzzing $t for ${seconds}s (log: $log)"
  if cargo +nightly fuzz run --fuzz-dir fuzz -a "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "   ok: ${runs:-?} inputs, no crash"
  else
    echo "   FAILED: $t found a crash (full output: $log):"
    { grep -m1 -A6 -E 'panicked at|ERROR: libFuzzer' "$log" || tail -n 20 "$log"; } | sed 's/^/   | /'
    grep -m1 -A2 '^Reproduce with' "$log" | sed 's/^/   | /' || true
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s), ${seconds}s each, no crash"
