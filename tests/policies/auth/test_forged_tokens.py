"""Forged and malformed JWTs, each through the real app with its expected status: alg none,
algorithms confused, claims, kid tricks, keys a token points to, and shapes. The gateways
they go to and the attacker's server: tests/support/forged.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.support.auth import SECRET, token
from tests.support.forged import Case, Present, RsaKey, bearer
from tests.support.tokens import b64, handmade, public_jwk, public_pem


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


def hmac_signed(header: dict[str, Any], secret: bytes) -> str:
    unsigned = handmade(header, claims()).rsplit(".", 1)[0]
    return unsigned + "." + b64(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())


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


NOW = int(time.time())
CASES = [
    # Control cases: what the gateway does take.
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
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_forged_token_gets_its_expected_status(case: Case, present: Present) -> None:
    await present(case)


def test_the_table_holds_at_least_forty_forged_tokens() -> None:
    assert len([c for c in CASES if c.status != 200]) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
