"""JWT verification: valid tokens map to claims; every refusal carries its reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from policies.auth.jwt import Claims, JwtConfigError, JwtError, JwtSettings, JwtVerifier

SECRET = "s3cret-" + "x" * 40
ENV = {"JWT_SECRET": SECRET}
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


@pytest.fixture
def pem_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(rsa_key))
    return path


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def sign(payload: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **header: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=header or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def hs256(**settings: Any) -> JwtVerifier:
    return JwtVerifier(JwtSettings(algorithms=["HS256"], secret_env="JWT_SECRET", **settings), ENV)


async def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(JwtError) as caught:
        await verifier.verify(token)
    assert caught.value.message
    return caught.value.reason


# --- accepted tokens -----------------------------------------------------------------------


async def test_hs256_token_maps_subject_tier_and_scopes() -> None:
    token = sign(claims(tier="gold", scope="chat embed"))
    got = await hs256().verify(token)
    assert got == Claims("alice", "gold", frozenset({"chat", "embed"}), got.raw)
    assert got.raw["sub"] == "alice"


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
    path.write_text(json.dumps({"keys": [jwk(rsa_key, "r1"), jwk(ec_key, "e1")]}))
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


async def test_claim_names_are_configurable() -> None:
    verifier = hs256(subject_claim="email", tier_claim="plan", scopes_claim="scp")
    token = sign(claims(email="bob@example.com", plan="pro", scp=["a", "b"], tier="ignored"))
    got = await verifier.verify(token)
    assert (got.subject, got.tier, got.scopes) == ("bob@example.com", "pro", frozenset("ab"))


async def test_missing_tier_is_none_for_the_policy_to_default() -> None:
    assert (await hs256().verify(sign(claims()))).tier is None


async def test_audience_and_issuer_are_accepted_when_they_match() -> None:
    verifier = hs256(audience=["gateway", "other"], issuer="https://idp")
    assert await verifier.verify(sign(claims(aud="gateway", iss="https://idp")))


# --- refused tokens ------------------------------------------------------------------------


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


async def test_expired_token_is_refused() -> None:
    token = sign(claims(exp=int(time.time()) - 60))
    assert await refused(hs256(leeway_seconds=30), token) == "expired"


async def test_just_expired_token_is_accepted_within_leeway() -> None:
    token = sign(claims(exp=int(time.time()) - 10))
    assert (await hs256(leeway_seconds=30).verify(token)).subject == "alice"


async def test_token_not_valid_yet_is_refused() -> None:
    token = sign(claims(nbf=int(time.time()) + 120))
    assert await refused(hs256(), token) == "not_yet_valid"


async def test_wrong_audience_is_refused() -> None:
    assert await refused(hs256(audience="gateway"), sign(claims(aud="elsewhere"))) == (
        "bad_audience"
    )


async def test_wrong_issuer_is_refused() -> None:
    assert await refused(hs256(issuer="https://idp"), sign(claims(iss="https://evil"))) == (
        "bad_issuer"
    )


async def test_token_without_exp_is_refused() -> None:
    assert await refused(hs256(), sign({"sub": "alice"})) == "missing_claim"


async def test_token_without_aud_is_refused_when_an_audience_is_configured() -> None:
    assert await refused(hs256(audience="gateway"), sign(claims())) == "missing_claim"


async def test_token_with_aud_is_refused_when_no_audience_is_configured() -> None:
    assert await refused(hs256(), sign(claims(aud="someone-else"))) == "bad_audience"


async def test_token_without_subject_is_refused() -> None:
    assert await refused(hs256(), sign({"exp": int(time.time()) + 60})) == "missing_claim"


@pytest.mark.parametrize("payload", [{"tier": 3}, {"scope": {"a": 1}}, {"sub": 42}])
async def test_claims_of_the_wrong_type_are_refused(payload: dict[str, Any]) -> None:
    assert await refused(hs256(), sign(claims(**payload))) == "bad_claim"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c",
        "!!!.@@@.###",
        "a.b.c.d",
        "héllo.wörld.sig",
        b64(b"not json") + "." + b64(b"{}") + ".sig",
        b64(b"[1, 2]") + "." + b64(b"{}") + ".sig",
        b64(b'{"alg":"HS256"}') + ".payload!.sig",
    ],
)
async def test_garbage_is_malformed(token: str) -> None:
    assert await refused(hs256(), token) == "malformed"


async def test_valid_header_with_four_segments_is_malformed() -> None:
    assert await refused(hs256(), sign(claims()) + ".extra") == "malformed"


async def test_oversized_token_is_refused_before_decoding() -> None:
    big = sign(claims(pad="x" * 600))
    assert await refused(hs256(max_token_bytes=512), big) == "too_large"
    assert await refused(hs256(max_token_bytes=512), "!" * 513) == "too_large"


async def test_unknown_kid_in_a_jwks_file_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key, "known")]}))
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_file=path))
    assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid="other")) == "unknown_key"


async def test_token_alg_must_match_the_key_it_names(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key, "r1")]}))
    verifier = JwtVerifier(JwtSettings(algorithms=["RS256", "ES256"], jwks_file=path))
    assert await refused(verifier, sign(claims(), ec_key, "ES256", kid="r1")) == "bad_algorithm"


# --- a JWKS served over HTTP ---------------------------------------------------------------


@dataclass
class Jwks:
    keys: list[dict[str, Any]]
    hits: int = 0
    server: Any = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks(aiohttp_server: Any, rsa_key: rsa.RSAPrivateKey) -> Jwks:
    served = Jwks([jwk(rsa_key, "k1")])
    app = web.Application()
    app.router.add_get("/jwks.json", served.handle)
    served.server = server = await aiohttp_server(app)
    served.url = str(server.make_url("/jwks.json"))
    return served


def remote(jwks: Jwks, **settings: Any) -> JwtVerifier:
    return JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_url=jwks.url, **settings))


async def test_jwks_url_keys_verify_tokens_and_are_cached(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks)
    for _ in range(3):
        assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="k1"))).subject
    assert jwks.hits == 1


async def test_rotated_key_is_accepted_after_a_refresh(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_min_refetch_seconds=0)
    await verifier.start()
    jwks.keys = [jwk(rsa_key, "k1"), jwk(other_rsa_key, "k2")]
    got = await verifier.verify(sign(claims(), other_rsa_key, "RS256", kid="k2"))
    assert got.subject == "alice"
    assert jwks.hits == 2


async def test_unknown_kids_refetch_at_most_once_per_interval(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_min_refetch_seconds=60)
    await verifier.start()
    for kid in ("x1", "x2", "x3"):
        assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid=kid)) == "unknown_key"
    assert jwks.hits == 1


async def test_cached_keys_still_work_when_the_jwks_server_is_down(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_cache_seconds=0.01, jwks_min_refetch_seconds=0)
    await verifier.start()
    await jwks.server.close()
    await asyncio.sleep(0.02)  # let the cache go stale, so each verify tries (and fails) to refresh
    for _ in range(2):
        assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="k1"))).subject
    assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid="k9")) == "unknown_key"


async def test_unreachable_jwks_with_no_cached_keys_is_keys_unavailable(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    await jwks.server.close()
    verifier = remote(jwks)
    assert await refused(verifier, sign(claims(), rsa_key, "RS256")) == "keys_unavailable"


async def test_a_bad_jwks_response_keeps_the_previous_keys(
    jwks: Jwks, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = remote(jwks, jwks_min_refetch_seconds=0)
    await verifier.start()
    jwks.keys = [{"kty": "oct", "k": "c2VjcmV0"}]  # no usable key: an HMAC secret
    assert await refused(verifier, sign(claims(), rsa_key, "RS256", kid="new")) == "unknown_key"
    assert (await verifier.verify(sign(claims(), rsa_key, "RS256", kid="k1"))).subject


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"algorithms": []}, "at least 1 item"),
        ({"algorithms": ["HS512"], "secret_env": "S"}, "HS256"),
        ({"algorithms": ["HS256"]}, "HS256 needs secret_env"),
        ({"algorithms": ["RS256"]}, "exactly one of public_key_file, jwks_file, jwks_url"),
        (
            {"algorithms": ["ES256"], "jwks_file": "a.json", "jwks_url": "https://idp/jwks"},
            "found: jwks_file, jwks_url",
        ),
        (
            {"algorithms": ["HS256", "RS256"], "secret_env": "S", "public_key_file": "k.pem"},
            "cannot be mixed",
        ),
        (
            {"algorithms": ["HS256"], "secret_env": "S", "public_key_file": "k.pem"},
            "public_key_file: only for RS256/ES256",
        ),
        (
            {"algorithms": ["RS256"], "public_key_file": "k.pem", "secret_env": "S"},
            "secret_env is for HS256 only",
        ),
        ({"algorithms": ["RS256"], "jwks_url": "file:///etc/jwks"}, "not an http\\(s\\) URL"),
        ({"algorithms": ["HS256"], "secret_env": "S", "leeway_seconds": 301}, "less than or"),
        ({"algorithms": ["HS256"], "secret_env": "S", "secret": "inline"}, "Extra inputs"),
    ],
)
def test_settings_are_validated(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        JwtSettings.model_validate(settings)


def test_unset_secret_env_is_a_config_error() -> None:
    settings = JwtSettings(algorithms=["HS256"], secret_env="NOT_SET_ANYWHERE")
    with pytest.raises(JwtConfigError, match=r"NOT_SET_ANYWHERE.*not set"):
        JwtVerifier(settings, {})


def test_short_secret_is_a_config_error() -> None:
    settings = JwtSettings(algorithms=["HS256"], secret_env="S")
    with pytest.raises(JwtConfigError, match="at least 32"):
        JwtVerifier(settings, {"S": "short"})


@pytest.mark.parametrize(
    ("content", "complaint"),
    [(None, "cannot read"), (b"hello", "not a PEM public key")],
)
def test_unusable_pem_file_is_a_config_error(
    tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(JwtConfigError, match=complaint):
        JwtVerifier(JwtSettings(algorithms=["RS256"], public_key_file=path))


def test_pem_key_of_another_algorithm_is_a_config_error(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec_key))
    with pytest.raises(JwtConfigError, match="ES256 key; accepted: RS256"):
        JwtVerifier(JwtSettings(algorithms=["RS256"], public_key_file=path))


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a JWKS document"),
        ('{"keys": []}', "no usable key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "HS256 key; accepted"),
    ],
)
def test_jwks_file_without_usable_keys_is_a_config_error(
    tmp_path: Path, document: str, complaint: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(document)
    with pytest.raises(JwtConfigError, match=complaint):
        JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_file=path))


def test_jwks_keys_with_private_material_are_skipped(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    private = {**RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "leak"}
    path.write_text(json.dumps({"keys": [private]}))
    with pytest.raises(JwtConfigError, match="private key material"):
        JwtVerifier(JwtSettings(algorithms=["RS256"], jwks_file=path))


# --- time claims and lifetime --------------------------------------------------------------


@pytest.mark.parametrize(
    "times",
    [
        {"exp": str(int(time.time()) + 600)},
        {"nbf": True},
        {"exp": 10**400},
        {"nbf": str(int(time.time()) - 60)},
        {"iat": [int(time.time())]},
        {"iat": -(10**400)},
    ],
    ids=["exp-string", "nbf-bool", "exp-huge", "nbf-string", "iat-list", "iat-huge"],
)
async def test_time_claims_must_be_numbers(times: dict[str, Any]) -> None:
    assert await refused(hs256(), sign(claims(**times))) == "bad_claim"


@pytest.mark.parametrize(
    "exp", [1e30, 2**62, int(time.time()) + 86400 + 3600], ids=["1e30", "2**62", "25h"]
)
async def test_a_token_expiring_beyond_the_maximum_lifetime_is_refused(exp: float) -> None:
    assert await refused(hs256(), sign(claims(exp=exp))) == "too_long_lived"


async def test_a_token_issued_for_longer_than_the_maximum_lifetime_is_refused() -> None:
    now = int(time.time())
    token = sign(claims(iat=now - 7200, exp=now + 600))
    assert await refused(hs256(max_lifetime_seconds=3600), token) == "too_long_lived"
    assert (await hs256(max_lifetime_seconds=9000).verify(token)).subject == "alice"


async def test_exp_is_required_even_when_require_leaves_it_out() -> None:
    assert await refused(hs256(require=["iat"]), sign({"sub": "a", "iat": 1})) == "missing_claim"


async def test_float_times_within_the_lifetime_are_accepted() -> None:
    now = time.time()
    assert (await hs256().verify(sign(claims(iat=now, nbf=now, exp=now + 60.5)))).subject
