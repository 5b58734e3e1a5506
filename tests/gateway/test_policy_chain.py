"""The hook order of the policy chain (see gateway/policy.py), proved with recording policies."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.app import STATE, create_app
from gateway.context import Reply, RequestContext
from gateway.errors import GatewayError
from gateway.policy import Chain, Policy, describe
from tests.support.gateways import CHAT, ENV, gateway_config


class Recorder(Policy):
    def __init__(
        self, name: str, log: list[str], *, reply: int | None = None, raises: bool = False
    ) -> None:
        super().__init__(None, ENV)
        self.name = name  # type: ignore[misc]
        self.log = log
        self.reply = reply
        self.raises = raises

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        self.log.append(f"{self.name}.request")
        if self.raises:
            raise GatewayError(429, "slow down", code="rate_limit_exceeded")
        return Reply(self.reply, b'{"cached": true}') if self.reply else None

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        self.log.append(f"{self.name}.response")
        headers[f"X-{self.name}"] = "seen"

    async def on_event(self, ctx: RequestContext, event: bytes) -> bytes | None:
        self.log.append(f"{self.name}.event")
        return event

    async def on_complete(self, ctx: RequestContext) -> None:
        self.log.append(f"{self.name}.complete:{ctx.outcome}")


class OnlyComplete(Policy):
    name = "only_complete"

    def __init__(self, log: list[str]) -> None:
        super().__init__(None, ENV)
        self.log = log

    async def on_complete(self, ctx: RequestContext) -> None:
        self.log.append("only_complete.complete")


async def run(aiohttp_client: Any, fake_url: str, chain: Chain, body: dict[str, Any]) -> Any:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(gateway_config(fake_url), chain))
    resp = await client.post("/v1/chat/completions", json=body)
    await resp.read()
    relay = client.app[STATE].relay
    assert relay is not None
    await relay.drain()
    return resp


async def test_request_hooks_run_in_order_and_the_rest_in_reverse(
    aiohttp_client: Any, fake_url: str
) -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log)])
    resp = await run(aiohttp_client, fake_url, chain, CHAT)
    assert resp.status == 200
    assert log == [
        "a.request",
        "b.request",
        "b.response",
        "a.response",
        "b.event",
        "a.event",
        "b.complete:ok",
        "a.complete:ok",
    ]


async def test_stream_events_pass_each_policy_in_reverse_order(
    aiohttp_client: Any, fake_url: str
) -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log)])
    await run(aiohttp_client, fake_url, chain, {**CHAT, "stream": True, "fake": {"chunks": 2}})
    events = [entry for entry in log if entry.endswith(".event")]
    # role, two content events, finish, [DONE]: the usage-only event is hidden before the hooks.
    assert events == ["b.event", "a.event"] * 5


async def test_a_reply_skips_later_policies_entirely(aiohttp_client: Any, fake_url: str) -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, reply=200), Recorder("c", log)])
    resp = await run(aiohttp_client, fake_url, chain, CHAT)
    assert await resp.json() == {"cached": True}
    assert resp.headers["X-b"] == "seen"
    assert "X-c" not in resp.headers
    assert log == [
        "a.request",
        "b.request",
        "b.response",
        "a.response",
        "b.complete:ok",
        "a.complete:ok",
    ]


async def test_a_rejection_still_completes_the_policies_that_ran(
    aiohttp_client: Any, fake_url: str
) -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, raises=True), Recorder("c", log)])
    resp = await run(aiohttp_client, fake_url, chain, CHAT)
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
    assert log == [
        "a.request",
        "b.request",
        "b.response",
        "a.response",
        "b.complete:rejected",
        "a.complete:rejected",
    ]


async def test_policy_without_request_hook_before_a_rejection_is_completed(
    aiohttp_client: Any, fake_url: str
) -> None:
    log: list[str] = []
    chain = Chain([OnlyComplete(log), Recorder("b", log, raises=True)])
    await run(aiohttp_client, fake_url, chain, CHAT)
    assert log[-1] == "only_complete.complete"


async def test_upstream_error_is_reported_to_on_complete(
    aiohttp_client: Any, fake_url: str
) -> None:
    log: list[str] = []
    await run(
        aiohttp_client, fake_url, Chain([Recorder("a", log)]), {**CHAT, "fake": {"status": 500}}
    )
    assert log[-1] == "a.complete:upstream_error"


def test_hook_lists_leave_out_policies_that_keep_the_default() -> None:
    chain = Chain([OnlyComplete([]), Recorder("r", [])])
    assert describe(chain) == {
        "on_request": ["r"],
        "on_response": ["r"],
        "on_event": ["r"],
        "on_complete": ["r", "only_complete"],
    }
    assert not Chain([OnlyComplete([])]).wants_events


async def test_broken_stream_is_reported_to_on_complete(aiohttp_client: Any, fake_url: str) -> None:
    log: list[str] = []
    body = {**CHAT, "stream": True, "fake": {"chunks": 1, "drop_after": 1}}
    await run(aiohttp_client, fake_url, Chain([Recorder("a", log)]), body)
    assert log[-1] == "a.complete:upstream_error"
