-- Append-only audit trail of what happened inside the tenant.
CREATE TABLE activity_log (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    action      VARCHAR(100) NOT NULL,
    entity_type VARCHAR(50),
    entity_id   UUID,
    details     JSONB,
    created_at  TIMESTAMP DEFAULT NOW()
);

-- "What happened recently" (newest first).
CREATE INDEX activity_log_created_at_idx ON activity_log (created_at DESC);
-- "History of this entity", newest first.
CREATE INDEX activity_log_entity_idx ON activity_log (entity_type, entity_id, created_at DESC);
-- "Every time X was done", newest first.
CREATE INDEX activity_log_action_idx ON activity_log (action, created_at DESC);
