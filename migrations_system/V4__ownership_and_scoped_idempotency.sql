-- Proof of ownership. Provisioning chooses the OID of a tenant's database and commits it on
-- the row *before* `CREATE DATABASE ... OID = n` runs, so a database is this registry's exactly
-- when its name and OID are the row's. Anything else of a tenant's name (a squatter, a database
-- dropped and made again by hand) is never adopted, altered nor dropped.
ALTER TABLE tenants ADD COLUMN database_oid BIGINT;

-- Tenants that finished provisioning before this release: their database was made by this
-- registry (the registry and the tenants share the server).
UPDATE tenants t SET database_oid = d.oid::bigint
FROM pg_database d
WHERE d.datname = t.database_name AND t.status IN ('active', 'deleted');

-- The tenant templates this registry built (see shared/src/template.rs), proven the same way.
CREATE TABLE tenant_templates (
    -- dbtools_template_<migrations' fingerprint>_<registry's>; the registry's part is new:
    -- templates of releases before this one lack it.
    name         TEXT PRIMARY KEY CHECK (name ~ '^dbtools_template_[0-9a-f]{16}(_[0-9a-f]{8})?$'),
    database_oid BIGINT NOT NULL,
    version      INTEGER NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO tenant_templates (name, database_oid, version)
SELECT d.datname, d.oid::bigint, 0
FROM pg_database d
WHERE d.datname ~ '^dbtools_template_[0-9a-f]{16}$' AND NOT d.datallowconn;

-- Idempotency keys belong to the caller that sent them (its IAM principal; '' when there is
-- none, as on the local stack) and expire.
ALTER TABLE tenants ADD COLUMN idempotency_scope TEXT;
ALTER TABLE tenants ADD COLUMN idempotency_expires_at TIMESTAMPTZ;
UPDATE tenants
SET idempotency_scope = '', idempotency_expires_at = created_at + interval '24 hours'
WHERE idempotency_key IS NOT NULL;

DROP INDEX tenants_idempotency_key_key;
CREATE UNIQUE INDEX tenants_idempotency_key_key ON tenants (idempotency_scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE tenants ADD CONSTRAINT tenants_idempotency_scope_check
    CHECK ((idempotency_key IS NULL) = (idempotency_scope IS NULL)
       AND (idempotency_key IS NULL) = (idempotency_expires_at IS NULL));
