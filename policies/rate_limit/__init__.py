"""Rate limits in Redis (or in process): requests, tokens, in-flight requests and quotas."""
