"""Forged and malformed API keys and JWTs, each through the real app with its expected status.

Two gateways: `hs` takes API keys (SQLite), a static key and HS256 tokens; `rs` takes RS256
tokens checked against a JWKS file of two keys (`k1`, `k2`). A server standing for an
attacker counts fetches: the gateway must never fetch a key a token points to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from gateway.config import StorageConfig
from policies.auth.keys import open_store
from tests.support.auth import SECRET, STATIC, TIERS, auth_settings, raw_reply, token
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory

RsaKey = rsa.RSAPrivateKey


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


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"Authorization: Bearer " + raw + b"\r\n"


def api_key(value: str) -> bytes:
    return b"api-key: " + value.encode() + b"\r\n"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "mallory",
        "aud": "gw",
        "iss": "idp",
        "exp": now + 60,
        "tier": "premium",
        **extra,
    }


def handmade(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


def hmac_signed(header: dict[str, Any], secret: bytes) -> str:
    unsigned = handmade(header, claims()).rsplit(".", 1)[0]
    return unsigned + "." + b64(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())


def public_pem(key: RsaKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: RsaKey, kid: str | None = None) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk if kid is None else {**jwk, "kid": kid}


def rs(key: RsaKey, headers: dict[str, Any] | None = None, **extra: Any) -> str:
    return jwt.encode(claims(**extra), key, algorithm="RS256", headers=headers)


def rs_handmade(header: dict[str, Any], key: RsaKey) -> str:
    """An RS256 signature over a header PyJWT would not write."""
    unsigned = handmade(header, claims()).rsplit(".", 1)[0]
    signature = key.sign(unsigned.encode(), padding.PKCS1v15(), hashes.SHA256())
    return unsigned + "." + b64(signature)


def alg_none(spelling: str, signature: bytes) -> Case:
    name = f"alg-{spelling}-{'signed' if signature else 'unsigned'}"
    return Case(
        name, lambda m: bearer(handmade({"alg": spelling, "typ": "JWT"}, claims(), signature)), 401
    )


def id_of(key: str) -> str:
    return key.split("_")[1]


def secret_of(key: str) -> str:
    return key.split("_", 2)[2]


NOW = int(time.time())
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
    Case("good-hs256-token", lambda m: bearer(token(tier="premium")), 200),
    Case("good-rs256-token-k1", lambda m: bearer(rs(m.k1, {"kid": "k1"})), 200, "rs"),
    Case("good-rs256-token-k2", lambda m: bearer(rs(m.k2, {"kid": "k2"})), 200, "rs"),
    # alg none, in several spellings, with and without a signature.
    *(alg_none(s, sig) for s in ("none", "None", "NONE", "nOnE") for sig in (b"", b"sig")),
    Case(
        "alg-none-rs-gateway",
        lambda m: bearer(handmade({"alg": "none", "kid": "k1"}, claims())),
        401,
        "rs",
    ),
    Case("alg-missing", lambda m: bearer(handmade({"typ": "JWT"}, claims())), 401),
    Case("alg-hs512", lambda m: bearer(jwt.encode(claims(), SECRET * 2, algorithm="HS512")), 401),
    # HS/RS confusion: the RSA public key as the HMAC secret.
    Case(
        "hs256-with-public-pem",
        lambda m: bearer(hmac_signed({"alg": "HS256", "kid": "k1"}, public_pem(m.k1))),
        401,
        "rs",
    ),
    Case(
        "hs256-with-public-jwk",
        lambda m: bearer(
            hmac_signed({"alg": "HS256", "kid": "k1"}, json.dumps(public_jwk(m.k1, "k1")).encode())
        ),
        401,
        "rs",
    ),
    Case(
        "hs256-with-public-pem-no-kid",
        lambda m: bearer(hmac_signed({"alg": "HS256"}, public_pem(m.k1))),
        401,
        "rs",
    ),
    Case("rs256-at-hs-gateway", lambda m: bearer(rs(m.attacker)), 401),
    Case("hs256-wrong-secret", lambda m: bearer(token(key="w" * 40)), 401),
    # Claims.
    Case("wrong-aud", lambda m: bearer(token(aud="elsewhere")), 401),
    Case("wrong-iss", lambda m: bearer(token(iss="evil")), 401),
    Case("missing-exp", lambda m: bearer(token(exp=None)), 401),
    Case("exp-string", lambda m: bearer(token(exp=str(NOW + 600))), 401),
    Case("exp-1e30", lambda m: bearer(token(exp=1e30)), 401),
    Case("exp-past", lambda m: bearer(token(exp=NOW - 3600)), 401),
    Case("nbf-future", lambda m: bearer(token(nbf=NOW + 3600)), 401),
    Case("iat-future", lambda m: bearer(token(iat=NOW + 3600)), 401),
    Case("missing-sub", lambda m: bearer(token(sub=None)), 401),
    Case("sub-lone-surrogate", lambda m: bearer(token(sub="\ud800x")), 401),
    Case("tier-escalation-enterprise", lambda m: bearer(token(tier="enterprise")), 403),
    Case("crit-header-unknown", lambda m: bearer(token(headers={"crit": ["exp"], "exp": 1})), 401),
    Case("payload-not-an-object", lambda m: bearer(handmade({"alg": "HS256"}, [1, 2])), 401),
    # kid tricks against the two-key JWKS.
    Case(
        "kid-path-traversal",
        lambda m: bearer(rs(m.k1, {"kid": "../../../../etc/passwd"})),
        401,
        "rs",
    ),
    Case("kid-of-another-key", lambda m: bearer(rs(m.k1, {"kid": "k2"})), 401, "rs"),
    Case("kid-sql-ish", lambda m: bearer(rs(m.k1, {"kid": "k1' OR '1'='1"})), 401, "rs"),
    Case("kid-missing-with-two-keys", lambda m: bearer(rs(m.k1)), 401, "rs"),
    Case(
        "kid-a-number", lambda m: bearer(rs_handmade({"alg": "RS256", "kid": 1}, m.k1)), 401, "rs"
    ),
    # Keys a token points to are never fetched nor used.
    Case(
        "jku-elsewhere",
        lambda m: bearer(rs(m.attacker, {"kid": "k1", "jku": m.attacker_url})),
        401,
        "rs",
    ),
    Case(
        "x5u-elsewhere",
        lambda m: bearer(rs(m.attacker, {"kid": "k1", "x5u": m.attacker_url})),
        401,
        "rs",
    ),
    Case(
        "jwk-header-embedded",
        lambda m: bearer(rs(m.attacker, {"jwk": public_jwk(m.attacker)})),
        401,
        "rs",
    ),
    Case(
        "jwk-header-with-kid",
        lambda m: bearer(rs(m.attacker, {"kid": "k1", "jwk": public_jwk(m.attacker, "k1")})),
        401,
        "rs",
    ),
    # Shape.
    Case("four-segments", lambda m: bearer(token() + ".extra"), 401),
    Case("two-segments", lambda m: bearer(token().rsplit(".", 1)[0]), 401),
    Case("empty-segments", lambda m: bearer(".."), 401),
    Case("empty-signature", lambda m: bearer(token().rsplit(".", 1)[0] + "."), 401),
    Case("trailing-garbage", lambda m: bearer(token() + "garbage"), 401),
    Case("trailing-word", lambda m: bearer(token() + " garbage"), 401),
    Case(
        "non-utf8-token",
        lambda m: bearer(token().encode()[:20] + b"\xff\xfe" + token().encode()[20:]),
        401,
    ),
    Case("oversized-6kb", lambda m: bearer(token(pad="x" * 6000)), 401),
    # Over aiohttp's 8 KB header line limit: refused by the HTTP parser before any policy.
    Case("oversized-100kb", lambda m: bearer(token(pad="x" * 100_000)), 400),
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


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[RsaKey, RsaKey, RsaKey]:
    return tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))  # type: ignore[return-value]


@dataclass
class Attacker:
    hits: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": []})


@pytest.fixture
async def attacker(aiohttp_server: Any) -> tuple[Attacker, str]:
    served = Attacker()
    app = web.Application()
    app.router.add_get("/{tail:.*}", served.handle)
    server = await aiohttp_server(app)
    return served, str(server.make_url("/keys.json"))


async def material(data: Path, rsa_keys: tuple[RsaKey, ...], attacker_url: str) -> Material:
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
    make_gateway: GatewayFactory, data: Path, kind: str, rsa_keys: tuple[RsaKey, ...]
) -> TestClient[Any, Any]:
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
    return await make_gateway(storage={"data_dir": str(data)}, tiers=TIERS, policies=[settings])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_forged_credential_gets_its_expected_status(
    case: Case,
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    tmp_path: Path,
    rsa_keys: tuple[RsaKey, RsaKey, RsaKey],
    attacker: tuple[Attacker, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    gateway = await start(make_gateway, tmp_path, case.gateway, rsa_keys)
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


def test_the_table_holds_at_least_forty_forged_credentials() -> None:
    assert len([c for c in CASES if c.status != 200]) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
