#!/usr/bin/env bash
# The local stack: two PostgreSQL clusters owned by the project (.local/pg, which holds the
# registry and is the server `primary`; .local/pg2, registered as the server `secondary`), a
# local Secrets Manager (moto) holding their admin secrets, moto's SQS with the migrate queue
# and its dead-letter queue, moto's EventBridge with the lifecycle events' bus (a rule copies
# every event to the queue dbtools-events), `cargo lambda watch` serving the functions on the same paths as
# API Gateway, and a local queue trigger (scripts/queue_trigger.py) that delivers the migrate
# queue to migrate-tenant as Lambda's event source mapping does.
#
#   scripts/stack.sh dev            start everything, stay in the foreground until Ctrl-C or
#                                   SIGTERM, then stop everything this script started
#   scripts/stack.sh run -- CMD...  reuse a running stack or start one, run CMD with the
#                                   stack's variables exported, stop what was started
#   scripts/stack.sh tools          install what is missing (cargo-lambda, moto, PostgreSQL)
#   scripts/stack.sh env            print the variables the functions and tests get
#   scripts/stack.sh wipe           stop this stack and delete its clusters (logs stay):
#                                   `make reset`
#
# Variables (all optional): PG_PORT (5433), PG2_PORT (5435), SM_PORT (5000), LAMBDA_PORT
# (9000), LAMBDA_CONCURRENCY (8), QUEUE_MAX_CONCURRENCY (6: migrate-tenant invocations at
# once), RELEASE (empty: debug builds; 1: release builds), PG_BIN
# (directory of initdb/pg_ctl; found under /usr/lib/postgresql otherwise), STACK_DIR (.local:
# where the clusters, logs and pid files live; `make bench` runs a second stack in
# .local/bench).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=${STACK_DIR:-$ROOT/.local}
case "$LOCAL" in /*) ;; *) LOCAL="$ROOT/$LOCAL" ;; esac
VENV="$ROOT/.venv"
RUN="$LOCAL/run"
PG_PORT=${PG_PORT:-5433}
PG2_PORT=${PG2_PORT:-5435}
SM_PORT=${SM_PORT:-5000}
LAMBDA_PORT=${LAMBDA_PORT:-9000}
LAMBDA_CONCURRENCY=${LAMBDA_CONCURRENCY:-8}
# The local event source mapping of the migrate queue: invocations of migrate-tenant at once.
QUEUE_MAX_CONCURRENCY=${QUEUE_MAX_CONCURRENCY:-6}
MIGRATE_QUEUE=dbtools-migrate
MIGRATE_DLQ=dbtools-migrate-dlq
# The lifecycle events: moto's EventBridge bus, and a rule that copies every event to a queue.
EVENT_BUS=dbtools-events
EVENT_QUEUE=dbtools-events
EVENT_QUEUE_URL=
RELEASE=${RELEASE:-}
QUEUE_URL=
PG_USER=postgres
PG_PASSWORD=postgres
SECRET_ID=dbtools/admin
SYSTEM_DB_NAME=${SYSTEM_DB_NAME:-dbtools}
# The secondary server is administered as on RDS: by a role with CREATEDB and CREATEROLE that
# is a member of pg_signal_backend and may replicate (RDS: rds_replication), not by a
# superuser (the tests use the superuser to look).
PG2_ADMIN=dbtools_admin
PG2_ADMIN_PASSWORD=secondary-admin
PG2_SECRET_ID=dbtools/servers/secondary

log() { printf '\033[1m[stack]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

ensure_venv() {
  local req="$ROOT/scripts/requirements-dev.txt" stamp="$VENV/.dev-requirements"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    return
  fi
  log "installing cargo-lambda and the local Secrets Manager into .venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check -q -r "$req"
  cp "$req" "$stamp"
}

find_pg_bin() {
  if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then echo "$PG_BIN"; return; fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
  done
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  return 1
}

ensure_postgres() {
  if PG_BIN=$(find_pg_bin); then return; fi
  log "no PostgreSQL server binaries found; installing them with apt-get"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql postgresql-contrib
  PG_BIN=$(find_pg_bin) || die "PostgreSQL installation did not provide initdb"
}

# tmux: the CLI's tests watch `dbtools runs watch` in a real terminal (capture-pane).
ensure_tmux() {
  command -v tmux >/dev/null && return
  log "no tmux found; installing it with apt-get"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q tmux
}

ensure_tools() {
  ensure_venv
  ensure_postgres
  ensure_tmux
  command -v psql >/dev/null || PATH="$PG_BIN:$PATH"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: each function takes the cluster, pg (primary) or pg2 (secondary)
# ---------------------------------------------------------------------------------------------

# initdb refuses to run as root: the clusters run as the postgres user when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_dir() { echo "$LOCAL/${1:-pg}"; }

pg_port() { if [ "${1:-pg}" = pg2 ]; then echo "$PG2_PORT"; else echo "$PG_PORT"; fi; }

prepare_pg_dir() {
  local dir; dir=$(pg_dir "$1")
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres: "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      # The checkout is not reachable by the postgres user (e.g. under /root): keep the
      # cluster in a directory it can reach, linked from .local/pg.
      local key=$ROOT
      [ "$LOCAL" = "$ROOT/.local" ] || key=$LOCAL
      local alt="/tmp/dbtools-$1-$(echo "$key" | md5sum | cut -c1-12)"
      log "the postgres user cannot reach $dir; keeping the cluster in $alt"
      rmdir "$dir" 2>/dev/null || true
      mkdir -p "$alt" && chown postgres: "$alt" && ln -sfn "$alt" "$dir"
    fi
  fi
}

# log_statement=ddl: every CREATE/ALTER ROLE the product sends is in server.log, where the
# tests look for passwords (there must be none: the product sends SCRAM verifiers).
# wal_level=logical and the slots and workers of a few logical replications at once: online
# moves (secondary -> primary locally; docs/operations.md#moving-tenants). Needs a restart.
pg_server_opts() {
  echo "-p $(pg_port "$1") -c listen_addresses=127.0.0.1 -k $(pg_dir "$1")/run -c max_connections=300 -c shared_buffers=256MB -c client_connection_check_interval=1000 -c log_statement=ddl -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c max_logical_replication_workers=8 -c max_worker_processes=16"
}

pg_isready_local() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$(pg_port "${1:-pg}")" 2>/dev/null; }

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$1")/data" status >/dev/null 2>&1; }

start_postgres() {
  local cluster=$1 dir data
  prepare_pg_dir "$cluster"
  dir=$(pg_dir "$cluster"); data="$dir/data"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating the PostgreSQL cluster in .local/$cluster"
    local pw="$dir/pwfile"
    printf '%s\n' "$PG_PASSWORD" >"$pw"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$pw"
    as_pg "$PG_BIN/initdb" -D "$data" -U "$PG_USER" --pwfile="$pw" -E UTF8 --locale=C \
      --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pw"
  fi
  if pg_running "$cluster"; then
    log "PostgreSQL already running (.local/$cluster)"
  else
    if pg_isready_local "$cluster"; then
      die "port $(pg_port "$cluster") is taken by another server; set PG_PORT or PG2_PORT"
    fi
    mkdir -p "$dir/run"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir/run"
    log "starting PostgreSQL ($cluster) on 127.0.0.1:$(pg_port "$cluster")"
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 -o "$(pg_server_opts "$cluster")" \
      start >/dev/null || { tail -20 "$dir/server.log" >&2; die "PostgreSQL did not start"; }
    STARTED+=("$cluster")
  fi
  if [ "$cluster" = pg2 ]; then ensure_pg2_admin; fi
}

# The secondary's admin role (see PG2_ADMIN), made or reset on every start.
ensure_pg2_admin() {
  PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG2_PORT" \
    -U "$PG_USER" -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG2_ADMIN') THEN
    CREATE ROLE $PG2_ADMIN;
  END IF;
END \$\$;
ALTER ROLE $PG2_ADMIN LOGIN CREATEDB CREATEROLE REPLICATION PASSWORD '$PG2_ADMIN_PASSWORD';
GRANT pg_signal_backend TO $PG2_ADMIN;
SQL
}

stop_postgres() {
  log "stopping PostgreSQL ($1)"
  as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$1")/data" -m fast -w stop >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# Local Secrets Manager (moto)
# ---------------------------------------------------------------------------------------------

sm_url() { echo "http://127.0.0.1:$SM_PORT"; }

sm_up() { curl -s -o /dev/null --max-time 1 "$(sm_url)/moto-api/" ; }

start_secrets_manager() {
  if sm_up; then
    log "a local Secrets Manager already answers on :$SM_PORT; reusing it"
  else
    log "starting the local Secrets Manager on 127.0.0.1:$SM_PORT"
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$SM_PORT" >"$LOCAL/moto.log" 2>&1 &
    echo $! >"$RUN/moto.pid"
    STARTED+=(moto)
    for _ in $(seq 1 100); do sm_up && break; sleep 0.1; done
    sm_up || { tail -20 "$LOCAL/moto.log" >&2; die "the local Secrets Manager did not start"; }
  fi
  put_secret
  put_pg2_secret
  create_queues
  create_event_bus
}

# The lifecycle events' bus, and the queue its rule copies every event to (scripts/event_bus.py).
create_event_bus() {
  EVENT_QUEUE_URL=$(AWS_ENDPOINT_URL="$(sm_url)" "$VENV/bin/python" "$ROOT/scripts/event_bus.py" \
    create "$EVENT_BUS" "$EVENT_QUEUE" dbtools) || die "could not create the local event bus"
}

# The migrate queue and its dead-letter queue in moto (as the SAM template makes them, with a
# shorter visibility timeout, 120 s, so that a local retry comes back soon; still longer than
# a local worker's invocation).
create_queues() {
  QUEUE_URL=$(AWS_ENDPOINT_URL_SQS="$(sm_url)" "$VENV/bin/python" "$ROOT/scripts/queue_trigger.py" \
    create "$MIGRATE_QUEUE" "$MIGRATE_DLQ" 5 120) || die "could not create the local SQS queues"
}

put_secret() {
  AWS_ENDPOINT_URL_SECRETS_MANAGER="$(sm_url)" "$VENV/bin/python" "$ROOT/scripts/put_secret.py" \
    "$SECRET_ID" "{\"username\":\"$PG_USER\",\"password\":\"$PG_PASSWORD\",\"host\":\"127.0.0.1\",\"port\":$PG_PORT,\"dbname\":\"postgres\",\"engine\":\"postgres\"}"
}

# The secondary's admin secret, as an RDS-managed secret holds it (no host: the registration
# gives host and port).
put_pg2_secret() {
  AWS_ENDPOINT_URL_SECRETS_MANAGER="$(sm_url)" "$VENV/bin/python" "$ROOT/scripts/put_secret.py" \
    "$PG2_SECRET_ID" "{\"username\":\"$PG2_ADMIN\",\"password\":\"$PG2_ADMIN_PASSWORD\",\"engine\":\"postgres\"}"
}

stop_pidfile() {
  local f="$RUN/$1.pid"
  if [ -f "$f" ]; then
    local pid; pid=$(cat "$f")
    # Each service runs in its own session: end the whole group (cargo lambda watch's
    # function processes included).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  fi
}

# ---------------------------------------------------------------------------------------------
# Functions (cargo lambda watch)
# ---------------------------------------------------------------------------------------------

write_env() {
  cat >"$LOCAL/functions.env" <<EOF
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=local
AWS_SECRET_ACCESS_KEY=local
AWS_ENDPOINT_URL_SECRETS_MANAGER=$(sm_url)
AWS_ENDPOINT_URL_SQS=$(sm_url)
AWS_ENDPOINT_URL_EVENTBRIDGE=$(sm_url)
MIGRATE_QUEUE_URL=$QUEUE_URL
EVENT_BUS_NAME=$EVENT_BUS
DB_SECRET_ID=$SECRET_ID
DB_SSLMODE=disable
SYSTEM_DB_NAME=$SYSTEM_DB_NAME
MIGRATE_CONCURRENCY=${MIGRATE_CONCURRENCY:-10}
PROVISIONING_LEASE_SECONDS=${PROVISIONING_LEASE_SECONDS:-10}
DB_LOCK_TIMEOUT_SECS=${DB_LOCK_TIMEOUT_SECS:-5}
RUST_LOG=${RUST_LOG:-info}
EOF
}

api_url() { echo "http://127.0.0.1:$LAMBDA_PORT"; }

api_up() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(api_url)/api/tenants?limit=1" || true)
  [ -n "$code" ] && [ "$code" != "000" ]
}

build_mode() { if [ -n "$RELEASE" ]; then echo release; else echo debug; fi; }

build_functions() {
  log "building the functions${RELEASE:+ (release)}"
  (cd "$ROOT" && cargo build --workspace --bins ${RELEASE:+--release})
}

start_watch() {
  local reload=("$@")
  if api_up; then die "port $LAMBDA_PORT is already serving; stop it or set LAMBDA_PORT"; fi
  log "starting cargo lambda watch on $(api_url)"
  (cd "$ROOT" && exec setsid cargo lambda watch \
      --invoke-address 127.0.0.1 --invoke-port "$LAMBDA_PORT" \
      --concurrency "$LAMBDA_CONCURRENCY" --env-file "$LOCAL/functions.env" \
      ${RELEASE:+--release} "${reload[@]}" >"$LOCAL/watch.log" 2>&1) &
  echo $! >"$RUN/watch.pid"
  build_mode >"$RUN/watch.mode"
  STARTED+=(watch)
  for _ in $(seq 1 600); do
    api_up && return 0
    kill -0 "$(cat "$RUN/watch.pid")" 2>/dev/null || break
    sleep 0.2
  done
  tail -30 "$LOCAL/watch.log" >&2
  die "cargo lambda watch did not start"
}

# Registers the secondary cluster as the server `secondary` (a 409 means it is registered
# already). Its capacity equals primary's, so that placement alternates between the two.
trigger_up() { [ -f "$RUN/trigger.pid" ] && kill -0 "$(cat "$RUN/trigger.pid")" 2>/dev/null; }

# The local SQS event source mapping (scripts/queue_trigger.py): migrate queue -> migrate-tenant.
start_trigger() {
  if trigger_up; then return; fi
  log "starting the local queue trigger (at most $QUEUE_MAX_CONCURRENCY migrate-tenant at once)"
  AWS_ENDPOINT_URL_SQS="$(sm_url)" setsid "$VENV/bin/python" -u "$ROOT/scripts/queue_trigger.py" \
    run "$QUEUE_URL" migrate-tenant "$(api_url)" "$QUEUE_MAX_CONCURRENCY" >>"$LOCAL/trigger.log" 2>&1 &
  echo $! >"$RUN/trigger.pid"
  STARTED+=(trigger)
}

register_secondary() {
  local out code
  out=$(mktemp)
  code=$(curl -s -o "$out" -w '%{http_code}' --max-time 60 -X POST \
    -H 'content-type: application/json' "$(api_url)/api/servers" \
    -d "{\"name\":\"secondary\",\"host\":\"127.0.0.1\",\"port\":$PG2_PORT,\"secret_arn\":\"$PG2_SECRET_ID\",\"max_tenants\":10000,\"migrate_concurrency\":5}" || true)
  case "$code" in
    201) log "registered the server 'secondary' (127.0.0.1:$PG2_PORT)" ;;
    409) ;;
    *) cat "$out" >&2; rm -f "$out"; die "could not register the server 'secondary' (HTTP $code)" ;;
  esac
  rm -f "$out"
}

# A run that fails (a tenant whose migration fails, a server down, even a registry this
# checkout's migrations disagree with) is reported and the stack keeps serving: the local
# tenants' state is never a reason not to start. `make reset` starts from scratch.
invoke_migrate_all() {
  log "migrate-all: bringing the system database and every tenant up to date"
  local out
  if ! out=$(cd "$ROOT" && cargo lambda invoke migrate-all --invoke-address 127.0.0.1 \
      --invoke-port "$LAMBDA_PORT" --data-ascii '{}' 2>&1); then
    printf '%s\n' "$out" | sed -n '/Error:/,/Was this behavior unexpected/p' | grep -v 'Was this behavior' >&2
    log "migrate-all did not bring everything up to date (above; GET $(api_url)/api/runs names each"
    log "tenant's outcome). The stack keeps serving. To start from scratch: make reset"
    MIGRATE_ALL_FAILED=1
  fi
}

stack_env() {
  cat "$LOCAL/functions.env"
  cat <<EOF
DBTOOLS_API_URL=$(api_url)
DBTOOLS_PG_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres
DBTOOLS_PG2_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG2_PORT/postgres
DBTOOLS_PG_BIN=$PG_BIN
DBTOOLS_LOCAL_DIR=$LOCAL
DBTOOLS_LAMBDA_PORT=$LAMBDA_PORT
DBTOOLS_BUILD_PROFILE=$(build_mode)
DBTOOLS_QUEUE_MAX_CONCURRENCY=$QUEUE_MAX_CONCURRENCY
DBTOOLS_EVENT_QUEUE_URL=$EVENT_QUEUE_URL
EOF
}

# ---------------------------------------------------------------------------------------------

STARTED=()
TAIL_PID=
MIGRATE_ALL_FAILED=

stop_started() {
  local i
  [ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null || true
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    case "${STARTED[$i]}" in
      watch) log "stopping cargo lambda watch"; stop_pidfile watch ;;
      trigger) log "stopping the local queue trigger"; stop_pidfile trigger ;;
      moto) log "stopping the local Secrets Manager"; stop_pidfile moto ;;
      pg|pg2) stop_postgres "${STARTED[$i]}" ;;
    esac
  done
  STARTED=()
}

up() {
  mkdir -p "$RUN"
  ensure_tools
  build_functions
  start_postgres pg
  start_postgres pg2
  start_secrets_manager
  write_env
  start_watch "$@"
  start_trigger
  register_secondary
  invoke_migrate_all
}

cmd=${1:-}
shift || true
case "$cmd" in
  tools)
    ensure_tools
    log "tools ready: $(cargo lambda --version 2>/dev/null | head -1); PostgreSQL in $PG_BIN"
    ;;
  dev)
    trap 'stop_started; exit 130' INT
    trap 'stop_started; exit 143' TERM
    trap 'stop_started' EXIT
    up
    log "ready:"
    log "  API             $(api_url)/api/tenants   (POST, GET; GET and DELETE /api/tenants/{slug})"
    log "  migrate-all     cargo lambda invoke migrate-all --invoke-address 127.0.0.1 --invoke-port $LAMBDA_PORT --data-ascii '{}'"
    log "  servers         $(api_url)/api/servers   (primary and secondary)"
    log "  PostgreSQL      postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres (primary; registry: $SYSTEM_DB_NAME)"
    log "                  postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG2_PORT/postgres (secondary)"
    log "  Secrets Manager $(sm_url) (secret $SECRET_ID)"
    log "  queue           $QUEUE_URL -> migrate-tenant (local trigger, at most $QUEUE_MAX_CONCURRENCY at once)"
    log "  events          bus $EVENT_BUS -> queue $EVENT_QUEUE_URL (lifecycle events)"
    log "  logs            .local/watch.log, .local/trigger.log, .local/pg/server.log, .local/pg2/server.log, .local/moto.log"
    [ -z "$MIGRATE_ALL_FAILED" ] || log "  note            the start-up migrate-all reported failures (above)"
    log "Ctrl-C stops everything; make reset deletes the local clusters (a fresh start)."
    tail -n +1 -f "$LOCAL/watch.log" &
    TAIL_PID=$!
    wait "$(cat "$RUN/watch.pid")" || true
    ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "usage: stack.sh run -- COMMAND..."
    mkdir -p "$RUN"
    ensure_tools
    trap 'stop_started' EXIT
    trap 'stop_started; exit 130' INT
    trap 'stop_started; exit 143' TERM
    if api_up && pg_isready_local pg && pg_isready_local pg2 && sm_up && [ -f "$LOCAL/functions.env" ]; then
      running=$(cat "$RUN/watch.mode" 2>/dev/null || echo unknown)
      [ "$running" = "$(build_mode)" ] \
        || die "the stack on $(api_url) serves $running builds, $(build_mode) wanted: stop it first (or set RELEASE to match)"
      log "reusing the running stack on $(api_url)"
      QUEUE_URL=$(sed -n 's/^MIGRATE_QUEUE_URL=//p' "$LOCAL/functions.env")
      create_event_bus
      build_functions
      start_trigger
      register_secondary
    else
      up --ignore-changes
    fi
    set -a
    # shellcheck disable=SC1091
    . <(stack_env)
    set +a
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  env)
    ensure_postgres >/dev/null
    stack_env
    ;;
  pg-stop|pg2-stop)
    # For the fault tests: stop and start a project cluster (not whoever started it).
    ensure_postgres >/dev/null
    cluster=${cmd%-stop}
    as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$cluster")/data" -m fast -w stop >/dev/null
    ;;
  pg-start|pg2-start)
    ensure_postgres >/dev/null
    cluster=${cmd%-start}
    as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$cluster")/data" -l "$(pg_dir "$cluster")/server.log" -w -t 60 \
      -o "$(pg_server_opts "$cluster")" start >/dev/null
    ;;
  pg-freeze|pg-thaw)
    # For the fault tests: SIGSTOP (or SIGCONT) the postmaster and every backend. Frozen, the
    # server still accepts TCP connections and acknowledges packets but answers nothing: what
    # a failover or a network black hole looks like from a client.
    ensure_postgres >/dev/null
    pid=$(head -1 "$(pg_dir pg)/data/postmaster.pid")
    sig=STOP; [ "$cmd" = pg-thaw ] && sig=CONT
    # shellcheck disable=SC2046
    kill -"$sig" "$pid" $(pgrep -P "$pid" || true)
    ;;
  sm-freeze|sm-thaw)
    # For the fault tests: SIGSTOP (or SIGCONT) the local Secrets Manager: calls to it hang.
    sig=STOP; [ "$cmd" = sm-thaw ] && sig=CONT
    kill -"$sig" "$(cat "$RUN/moto.pid")"
    ;;
  wipe)
    # Stop whatever this stack runs and delete its cluster (the bench's throwaway one).
    ensure_postgres >/dev/null
    stop_pidfile trigger
    stop_pidfile watch
    stop_pidfile moto
    for cluster in pg pg2; do
      if [ -f "$(pg_dir "$cluster")/data/PG_VERSION" ]; then stop_postgres "$cluster"; fi
      real=$(readlink -f "$(pg_dir "$cluster")" 2>/dev/null || true)
      case "$real" in /tmp/dbtools-pg*) rm -rf "$real" ;; esac
      rm -rf "$(pg_dir "$cluster")"
    done
    # The logs stay, for reading after the run.
    rm -rf "$RUN" "$LOCAL/functions.env"
    ;;
  put-secret)
    # For the fault tests: put-secret PASSWORD rewrites the admin secret with a new password.
    PG_PASSWORD=${1:?password}
    put_secret
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
