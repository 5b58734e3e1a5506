"""Credentials for the fuzz: the live gateway's valid keys and tokens, and forged ones."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from tests.hardening.live import CAP, Credentials, make_jwt
from tests.hardening.wire import Header

Make = Callable[[Credentials], Header]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(token: str) -> Header:
    return (b"Authorization", b"Bearer " + token.encode("utf-8", "surrogatepass"))


def _alg_none(alg: str) -> str:
    head = _b64(f'{{"alg":"{alg}","typ":"JWT"}}'.encode())
    claims = _b64(b'{"sub":"x","tier":"premium","aud":"gw","iss":"idp","exp":9999999999}')
    return f"{head}.{claims}."


def _other_id(key: str) -> str:
    _, _key_id, secret = key.split("_", 2)
    return f"sk-gw_{'0' * 12}_{secret}"


# name -> (header maker, the tier's cap): callers the gateway must let in.
VALID: dict[str, tuple[Make, int | None]] = {
    "key free": (lambda c: bearer(c.keys["free"]), CAP),
    "key free in api-key": (lambda c: (b"api-key", c.keys["free"].encode()), CAP),
    "key premium": (lambda c: bearer(c.keys["premium"]), None),
    "jwt free": (lambda c: bearer(c.tokens["free"]), CAP),
    "jwt premium": (lambda c: bearer(c.tokens["premium"]), None),
}

# name -> header maker: credentials that must get nothing through to the upstream.
FORGED: dict[str, Make] = {
    "key with a wrong secret": lambda c: bearer(c.keys["free"][:19] + "A" * 43),
    "key with an unknown id": lambda c: bearer(_other_id(c.keys["premium"])),
    "truncated key": lambda c: bearer(c.keys["premium"][:-4]),
    "key with a tail": lambda c: bearer(c.keys["premium"] + "x"),
    "key in capitals": lambda c: bearer(c.keys["premium"].upper()),
    "key of another scheme": lambda c: (b"Authorization", b"Basic " + c.keys["free"].encode()),
    "key in api-key, wrong secret": lambda c: (b"api-key", c.keys["free"][:-1].encode() + b"B"),
    "alg none": lambda c: bearer(_alg_none("none")),
    "alg None": lambda c: bearer(_alg_none("None")),
    "alg NONE": lambda c: bearer(_alg_none("NONE")),
    "jwt with a wrong secret": lambda c: bearer(make_jwt("w" * 45, tier="premium")),
    "jwt expired": lambda c: bearer(make_jwt(exp=int(time.time()) - 3600)),
    "jwt for another audience": lambda c: bearer(make_jwt(aud="elsewhere")),
    "jwt of another issuer": lambda c: bearer(make_jwt(iss="evil")),
    "jwt with exp as a string": lambda c: bearer(make_jwt(exp=str(int(time.time()) + 60))),
    "jwt of an unknown tier": lambda c: bearer(make_jwt(tier="enterprise")),
    "jwt with four segments": lambda c: bearer(c.tokens["premium"] + ".e30"),
    "jwt with its signature cut": lambda c: bearer(c.tokens["premium"].rsplit(".", 1)[0] + "."),
    "jwt oversized": lambda c: bearer(make_jwt(pad="p" * 4000)),
    "empty bearer": lambda c: (b"Authorization", b"Bearer "),
    "no credential": lambda c: (b"X-Nothing", b"1"),
}

# Validly signed, with a hostile claim: the gateway may refuse it, but must answer cleanly.
HOSTILE_VALID: dict[str, tuple[Make, int | None]] = {
    "jwt with a lone surrogate in sub": (lambda c: bearer(make_jwt(sub="\ud800x")), CAP),
    "jwt with NUL in sub": (lambda c: bearer(make_jwt(sub="a\x00b")), CAP),
    "jwt with a huge sub": (lambda c: bearer(make_jwt(sub="s" * 3000)), CAP),
}
