"""The credential vocabulary the auth and usage policies share."""

from __future__ import annotations

import hashlib

import pytest

from gateway.credentials import bearer_token, hash_secret, printable_ascii


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer  sk-1 ", "sk-1"),
        ("BEARER eyJ.a.b", "eyJ.a.b"),
        ("Basic c2stMQ==", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        ("sk-1", None),
    ],
)
def test_a_bearer_token_is_read_whatever_the_scheme_s_case(value: str, token: str | None) -> None:
    assert bearer_token(value) == token


def test_only_printable_ascii_can_be_a_credential() -> None:
    assert printable_ascii("sk-gw_0123_abc-_")
    assert not printable_ascii("café")
    assert not printable_ascii("sk-\udcff")
    assert not printable_ascii("sk-\x01")


def test_a_secret_is_named_by_its_prefixed_sha256() -> None:
    assert hash_secret("token") == "sha256:" + hashlib.sha256(b"token").hexdigest()
    assert hash_secret("\udcff").startswith("sha256:")  # never an encoding error
