#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace
# (domain, the storage conformance suite on SQLite files, engine, executor,
# HTTP API, and black-box tests of the `reeve` binary).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
