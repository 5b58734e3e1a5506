"""Hostile text in credentials: refused where it enters, never a 500, never passed on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from aiohttp.test_utils import TestClient

from policies.auth.keys import open_store
from policies.auth.text import sanitised
from tests.support.auth import auth_settings, raw_post, token
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory


@pytest.fixture
async def gateway(auth_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await auth_gateway({"type": "request_id"}, auth_settings(default_tier="free"))


def assert_unauthorized(status: int, body: Any) -> None:
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer sk-gw_\xff\xfe\xfd\r\n",
        b"Authorization: Bearer caf\xc3\xa9-static-key\r\n",
        b"Authorization: Bearer a\x80b.c\x81d.e\x82f\r\n",
        b"Authorization: \xffBearer x\r\n",
        b"api-key: sk-\xff\xfe\r\n",
        b"api-key: caf\xc3\xa9\r\n",
    ],
    ids=["bearer-latin1", "bearer-utf8", "jwt-shaped", "scheme", "api-key-latin1", "api-key-utf8"],
)
async def test_non_ascii_credential_bytes_get_a_401_not_a_500(
    gateway: TestClient[Any, Any], fake: FakeLlama, header: bytes
) -> None:
    assert_unauthorized(*await raw_post(gateway, "/v1/chat/completions", header))
    assert fake.requests == []


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "\ud800x"},
        {"sub": "alice\nINFO forged log line"},
        {"sub": "bob\x00"},
        {"sub": "c" * 257},
        {"sub": "dave", "scope": "chat \udfff"},
        {"sub": "erin", "tier": "free\u202e"},
    ],
    ids=["lone-surrogate", "newline", "nul", "too-long", "scope-surrogate", "tier-bidi"],
)
async def test_signed_tokens_with_unprintable_claims_are_refused(
    gateway: TestClient[Any, Any], fake: FakeLlama, claims: dict[str, Any]
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token(**claims)}"}
    )
    body = await resp.json()
    assert_unauthorized(resp.status, body)
    assert "must be printable text of at most 256 characters" in body["error"]["message"]
    assert fake.requests == []


async def test_a_token_with_an_ordinary_unicode_subject_is_accepted(
    gateway: TestClient[Any, Any],
) -> None:
    bearer = {"Authorization": f"Bearer {token(sub='zoë@example.com')}"}
    resp = await gateway.post("/v1/chat/completions", json=CHAT, headers=bearer)
    assert resp.status == 200


async def test_a_key_owner_with_control_characters_is_served_with_them_replaced(
    gateway: TestClient[Any, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(None, tmp_path / "gateway.db")
    await store.start()
    try:
        key, record = await store.create("mallory", "premium")
        async with aiosqlite.connect(tmp_path / "gateway.db") as db:  # as any other tool could
            await db.execute(
                "UPDATE api_keys SET owner = ? WHERE id = ?", ("m\x1b[31m\n", record.id)
            )
            await db.commit()
        assert [k.owner for k in await store.list()] == ["m\ufffd[31m\ufffd"]
    finally:
        await store.close()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        resp = await gateway.post("/v1/chat/completions", json=CHAT, headers={"api-key": key})
    assert resp.status == 200
    assert not any("\x1b" in r.getMessage() or "\x1b" in str(r.__dict__) for r in caplog.records)


def test_sanitised_keeps_sane_text_and_replaces_the_rest() -> None:
    assert sanitised("zoë") == "zoë"
    assert sanitised("a\ud800b\x00") == "a\ufffdb\ufffd"
    assert len(sanitised("x" * 1000)) == 256
