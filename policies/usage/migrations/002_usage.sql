-- Usage accounting (SPEC F5): one row per request that entered the policy chain.
-- Plain SQL that PostgreSQL and SQLite both accept: SQLite keeps the times as ISO 8601 text
-- (UTC, fixed width, so they compare as text) and the booleans as 0/1.
CREATE TABLE usage_records (
    -- Assigned by the gateway when the request completes: what replays are idempotent on.
    -- (request_id may come from the client and repeat; the record id never does.)
    id text PRIMARY KEY,
    request_id text,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    principal text,
    key_id text,
    subject text,
    tier text,
    model text,
    endpoint text NOT NULL,
    upstream text,
    status integer NOT NULL,
    outcome text NOT NULL,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    cached boolean NOT NULL,
    streamed boolean NOT NULL,
    disconnected boolean NOT NULL,
    latency_ms double precision NOT NULL,
    ttft_ms double precision,
    cost double precision NOT NULL
);
-- Reports read a time range: a range scan on started_at instead of the whole table.
CREATE INDEX usage_records_started_at ON usage_records (started_at);
-- One caller's usage (a key, a user) over a time range without reading everyone else's.
CREATE INDEX usage_records_key_id ON usage_records (key_id, started_at);
CREATE INDEX usage_records_subject ON usage_records (subject, started_at);
-- Looking a request up by the ID in its X-Request-ID header or log lines.
CREATE INDEX usage_records_request_id ON usage_records (request_id);
