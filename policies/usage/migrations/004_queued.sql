-- Admission: how long a request waited in the gateway's queue for an upstream slot, in
-- milliseconds; NULL when it did not wait (a slot was free, or no upstream was called).
ALTER TABLE usage_records ADD COLUMN queued_ms double precision;
