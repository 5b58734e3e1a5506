"""Key material for JWT verification: PEM public keys, JWKS files and URLs, HS256 secrets.

Only keys the configuration names are ever used; a JWKS URL is fetched with a size cap, cached,
and kept at its last good state when a refresh fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from policies.auth.jwtsettings import JwtSettings

log = logging.getLogger("policies.auth.jwt")

_MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
_MAX_JWKS_BYTES = 1 << 20


class JwtConfigError(ValueError):
    """The verifier cannot be built: secret unset or too short, key file unusable."""


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
    """A JWKS URL, cached; a failed refresh keeps the last good keys.

    Requests never wait for a refresh of stale keys: it runs in the background while they
    are served from the cache. Only a request finding no key at all (first use) or not its
    `kid` waits, for one fetch shared by all such requests and started at most once per
    `jwks_min_refetch_seconds`, so neither a slow IdP nor junk kids can stall or flood.
    """

    def __init__(self, settings: JwtSettings, url: str) -> None:
        self._url = url
        self._algorithms: list[str] = list(settings.algorithms)
        self._ttl = settings.jwks_cache_seconds
        self._min_interval = settings.jwks_min_refetch_seconds
        self._timeout = aiohttp.ClientTimeout(total=settings.jwks_timeout_seconds)
        self._keys = KeySet()
        self._fetched_at = self._tried_at = -math.inf
        self._fetching: asyncio.Task[KeySet] | None = None

    async def keys(self) -> KeySet:
        if not self._keys:
            return await self.refresh()
        if time.monotonic() - self._fetched_at >= self._ttl:
            self._start_fetch()  # served from the cache meanwhile
        return self._keys

    async def refresh(self) -> KeySet:
        """The keys after the fetch under way, or a new one unless the last began too recently."""
        fetching = self._start_fetch()
        if fetching is None:
            return self._keys
        return await asyncio.shield(fetching)  # a caller giving up does not cancel it for all

    async def close(self) -> None:
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)

    def _start_fetch(self) -> asyncio.Task[KeySet] | None:
        if self._fetching is None and time.monotonic() - self._tried_at >= self._min_interval:
            self._tried_at = time.monotonic()
            self._fetching = asyncio.create_task(self._refreshed(), name="jwks-refresh")
            self._fetching.add_done_callback(self._fetched)
        return self._fetching

    def _fetched(self, task: asyncio.Task[KeySet]) -> None:
        if self._fetching is task:
            self._fetching = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("JWKS refresh from %s failed unexpectedly: %r", self._url, exc)

    async def _refreshed(self) -> KeySet:
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
