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
    ADD COLUMN updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Raised by each retry_run: a message carries the attempt it was sent for, and a worker
    -- ignores one of an earlier attempt (still in the queue, or at work when the retry came).
    ADD COLUMN attempt      BIGINT NOT NULL DEFAULT 0,
    -- Set once the rest of a run (after its canary wave) was sent: a canary message delivered
    -- again sends the rest only while it is not (the worker that released it may have died).
    ADD COLUMN rest_sent    BOOLEAN NOT NULL DEFAULT false;

-- Each tenant's wave (0: the canary; 1: the rest); NULL for a tenant decided when the run was
-- planned (up to date by the registry's record, or its server unreachable).
ALTER TABLE run_tenants ADD COLUMN wave BIGINT;
