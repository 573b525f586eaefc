-- The fingerprint of the exact tenant migrations a tenant's database was last seen at (created
-- from the template, or verified by migrate-all): with `schema_version`, it lets the nightly
-- migrate-all skip, without a connection, every tenant already at the released migrations.
-- NULL means "not known": the next migrate-all connects and checks.
ALTER TABLE tenants ADD COLUMN schema_fingerprint TEXT;
