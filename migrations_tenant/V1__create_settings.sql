-- Per-tenant key/value settings.
CREATE TABLE settings (
    key        VARCHAR(100) PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMP DEFAULT NOW()
);
