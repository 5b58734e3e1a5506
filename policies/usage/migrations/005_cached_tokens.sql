-- The upstream's prompt cache: how many of the prompt tokens llama-server took from its KV
-- cache instead of evaluating them (`prompt_tokens_details.cached_tokens`, or its
-- `timings.cache_n`); NULL when it did not say (no upstream answer, or a build without them).
ALTER TABLE usage_records ADD COLUMN cached_tokens integer;
