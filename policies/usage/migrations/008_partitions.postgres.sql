-- Usage rows partitioned by month of started_at (PostgreSQL alone): a report over a time
-- range reads only the months it covers, and retention drops whole months (DROP TABLE)
-- instead of deleting rows one by one. The gateway makes each month's partition ahead of
-- time (usage_partition); a row outside every partition lands in usage_records_default.
-- A partitioned table's unique keys include its partition key: replays are idempotent on
-- (id, started_at), which a replayed record repeats exactly.
ALTER TABLE usage_records RENAME TO usage_records_old;
ALTER TABLE usage_records_old RENAME CONSTRAINT usage_records_pkey TO usage_records_old_pkey;
CREATE TABLE usage_records (LIKE usage_records_old INCLUDING DEFAULTS)
    PARTITION BY RANGE (started_at);
ALTER TABLE usage_records ADD PRIMARY KEY (id, started_at);
CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT;

-- The partition of the month `day` falls in (UTC), made unless it exists; its name.
CREATE FUNCTION usage_partition(day date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', day)::date;
    name text := 'usage_records_' || to_char(first, 'YYYY_MM');
BEGIN
    -- Replicas make the same partitions at start-up: one at a time.
    PERFORM pg_advisory_xact_lock(7802521634511102001);
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF usage_records FOR VALUES FROM (%L) TO (%L)',
        name,
        first::timestamp AT TIME ZONE 'UTC',
        (first + interval '1 month')::timestamp AT TIME ZONE 'UTC'
    );
    RETURN name;
END
$$;

-- Drop the month partitions that end at or before `cutoff`, and the default partition's
-- rows from before it; the names of the partitions dropped.
CREATE FUNCTION usage_drop_partitions(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(7802521634511102001);
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_records'::regclass
          AND c.relname ~ '^usage_records_[0-9]{4}_[0-9]{2}$'
          AND (to_date(right(c.relname, 7), 'YYYY_MM') + interval '1 month')::timestamp
              AT TIME ZONE 'UTC' <= cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        RETURN NEXT part.relname;
    END LOOP;
    DELETE FROM usage_records_default WHERE started_at < cutoff;
END
$$;

DO $$
DECLARE
    first date;
    idx record;
BEGIN
    -- Every month with rows, through the second after this one, before the rows move in
    -- (a month's partition cannot be made once the default partition holds rows of it).
    SELECT date_trunc('month', coalesce(min(started_at AT TIME ZONE 'UTC'), now() AT TIME ZONE 'UTC'))::date
        INTO first FROM usage_records_old;
    WHILE first <= date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months' LOOP
        PERFORM usage_partition(first);
        first := first + interval '1 month';
    END LOOP;
    INSERT INTO usage_records SELECT * FROM usage_records_old;
    -- The old table's other indexes, under their own names, on the partitioned table.
    FOR idx IN
        SELECT indexname, indexdef FROM pg_indexes
        WHERE schemaname = current_schema() AND tablename = 'usage_records_old'
          AND indexname <> 'usage_records_old_pkey'
    LOOP
        EXECUTE format('DROP INDEX %I', idx.indexname);
        EXECUTE regexp_replace(idx.indexdef, ' ON \S+ USING ', ' ON usage_records USING ');
    END LOOP;
END
$$;
DROP TABLE usage_records_old;
