"""JWT settings: checked when read; a secret, PEM file or JWKS file that cannot verify
tokens is a configuration error that names what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import ValidationError

from policies.auth.jwt import JwtConfigError, JwtSettings, JwtVerifier
from tests.support.tokens import public_pem


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
