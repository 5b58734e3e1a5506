"""Forged and malformed API keys and static keys, and no credential at all, each through the
real app with its expected status. The gateway they go to: tests/support/forged.py."""

from __future__ import annotations

import pytest

from tests.support.auth import STATIC
from tests.support.forged import Case, Present, bearer


def api_key(value: str) -> bytes:
    return b"api-key: " + value.encode() + b"\r\n"


def id_of(key: str) -> str:
    return key.split("_")[1]


def secret_of(key: str) -> str:
    return key.split("_", 2)[2]


CASES = [
    # Control cases: what the gateway does take.
    Case("good-api-key", lambda m: bearer(m.key), 200),
    Case("good-api-key-header", lambda m: api_key(m.key), 200),
    Case(
        "good-key-lowercase-scheme",
        lambda m: b"Authorization: bearer " + m.key.encode() + b"\r\n",
        200,
    ),
    Case("good-static-key", lambda m: bearer(STATIC), 200),
    # API keys.
    Case("key-wrong-secret", lambda m: bearer(f"sk-gw_{id_of(m.key)}_{'A' * 43}"), 401),
    Case("key-unknown-id", lambda m: bearer(f"sk-gw_{'0' * 12}_{secret_of(m.key)}"), 401),
    Case("key-revoked", lambda m: bearer(m.revoked), 401),
    Case("key-expired", lambda m: bearer(m.expired), 401),
    Case(
        "key-id-of-another-key",
        lambda m: bearer(f"sk-gw_{id_of(m.other_key)}_{secret_of(m.key)}"),
        401,
    ),
    Case("key-truncated", lambda m: bearer(m.key[:-1]), 401),
    Case("key-extended", lambda m: bearer(m.key + "A"), 401),
    Case(
        "key-uppercase-id",
        lambda m: bearer(f"sk-gw_{id_of(m.key).upper()}_{secret_of(m.key)}"),
        401,
    ),
    Case("key-cyrillic-s", lambda m: bearer(m.key.replace("s", "\u0455", 1).encode()), 401),
    Case("key-fullwidth-underscore", lambda m: bearer(m.key.replace("_", "\uff3f").encode()), 401),
    Case("key-with-tab", lambda m: bearer(m.key.encode() + b"\tx"), 401),
    # A NUL is no header byte: refused by the HTTP parser before any policy.
    Case("key-with-nul", lambda m: bearer(m.key.encode() + b"\x00"), 400),
    Case("key-in-basic-scheme", lambda m: b"Authorization: Basic " + m.key.encode() + b"\r\n", 401),
    Case("bearer-without-credential", lambda m: b"Authorization: Bearer\r\n", 401),
    Case("static-key-mangled", lambda m: bearer(STATIC[:10] + " " + STATIC[10:]), 401),
    Case("no-credentials", lambda m: b"", 401),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_forged_api_key_gets_its_expected_status(case: Case, present: Present) -> None:
    await present(case)
