-- Runs beyond one invocation (shared/src/ledger.rs): a run fanned out over SQS stays `running`
-- after migrate-all returns, its workers record each tenant, and the last one closes it.
ALTER TABLE runs
    -- 'inline': the run lives and ends in one migrate-all invocation;
    -- 'queue': its tenants went to SQS and the migrate-tenant workers finish it.
    ADD COLUMN mode         TEXT NOT NULL DEFAULT 'inline' CHECK (mode IN ('inline', 'queue')),
    -- The highest wave released (0: the canary wave only; 1: every tenant).
    ADD COLUMN wave         BIGINT NOT NULL DEFAULT 1,
    -- The brake: the run halts once more tenants than this have failed (NULL: never).
    ADD COLUMN max_failures BIGINT,
    -- The last progress (a tenant recorded, a wave released): a queued run with none for
    -- RUN_STALL_SECS is stalled.
    ADD COLUMN updated_at   TIMESTAMPTZ NOT NULL DEFAULT now();

-- Each tenant's wave (0: the canary; 1: the rest); NULL for a tenant decided when the run was
-- planned (up to date by the registry's record, or its server unreachable).
ALTER TABLE run_tenants ADD COLUMN wave BIGINT;
