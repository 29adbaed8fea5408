#!/usr/bin/env bash
# Makes sure every server the tests need is installed and answering, and
# prints the environment that points the tests at them.
#
#   eval "$(scripts/services.sh)"      # or: scripts/test.sh, which does this
#
# Servers given by URL (REDIS_URL, DATABASE_URL, MEMCACHED_URL, ...) are used
# as they are when they answer. Otherwise the local default is started, and
# installed from the distribution's packages (apt-get, as root) when missing:
#   Redis       127.0.0.1:6379         (redis-server)
#   Redis Cluster 127.0.0.1:7101-7106  (3 masters with 1 replica each,
#                                      redis-server --cluster-enabled)
#   PostgreSQL  127.0.0.1:5432, user postgres, database test (trust auth)
#   Memcached   127.0.0.1:11211 and 127.0.0.1:11212
#   Chromium    /usr/bin/chromium (headless browser test of the demo)
# Everything this script creates lives under .services/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/.services"
mkdir -p "$STATE"

log() { echo "services: $*" >&2; }

APT_UPDATED=
apt_install() {
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    log "cannot install $* (not root, no sudo): install it yourself or set the *_URL variables"
    exit 1
  fi
  local SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq >&2 || true
    APT_UPDATED=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$what did not come up"; return 1
}

# ---------------------------------------------------------------- Redis
ensure_redis_bin() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  # The Redis fault tests freeze and thaw their private server with kill(1).
  [ -x /bin/kill ] || [ -x /usr/bin/kill ] || apt_install procps
}

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
ensure_redis_bin
if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  if [ "$REDIS_URL" != "redis://127.0.0.1:6379" ]; then
    log "REDIS_URL=$REDIS_URL does not answer"; exit 1
  fi
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE" --logfile "$STATE/redis.log" --pidfile "$STATE/redis.pid" >&2
  wait_for "redis" redis-cli -u "$REDIS_URL" ping
fi

# -------------------------------------------------------- Redis Cluster
# Three masters, each with one replica, so that a master's death fails over
# as in production. REDIS_CLUSTER_URLS lists every node: the client only
# uses them to discover the cluster, and after a failover the replicas are
# the masters, so any node must do as a seed.
CLUSTER_PORTS=(7101 7102 7103 7104 7105 7106)
# "ok", with six nodes and every master followed by a connected replica.
cluster_complete() {
  local p=${CLUSTER_PORTS[0]} info nodes masters replicas
  info=$(redis-cli -p "$p" cluster info 2>/dev/null) || return 1
  grep -q cluster_state:ok <<<"$info" || return 1
  grep -q "cluster_known_nodes:${#CLUSTER_PORTS[@]}\b" <<<"$info" || return 1
  nodes=$(redis-cli -p "$p" cluster nodes 2>/dev/null) || return 1
  masters=$(awk '$3 ~ /master/ && $3 !~ /fail/ && $9 != "" {print $1}' <<<"$nodes" | sort)
  replicas=$(awk '$3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected" {print $4}' <<<"$nodes" | sort -u)
  [ "$(wc -l <<<"$masters")" = 3 ] && [ "$masters" = "$replicas" ]
}
if [ -z "${REDIS_CLUSTER_URLS:-}" ]; then
  if ! cluster_complete; then
    log "(re)building a Redis Cluster on ports ${CLUSTER_PORTS[*]} (3 masters, 1 replica each)"
    for p in "${CLUSTER_PORTS[@]}"; do
      redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
    done
    for p in "${CLUSTER_PORTS[@]}"; do
      wait_for "redis cluster node $p to stop" sh -c "! redis-cli -p $p ping"
      rm -rf "$STATE/cluster-$p"; mkdir -p "$STATE/cluster-$p"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
        --cluster-config-file "$STATE/cluster-$p/nodes.conf" --cluster-node-timeout 2000 \
        --save "" --appendonly no --dir "$STATE/cluster-$p" \
        --logfile "$STATE/cluster-$p/redis.log" --pidfile "$STATE/cluster-$p/redis.pid" >&2
    done
    for p in "${CLUSTER_PORTS[@]}"; do wait_for "redis cluster node $p" redis-cli -p "$p" ping; done
    redis-cli --cluster create $(for p in "${CLUSTER_PORTS[@]}"; do printf '127.0.0.1:%s ' "$p"; done) \
      --cluster-replicas 1 --cluster-yes >&2
    for p in "${CLUSTER_PORTS[@]}"; do
      wait_for "redis cluster state on $p" sh -c "redis-cli -p $p cluster info | grep -q cluster_state:ok"
    done
    wait_for "redis cluster replicas" cluster_complete
  fi
  REDIS_CLUSTER_URLS=$(IFS=,; for p in "${CLUSTER_PORTS[@]}"; do printf 'redis://127.0.0.1:%s,' "$p"; done)
  REDIS_CLUSTER_URLS=${REDIS_CLUSTER_URLS%,}
fi

# ----------------------------------------------------------- PostgreSQL
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_answers() { psql "$DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; }
if ! pg_answers; then
  if [ "$DATABASE_URL" != "postgres://postgres@127.0.0.1:5432/test" ]; then
    log "DATABASE_URL=$DATABASE_URL does not answer"; exit 1
  fi
  if ! ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    log "allowing trust auth on loopback in $hba (test machine only)"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >/dev/null 2>&1 || true
  fi
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || true
  wait_for "postgres" pg_isready -h 127.0.0.1 -p 5432
  psql -h 127.0.0.1 -U postgres -Atqc "select 1 from pg_database where datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc 'create database test' >&2
  wait_for "postgres database test" pg_answers
fi

# ------------------------------------------------------------ Memcached
command -v memcached >/dev/null || apt_install memcached
start_memcached() { # port
  local p=$1
  if ! (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
    log "starting memcached on 127.0.0.1:$p"
    local user=root; id memcache >/dev/null 2>&1 && user=memcache
    memcached -d -u "$user" -l 127.0.0.1 -p "$p" -U 0 -m 1024 -c 4096 >&2
    wait_for "memcached $p" bash -c "exec 3<>/dev/tcp/127.0.0.1/$p"
  fi
}
if [ -z "${MEMCACHED_URL:-}" ]; then
  start_memcached 11211
  MEMCACHED_URL=memcache://127.0.0.1:11211
fi
if [ -z "${MEMCACHED_URL_2:-}" ]; then
  start_memcached 11212
  MEMCACHED_URL_2=memcache://127.0.0.1:11212
fi

# ------------------------------------------------------------- Chromium
if [ -z "${CHROMIUM:-}" ]; then
  command -v chromium >/dev/null || apt_install chromium chromium-driver
  CHROMIUM=$(command -v chromium)
fi

cat <<ENV
export REDIS_URL='$REDIS_URL'
export REDIS_CLUSTER_URLS='$REDIS_CLUSTER_URLS'
export DATABASE_URL='$DATABASE_URL'
export MEMCACHED_URL='$MEMCACHED_URL'
export MEMCACHED_URL_2='$MEMCACHED_URL_2'
export CHROMIUM='$CHROMIUM'
ENV
