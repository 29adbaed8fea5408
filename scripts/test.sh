#!/usr/bin/env bash
# Runs every test of the workspace against real servers: starts (and where
# needed installs) Redis, a Redis Cluster, PostgreSQL, Memcached and Chromium
# first. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
exec cargo test --workspace --locked "$@"
