-- A provisioning row carries a lease: past it, the provisioning is presumed dead (the Lambda
-- was killed) and the next POST of the slug or migrate-all finishes or undoes it.
ALTER TABLE tenants ADD COLUMN lease_expires_at TIMESTAMPTZ;
-- Idempotent create: the client's Idempotency-Key, and what the request asked for, stored with
-- the row in the same statement.
ALTER TABLE tenants ADD COLUMN idempotency_key TEXT;
ALTER TABLE tenants ADD COLUMN request_fingerprint TEXT;

CREATE UNIQUE INDEX tenants_idempotency_key_key ON tenants (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tenants_provisioning_lease_idx ON tenants (lease_expires_at)
    WHERE status = 'provisioning';
