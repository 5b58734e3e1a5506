"""Forged credentials, presented through the real app: a row of a table of them, what its
header lines are forged from, the two gateways they go to and a server standing for an
attacker.

Two gateways: `hs` takes API keys (SQLite), a static key and HS256 tokens; `rs` takes RS256
tokens checked against a JWKS file of two keys (`k1`, `k2`). The attacker's server counts
fetches: the gateway must never fetch a key a token points to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.storage import StorageConfig
from policies.auth.keys import open_store
from tests.support.auth import auth_settings
from tests.support.gateways import GatewayFactory
from tests.support.tokens import public_jwk

RsaKey = rsa.RSAPrivateKey
RsaKeys = tuple[RsaKey, RsaKey, RsaKey]  # the JWKS's k1 and k2, and an attacker's


@dataclass(frozen=True)
class Material:
    key: str  # a good API key, tier premium
    other_key: str  # another good key
    revoked: str
    expired: str
    k1: RsaKey  # the JWKS's keys
    k2: RsaKey
    attacker: RsaKey
    attacker_url: str


@dataclass(frozen=True)
class Case:
    id: str
    headers: Callable[[Material], bytes]  # raw header lines
    status: int
    gateway: str = "hs"


Present = Callable[[Case], Awaitable[None]]  # presents a case and checks its answer


def bearer(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"Authorization: Bearer " + raw + b"\r\n"


@dataclass
class Attacker:
    hits: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": []})


async def material(data: Path, rsa_keys: RsaKeys, attacker_url: str) -> Material:
    store = open_store(None, StorageConfig(data_dir=str(data)).sqlite_path)
    await store.start()
    try:
        key, _ = await store.create("alice", "premium")
        other, _ = await store.create("bob", "premium")
        revoked, record = await store.create("carol", "premium")
        await store.revoke(record.id)
        expired, _ = await store.create("dave", "premium", datetime.now(UTC) - timedelta(seconds=1))
    finally:
        await store.close()
    return Material(key, other, revoked, expired, *rsa_keys, attacker_url)


async def start(
    auth_gateway: GatewayFactory, data: Path, kind: str, rsa_keys: RsaKeys
) -> TestClient[Any, Any]:
    """The gateway `kind` names (`hs` or `rs`), started by `auth_gateway` with its data (and
    the JWKS file) in `data`."""
    if kind == "hs":
        jwt_settings: dict[str, Any] = {"tiers": {"premium": "premium", "free": "free"}}
        settings = auth_settings(jwt=jwt_settings)
    else:
        jwks = data / "jwks.json"
        jwks.write_bytes(
            orjson.dumps({"keys": [public_jwk(rsa_keys[0], "k1"), public_jwk(rsa_keys[1], "k2")]})
        )
        settings = auth_settings(api_keys=False, default_tier="premium")
        settings["jwt"] = {
            "algorithms": ["RS256"],
            "jwks_file": str(jwks),
            "audience": "gw",
            "issuer": "idp",
        }
    return await auth_gateway(settings)
