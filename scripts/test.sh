#!/usr/bin/env bash
# Runs every test of the workspace against real servers: starts (and where
# needed installs) Redis, a Redis Cluster, PostgreSQL, Memcached and Chromium
# first. Then runs the demo's HTTPS end-to-end tests once more on each shared
# backend, its browser tour on Redis, and the end-to-end tests once
# encrypted. Extra arguments go to the first `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
cargo test --workspace --locked "$@"
for backend in redis postgres memcached; do
  echo "== session-demo end-to-end tests on SESSION_BACKEND=$backend"
  SESSION_BACKEND=$backend cargo test --locked -p session-demo --test flows --test policies --test hardening --test devices
done
echo "== session-demo browser tour on SESSION_BACKEND=redis (screenshots under target/demo-tour/)"
SESSION_BACKEND=redis cargo test --locked -p session-demo --test tour
echo "== session-demo end-to-end tests on SESSION_BACKEND=redis with SESSION_ENCRYPTION_KEY"
SESSION_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64) SESSION_BACKEND=redis \
  cargo test --locked -p session-demo --test flows --test policies --test hardening --test devices
