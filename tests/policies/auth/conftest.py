"""Fixtures of the auth policy's tests: signing keys, made once a session since an RSA key
takes a while to generate; the gateway of the auth tests, and forged credentials presented
to it; key stores on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.auth import SECRET, TIERS, raw_reply
from tests.support.fake_llama import FakeLlama
from tests.support.forged import Attacker, Case, Present, RsaKey, RsaKeys, material, start
from tests.support.gateways import GatewayFactory
from tests.support.key_stores import Stores


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def rsa_keys(rsa_key: RsaKey, other_rsa_key: RsaKey) -> RsaKeys:
    return rsa_key, other_rsa_key, new_rsa_key()


@pytest.fixture
def auth_gateway(
    make_gateway: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> GatewayFactory:
    """Starts a gateway with the tiers of the auth tests and the policies it is given, its
    data in tmp_path, the HS256 secret of auth_settings() in its environment."""
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)

    async def started(*policies: dict[str, Any]) -> TestClient[Any, Any]:
        return await make_gateway(
            storage={"data_dir": str(tmp_path)}, tiers=TIERS, policies=list(policies)
        )

    return started


@pytest.fixture
async def attacker(aiohttp_server: Any) -> tuple[Attacker, str]:
    """A server standing for an attacker, and the URL of a key set on it for tokens to name."""
    served = Attacker()
    app = web.Application()
    app.router.add_get("/{tail:.*}", served.handle)
    server = await aiohttp_server(app)
    return served, str(server.make_url("/keys.json"))


@pytest.fixture
def present(
    auth_gateway: GatewayFactory,
    fake: FakeLlama,
    tmp_path: Path,
    rsa_keys: RsaKeys,
    attacker: tuple[Attacker, str],
) -> Present:
    """Presents a case's forged header lines to the gateway it names and checks the answer:
    the case's status, nothing fetched that a token pointed to, the upstream reached by what
    is let in alone, and a refusal in the OpenAI error shape."""

    async def presented(case: Case) -> None:
        gateway = await start(auth_gateway, tmp_path, case.gateway, rsa_keys)
        forged = case.headers(await material(tmp_path, rsa_keys, attacker[1]))
        status, head, body = await raw_reply(gateway, "/v1/chat/completions", forged)
        assert status == case.status
        assert attacker[0].hits == 0  # the gateway fetched nothing a token pointed to
        if status == 200:
            assert len(fake.requests) == 1
            return
        assert fake.requests == []
        if status == 400:
            return  # the HTTP parser's answer: its shape is the server's, not the policy's
        error = orjson.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        expected = {401: "invalid_api_key", 403: "permission_denied"}[status]
        assert error["code"] == expected
        if status == 401:
            assert b"\r\nWWW-Authenticate: Bearer" in head

    return presented


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each database a key store keeps its keys in: a fresh PostgreSQL schema, or SQLite."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return None


@pytest.fixture
async def stores(database_url: str | None, tmp_path: Path) -> AsyncIterator[Stores]:
    made = Stores(database_url, tmp_path / "nested" / "gateway.db")
    try:
        yield made
    finally:
        await asyncio.gather(*(store.close() for store in made.opened))
