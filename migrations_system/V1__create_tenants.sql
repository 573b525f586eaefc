-- The tenant registry: one row per tenant, ever (slugs are never reused).
CREATE TABLE tenants (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name           TEXT NOT NULL
                   CHECK (char_length(name) BETWEEN 1 AND 200),
    slug           TEXT NOT NULL
                   CONSTRAINT tenants_slug_key UNIQUE
                   CHECK (slug ~ '^[a-z][a-z0-9_]{2,47}$'),
    database_name  TEXT NOT NULL
                   CONSTRAINT tenants_database_name_key UNIQUE
                   CHECK (database_name = 'dbtools_tenant_' || slug),
    status         TEXT NOT NULL DEFAULT 'provisioning'
                   CONSTRAINT tenants_status_check
                   CHECK (status IN ('provisioning', 'active', 'deleted')),
    schema_version INTEGER NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at     TIMESTAMPTZ,
    CONSTRAINT tenants_deleted_at_check CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);

-- Keyset pagination, oldest first, optionally filtered by status.
CREATE INDEX tenants_created_at_id_idx ON tenants (created_at, id);
CREATE INDEX tenants_status_created_at_id_idx ON tenants (status, created_at, id);
