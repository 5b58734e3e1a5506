"""A JWT's shape: what is not three segments of base64 JSON is malformed, and a token
over the size limit is refused before it is decoded."""

from __future__ import annotations

import pytest

from tests.support.tokens import b64, claims, hs256, refused, sign


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
