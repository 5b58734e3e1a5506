"""A JWKS served over HTTP: fetched once and cached, fetched again for a new kid at most
once an interval, its last good keys kept while the server is down or answers badly."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from policies.auth.jwt import JwtSettings, JwtVerifier
from tests.support.tokens import claims, public_jwk, refused, sign


@dataclass
class Jwks:
    keys: list[dict[str, Any]]
    hits: int = 0
    server: Any = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks(aiohttp_server: Any, rsa_key: rsa.RSAPrivateKey) -> Jwks:
    served = Jwks([public_jwk(rsa_key, "k1")])
    app = web.Application()
    app.router.add_get("/jwks.json", served.handle)
    served.server = server = await aiohttp_server(app)
    served.url = str(server.make_url("/jwks.json"))
    return served


def remote(jwks: Jwks, **settings: Any) -> JwtVerifier:
    return JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_url=jwks.url, **settings))


async def test_jwks_url_keys_verify_tokens_and_are_cached(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks)
    for _ in range(3):
        assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="k1"))).subject
    assert jwks.hits == 1


async def test_rotated_key_is_accepted_after_a_refresh(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_min_refetch_seconds=0)
    await verifier.start()
    jwks.keys = [public_jwk(rsa_key, "k1"), public_jwk(other_rsa_key, "k2")]
    got = await verifier.verify(sign(claims(), other_rsa_key, "RS256", kid="k2"))
    assert got.subject == "alice"
    assert jwks.hits == 2


async def test_unknown_kids_refetch_at_most_once_per_interval(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_min_refetch_seconds=60)
    await verifier.start()
    for kid in ("x1", "x2", "x3"):
        assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid=kid)) == "unknown_key"
    assert jwks.hits == 1


async def test_cached_keys_still_work_when_the_jwks_server_is_down(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_cache_seconds=0.01, jwks_min_refetch_seconds=0)
    await verifier.start()
    await jwks.server.close()
    await asyncio.sleep(0.02)  # let the cache go stale, so each verify tries (and fails) to refresh
    for _ in range(2):
        assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="k1"))).subject
    assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid="k9")) == "unknown_key"


async def test_unreachable_jwks_with_no_cached_keys_is_keys_unavailable(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    await jwks.server.close()
    verifier = remote(jwks)
    assert await refused(verifier, sign(claims(), rsa_key, "RS256")) == "keys_unavailable"


async def test_a_bad_jwks_response_keeps_the_previous_keys(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_min_refetch_seconds=0)
    await verifier.start()
    jwks.keys = [{"kty": "oct", "k": "c2VjcmV0"}]  # no usable key: an HMAC secret
    assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid="new")) == "unknown_key"
    assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="k1"))).subject
