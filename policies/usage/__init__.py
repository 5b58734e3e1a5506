"""Usage accounting: one record per request, written in batches, never lost."""
