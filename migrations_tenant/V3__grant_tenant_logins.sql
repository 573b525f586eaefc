-- Tenant logins read and write the tenant's tables and run no DDL. They are members of one
-- NOLOGIN group role, dbtools_tenant_rw, which the product makes on every server before it
-- runs a tenant migration; CONNECT, granted to each login on its own database only, is what
-- keeps a tenant out of the others'.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO dbtools_tenant_rw;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO dbtools_tenant_rw;
-- The migration history is the product's, not the application's.
REVOKE ALL ON refinery_schema_history FROM dbtools_tenant_rw;
-- And every table and sequence the migrations after this one make (they run as this role).
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO dbtools_tenant_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO dbtools_tenant_rw;
