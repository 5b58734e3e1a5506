"""Which requests are cached, and the key of a stored answer.

A request is cached when its answer is determined by what it asks: every embedding, and
a generating request (chat, completions, and the Responses and Messages APIs' unstreamed)
whose `temperature` is explicitly 0 or that fixes a `seed`.
The check is a few dictionary lookups; the canonical form and its hash are made only for
requests that pass it.

The key is a SHA-256 over a canonical form of everything that can change the answer: the
endpoint, the model name and the identity of what serves it, the scope, the key's
version, and the body as sent upstream minus the fields that cannot change the answer
(`IGNORED`). Canonical at the top level only: fields sorted, integral floats written as
integers (`0.0` and `0` are one number to llama-server), booleans kept apart from numbers.
Nested values are kept as sent: llama-server reads JSON in order, so a JSON schema's
property order is the order of the answer's fields, and a chat template writes tools'
JSON (key order, `1.0` or `1`) into the prompt.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES

# Bumped whenever the canonical form or the stored entry changes meaning.
KEY_VERSION = 2
CACHED_ENDPOINTS = frozenset(
    e.name for e in (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES)
)
# Whose streamed answers are assembled into the stored form and replayed from it. A stream
# of the Responses or Messages API is a sequence of typed events (items, content parts,
# blocks) that the cache neither assembles nor writes: their streamed requests bypass it,
# their whole answers are cached.
STREAMED_ENDPOINTS = frozenset({CHAT_COMPLETIONS.name, COMPLETIONS.name})
DETERMINISTIC_ALWAYS = frozenset({EMBEDDINGS.name})
# Fields that do not change the answer's content:
# - `stream`, `stream_options`: how the answer is delivered (a stored answer is replayed
#   either way);
# - `user`: OpenAI's end-user tag, passed on for abuse tracking; the scope decides who
#   shares answers;
# - `cache_prompt`, `id_slot`: llama-server's prompt-cache reuse and slot choice, which
#   change where and how fast it computes, not what (docs/policies/cache.md says how far
#   llama-server keeps that promise).
IGNORED = frozenset({"stream", "stream_options", "user", "cache_prompt", "id_slot"})
# llama-server reads `seed` as an unsigned 32-bit number; 0xFFFFFFFF (so also -1) means
# "a random seed".
RANDOM_SEED = 0xFFFFFFFF
# Per-token data that the stored form (one JSON answer, assembled from a stream) does not
# keep: requests asking for it are not cached.
PER_TOKEN = ("logprobs", "top_logprobs", "n_probs", "timings_per_token", "post_sampling_probs")
# Integral floats up to this size become integers (orjson writes integers of 64 bits).
_INTEGRAL = 2.0**63


def deterministic(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether the answer is fixed by the request (the default rule of what is cached)."""
    if endpoint in DETERMINISTIC_ALWAYS:
        return True
    for name in PER_TOKEN:
        if body.get(name):
            return False
    temperature = body.get("temperature")
    if type(temperature) in (int, float) and temperature == 0:
        return True
    seed = body.get("seed")
    return type(seed) is int and 0 <= seed < RANDOM_SEED


def canonical(value: Any) -> Any:
    """A top-level field's value: an integral float as an integer, anything else as sent."""
    if type(value) is float and value.is_integer() and abs(value) < _INTEGRAL:
        return int(value)
    return value


def cache_key(
    endpoint: str, model: str, identity: str, scope: str, body: dict[str, Any]
) -> str | None:
    """The hex SHA-256 naming the stored answer of this request; None for a body nested
    too deeply to write out again (llama-server gets it as sent, uncached)."""
    try:
        kept = {k: canonical(body[k]) for k in sorted(body) if k not in IGNORED}
        form = orjson.dumps([KEY_VERSION, endpoint, model, identity, scope, kept])
    except (RecursionError, orjson.JSONEncodeError):
        return None
    return hashlib.sha256(form).hexdigest()


def scope_of(ctx: RequestContext, scope: str) -> str:
    """Who shares stored answers: a user is a name within one kind of credential (an API
    key owner "alice" and a token subject "alice" are two users)."""
    if scope == "global":
        return "global"
    if scope == "tier":
        return f"tier:{ctx.tier or ''}"
    if ctx.principal is not None:
        if ctx.subject is not None:
            return f"user:{ctx.principal.partition(':')[0]}:{ctx.subject}"
        return f"principal:{ctx.principal}"
    return f"ip:{ctx.request.remote}"
