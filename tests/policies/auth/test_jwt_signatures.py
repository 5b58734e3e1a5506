"""JWT signatures: checked with the HS256 secret from the environment, a PEM public key
or a JWKS file's key by kid; unsigned, tampered, wrongly signed tokens and tokens of
another algorithm than the key's are refused."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from policies.auth.jwt import JwtSettings, JwtVerifier
from tests.support.auth import SECRET
from tests.support.tokens import b64, claims, handmade, hs256, public_jwk, public_pem, refused, sign


@pytest.fixture
def pem_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(rsa_key))
    return path


async def test_secret_is_read_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_JWT_SECRET", SECRET)
    settings = JwtSettings(algorithms=["HS256"], secret_env="GATEWAY_TEST_JWT_SECRET")
    assert (await JwtVerifier(settings).verify(sign(claims()))).subject == "alice"


async def test_rs256_token_is_checked_against_a_pem_public_key(
    rsa_key: rsa.RSAPrivateKey, pem_file: Path
) -> None:
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256"], public_key_file=pem_file))
    got = await verifier.verify(sign(claims(tier="free"), rsa_key, "RS256"))
    assert (got.subject, got.tier, got.scopes) == ("alice", "free", frozenset())


async def test_es256_token_is_checked_against_a_jwks_file(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, "r1"), public_jwk(ec_key, "e1")]}))
    verifier = JwtVerifier(JwtSettings(algorithms=["ES256", "RS256"], jwks_file=path))
    assert (await verifier.verify(sign(claims(), ec_key, "ES256", kid="e1"))).subject == "alice"
    assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="r1"))).subject == "alice"


async def test_es256_token_is_checked_against_a_pem_public_key(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec_key))
    verifier = JwtVerifier(JwtSettings(algorithms=["ES256"], public_key_file=path))
    assert (await verifier.verify(sign(claims(), ec_key, "ES256", kid="any"))).subject == "alice"


async def test_alg_none_is_refused() -> None:
    assert await refused(hs256(), handmade({"alg": "none", "typ": "JWT"}, claims())) == (
        "bad_algorithm"
    )


async def test_hs256_signed_with_the_public_pem_is_refused_by_an_rs256_verifier(
    rsa_key: rsa.RSAPrivateKey, pem_file: Path
) -> None:
    header = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode())
    mac = hmac.new(public_pem(rsa_key), header.encode(), hashlib.sha256).digest()
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256"], public_key_file=pem_file))
    assert await refused(verifier, header + "." + b64(mac)) == "bad_algorithm"


async def test_wrong_signature_is_refused(pem_file: Path, other_rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256"], public_key_file=pem_file))
    assert await refused(verifier, sign(claims(), other_rsa_key, "RS256")) == "bad_signature"


async def test_tampered_payload_is_refused() -> None:
    head, _, sig = sign(claims(tier="free")).split(".")
    forged = head + "." + b64(json.dumps(claims(tier="gold")).encode()) + "." + sig
    assert await refused(hs256(), forged) == "bad_signature"


async def test_unknown_kid_in_a_jwks_file_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, "known")]}))
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_file=path))
    assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid="other")) == "unknown_key"


async def test_token_alg_must_match_the_key_it_names(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, "r1")]}))
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256", "ES256"], jwks_file=path))
    assert await refused(verifier, sign(claims(), ec_key, "ES256", kid="r1")) == "bad_algorithm"
