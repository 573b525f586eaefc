#!/usr/bin/env bash
# Schema-driven fuzzing of the local API (a running stack: `make dev`, or `make test`'s):
# schemathesis generates requests from infra/openapi.yaml in every phase (examples, coverage,
# fuzzing, stateful) and runs every check; afterwards no tenant database may exist that the
# registry does not own (a rejected request must create nothing).
#
#   scripts/fuzz.sh [EXAMPLES_PER_OPERATION] [WORKERS]
#
# `make test` runs it bounded (about 400 requests); `make fuzz` runs it long.
#
# Checks left out, and why:
# - use_after_free: DELETE is a soft delete by contract; GET still answers the tenant (deleted).
# - unsupported_method: undeclared methods are answered by the router (cargo lambda watch
#   locally, API Gateway in AWS) with 404, not by our functions.
# - positive_data_acceptance: the cursor is opaque; a schema-valid string that is not a cursor
#   this API issued is rightly a 400.
# What the local emulator cannot carry is sent as API Gateway would hand it over: see
# scripts/fuzz_hooks.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXAMPLES=${1:-1000}
WORKERS=${2:-4}
PG="postgres://postgres:postgres@127.0.0.1:${PG_PORT:-5433}/${SYSTEM_DB_NAME:-dbtools}"
PSQL=psql
command -v psql >/dev/null || PSQL="${DBTOOLS_PG_BIN:-/usr/lib/postgresql/15/bin}/psql"
unowned() {
  "$PSQL" -Atq "$PG" -c "SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'dbtools\_tenant\_%' ESCAPE '\\'
    AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.database_name = d.datname AND t.database_oid = d.oid::bigint)
    ORDER BY 1"
}
provisioning() { "$PSQL" -Atq "$PG" -c "SELECT count(*) FROM tenants WHERE status = 'provisioning'"; }
before=$(unowned)
stuck_before=$(provisioning)
status=0
cd "$ROOT"
SCHEMATHESIS_HOOKS=scripts.fuzz_hooks PYTHONPATH="$ROOT" "$ROOT/.venv/fuzz/bin/st" run \
  "$ROOT/infra/openapi.yaml" --url "http://127.0.0.1:${LAMBDA_PORT:-9000}" \
  --checks all --exclude-checks use_after_free,unsupported_method,positive_data_acceptance \
  --phases examples,coverage,fuzzing,stateful -n "$EXAMPLES" --workers "$WORKERS" \
  --generation-deterministic --request-timeout 20 || status=$?
# No request may leave a database nobody owns, nor a row half-way (every request answered:
# a provisioning row now would be one its request abandoned).
new=$(comm -13 <(printf '%s\n' "$before") <(unowned) | grep -v '^$' || true)
stuck=$(provisioning)
echo "databases without a registry row, new: ${new:-none}; rows provisioning: $stuck_before before, $stuck after"
[ -z "$new" ] || { echo "a request left a database nobody owns"; exit 1; }
[ "$stuck" -le "$stuck_before" ] || { echo "a request left a row provisioning"; exit 1; }
exit "$status"
