-- Lifecycle events (shared/src/events): an outbox, written by triggers in the same
-- transaction as the registry change it tells of, so that no outcome that commits goes
-- without its event and no event tells of one that did not commit. The functions send
-- what is pending after their work, migrate-all's upkeep sends what a killed function left,
-- and a row is deleted once EventBridge has taken it.
CREATE TABLE events (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- SaaS Builder Toolkit's names where they apply: provisionSuccess, provisionFailure,
    -- deprovisionSuccess, activateSuccess, deactivateSuccess; ours: tenantMoved,
    -- migrationRunFinished.
    detail_type TEXT NOT NULL,
    detail      JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
-- Sent oldest first.
CREATE INDEX events_created_at_idx ON events (created_at, id);

-- A tenant's fields as every tenant event carries them (the API's names; never a password).
CREATE FUNCTION dbtools_tenant_detail(t tenants) RETURNS JSONB LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'tenant_id', t.id,
        'slug', t.slug,
        'name', t.name,
        'status', t.status,
        'server', t.server,
        'database_name', t.database_name,
        'credentials_secret_arn', t.credentials_secret_arn,
        'schema_version', t.schema_version)
$$;

-- One event per transition of a tenant's status.
CREATE FUNCTION dbtools_tenant_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t tenants;
    kind TEXT;
    detail JSONB;
BEGIN
    IF TG_OP = 'DELETE' THEN
        t := OLD;
        -- A provisioning row goes only when its create failed and was undone.
        IF OLD.status = 'provisioning' THEN
            kind := 'provisionFailure';
        END IF;
    ELSE
        t := NEW;
        IF OLD.status = 'provisioning' AND NEW.status = 'active' THEN
            kind := 'provisionSuccess';
        ELSIF OLD.status = 'active' AND NEW.status = 'deleted' THEN
            kind := 'deactivateSuccess';
        ELSIF OLD.status = 'deleted' AND NEW.status = 'active' THEN
            kind := 'activateSuccess';
        ELSIF OLD.status <> 'purged' AND NEW.status = 'purged' THEN
            kind := 'deprovisionSuccess';
        END IF;
    END IF;
    IF kind IS NULL THEN
        RETURN NULL;
    END IF;
    detail := dbtools_tenant_detail(t);
    IF kind = 'deprovisionSuccess' THEN
        -- The purge cleared it: the secret it scheduled for deletion.
        detail := detail || jsonb_build_object('credentials_secret_arn', OLD.credentials_secret_arn);
    END IF;
    INSERT INTO events (detail_type, detail) VALUES (kind, detail);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_events
    AFTER UPDATE OF status OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION dbtools_tenant_event();

-- A move that ends `done`: the registry, the login and the secret all name the new server by
-- then (the switch moved the registry; the finish opened the login and re-pointed the secret).
CREATE FUNCTION dbtools_move_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t tenants;
BEGIN
    IF OLD.state = 'running' AND NEW.state = 'done' THEN
        SELECT * INTO t FROM tenants WHERE id = NEW.tenant_id;
        INSERT INTO events (detail_type, detail) VALUES ('tenantMoved',
            dbtools_tenant_detail(t) || jsonb_build_object(
                'from_server', NEW.from_server, 'to_server', NEW.to_server,
                'move_id', NEW.id, 'mode', NEW.mode,
                'writes_refused_ms', (extract(epoch FROM NEW.fence_ended_at - NEW.fence_started_at)
                                      * 1000)::bigint));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER moves_events
    AFTER UPDATE OF state ON moves
    FOR EACH ROW EXECUTE FUNCTION dbtools_move_event();

-- A run of the ledger that ends (running -> completed, incomplete, failed or halted) tells its
-- counts. The trigger is deferred to the commit and reads the run as committed: a halt or a
-- close of a dead run sets the status first and the counts after, in the same transaction.
-- A retried run that ends again tells it again, with its `attempt`. A dry run writes no
-- ledger, and tells nothing.
CREATE FUNCTION dbtools_run_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    IF OLD.status = 'running' AND NEW.status <> 'running' THEN
        SELECT * INTO r FROM runs WHERE id = NEW.id;
        INSERT INTO events (detail_type, detail) VALUES ('migrationRunFinished', jsonb_build_object(
            'run_id', r.id,
            'status', r.status,
            'attempt', r.attempt,
            'counts', r.counts,
            'latest_version', r.latest_version,
            'started_at', r.started_at,
            'finished_at', r.finished_at));
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER runs_events
    AFTER UPDATE OF status ON runs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION dbtools_run_event();
