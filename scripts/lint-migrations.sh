#!/usr/bin/env bash
# squawk, the PostgreSQL migration linter, over migrations_tenant/ and migrations_system/
# (make test, make lint-migrations), configured by .squawk.toml:
# - migrations that run in a transaction (refinery's default) are linted with
#   --assume-in-transaction, so what they do to a table created in the same migration is not
#   flagged; those with the `-- dbtools:no-transaction` directive are linted as they run, one
#   statement at a time (squawk then asks that each may be repeated: IF NOT EXISTS);
# - then it lints tests/fixtures/unsafe_migrations/ and fails unless squawk refuses them, so a
#   linter that stopped flagging unsafe migrations cannot pass unnoticed.
# squawk-cli (a PyPI wheel holding the binary) is installed into .venv/squawk when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=2.70.0
VENV=.venv/squawk
if [ ! -e "$VENV/.installed-$VERSION" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check -q "squawk-cli==$VERSION"
  touch "$VENV/.installed-$VERSION"
fi
squawk() { NO_COLOR=1 "$VENV/bin/squawk" --config .squawk.toml "$@"; }

# True when the file's leading comments carry the directive (shared/src/migrate/runner.rs reads it
# the same way).
outside_transaction() {
  awk '/^[[:space:]]*$/ { next }
       /^[[:space:]]*--/ { if ($0 ~ /^[[:space:]]*-- dbtools:no-transaction[[:space:]]*$/) found = 1; next }
       { exit }
       END { exit !found }' "$1"
}

in_transaction=()
outside=()
for file in migrations_tenant/*.sql migrations_system/*.sql; do
  if outside_transaction "$file"; then outside+=("$file"); else in_transaction+=("$file"); fi
done
status=0
squawk --assume-in-transaction "${in_transaction[@]}" || status=1
if [ ${#outside[@]} -gt 0 ]; then squawk "${outside[@]}" || status=1; fi
[ "$status" -eq 0 ] || { echo "squawk: a migration above is unsafe on a busy table (see its explanation)"; exit 1; }
echo "squawk: ${#in_transaction[@]} migrations in a transaction, ${#outside[@]} outside one: no finding"

fixtures=(tests/fixtures/unsafe_migrations/*.sql)
if found=$(squawk --assume-in-transaction --reporter gcc "${fixtures[@]}"); then
  echo "squawk passed ${fixtures[*]}, which must be refused"; exit 1
fi
for rule in require-concurrent-index-creation adding-field-with-default; do
  grep -q "$rule" <<<"$found" || { echo "squawk did not flag $rule in the unsafe fixture:"; echo "$found"; exit 1; }
done
echo "squawk: the unsafe fixture is refused ($(grep -c warning <<<"$found") findings)"
