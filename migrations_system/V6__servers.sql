-- The PostgreSQL servers tenant databases live on. The server that holds the registry is
-- always there, as 'primary': its host, port and admin secret are the functions' own
-- (DB_SECRET_ID, DB_HOST, DB_PORT), so the row holds none. Every other server is registered
-- with its host, port and admin secret (POST /api/servers).
CREATE TABLE servers (
    name                TEXT PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    host                TEXT CHECK (char_length(host) BETWEEN 1 AND 253),
    port                INTEGER CHECK (port BETWEEN 1 AND 65535),
    secret_arn          TEXT CHECK (char_length(secret_arn) BETWEEN 1 AND 2048),
    -- The most tenants (not purged) it may hold: placement never passes it.
    max_tenants         INTEGER NOT NULL CHECK (max_tenants >= 0),
    -- The most connections migrate-all opens on it at once.
    migrate_concurrency INTEGER NOT NULL CHECK (migrate_concurrency BETWEEN 1 AND 64),
    -- open: takes new tenants; draining: keeps its tenants, takes no new one.
    state               TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'draining')),
    -- pg_control_system()'s: one cluster is never registered twice (NULL where the admin
    -- role may not read it).
    system_identifier   BIGINT UNIQUE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT servers_primary_check CHECK (
        (name = 'primary') = (host IS NULL AND port IS NULL AND secret_arn IS NULL)
        AND (name = 'primary' OR (host IS NOT NULL AND port IS NOT NULL AND secret_arn IS NOT NULL)))
);

INSERT INTO servers (name, max_tenants, migrate_concurrency) VALUES ('primary', 10000, 10);

-- Every tenant is on a server: the existing ones on primary. A purged tenant keeps the name of
-- the server it was on, until that server is deleted. This release always names the server;
-- the default is for the previous release's functions, which may still serve a few requests
-- while a deploy switches over, and know only primary.
ALTER TABLE tenants ADD COLUMN server TEXT DEFAULT 'primary'
    REFERENCES servers (name) ON DELETE SET NULL;
ALTER TABLE tenants ADD CONSTRAINT tenants_server_check
    CHECK (server IS NOT NULL OR status = 'purged');
-- Placement counts each server's tenants.
CREATE INDEX tenants_server_idx ON tenants (server) WHERE status <> 'purged';

-- Each server has its own tenant templates.
ALTER TABLE tenant_templates ADD COLUMN server TEXT NOT NULL DEFAULT 'primary'
    REFERENCES servers (name) ON DELETE CASCADE;
ALTER TABLE tenant_templates ALTER COLUMN server DROP DEFAULT;
ALTER TABLE tenant_templates DROP CONSTRAINT tenant_templates_pkey;
ALTER TABLE tenant_templates ADD PRIMARY KEY (server, name);
