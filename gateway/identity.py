"""What serves a model: the identity of each upstream's model, read from llama-server.

The health prober asks every healthy upstream for `GET /props` (the model file, the
chat template, the build, the server's default sampling settings) and `GET /v1/models`
(the model's size and parameter count) and hashes what can change an answer. A model's
identity combines those of its upstreams, so a policy that stores answers (the response
cache) can key them on it: a model file swapped behind the same name changes the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

PROPS_PATH = "/props"
MODELS_PATH = "/v1/models"
# The fields of /props that can change an answer; anything else there (slot counts, the
# web UI's settings, modalities) does not, and some of it changes between reads or processes
# (`is_sleeping`; `media_marker` is random per process; /v1/models' `created` is the time of
# the read). `build_info` of a llama.cpp built from a source archive is `b0-unknown`: it tells
# builds apart only when built from git. `n_ctx` is the context of one slot (`-c` / `-np`).
_PROPS_FIELDS = ("model_path", "chat_template", "build_info")
_SETTINGS_FIELDS = ("n_ctx", "params")


def upstream_identity(props: Any, models: Any) -> str | None:
    """A digest of what an upstream serves, or None when neither answer says anything."""
    facts: dict[str, Any] = {}
    if isinstance(props, dict):
        facts.update({name: props[name] for name in _PROPS_FIELDS if name in props})
        settings = props.get("default_generation_settings")
        if isinstance(settings, dict):
            facts.update({name: settings[name] for name in _SETTINGS_FIELDS if name in settings})
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        entries = [
            {name: entry.get(name) for name in ("id", "meta")}
            for entry in models["data"]
            if isinstance(entry, dict)
        ]
        # In a stable order: a server listing several models need not keep theirs.
        facts["models"] = sorted(entries, key=lambda entry: str(entry["id"]))
    if not facts:
        return None
    return _digest(facts)


def model_identity(identities: Iterable[str | None]) -> str | None:
    """The identity of a model from its upstreams' (those not yet known left out): the
    same set of served models gives the same identity, in any order."""
    known = sorted({identity for identity in identities if identity is not None})
    if not known:
        return None
    if len(known) == 1:
        return known[0]
    return _digest(known)


def _digest(value: Any) -> str:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(data).hexdigest()[:32]
