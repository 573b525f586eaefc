-- The run ledger (shared/src/ledger.rs): each migrate-all run, and each tenant's outcome in it,
-- written as the work happens; read through GET /api/runs.
CREATE TABLE runs (
    id             UUID PRIMARY KEY,
    status         TEXT NOT NULL
                   CHECK (status IN ('running', 'completed', 'incomplete', 'failed', 'halted')),
    -- The event as the run understood it (dry_run, verify, slugs, concurrency).
    options        JSONB NOT NULL,
    -- The migrations the run brings tenants to, and the latest one.
    fingerprint    TEXT NOT NULL,
    latest_version BIGINT NOT NULL,
    counts         JSONB NOT NULL DEFAULT '{}',
    error          TEXT,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
-- Newest first, and the runs a killed invocation left running.
CREATE INDEX runs_newest_idx ON runs (started_at DESC, id DESC);
CREATE INDEX runs_running_idx ON runs (id) WHERE status = 'running';

CREATE TABLE run_tenants (
    run_id       UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    slug         TEXT NOT NULL,
    server       TEXT,
    status       TEXT NOT NULL CHECK (status IN
                 ('pending', 'migrated', 'up_to_date', 'failed', 'skipped', 'not_started', 'halted')),
    from_version BIGINT,
    to_version   BIGINT,
    error        TEXT,
    duration_ms  BIGINT,
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (run_id, slug)
);
-- A run's tenants of one status, by slug.
CREATE INDEX run_tenants_status_idx ON run_tenants (run_id, status, slug);
