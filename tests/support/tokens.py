"""JSON Web Tokens for the tests: a key's public forms, tokens PyJWT signs, tokens made by
hand as no library would write them, and an HS256 verifier to present them to."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from policies.auth.jwt import JwtError, JwtSettings, JwtVerifier
from tests.support.auth import SECRET

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: PrivateKey, kid: str | None = None) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        found = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        found = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return found if kid is None else {**found, "kid": kid}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def sign(payload: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **header: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=header or None)


def hs256(**settings: Any) -> JwtVerifier:
    return JwtVerifier(
        JwtSettings(algorithms=["HS256"], secret_env="JWT_SECRET", **settings),
        {"JWT_SECRET": SECRET},
    )


async def refused(verifier: JwtVerifier, token: str) -> str:
    """The reason `verifier` gives for refusing `token` (which must come with a message)."""
    with pytest.raises(JwtError) as caught:
        await verifier.verify(token)
    assert caught.value.message
    return caught.value.reason
