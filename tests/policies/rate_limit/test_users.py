"""Per-user buckets: one user is one subject of one kind of credential, never a name
another kind of credential can also carry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.storage import StorageConfig
from policies.auth.keys import open_store
from tests.support.auth import sha256
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import CHAT, STORAGE, limit_policy

SECRET = "s" * 40
STATIC = "static-key-of-alice-0123456789"


def token(subject: str) -> str:
    claims = {"sub": subject, "tier": "free", "exp": int(time.time()) + 300}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def api_keys(data_dir: Path, *owners: str) -> list[str]:
    store = open_store(None, StorageConfig(data_dir=str(data_dir)).sqlite_path)
    await store.start()
    try:
        return [(await store.create(owner, "free"))[0] for owner in owners]
    finally:
        await store.close()


async def per_user_gateway(
    make_gateway: GatewayFactory, prefix: str, data_dir: Path
) -> TestClient[Any, Any]:
    static = {"hash": sha256(STATIC)}
    return await make_gateway(
        storage={**STORAGE, "data_dir": str(data_dir)},
        tiers={"free": {}},
        policies=[
            {
                "type": "auth",
                "static_keys": [{**static, "owner": "alice", "tier": "free"}],
                "jwt": {
                    "algorithms": ["HS256"],
                    "secret_env": "TEST_JWT_SECRET",
                    "tiers": {"free": "free"},
                },
            },
            limit_policy(prefix, tiers={"free": {"per_user": {"requests_per_minute": 2}}}),
        ],
    )


async def status(client: TestClient[Any, Any], credential: str) -> int:
    headers = {"Authorization": f"Bearer {credential}"}
    return (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status


async def test_key_owner_and_token_subject_of_one_name_are_two_users(
    make_gateway: GatewayFactory, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    first, second = await api_keys(tmp_path, "alice", "alice")
    client = await per_user_gateway(make_gateway, prefix, tmp_path)
    # Two keys of the owner "alice" share her bucket of two requests a minute...
    assert [await status(client, first), await status(client, second)] == [200, 200]
    assert [await status(client, first), await status(client, second)] == [429, 429]
    # ...which a token for the subject "alice" and a static key of "alice" do not touch.
    assert [await status(client, token("alice")) for _ in range(3)] == [200, 200, 429]
    assert [await status(client, STATIC) for _ in range(3)] == [200, 200, 429]
