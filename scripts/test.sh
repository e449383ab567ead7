#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), then the whole
# workspace under cargo-nextest: unit tests, the real-server harness tests and the
# end-to-end suite (real PostgreSQL 15 and 17, real clients). Extra arguments go to
# nextest, e.g. scripts/test.sh -E 'test(tls)'.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
scripts/setup.sh
profile=default
[ "${CI:-}" = true ] && profile=ci
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --profile "$profile" "$@"
else
    echo "[test] cargo-nextest not found; running cargo test (install it with: cargo install cargo-nextest --locked)" >&2
    cargo test --workspace "$@"
fi
