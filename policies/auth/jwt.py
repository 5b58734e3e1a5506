"""JWT bearer tokens for the auth policy (SPEC F2.5): verify HS256, RS256 or ES256 tokens.

Hardening, in the order a token meets it: a size cap before any decoding; the unverified
header's `alg` must be a configured one (refusing `alg: none` and HS/RS confusion); one
verifier never mixes shared-secret and public-key algorithms; keys come only from the
configuration, never from `jku`/`x5u`/`jwk` headers; PyJWT then checks the signature with
`algorithms=` pinned, and exp/nbf/iat/aud/iss with leeway.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from pydantic import Field, field_validator, model_validator

from gateway.endpoints import EndpointName
from gateway.policy import PolicySettings
from policies.auth.jwks import (
    JwtConfigError as JwtConfigError,  # re-exported: the verifier's construction error
)
from policies.auth.jwks import (
    KeySet,
    RemoteJwks,
    load_jwks_file,
    load_pem,
    load_secret,
)
from policies.auth.text import MAX_CHARS, is_sane

Algorithm = Literal["HS256", "RS256", "ES256"]
Reason = Literal[
    "malformed", "too_large", "bad_algorithm", "bad_signature", "expired", "not_yet_valid",
    "bad_audience", "bad_issuer", "missing_claim", "bad_claim", "too_long_lived", "unknown_key",
    "keys_unavailable",
]  # fmt: skip

_KEY_SOURCES = ("public_key_file", "jwks_file", "jwks_url")
_TIME_CLAIMS = ("exp", "nbf", "iat")


class JwtError(Exception):
    """A token refused; `reason` is stable (for metrics and logs), `message` is for the client."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason
        self.message = message


@dataclass(frozen=True)
class Claims:
    subject: str
    tier: str | None
    scopes: frozenset[str]
    raw: dict[str, Any]


class JwtSettings(PolicySettings):
    algorithms: list[Algorithm] = Field(min_length=1)
    secret_env: str | None = Field(None, min_length=1)
    public_key_file: Path | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_cache_seconds: float = Field(300, gt=0)
    # An unknown `kid` triggers a refetch at most this often, so junk tokens can't flood the IdP.
    jwks_min_refetch_seconds: float = Field(10, ge=0)
    jwks_timeout_seconds: float = Field(5, gt=0, le=60)
    audience: str | list[str] | None = None
    issuer: str | None = None
    leeway_seconds: float = Field(30, ge=0, le=300)
    max_token_bytes: int = Field(8192, ge=256, le=65536)
    subject_claim: str = Field("sub", min_length=1)
    tier_claim: str = Field("tier", min_length=1)
    scopes_claim: str = Field("scope", min_length=1)
    # Claims a token must carry; `exp` always is, so no token lives forever.
    require: list[str] = Field(default_factory=lambda: ["exp"])
    # The longest a token may live: exp - iat, and exp - now, at most this (plus leeway).
    max_lifetime_seconds: float = Field(86400, gt=0, le=366 * 86400)
    # Tier claim value -> tier. Without it the tier claim is ignored and `default_tier`
    # applies: a token alone must not pick its tier (an IdP may let users set claims).
    tiers: dict[str, str] = Field(default_factory=dict)
    # Endpoint -> the scope a token needs for it; endpoints not named need none.
    required_scopes: dict[EndpointName, str] = Field(default_factory=dict)

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError(f"{url!r} is not an http(s) URL such as https://idp/.well-known/jwks")
        return url

    @model_validator(mode="after")
    def _one_kind_of_key(self) -> JwtSettings:
        given = [name for name in _KEY_SOURCES if getattr(self, name) is not None]
        if "HS256" not in self.algorithms:
            if len(given) != 1:
                found = ", ".join(given) or "none"
                raise ValueError(
                    "RS256/ES256 need exactly one of public_key_file, jwks_file, jwks_url "
                    f"(found: {found})"
                )
            if self.secret_env is not None:
                raise ValueError("secret_env is for HS256 only; RS256/ES256 verify public keys")
        elif len(set(self.algorithms)) > 1:
            raise ValueError(
                "algorithms: HS256 cannot be mixed with RS256/ES256 in one verifier (a public "
                "key must never double as an HMAC secret); configure one kind"
            )
        elif self.secret_env is None:
            raise ValueError("HS256 needs secret_env: the environment variable with the secret")
        elif given:
            raise ValueError(f"{', '.join(given)}: only for RS256/ES256; HS256 uses secret_env")
        return self


_REASONS: tuple[tuple[type[jwt.PyJWTError], Reason, str], ...] = (
    (jwt.InvalidSignatureError, "bad_signature", "the signature does not match"),
    (jwt.ExpiredSignatureError, "expired", "the token has expired; get a new one"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet (nbf/iat)"),
    (jwt.InvalidAudienceError, "bad_audience", "the token is not meant for this gateway (aud)"),
    (jwt.InvalidIssuerError, "bad_issuer", "the token comes from an issuer not trusted here"),
    (jwt.MissingRequiredClaimError, "missing_claim", "a required claim is missing"),
    (jwt.InvalidAlgorithmError, "bad_algorithm", "the token's algorithm does not fit its key"),
    (jwt.InvalidKeyError, "unknown_key", "no usable key verifies this token"),
    (jwt.DecodeError, "malformed", "the token cannot be decoded"),
)


def _refusal(exc: jwt.PyJWTError) -> JwtError:
    for kind, reason, message in _REASONS:
        if isinstance(exc, kind):
            return JwtError(reason, f"{message}: {exc}")
    return JwtError("bad_claim", f"a claim has the wrong type: {exc}")


def _times(payload: dict[str, Any]) -> dict[str, float]:
    """The time claims present, as floats; PyJWT would take "123" or true for a number."""
    times = {}
    for claim in _TIME_CLAIMS:
        if claim not in payload:
            continue
        value = payload[claim]
        try:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError
            times[claim] = number = float(value)  # OverflowError beyond 1e308
            if not math.isfinite(number):
                raise OverflowError
        except (TypeError, OverflowError):
            raise JwtError(
                "bad_claim", f"the {claim!r} claim must be a number of seconds since 1970"
            ) from None
    return times


def _optional_str(payload: dict[str, Any], claim: str) -> str | None:
    value = payload.get(claim)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise JwtError("bad_claim", f"the {claim!r} claim must be a string")
    if not is_sane(value):
        raise _not_text(claim)
    return value


def _not_text(claim: str) -> JwtError:
    # Refused, not repaired: replacing characters could merge two subjects into one principal.
    return JwtError(
        "bad_claim",
        f"the {claim!r} claim must be printable text of at most {MAX_CHARS} characters",
    )


def _scopes(value: Any, claim: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(scope, str) for scope in value):
        raise JwtError(
            "bad_claim", f"the {claim!r} claim must be a space-separated string or a list"
        )
    if not all(is_sane(scope) for scope in value):
        raise _not_text(claim)
    return frozenset(value)


class JwtVerifier:
    """Checks bearer tokens against one configured key source; see the module docstring."""

    def __init__(self, settings: JwtSettings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._algorithms: list[str] = list(dict.fromkeys(settings.algorithms))
        self._require = list(dict.fromkeys(["exp", *settings.require]))
        self._secret: bytes | None = None
        self._keys = KeySet()
        self._remote: RemoteJwks | None = None
        if settings.secret_env is not None:
            self._secret = load_secret(settings.secret_env, os.environ if env is None else env)
        elif settings.public_key_file is not None:
            self._keys = load_pem(settings.public_key_file, self._algorithms)
        elif settings.jwks_file is not None:
            self._keys = load_jwks_file(settings.jwks_file, self._algorithms)
        elif settings.jwks_url is not None:
            self._remote = RemoteJwks(settings, settings.jwks_url)

    async def start(self) -> None:
        """Fetch a remote JWKS ahead of the first request (a failure is retried on demand)."""
        if self._remote is not None:
            await self._remote.refresh()

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.close()

    async def verify(self, token: str) -> Claims:
        header = self._header(token)
        key = await self._key(header)
        s = self.settings
        try:
            payload: dict[str, Any] = jwt.decode(
                token, key, algorithms=self._algorithms, audience=s.audience, issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": self._require, "enforce_minimum_key_length": True},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from exc
        self._check_lifetime(_times(payload))
        subject = _optional_str(payload, s.subject_claim)
        if subject is None:
            raise JwtError("missing_claim", f"the token has no {s.subject_claim!r} claim")
        tier = _optional_str(payload, s.tier_claim)
        return Claims(subject, tier, _scopes(payload.get(s.scopes_claim), s.scopes_claim), payload)

    def _check_lifetime(self, times: dict[str, float]) -> None:
        s = self.settings
        limit = s.max_lifetime_seconds + s.leeway_seconds
        exp, iat = times["exp"], times.get("iat")
        if exp - time.time() > limit or (iat is not None and exp - iat > limit):
            raise JwtError(
                "too_long_lived",
                f"the token lives longer than the {s.max_lifetime_seconds:g} seconds accepted "
                "here (exp - iat, or exp - now); get a shorter-lived one",
            )

    def _header(self, token: str) -> dict[str, Any]:
        if len(token) > self.settings.max_token_bytes:
            raise JwtError(
                "too_large", f"the token is over the {self.settings.max_token_bytes}-byte limit"
            )
        if not token.isascii() or token.count(".") != 2:
            raise JwtError("malformed", "a JWT is three base64url parts: header.payload.signature")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise JwtError("malformed", f"the token header cannot be read: {exc}") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            accepted = ", ".join(self._algorithms)
            raise JwtError("bad_algorithm", f"signed with {str(alg)[:16]!r}; accepted: {accepted}")
        return header

    async def _key(self, header: dict[str, Any]) -> bytes | jwt.PyJWK:
        if self._secret is not None:
            return self._secret
        kid, alg = header.get("kid"), header["alg"]
        keys = self._keys if self._remote is None else await self._remote.keys()
        key = keys.find(kid, alg)
        if key is None and self._remote is not None:
            keys = await self._remote.refresh()  # maybe the issuer rotated its keys
            key = keys.find(kid, alg)
        if key is None and not keys:
            raise JwtError("keys_unavailable", "the signing keys could not be fetched; retry later")
        if key is None:
            raise JwtError("unknown_key", f"no key with kid {str(kid)[:64]!r} for {alg}")
        if key.algorithm_name != alg:
            raise JwtError("bad_algorithm", f"key {kid!r} is for {key.algorithm_name}, not {alg}")
        return key
