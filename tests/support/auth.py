"""A gateway with every kind of credential on, and ways to present hostile ones."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import jwt
import orjson
from aiohttp.test_utils import TestClient

from tests.support.gateways import CHAT


def sha256(value: str) -> str:
    """How settings name a secret (`sha256:<hex>`), computed as an admin would with
    sha256sum: independently of the gateway's own code."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


SECRET = "hs256-secret-for-the-auth-tests-" + "x" * 16
STATIC = "static-key-for-the-ops-team-0123456789"
TIERS = {
    "free": {"endpoints": ["chat.completions", "models"], "models": ["fake"], "max_tokens": 5},
    "premium": {"models": ["fake", "other*"]},
    "enterprise": {},
}


def auth_settings(**overrides: Any) -> dict[str, Any]:
    """An auth policy taking API keys, a static key (premium) and HS256 tokens."""
    jwt_settings = {
        "algorithms": ["HS256"],
        "secret_env": "TEST_JWT_SECRET",
        "audience": "gw",
        "issuer": "idp",
        "max_token_bytes": 4096,
        **overrides.pop("jwt", {}),
    }
    return {
        "type": "auth",
        "static_keys": [
            {
                "hash": sha256(STATIC),
                "owner": "ops",
                "tier": "premium",
            }
        ],
        "jwt": jwt_settings,
        "cache_seconds": 1,
        **overrides,
    }


def token(key: Any = SECRET, algorithm: str = "HS256", headers: Any = None, **claims: Any) -> str:
    """A token the gateway accepts, with `claims` changed (None drops a claim)."""
    now = int(time.time())
    payload = {"sub": "user-1", "aud": "gw", "iss": "idp", "exp": now + 60, **claims}
    kept = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(kept, key, algorithm=algorithm, headers=headers)


async def raw_post(client: TestClient[Any, Any], path: str, headers: bytes) -> tuple[int, Any]:
    """POST CHAT with header lines as raw bytes (no client would send them): status, JSON."""
    status, _, payload = await raw_reply(client, path, headers)
    return status, orjson.loads(payload)


async def raw_reply(
    client: TestClient[Any, Any], path: str, headers: bytes
) -> tuple[int, bytes, bytes]:
    """POST CHAT with header lines as raw bytes: the status, head and body as sent."""
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + headers
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        reply = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, payload
