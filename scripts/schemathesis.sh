#!/usr/bin/env bash
# Contract fuzzing of the HTTP API: schemathesis, generating requests from
# the document the daemon serves at /v1/openapi.json, against a live debug
# `reeve serve` on a fresh SQLite file and a free loopback port.
#
#   scripts/schemathesis.sh            # the bounded run scripts/test.sh makes
#   MAX_EXAMPLES=200 scripts/schemathesis.sh   # a longer one
#
# Checks: no 5xx on any input (not_a_server_error), statuses and bodies as
# documented (status_code_conformance, content_type_conformance,
# response_schema_conformance). Fails when schemathesis fails, or when it
# finds no operation (a broken document). schemathesis is pinned and lives
# in a venv under the target dir, reused when present; when it cannot be
# installed (no package index reachable) the run says why and passes,
# except under CI (CI set), where that is a failure.
#
# A claim long-polls up to 30 s, so the request timeout is longer than that.
# One worker: hypothesis's lambda descriptions are not thread-safe (a run with
# two failed with a schemathesis "Runtime Error" of its own).
# The daemon runs no commands (`[executor] commands = false`): generated
# jobs may carry any command line.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${MAX_EXAMPLES:-25}
# The whole schemathesis run, in seconds (on top of the build).
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
target=$(cd "$target" && pwd)
venv="$target/schemathesis-venv"
started=$(date +%s)

unavailable() {
  echo "schemathesis: $1"
  if [ -n "${CI:-}" ]; then
    echo "schemathesis: CI is set, so this is a failure"
    exit 1
  fi
  echo "schemathesis: skipped (set CI to make this a failure)"
  exit 0
}

if [ ! -x "$venv/bin/schemathesis" ] \
  || [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$SCHEMATHESIS_VERSION" ]; then
  echo "== schemathesis: installing $SCHEMATHESIS_VERSION into $venv"
  command -v python3 >/dev/null || unavailable "python3 is not installed"
  rm -rf "$venv"
  python3 -m venv "$venv" >/dev/null 2>&1 \
    || unavailable "python3 -m venv failed (is python3-venv installed?)"
  if ! timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" >"$target/schemathesis-pip.log" 2>&1; then
    tail -n 5 "$target/schemathesis-pip.log" || true
    rm -rf "$venv"
    unavailable "pip could not install schemathesis==$SCHEMATHESIS_VERSION (no package index reachable?)"
  fi
fi

echo "== schemathesis: building reeve"
cargo build -q -p reeve
bin="$target/debug/reeve"

work=$(mktemp -d)
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill "$daemon_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$daemon_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin_token="st-admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
worker_token="st-worker-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$work/reeve.toml" <<EOF
[server]
admin_token_env = "REEVE_SCHEMATHESIS_ADMIN"

[[worker_tokens]]
name = "fuzz"
token_env = "REEVE_SCHEMATHESIS_WORKER"

[executor]
commands = false
EOF
REEVE_SCHEMATHESIS_ADMIN="$admin_token" REEVE_SCHEMATHESIS_WORKER="$worker_token" \
  REEVE_LOG=warn "$bin" serve --config "$work/reeve.toml" \
  --db "sqlite://$work/reeve.db" --listen "127.0.0.1:$port" \
  </dev/null >"$work/daemon.log" 2>&1 &
daemon_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log"; echo "schemathesis: the daemon exited"; exit 1; }
  sleep 0.1
done
curl -fsS "$base/healthz" >/dev/null || { cat "$work/daemon.log"; echo "schemathesis: the daemon did not come up"; exit 1; }

echo "== schemathesis: $base/v1/openapi.json (max $MAX_EXAMPLES examples per operation)"
set +e
# From the temp dir: schemathesis keeps a cache dir where it runs.
(cd "$work" && timeout "$RUN_TIMEOUT" "$venv/bin/schemathesis" run "$base/v1/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $admin_token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --phases examples,coverage,fuzzing \
  --seed "${SEED:-1}" \
  --workers 1 \
  --request-timeout 40 \
  --no-color \
  --generation-database none \
  --report junit --report-junit-path "$work/junit.xml" \
  >"$work/schemathesis.out" 2>&1)
rc=$?
set -e
cat "$work/schemathesis.out"

# The operations it exercised: none means the document is broken.
operations=$(grep -c '<testcase ' "$work/junit.xml" 2>/dev/null || true)
operations=${operations:-0}
if [ "$rc" = 124 ]; then
  echo "schemathesis: timed out after ${RUN_TIMEOUT}s"
elif [ "$operations" = 0 ]; then
  echo "schemathesis: no operation found in $base/v1/openapi.json"
  rc=1
fi
if grep -qiE 'panicked|internal error' "$work/daemon.log"; then
  echo "schemathesis: the daemon's log reports a panic or an internal error:"
  grep -iE 'panicked|internal error' "$work/daemon.log" | head -n 20
  rc=1
fi
echo "schemathesis: $operations operations, exit $rc, $(( $(date +%s) - started ))s"
exit "$rc"
