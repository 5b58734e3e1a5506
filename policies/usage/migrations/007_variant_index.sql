-- The usage dashboard's "Variants side by side" panel reads the rows that name a variant,
-- a few percent of the traffic but spread over every page of the table: this partial
-- index holds just those rows and every column the panel reads, so PostgreSQL answers it
-- from the index alone (an index-only scan) instead of visiting the table's pages for the
-- whole range. Rows without a variant cost an insert one test of the condition, nothing more.
-- On the table partitioned by month (008, PostgreSQL) every partition, present or to come,
-- has it.
CREATE INDEX usage_records_variant ON usage_records
    (started_at, model, variant, outcome, attempts, latency_ms, ttft_ms, completion_tokens, cost)
    WHERE variant IS NOT NULL;
