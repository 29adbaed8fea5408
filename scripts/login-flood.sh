#!/usr/bin/env bash
# Floods the demo's POST /login with failed logins and reports its peak
# memory: starts the release build on 127.0.0.1 (in-memory store, its own
# certificate), fires FLOOD_REQUESTS wrong-password logins with curl,
# FLOOD_CONCURRENCY at a time, over FLOOD_ACCOUNTS account names, samples
# VmRSS from /proc/<pid>/status meanwhile and reads VmHWM (the kernel's
# high-water mark of the resident set) at the end. Exits non-zero when the
# peak exceeds FLOOD_LIMIT_MB.
#
#   scripts/login-flood.sh                      # defaults: 2000 requests, 200 at a time, limit 300 MB
#   scripts/login-flood.sh --login-limit-per-ip 1000000/1 --login-limit-per-account 1000000/1
#                                               # throttles out of the way: only the worker bound is left
#
# Arguments are passed to session-demo. Needs curl and openssl. Traffic
# goes to 127.0.0.1 only, and the run is bounded (FLOOD_TIMEOUT seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${FLOOD_REQUESTS:-2000}
concurrency=${FLOOD_CONCURRENCY:-200}
accounts=${FLOOD_ACCOUNTS:-50}
limit_mb=${FLOOD_LIMIT_MB:-300}
timeout_secs=${FLOOD_TIMEOUT:-300}

cargo build --release --locked -p session-demo >&2
bin=target/release/session-demo

work=$(mktemp -d)
pid=""
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/key.pem" -out "$work/cert.pem" -days 1 -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost 2>/dev/null

password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
DEMO_USERS="demo:$password" SESSION_BACKEND=memory RUST_LOG=warn \
  SESSION_DEMO_STORAGE_KEY_SECRET=$secret \
  "$bin" --listen 127.0.0.1:0 --cert "$work/cert.pem" --key "$work/key.pem" "$@" \
  >"$work/banner" 2>"$work/log" &
pid=$!

port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*listening on https://127.0.0.1:\([0-9]*\)/.*|\1|p' "$work/banner")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/banner" "$work/log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "the demo did not start" >&2; exit 1; }
sed 's/^/  /' "$work/banner" >&2

status_kb() { # field -> kB
  awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid/status"
}
baseline=$(status_kb VmRSS)

# The sampler: the largest VmRSS seen, every 20 ms.
(
  max=0
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$max" ] && max=$rss && echo "$max" >"$work/max-rss"
    sleep 0.02
  done
) &
sampler=$!

# One curl, many transfers: a config block per request.
for i in $(seq 1 "$requests"); do
  printf 'url = "https://127.0.0.1:%s/login"\ncacert = "%s"\ndata = "username=user%d&password=wrong-%d"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nmax-time = 60\nnext\n' \
    "$port" "$work/cert.pem" $((i % accounts)) "$i"
done | sed '$d' >"$work/curl.conf"

echo "== $requests failed logins, $concurrency at a time, $accounts account names" >&2
start=$(date +%s.%N)
timeout "$timeout_secs" curl --silent --show-error --no-progress-meter --parallel --parallel-immediate \
  --parallel-max "$concurrency" --config "$work/curl.conf" >"$work/codes" || true
end=$(date +%s.%N)

hwm=$(status_kb VmHWM)
rss_after=$(status_kb VmRSS)
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""
sampled=$(cat "$work/max-rss" 2>/dev/null || echo 0)

echo "status codes (count code):" >&2
sort "$work/codes" | uniq -c | sed 's/^/  /' >&2
answered=$(grep -cv '^000$' "$work/codes" || true)
mb() { echo $(( ($1 + 1023) / 1024 )); }
awk -v a="$answered" -v r="$requests" -v s="$start" -v e="$end" \
  'BEGIN { printf "answered %d of %d requests in %.1f s\n", a, r, e - s }'
echo "RSS before: $(mb "$baseline") MB; highest sampled: $(mb "$sampled") MB; after: $(mb "$rss_after") MB"
echo "peak RSS (VmHWM): $(mb "$hwm") MB (limit $limit_mb MB)"
if [ "$(mb "$hwm")" -gt "$limit_mb" ]; then
  echo "FAIL: peak RSS over $limit_mb MB" >&2
  exit 1
fi
if [ "$answered" -lt "$requests" ]; then
  echo "FAIL: $((requests - answered)) requests got no answer" >&2
  exit 1
fi
echo "OK"
