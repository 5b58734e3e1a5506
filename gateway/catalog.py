"""The models the gateway lists itself: `GET /v1/models` and `GET /v1/models/{model}`
(the SDK's `models.list()` and `models.retrieve()`), the configured models, each caller
seeing only those its tier may use (`ctx.model_allowed`, set by an auth policy)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson

from gateway.context import RequestContext
from gateway.endpoints import MODEL, MODELS
from gateway.errors import GatewayError

Entry = dict[str, str | int]


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or you do not have access to it; GET "
        f"{MODELS.path} lists the models you can use.",
        code="model_not_found",
        param="model",
    )


class Catalog:
    def __init__(self, names: Iterable[str]) -> None:
        created = int(time.time())
        self.models: dict[str, Entry] = {
            name: {"id": name, "object": "model", "created": created, "owned_by": "llama-gateway"}
            for name in names
        }
        self.list_body = orjson.dumps({"object": "list", "data": list(self.models.values())})
        self.bodies = {name: orjson.dumps(entry) for name, entry in self.models.items()}

    def answer(self, ctx: RequestContext) -> bytes:
        """The body for a request of one of the gateway's own model endpoints."""
        if ctx.endpoint == MODEL.name:
            return self.one(ctx, ctx.request.match_info.get("model", ""))
        return self.listing(ctx)

    def listing(self, ctx: RequestContext) -> bytes:
        allowed = ctx.model_allowed
        if allowed is None:
            return self.list_body
        visible = [entry for name, entry in self.models.items() if allowed(name)]
        return orjson.dumps({"object": "list", "data": visible})

    def one(self, ctx: RequestContext, name: str) -> bytes:
        """The model as the list shows it; 404 for one this caller does not see, as for one
        that is not configured (which models exist is not told to those who may not use them)."""
        body = self.bodies.get(name)
        allowed = ctx.model_allowed
        if body is None or (allowed is not None and not allowed(name)):
            raise model_not_found(name)
        ctx.model = name
        return body
