-- Every tenant has a login of its own (a role named like its database) and a Secrets Manager
-- secret with its credentials. Both names are stored when the row is made, never recomputed;
-- the secret's ARN once it exists (NULL where there is none, e.g. after a purge). Rows made
-- before this release get them from the next migrate-all run.
ALTER TABLE tenants ADD COLUMN role_name TEXT;
ALTER TABLE tenants ADD COLUMN secret_name TEXT;
ALTER TABLE tenants ADD COLUMN credentials_secret_arn TEXT;

-- deleted -> purged: the database, the login and the secret are gone; the row stays, so the
-- slug is never reused. A purge in progress is marked first, so that one interrupted is
-- finished (by a new purge request or by migrate-all) and never restored half-way.
ALTER TABLE tenants ADD COLUMN purge_requested_at TIMESTAMPTZ;
ALTER TABLE tenants ADD COLUMN purged_at TIMESTAMPTZ;

ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'active', 'deleted', 'purged'));
ALTER TABLE tenants DROP CONSTRAINT tenants_deleted_at_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_deleted_at_check
    CHECK ((status IN ('deleted', 'purged')) = (deleted_at IS NOT NULL));
ALTER TABLE tenants ADD CONSTRAINT tenants_purged_at_check
    CHECK ((status = 'purged') = (purged_at IS NOT NULL));
ALTER TABLE tenants ADD CONSTRAINT tenants_purge_requested_check
    CHECK (purge_requested_at IS NULL OR status IN ('deleted', 'purged'));

-- Tenant logins may connect to their own database only: not to the registry either.
DO $$
BEGIN
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
