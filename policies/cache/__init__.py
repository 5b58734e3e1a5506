"""The response cache: stored answers of deterministic requests, replayed as JSON or SSE."""
