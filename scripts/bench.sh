#!/usr/bin/env bash
# Reproduces the tables in BENCHMARKS.md: every backend through the manager
# against its raw-client floor and tower-sessions, 200 B and 4 KiB payloads,
# 3 interleaved rounds (medians), then 1,000,000 sessions instead of 10,000.
# Output: target/bench/*.md (tables) and *.jsonl (one object per system and
# round), and the per-call server time of the Redis write path
# (redis-script-costs.md). Takes about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
cargo build --release --locked -p session-bench
out=target/bench
mkdir -p "$out"
bench() { # name, args...
  local name=$1; shift
  echo "== session-bench $*" >&2
  ./target/release/session-bench "$@" --json --markdown "$out/$name.md" > "$out/$name.jsonl"
}
bench memory    --backend memory    --encrypted --rounds 3
bench redis     --backend redis     --encrypted --rounds 3
bench postgres  --backend postgres  --encrypted --rounds 3 --ops 50000
bench memcached --backend memcached --encrypted --rounds 3 --ops 50000
bench memory-1m   --backend memory   --sessions 1000000 --payload 200 --no-peers --no-paths --rounds 3
bench redis-1m    --backend redis    --sessions 1000000 --payload 200 --no-peers --no-paths --rounds 3
bench postgres-1m --backend postgres --sessions 1000000 --payload 200 --no-peers --no-paths --rounds 3 --ops 50000
echo "== redis-script-costs" >&2
./target/release/redis-script-costs > "$out/redis-script-costs.md"
