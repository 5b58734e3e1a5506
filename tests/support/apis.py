"""What the Responses and Messages API tests share: request bodies, a policy that records
how each request ended, and a gateway in front of the fake with it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.context import RequestContext
from gateway.policy import Chain, Policy, PolicyEnv
from gateway.resources import Resources
from tests.support.gateways import gateway_config

RESPONSE = {"model": "fake", "input": "hello there"}
MESSAGE = {"model": "fake", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
# The fake's usage on both routes, in the gateway's shape (`gateway.dialects`).
RESPONSES_USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 3,
    "total_tokens": 8,
    "prompt_tokens_details": {"cached_tokens": 0},
}
MESSAGES_USAGE = {**RESPONSES_USAGE, "prompt_tokens_details": {"cached_tokens": 2}}


class Seen(Policy):
    """Records each request's context once it is over, as completion policies see it."""

    name = "seen"

    def __init__(self) -> None:
        super().__init__(None, PolicyEnv(gateway_config("http://127.0.0.1:9"), {}, Resources()))
        self.done: list[RequestContext] = []

    async def on_complete(self, ctx: RequestContext) -> None:
        self.done.append(ctx)

    async def last(self, client: TestClient[Any, Any]) -> RequestContext:
        """The last request's context, once its completion (a task of its own) has run."""
        for _ in range(200):
            if self.done:
                break
            await asyncio.sleep(0.01)
        await client.app[STATE].relay.drain()
        return self.done[-1]


async def seen_gateway(aiohttp_client: Any, fake_url: str) -> tuple[TestClient[Any, Any], Seen]:
    seen = Seen()
    client = await aiohttp_client(create_app(gateway_config(fake_url), Chain([seen])))
    return client, seen


def timeless(data: bytes) -> bytes:
    """Answer bytes without the times the fake writes (they differ between two calls)."""
    return re.sub(rb'"created(_at)?":\d+', b'"created":0', data)
