"""JWT bearer tokens for the auth policy (SPEC F2.5): verify HS256, RS256 or ES256 tokens.

Hardening, in the order a token meets it: a size cap before any decoding; the unverified
header's `alg` must be a configured one (refusing `alg: none` and HS/RS confusion); one
verifier never mixes shared-secret and public-key algorithms; keys come only from the
configuration, never from `jku`/`x5u`/`jwk` headers; PyJWT then checks the signature with
`algorithms=` pinned, and exp/nbf/iat/aud/iss with leeway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import Field, field_validator, model_validator

from gateway.policy import PolicySettings

log = logging.getLogger("policies.auth.jwt")

Algorithm = Literal["HS256", "RS256", "ES256"]
Reason = Literal[
    "malformed", "too_large", "bad_algorithm", "bad_signature", "expired", "not_yet_valid",
    "bad_audience", "bad_issuer", "missing_claim", "bad_claim", "unknown_key", "keys_unavailable",
]  # fmt: skip

_MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
_MAX_JWKS_BYTES = 1 << 20
_KEY_SOURCES = ("public_key_file", "jwks_file", "jwks_url")


class JwtError(Exception):
    """A token refused; `reason` is stable (for metrics and logs), `message` is for the client."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason
        self.message = message


class JwtConfigError(ValueError):
    """The verifier cannot be built: secret unset or too short, key file unusable."""


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
    require: list[str] = Field(default_factory=lambda: ["exp"])

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


@dataclass(frozen=True)
class KeySet:
    by_kid: Mapping[str, jwt.PyJWK] = field(default_factory=dict)
    unnamed: tuple[jwt.PyJWK, ...] = ()

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None and kid in self.by_kid:
            return self.by_kid[kid]
        matching = [key for key in self.unnamed if key.algorithm_name == alg]
        return matching[0] if len(matching) == 1 else None

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.unnamed)


def _jwk(entry: Any, algorithms: list[str]) -> jwt.PyJWK | str:
    """One usable verification key, or why this JWKS entry is skipped."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    use, alg = entry.get("use", "sig"), entry.get("alg", algorithms[0])
    if use != "sig" or alg not in algorithms:
        return f"not a signing key for {', '.join(algorithms)} (use={use!r}, alg={alg!r})"
    if "d" in entry:
        return "holds private key material; publish only the public key"
    if not isinstance(entry.get("kid", ""), str):
        return "kid is not a string"
    try:
        key = jwt.PyJWK.from_dict(entry)
        key.Algorithm.prepare_key(key.key)  # checks the key type and curve fit the algorithm
    except jwt.PyJWTError as exc:
        return str(exc)
    if key.algorithm_name not in algorithms:
        return f"a {key.algorithm_name} key; accepted: {', '.join(algorithms)}"
    return key.Algorithm.check_key_length(key.key) or key


def parse_jwks(data: Any, algorithms: list[str], source: str) -> KeySet:
    """The usable keys of a JWKS document; JwtConfigError when none is usable."""
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise JwtConfigError(f"{source}: not a JWKS document ({{'keys': [...]}})")
    by_kid: dict[str, jwt.PyJWK] = {}
    unnamed: list[jwt.PyJWK] = []
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        key = _jwk(entry, algorithms)
        if isinstance(key, str):
            skipped.append(f"key {index}: {key}")
        elif key.key_id is None:
            unnamed.append(key)
        else:
            by_kid[key.key_id] = key
    if skipped:
        log.warning("%s: skipped unusable keys: %s", source, "; ".join(skipped))
    if not by_kid and not unnamed:
        raise JwtConfigError(f"{source}: no usable key ({'; '.join(skipped) or 'empty'})")
    return KeySet(by_kid, tuple(unnamed))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JwtConfigError(f"{path}: cannot read the file: {exc.strerror}") from exc


def load_pem(path: Path, algorithms: list[str]) -> KeySet:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise JwtConfigError(f"{path}: not a PEM public key (BEGIN PUBLIC KEY): {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        raise JwtConfigError(f"{path}: neither an RSA nor an EC public key")
    return parse_jwks({"keys": [jwk]}, algorithms, str(path))


def load_jwks_file(path: Path, algorithms: list[str]) -> KeySet:
    try:
        document = orjson.loads(_read(path))
    except orjson.JSONDecodeError as exc:
        raise JwtConfigError(f"{path}: not valid JSON: {exc}") from exc
    return parse_jwks(document, algorithms, str(path))


def load_secret(name: str, env: Mapping[str, str]) -> bytes:
    secret = env.get(name, "").encode()
    if not secret:
        raise JwtConfigError(f"environment variable {name} (the HS256 secret) is not set")
    if len(secret) < _MIN_SECRET_BYTES:
        raise JwtConfigError(
            f"the HS256 secret in {name} is {len(secret)} bytes; use at least "
            f"{_MIN_SECRET_BYTES} random bytes, e.g. the output of `openssl rand -hex 32`"
        )
    return secret


class RemoteJwks:
    """A JWKS URL, cached; a failed refresh keeps the last good keys."""

    def __init__(self, settings: JwtSettings, url: str) -> None:
        self._url = url
        self._algorithms: list[str] = list(settings.algorithms)
        self._ttl = settings.jwks_cache_seconds
        self._min_interval = settings.jwks_min_refetch_seconds
        self._timeout = aiohttp.ClientTimeout(total=settings.jwks_timeout_seconds)
        self._keys = KeySet()
        self._fetched_at = self._tried_at = -math.inf
        self._lock = asyncio.Lock()

    async def keys(self) -> KeySet:
        if time.monotonic() - self._fetched_at >= self._ttl:
            await self.refresh()
        return self._keys

    async def refresh(self) -> KeySet:
        """Fetch unless one fetch is under way or finished less than the minimum interval ago."""
        tried = self._tried_at
        async with self._lock:
            if self._tried_at != tried or time.monotonic() - tried < self._min_interval:
                return self._keys
            self._tried_at = time.monotonic()
            try:
                self._keys = parse_jwks(await self._fetch(), self._algorithms, self._url)
                self._fetched_at = self._tried_at
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "JWKS refresh from %s failed (%s); keeping %d cached keys",
                    self._url, exc or type(exc).__name__, len(self._keys),
                )  # fmt: skip
        return self._keys

    async def _fetch(self) -> Any:
        async with (
            aiohttp.ClientSession(timeout=self._timeout) as session,
            session.get(self._url, headers={"Accept": "application/json"}) as resp,
        ):
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {_MAX_JWKS_BYTES} bytes")
        return orjson.loads(body)


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


def _optional_str(payload: dict[str, Any], claim: str) -> str | None:
    value = payload.get(claim)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise JwtError("bad_claim", f"the {claim!r} claim must be a string")
    return value


def _scopes(value: Any, claim: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(scope, str) for scope in value):
        return frozenset(value)
    raise JwtError("bad_claim", f"the {claim!r} claim must be a space-separated string or a list")


class JwtVerifier:
    """Checks bearer tokens against one configured key source; see the module docstring."""

    def __init__(self, settings: JwtSettings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._algorithms: list[str] = list(dict.fromkeys(settings.algorithms))
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

    async def verify(self, token: str) -> Claims:
        header = self._header(token)
        key = await self._key(header)
        s = self.settings
        try:
            payload: dict[str, Any] = jwt.decode(
                token, key, algorithms=self._algorithms, audience=s.audience, issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": list(s.require), "enforce_minimum_key_length": True},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from exc
        subject = _optional_str(payload, s.subject_claim)
        if subject is None:
            raise JwtError("missing_claim", f"the token has no {s.subject_claim!r} claim")
        tier = _optional_str(payload, s.tier_claim)
        return Claims(subject, tier, _scopes(payload.get(s.scopes_claim), s.scopes_claim), payload)

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
