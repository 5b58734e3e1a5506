"""The `semantic:` block of the cache policy: which embedding model, how close is close
enough, and the bounds of the index."""

from __future__ import annotations

from pydantic import Field

from gateway.policy import PolicyEnv, PolicySettings

MIB = 1024 * 1024


class SemanticSettings(PolicySettings):
    # The embedding model that turns prompts into vectors: a model of the gateway's own
    # configuration (`models.<name>`), served by a llama-server started with `--embeddings`.
    model: str = Field(min_length=1)
    # Cosine similarity at or above which a stored answer is served. The default comes from
    # the labelled set in bench/semantic_pairs.jsonl with the small Gemma model (figures in
    # docs/benchmarks.md): its hard negatives (a changed number, date, entity or negation)
    # score as high as 0.99996, above every paraphrase, and one text embedded twice differs
    # by up to 2e-6, so no threshold below 1 is safe: 1 serves only prompts whose vectors
    # coincide. Lower it only for a real sentence-embedding model, measured on your pairs
    # (`python bench/semantic_cache.py --url ...`).
    threshold: float = Field(1.0, gt=0, le=1)
    # Entries kept per partition (same scope, model identity and parameters); the oldest go
    # first. The lookup compares a vector with all of them.
    max_entries_per_partition: int = Field(256, gt=0, le=16384)
    # Bound of the embedding call, and of the index lookup on Redis; past it the request
    # gets no semantic hit (it goes on as a miss), never an error.
    timeout_seconds: float = Field(0.5, gt=0, le=30)
    # Prompts longer than this (in characters) are not embedded: a long prompt is rarely
    # asked twice in other words, and embedding it costs more than it can save.
    max_text_chars: int = Field(2000, gt=0, le=100_000)
    # Memory of this process's copy of the index, over every partition; the partitions
    # used least recently are dropped first (with Redis they are read again when needed).
    mirror_max_bytes: int = Field(64 * MIB, gt=0)
    # With Redis: a partition nobody adds to for this long expires.
    partition_ttl_seconds: int = Field(7 * 24 * 3600, gt=0)


def semantic_problems(
    settings: SemanticSettings, env: PolicyEnv, path: str = "semantic"
) -> list[str]:
    """Cross-checks for the policy's `problems()`: the embedding model must be configured."""
    models = env.config.models
    if settings.model in models:
        return []
    known = ", ".join(sorted(models)) or "none"
    return [
        f"{path}.model: '{settings.model}' is not a model of this configuration (models: "
        f"{known}); name the embedding model the gateway routes to, e.g. gemma3-270m-embed"
    ]
