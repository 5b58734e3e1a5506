-- Failover: how many upstream calls a request took (more than one when a replica failed
-- before answering and another was tried; 0 when none was made). Rows from before count
-- one call when they name an upstream.
ALTER TABLE usage_records ADD COLUMN attempts integer NOT NULL DEFAULT 0;
UPDATE usage_records SET attempts = 1 WHERE upstream IS NOT NULL;
