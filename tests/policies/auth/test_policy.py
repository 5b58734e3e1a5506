"""The auth policy: keys in PostgreSQL, static keys, JWTs, anonymous access, tier permissions."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import openai
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from policies.auth.keys import KeyStore, open_store
from tests.support.auth import sha256
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, gateway_config
from tests.support.tcp_proxy import TcpProxy
from tests.support.tokens import b64

SECRET = "s" * 40
STATIC = "static-key-for-the-ops-team-0123456789"
TIERS = {
    "free": {"endpoints": ["chat.completions", "models"], "models": ["fake"], "max_tokens": 5},
    "premium": {"models": ["fake", "other*"]},
}


def auth_config(fake_url: str, pg_url: str, **auth: Any) -> Any:
    settings = {
        "type": "auth",
        "static_keys": [
            {
                "hash": sha256(STATIC),
                "owner": "ops",
                "tier": "premium",
            }
        ],
        "jwt": {
            "algorithms": ["HS256"],
            "secret_env": "TEST_JWT_SECRET",
            "audience": "gw",
            "issuer": "idp",
            "max_token_bytes": 4096,
            "tiers": {"premium": "premium", "free": "free"},
        },
        "cache_seconds": 1,
        **auth,
    }
    return gateway_config(
        fake_url,
        models={
            "fake": {"upstreams": [fake_url]},
            "other-1": {"upstreams": [fake_url]},
            "secret": {"upstreams": [fake_url]},
        },
        storage={"database_url": pg_url},
        tiers=TIERS,
        policies=[{"type": "request_id"}, settings],
    )


@pytest.fixture
async def store(pg_url: str, tmp_path: Any) -> Any:
    opened = open_store(pg_url, tmp_path / "unused.db")
    await opened.start()
    yield opened
    await opened.close()


@pytest.fixture
async def gateway(
    aiohttp_client: Any, fake_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> TestClient[Any, Any]:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(auth_config(fake_url, pg_url)))
    return client


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {
        "sub": "user-1",
        "tier": "premium",
        "aud": "gw",
        "iss": "idp",
        "exp": now + 60,
        **claims,
    }
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, SECRET, algorithm="HS256"
    )


def signed(key: Any, algorithm: str) -> str:
    claims = {"sub": "x", "aud": "gw", "iss": "idp", "exp": int(time.time()) + 60}
    return jwt.encode(claims, key, algorithm=algorithm)


def bad_credentials(key: str, revoked: str, expired: str) -> dict[str, dict[str, str]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    alg_none = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(b'{"sub":"x","tier":"premium"}') + "."
    key_id = key.split("_")[1]
    return {
        "no credentials": {},
        "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer "},
        "key with wrong secret": {"Authorization": f"Bearer sk-gw_{key_id}_{'A' * 43}"},
        "key with unknown id": {"Authorization": f"Bearer sk-gw_{'0' * 12}_{key.split('_', 2)[2]}"},
        "truncated key": {"Authorization": f"Bearer {key[:-5]}"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
        "expired key": {"Authorization": f"Bearer {expired}"},
        "random string": {"Authorization": "Bearer hello-there"},
        "wrong api-key header": {"api-key": "sk-not-a-key"},
        "jwt alg none": {"Authorization": f"Bearer {alg_none}"},
        "jwt expired": {"Authorization": f"Bearer {token(exp=int(time.time()) - 3600)}"},
        "jwt not yet valid": {"Authorization": f"Bearer {token(nbf=int(time.time()) + 3600)}"},
        "jwt wrong signature": {"Authorization": f"Bearer {signed('x' * 40, 'HS256')}"},
        "jwt wrong audience": {"Authorization": f"Bearer {token(aud='someone-else')}"},
        "jwt wrong issuer": {"Authorization": f"Bearer {token(iss='evil')}"},
        "jwt without exp": {"Authorization": f"Bearer {token(exp=None)}"},
        "jwt without sub": {"Authorization": f"Bearer {token(sub=None)}"},
        "jwt signed with RS256": {"Authorization": f"Bearer {signed(rsa_key, 'RS256')}"},
        "jwt oversized": {"Authorization": f"Bearer {token(pad='x' * 5000)}"},
        "jwt garbage segments": {"Authorization": "Bearer a.b.c"},
    }


async def test_bad_credentials_get_401_and_reach_nothing(
    gateway: TestClient[Any, Any], store: KeyStore, fake: FakeLlama
) -> None:
    key, _ = await store.create("alice", "premium", None)
    revoked, revoked_key = await store.create("bob", "premium", None)
    await store.revoke(revoked_key.id)
    expired, _ = await store.create("carol", "premium", datetime.now(UTC) - timedelta(seconds=1))
    before = await store.list()
    cases = bad_credentials(key, revoked, expired)
    assert len(cases) >= 15
    for name, headers in cases.items():
        resp = await gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 401, name
        error = (await resp.json())["error"]
        assert error["code"] == "invalid_api_key", name
        assert resp.headers["WWW-Authenticate"] == "Bearer", name
        assert key not in error["message"]
    assert fake.requests == []
    assert await store.list() == before


async def test_created_key_works_as_bearer_and_as_api_key_header(
    gateway: TestClient[Any, Any], store: KeyStore
) -> None:
    key, _ = await store.create("alice", "premium", None)
    for headers in ({"Authorization": f"Bearer {key}"}, {"api-key": key}):
        assert (
            await gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
        ).status == 200


async def test_static_key_and_jwt_are_accepted(gateway: TestClient[Any, Any]) -> None:
    for credential in (STATIC, token()):
        resp = await gateway.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {credential}"}
        )
        assert resp.status == 200


async def test_tier_limits_models_endpoints_and_max_tokens(
    gateway: TestClient[Any, Any], store: KeyStore, fake: FakeLlama
) -> None:
    key, _ = await store.create("dave", "free", None)
    headers = {"Authorization": f"Bearer {key}"}
    resp = await gateway.post(
        "/v1/chat/completions", json={**CHAT, "model": "other-1"}, headers=headers
    )
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "permission_denied"
    resp = await gateway.post(
        "/v1/embeddings", json={"model": "fake", "input": "x"}, headers=headers
    )
    assert resp.status == 403
    assert fake.requests == []
    await gateway.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100}, headers=headers)
    await gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    await gateway.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}, headers=headers)
    assert [r.get("max_tokens") for r in fake.requests] == [5, 5, 3]


async def test_models_lists_only_what_the_tier_may_use(
    gateway: TestClient[Any, Any], store: KeyStore
) -> None:
    free, _ = await store.create("erin", "free", None)
    ids = {}
    for credential in (free, STATIC):
        resp = await gateway.get("/v1/models", headers={"Authorization": f"Bearer {credential}"})
        ids[credential] = [m["id"] for m in (await resp.json())["data"]]
    assert ids == {free: ["fake"], STATIC: ["fake", "other-1"]}


async def test_revoked_key_stops_working_on_every_replica_after_the_cache_time(
    aiohttp_client: Any,
    fake_url: str,
    pg_url: str,
    store: KeyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    replicas = [await aiohttp_client(create_app(auth_config(fake_url, pg_url))) for _ in range(2)]
    key, record = await store.create("frank", "premium", None)
    headers = {"Authorization": f"Bearer {key}"}
    for replica in replicas:
        assert (
            await replica.post("/v1/chat/completions", json=CHAT, headers=headers)
        ).status == 200
    await store.revoke(record.id)
    await asyncio.sleep(1.2)  # the replicas cache key records for cache_seconds = 1
    for replica in replicas:
        assert (
            await replica.post("/v1/chat/completions", json=CHAT, headers=headers)
        ).status == 401


async def test_anonymous_tier_uses_the_forwarded_address_only_from_trusted_proxies(
    aiohttp_client: Any, fake_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    anonymous = {"tier": "free", "trusted_proxies": ["127.0.0.0/8"]}
    client = await aiohttp_client(create_app(auth_config(fake_url, pg_url, anonymous=anonymous)))
    resp = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
    )
    assert resp.status == 200
    assert resp.headers["X-Request-ID"]
    untrusted = await aiohttp_client(
        create_app(auth_config(fake_url, pg_url, anonymous={"tier": "free"}))
    )
    assert (await untrusted.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_openai_sdk_client_uses_a_created_key(
    gateway: TestClient[Any, Any], store: KeyStore
) -> None:
    key, _ = await store.create("grace", "premium", None)
    base = str(gateway.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="sk-wrong").models.list()
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="secret", messages=[])


async def test_ready_requires_the_api_key_database(
    aiohttp_client: Any, fake_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    dsn = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    client = await aiohttp_client(create_app(auth_config(fake_url, dsn)))

    async def ready_with(database: bool) -> int:
        """/ready's status once every model is up and the key database is as given."""
        for _ in range(250):
            resp = await client.get("/ready")
            checks = (await resp.json())["checks"]
            models_up = all(ok for name, ok in checks.items() if name.startswith("model:"))
            if models_up and checks.get("auth:database") is database:
                return resp.status
            await asyncio.sleep(0.02)
        raise AssertionError(f"/ready never reported auth:database={database}: {checks}")

    try:
        assert await ready_with(database=True) == 200
        await proxy.close()
        assert await ready_with(database=False) == 503  # keys cannot be checked
    finally:
        await proxy.close()
