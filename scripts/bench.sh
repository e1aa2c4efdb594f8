#!/usr/bin/env bash
# Builds in release, starts servers on temp stores (loopback only), runs the
# benchmark scenarios and writes the results to target/bench/.
#
#   scripts/bench.sh                 # every scenario at its default size
#   scripts/bench.sh fanout logins   # just these
#   FANOUT_ARGS="--members 50" scripts/bench.sh fanout
#   scripts/bench.sh pg-fanout pg-durable   # the same on PostgreSQL
#   scripts/bench.sh cluster                # 3 processes + Redis vs 1 (PostgreSQL)
#   BENCH_BIN_DIR=/tmp/before scripts/bench.sh fanout   # binaries built elsewhere
#
# The pg-* scenarios make a fresh database per server on the PostgreSQL at
# $BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test) with
# psql, and drop it after.
#
# The per-connection rate limit is raised for load (CHAT__RATE_LIMIT__*), as
# BENCHMARKS.md says. Every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(fanout logins durable rooms idle commits)
pg_admin=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_dbs=()

# BENCH_BIN_DIR runs binaries built elsewhere (a before/after comparison of
# two commits in one session); otherwise this tree is built in release.
if [ -z "${BENCH_BIN_DIR:-}" ]; then
  cargo build --release --bin e2ee-chat-server --bin e2ee-chat-bench
fi
bin_dir=${BENCH_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
server=$bin_dir/e2ee-chat-server
bench=$bin_dir/e2ee-chat-bench

# 10,000 connections need 10,000 descriptors on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
pids=()
# The servers and the bench share the /metrics token (commit counters).
export CHAT__SERVER__METRICS_TOKEN=${CHAT__SERVER__METRICS_TOKEN:-bench-$$}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${pg_dbs[@]}"; do psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_server NAME PORT [ENV=VALUE...]: sets $server_pid.
start_server() {
  local name=$1 port=$2; shift 2
  env CHAT__SERVER__HOST=127.0.0.1 CHAT__SERVER__PORT="$port" \
      CHAT__STORE__PATH="$tmp/$name/chat.db" \
      CHAT__RATE_LIMIT__PER_SECOND=1000000 CHAT__RATE_LIMIT__BURST=1000000 \
      CHAT__LIMITS__MAX_CONNECTIONS_PER_IP=1000000 CHAT__LIMITS__REGISTRATIONS_PER_IP_PER_HOUR=1000000 \
      CHAT__LIMITS__MEMBERSHIP_CHANGES_PER_MINUTE=1000000 \
      RUST_LOG=warn "$@" "$server" >"$tmp/$name.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do
    CHAT__SERVER__PORT="$port" "$server" healthcheck 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server $name did not start:" >&2; cat "$tmp/$name.log" >&2; exit 1
}

# pg_url NAME: a fresh database for one server; sets $pg_last to its URL
# (no subshell, so cleanup knows to drop it).
pg_url() {
  local db="e2ee_bench_$1_$$"
  psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  pg_dbs+=("$db")
  pg_last="${pg_admin%/*}/$db"
}

mkdir -p target/bench
out="target/bench/results-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# e2ee-chat benchmark $(date -u +%FT%TZ)"
  echo "# $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -srm)"
  echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$out"

for s in "${scenarios[@]}"; do
  echo "## $s" | tee -a "$out"
  case $s in
    fanout)
      # Rated and flat out, each with the relay carrying the same entry
      # frames; then what the store holds per message.
      start_server fanout 18181
      timeout 900 "$bench" --url ws://127.0.0.1:18181/ws --server-pid "$server_pid" fanout ${FANOUT_ARGS:-} | tee -a "$out"
      timeout 900 "$bench" --url ws://127.0.0.1:18181/ws --server-pid "$server_pid" fanout --rate 0 --messages 5000 ${FANOUT_MAX_ARGS:-} | tee -a "$out"
      python3 - "$tmp/fanout/chat.db" <<'PY' | tee -a "$out"
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
n, data, row = db.execute(
    "SELECT count(*), sum(length(data)), sum(length(data) + length(device_id) + length(msg_id)"
    " + length(sender) + length(room_id) + 8 * 4) FROM entries WHERE kind = 2").fetchone()
print(f"fanout store: {n} messages, {data / n:.0f} B of MLS message and about {row / n:.0f} B of row each (before indexes)")
PY
      ;;
    logins)
      start_server logins 18182
      timeout 900 "$bench" --url ws://127.0.0.1:18182/ws --server-pid "$server_pid" logins ${LOGIN_ARGS:-} | tee -a "$out"
      ;;
    commits)
      # A room grown by external joins to 100 and 1,000 members; client
      # time per join, server CPU per commit at each size.
      start_server commits 18201
      timeout 1800 "$bench" --url ws://127.0.0.1:18201/ws --server-pid "$server_pid" commits ${COMMITS_ARGS:-} | tee -a "$out"
      ;;
    durable)
      start_server durable-group 18183
      group_pid=$server_pid
      start_server durable-single 18184 CHAT__STORE__GROUP_COMMIT=false
      timeout 900 "$bench" --url ws://127.0.0.1:18183/ws --server-pid "$group_pid" durable \
        --compare-url ws://127.0.0.1:18184/ws --compare-pid "$server_pid" ${DURABLE_ARGS:-} | tee -a "$out"
      ;;
    rooms)
      start_server rooms 18189
      timeout 900 "$bench" --url ws://127.0.0.1:18189/ws --server-pid "$server_pid" rooms ${ROOMS_ARGS:-} | tee -a "$out"
      ;;
    passwords)
      # The defaults (budgets per user and address), then with the budgets
      # lifted so every attempt is hashed: memory must stay bounded anyway.
      # One room, then forty.
      start_server passwords 18194
      timeout 900 "$bench" --url ws://127.0.0.1:18194/ws --server-pid "$server_pid" passwords ${PASSWORD_ARGS:-} | tee -a "$out"
      start_server passwords-all 18195 CHAT__LIMITS__PASSWORD_ATTEMPTS_PER_MINUTE=100000 \
        CHAT__LIMITS__PASSWORD_ATTEMPTS_PER_IP_PER_MINUTE=100000
      timeout 900 "$bench" --url ws://127.0.0.1:18195/ws --server-pid "$server_pid" passwords --paced ${PASSWORD_ARGS:-} | tee -a "$out"
      timeout 900 "$bench" --url ws://127.0.0.1:18195/ws --server-pid "$server_pid" passwords --paced --rooms 40 ${PASSWORD_ARGS:-} | tee -a "$out"
      ;;
    pg-history)
      # A late joiner floods history on a 200,000-entry room (PostgreSQL);
      # the owner sends meanwhile.
      pg_url history
      start_server pg-history 18196 CHAT__STORE__URL="$pg_last"
      timeout 900 "$bench" --url ws://127.0.0.1:18196/ws --server-pid "$server_pid" history ${HISTORY_ARGS:-} | tee -a "$out"
      ;;
    idle)
      start_server idle 18185
      timeout 900 "$bench" --url ws://127.0.0.1:18185/ws --server-pid "$server_pid" idle ${IDLE_ARGS:-} | tee -a "$out"
      ;;
    pg-fanout)
      pg_url fanout
      start_server pg-fanout 18186 CHAT__STORE__URL="$pg_last"
      timeout 900 "$bench" --url ws://127.0.0.1:18186/ws --server-pid "$server_pid" fanout ${FANOUT_ARGS:-} | tee -a "$out"
      timeout 900 "$bench" --url ws://127.0.0.1:18186/ws --server-pid "$server_pid" fanout --rate 0 --messages 5000 ${FANOUT_MAX_ARGS:-} | tee -a "$out"
      ;;
    cluster)
      # Fan-out over three processes on one PostgreSQL database and the
      # Redis at $BENCH_REDIS_URL (a channel prefix of its own), members
      # spread round-robin; CPU summed over the three servers and Redis.
      # Then the same load on one process on its own database.
      redis_url=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}
      pg_url cluster
      cluster_pids=()
      for port in 18190 18191 18192; do
        start_server "cluster-$port" "$port" CHAT__STORE__URL="$pg_last" \
          CHAT__CLUSTER__REDIS_URL="$redis_url" CHAT__CLUSTER__CHANNEL_PREFIX="bench-$$"
        cluster_pids+=("$server_pid")
      done
      more_pids="${cluster_pids[1]},${cluster_pids[2]}"
      redis_pid=$(pgrep -x redis-server | head -1 || true)
      [ -n "$redis_pid" ] && more_pids="$more_pids,$redis_pid"
      timeout 900 "$bench" --url ws://127.0.0.1:18190/ws --server-pid "${cluster_pids[0]}" \
        --more-urls ws://127.0.0.1:18191/ws,ws://127.0.0.1:18192/ws --more-pids "$more_pids" \
        fanout --no-baseline ${FANOUT_ARGS:-} | tee -a "$out"
      pg_url cluster_single
      start_server cluster-single 18193 CHAT__STORE__URL="$pg_last"
      timeout 900 "$bench" --url ws://127.0.0.1:18193/ws --server-pid "$server_pid" \
        fanout --no-baseline ${FANOUT_ARGS:-} | tee -a "$out"
      ;;
    pg-durable)
      pg_url group
      start_server pg-durable-group 18187 CHAT__STORE__URL="$pg_last"
      group_pid=$server_pid
      pg_url single
      start_server pg-durable-single 18188 CHAT__STORE__GROUP_COMMIT=false \
        CHAT__STORE__URL="$pg_last"
      timeout 900 "$bench" --url ws://127.0.0.1:18187/ws --server-pid "$group_pid" durable \
        --compare-url ws://127.0.0.1:18188/ws --compare-pid "$server_pid" ${DURABLE_ARGS:-} | tee -a "$out"
      ;;
    *) echo "unknown scenario $s (fanout commits logins durable rooms idle passwords pg-fanout pg-durable pg-history cluster)" >&2; exit 2 ;;
  esac
done
echo "results written to $out"
