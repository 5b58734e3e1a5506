"""The response cache: stored answers of deterministic requests, replayed as JSON or SSE,
found by a canonical key or (opt-in) by a semantic index over them."""
