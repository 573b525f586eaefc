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

-- One event per outcome of a tenant: the transitions of its status, and a change of server.
CREATE FUNCTION dbtools_tenant_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t tenants;
    kind TEXT;
    detail JSONB;
    moved RECORD;
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
        ELSIF NEW.status = OLD.status AND NEW.server IS DISTINCT FROM OLD.server
              AND OLD.server IS NOT NULL AND NEW.server IS NOT NULL THEN
            kind := 'tenantMoved';
        END IF;
    END IF;
    IF kind IS NULL THEN
        RETURN NULL;
    END IF;
    detail := jsonb_build_object(
        'tenant_id', t.id,
        'slug', t.slug,
        'name', t.name,
        'status', t.status,
        'server', t.server,
        'database_name', t.database_name,
        'credentials_secret_arn', t.credentials_secret_arn,
        'schema_version', t.schema_version);
    IF kind = 'deprovisionSuccess' THEN
        -- The purge cleared it: the secret it scheduled for deletion.
        detail := detail || jsonb_build_object('credentials_secret_arn', OLD.credentials_secret_arn);
    END IF;
    IF kind = 'tenantMoved' THEN
        SELECT m.id, m.mode INTO moved FROM moves m
         WHERE m.tenant_id = t.id AND m.state = 'running' AND m.to_server = NEW.server;
        detail := detail || jsonb_build_object(
            'from_server', OLD.server, 'to_server', NEW.server,
            'move_id', moved.id, 'mode', moved.mode);
    END IF;
    INSERT INTO events (detail_type, detail) VALUES (kind, detail);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_events
    AFTER UPDATE OF status, server OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION dbtools_tenant_event();

-- A run of the ledger that ends (running -> completed, incomplete, failed or halted) tells its
-- counts. A dry run writes no ledger, and tells nothing.
CREATE FUNCTION dbtools_run_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'running' AND NEW.status <> 'running' THEN
        INSERT INTO events (detail_type, detail) VALUES ('migrationRunFinished', jsonb_build_object(
            'run_id', NEW.id,
            'status', NEW.status,
            'counts', NEW.counts,
            'latest_version', NEW.latest_version,
            'started_at', NEW.started_at,
            'finished_at', NEW.finished_at));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_events
    AFTER UPDATE OF status ON runs
    FOR EACH ROW EXECUTE FUNCTION dbtools_run_event();
