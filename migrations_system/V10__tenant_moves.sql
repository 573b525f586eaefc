-- A tenant's move to another server (shared/src/tenant/moves): one row per move, advanced
-- step by step by messages on the migrate queue. The OID of the target database is chosen
-- and committed here before the database exists (the proof of ownership a create uses), and
-- the source's OID is kept for the day its retained copy is dropped.
CREATE TABLE moves (
    id                 UUID PRIMARY KEY,
    tenant_id          UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    slug               TEXT NOT NULL,
    from_server        TEXT NOT NULL,
    to_server          TEXT NOT NULL CHECK (to_server <> from_server),
    mode               TEXT NOT NULL CHECK (mode IN ('copy', 'online')),
    step               TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    cancel_requested   BOOLEAN NOT NULL DEFAULT false,
    database_name      TEXT NOT NULL,
    source_oid         BIGINT NOT NULL,
    target_oid         BIGINT NOT NULL,
    -- Past it, a running move's message is taken as lost and sent again (migrate-all's upkeep).
    lease_expires_at   TIMESTAMPTZ NOT NULL,
    fence_started_at   TIMESTAMPTZ,
    fence_ended_at     TIMESTAMPTZ,
    tables_copied      BIGINT,
    rows_copied        BIGINT,
    bytes_copied       BIGINT,
    error              TEXT,
    -- The source's copy (login disabled, data intact) is kept until then.
    source_drop_after  TIMESTAMPTZ,
    source_dropped_at  TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at        TIMESTAMPTZ
);

-- One running move per tenant: a second request is refused by this index (409).
CREATE UNIQUE INDEX moves_one_running_per_tenant ON moves (tenant_id) WHERE state = 'running';
CREATE INDEX moves_newest ON moves (created_at DESC, id DESC);
-- The retained copies upkeep drops, and the copies that stand in a returning move's way.
CREATE INDEX moves_retained ON moves (from_server, database_name)
    WHERE state = 'done' AND source_dropped_at IS NULL;
