"""A slow identity provider never holds up requests whose key is cached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from policies.auth.jwt import JwtSettings, JwtVerifier
from tests.support.tokens import public_jwk

SAFETY_SECONDS = 30  # only so that a broken build fails instead of hanging; never reached


def signed(key: rsa.RSAPrivateKey, kid: str) -> str:
    claims = {"sub": "alice", "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@dataclass
class SlowIdp:
    """Answers the first fetch at once; later ones wait until the test lets them go."""

    keys: list[dict[str, Any]]
    hits: int = 0
    answered: int = 0
    pending: int = 0  # fetches the IdP is holding right now
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.pending += 1
        try:
            if self.hits > 1:
                self.waiting.set()
                await asyncio.wait_for(self.release.wait(), SAFETY_SECONDS)
            self.answered += 1
            return web.json_response({"keys": self.keys})
        finally:
            self.pending -= 1


@pytest.fixture
async def idp(aiohttp_server: Any, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[SlowIdp]:
    served = SlowIdp([public_jwk(rsa_key, "k1")])
    app = web.Application()
    app.router.add_get("/jwks.json", served.handle)
    server = await aiohttp_server(app)
    served.url = str(server.make_url("/jwks.json"))
    yield served
    served.release.set()


async def started(idp: SlowIdp, **settings: Any) -> JwtVerifier:
    verifier = JwtVerifier(
        JwtSettings(algorithms=["RS256"], jwks_url=idp.url, jwks_timeout_seconds=60, **settings)
    )
    await verifier.start()
    assert idp.answered == 1
    return verifier


async def test_stale_keys_are_served_while_a_slow_refresh_runs_in_the_background(
    idp: SlowIdp, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = await started(idp, jwks_cache_seconds=0.001, jwks_min_refetch_seconds=0)
    await asyncio.sleep(0.01)  # the cached keys are now stale
    try:
        first = await verifier.verify(signed(rsa_key, "k1"))  # starts the refresh
        await asyncio.wait_for(idp.waiting.wait(), SAFETY_SECONDS)
        answers = await asyncio.gather(*(verifier.verify(signed(rsa_key, "k1")) for _ in range(7)))
        # Every request got its answer while the IdP still holds the one refresh.
        assert [a.subject for a in (first, *answers)] == ["alice"] * 8
        assert (idp.hits, idp.answered, idp.pending) == (2, 1, 1)
    finally:
        await verifier.close()


async def test_requests_with_an_unknown_kid_share_one_bounded_refresh(
    idp: SlowIdp, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = await started(idp, jwks_min_refetch_seconds=0)
    idp.keys = [public_jwk(rsa_key, "k1"), public_jwk(other_rsa_key, "k2")]  # the IdP rotates
    try:
        waiting = [
            asyncio.create_task(verifier.verify(signed(other_rsa_key, "k2"))) for _ in range(5)
        ]
        await asyncio.wait_for(idp.waiting.wait(), SAFETY_SECONDS)
        known = await verifier.verify(signed(rsa_key, "k1"))  # a known kid does not wait
        assert known.subject == "alice"
        assert idp.pending == 1
        assert not any(task.done() for task in waiting)
        idp.release.set()
        assert [c.subject for c in await asyncio.gather(*waiting)] == ["alice"] * 5
        assert idp.hits == 2  # five unknown-kid requests, one fetch
    finally:
        await verifier.close()


async def test_without_any_key_the_first_request_waits_for_the_fetch(
    idp: SlowIdp, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_url=idp.url))
    idp.hits = 1  # as if the start-up fetch had happened: this fetch is held
    pending = asyncio.create_task(verifier.verify(signed(rsa_key, "k1")))
    await asyncio.wait_for(idp.waiting.wait(), SAFETY_SECONDS)
    assert not pending.done()
    idp.release.set()
    assert (await pending).subject == "alice"


async def test_closing_the_verifier_cancels_a_refresh_under_way(
    idp: SlowIdp, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = await started(idp, jwks_min_refetch_seconds=0)
    pending = asyncio.create_task(verifier.verify(signed(rsa_key, "unknown")))
    await asyncio.wait_for(idp.waiting.wait(), SAFETY_SECONDS)
    assert idp.pending == 1
    await verifier.close()
    with pytest.raises(asyncio.CancelledError):
        await pending
