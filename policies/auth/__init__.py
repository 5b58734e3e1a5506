"""Authentication: API keys (`keys`) and JWTs (`jwt`)."""
