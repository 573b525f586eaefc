-- dbtools:no-transaction
-- Who did it: the application's id of the acting user, and "what did this user do", newest
-- first. activity_log grows with the tenant and is written all day, so the index is built
-- concurrently (writes go on while it builds), which PostgreSQL refuses inside a transaction:
-- hence the directive above. Each statement may run again (a run cut short is repeated from
-- the start), so each says IF NOT EXISTS.
ALTER TABLE activity_log ADD COLUMN IF NOT EXISTS actor_id UUID;
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_log_actor_idx
    ON activity_log (actor_id, created_at DESC);
