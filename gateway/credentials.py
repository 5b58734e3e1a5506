"""Credentials, for the policies that check them: bearer tokens in request headers, and the
`sha256:` references that settings and stores hold instead of the secrets themselves.

Each policy words its own refusals; these helpers only say what was sent.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import Field

# A settings field naming a secret by its hash: `sha256:` and 64 hex digits (`hash_secret`).
SecretHash = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


def hash_secret(secret: str) -> str:
    """`sha256:<hex>` of a secret (an API key, a static key, an admin token). Lone
    surrogates are hashed as they are: no text makes it fail."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (the scheme in any case, the
    token stripped); None when the value names another scheme or no token. The value is
    taken as it is: a caller that forgives space around it strips it first."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def printable_ascii(credential: str) -> bool:
    """Whether a credential could be one: keys and tokens are printable ASCII. aiohttp hands
    header bytes that are not UTF-8 over as lone surrogates (surrogateescape), which no
    encoder accepts: they fail here."""
    return credential.isascii() and credential.isprintable()
