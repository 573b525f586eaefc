-- Templates are made closed now (ALLOW_CONNECTIONS false from the start, see
-- shared/src/template.rs), so "takes no connection" no longer means "built": the registry
-- records when a template's build finished. The templates of earlier releases are not
-- recorded ready: they were built from template1 (where every login may leave objects) and
-- open to every login while built, so each is built again, from template0, by the next run or
-- create on its server.
ALTER TABLE tenant_templates ADD COLUMN ready_at TIMESTAMPTZ;

-- The registry's tables hold a row per tenant, per run and per run's tenant, and this runs once
-- per release under the migration lock timeout: a widened CHECK constraint is dropped and added
-- again, and validated at once (a scan of small tables).

-- A tenant that was busy, out of time or unreachable is `deferred`: recorded, taken by the
-- next run or retry_run, and never counted by the canary or the brake.
-- squawk-ignore ban-drop-constraint
ALTER TABLE run_tenants DROP CONSTRAINT run_tenants_status_check;
ALTER TABLE run_tenants ADD CONSTRAINT run_tenants_status_check CHECK (status IN
    ('pending', 'migrated', 'up_to_date', 'failed', 'skipped', 'not_started', 'halted',
     'deferred')) NOT VALID;
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE run_tenants VALIDATE CONSTRAINT run_tenants_status_check;

-- A queued run's canary wave keeps this many tenants that were really attempted: each deferred
-- one is replaced by a pending tenant of the rest (shared/src/ledger.rs, `next`), which records
-- the tenant it replaces and the tenant whose worker moved it (that worker sends its message;
-- its own message, delivered again, sends it again).
ALTER TABLE runs ADD COLUMN canary BIGINT NOT NULL DEFAULT 0;
ALTER TABLE run_tenants ADD COLUMN promoted_for TEXT, ADD COLUMN promoted_by TEXT;

-- A run that found another run at work did nothing, and says so in the ledger: `skipped`.
-- squawk-ignore ban-drop-constraint
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN
    ('running', 'completed', 'incomplete', 'failed', 'halted', 'skipped')) NOT VALID;
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE runs VALIDATE CONSTRAINT runs_status_check;

-- Opaque names (TENANT_NAMES=opaque): a tenant's database and login named after its id
-- ('dbtools_tenant_0' and the id's 32 hex digits: a slug never starts with a digit), so that
-- the catalogs every login can read name no customer. (V1's check on the name, which spans two
-- columns, got PostgreSQL's name for a table's check: tenants_check.)
-- squawk-ignore ban-drop-constraint
ALTER TABLE tenants DROP CONSTRAINT tenants_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_database_name_check CHECK (
    database_name = 'dbtools_tenant_' || slug
    OR database_name = 'dbtools_tenant_0' || replace(id::text, '-', '')) NOT VALID;
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE tenants VALIDATE CONSTRAINT tenants_database_name_check;
