-- API keys (SPEC F2.4). Only a hash of each key is kept, never the key itself.
-- Plain SQL that PostgreSQL and SQLite both accept: SQLite keeps the times as ISO 8601 text.
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    key_hash text NOT NULL,
    owner text NOT NULL,
    tier text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz
);
