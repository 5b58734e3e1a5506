"""Authentication and permissions: API keys, static keys, JWTs, or anonymous by client IP.

Credentials come as `Authorization: Bearer ...`, an `api-key` header (Azure-style
clients) or an `x-api-key` header (Anthropic's SDK), each taking API keys, static keys
and JWTs alike. The caller's tier then decides which endpoints and models it may use and caps
`max_tokens`. Keys are looked up by their id and cached for at most `cache_seconds`, so
a revocation reaches every replica within that time; the secret is compared in constant
time and never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import NamedTuple

import asyncpg
from pydantic import Field

from gateway.context import Reply, RequestContext
from gateway.credentials import SecretHash, bearer_token, hash_secret, printable_ascii
from gateway.endpoints import BY_NAME, GENERATING, MODEL_ENDPOINTS, MODELS, PERMISSION
from gateway.errors import GatewayError
from gateway.policy import READY_SECONDS, Check, Policy, PolicyEnv, PolicySettings
from gateway.tiers import Tier, unknown_tiers
from gateway.validate import cap_lengths
from policies.auth.jwt import Claims, JwtConfigError, JwtError, JwtSettings, JwtVerifier
from policies.auth.keycache import KeyCache
from policies.auth.keys import (
    PREFIX,
    KeyStore,
    Reason,
    Verdict,
    judge,
    open_store,
    parse_key,
)
from policies.auth.metrics import failure_counters
from policies.auth.network import IpNetwork, client_address

log = logging.getLogger("policies.auth")


class StaticKey(PolicySettings):
    hash: SecretHash
    owner: str = Field(min_length=1)
    tier: str


class AnonymousSettings(PolicySettings):
    tier: str
    # Only connections from these proxies may name the client in `forwarded_header`.
    trusted_proxies: list[IpNetwork] = Field(default_factory=list)
    forwarded_header: str = "X-Forwarded-For"


class AuthSettings(PolicySettings):
    api_keys: bool = True  # keys from the key store (`llama-gateway keys create`)
    static_keys: list[StaticKey] = Field(default_factory=list)
    jwt: JwtSettings | None = None
    anonymous: AnonymousSettings | None = None
    # For tokens without a tier claim, and for every token when jwt.tiers is empty.
    default_tier: str | None = None
    cache_seconds: float = Field(2.0, ge=0, le=5)


class Caller(NamedTuple):
    principal: str  # what limits and usage are kept by: "key:<id>", "jwt:<sub>", "ip:<addr>"
    subject: str  # the person or service: key owner, token subject, client address
    tier: str
    key_id: str | None = None


def unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def forbidden(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(
        403, message, type="permission_error", code="permission_denied", param=param
    )


MISSING = unauthorized(
    "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...' "
    "(or in an 'x-api-key' or 'api-key' header)."
)
# Headers that may carry the credential besides `Authorization`, in the order looked at.
KEY_HEADERS = ("x-api-key", "api-key")
INVALID = unauthorized("Incorrect API key provided. Check the key, or ask an admin for a new one.")


class AuthPolicy(Policy):
    name = "auth"
    Settings = AuthSettings
    settings: AuthSettings

    def __init__(self, settings: AuthSettings, env: PolicyEnv) -> None:
        super().__init__(settings, env)
        self.static = {k.hash: k for k in settings.static_keys}
        self.verifier = JwtVerifier(settings.jwt) if settings.jwt else None
        # Endpoint name -> the scope a token needs.
        self.scopes: Mapping[str, str] = settings.jwt.required_scopes if settings.jwt else {}
        self.store: KeyStore | None = None
        self.keys: KeyCache | None = None
        self.failures = failure_counters(env.metrics)

    @classmethod
    def problems(cls, settings: AuthSettings, env: PolicyEnv) -> list[str]:
        referenced = [
            (f"static_keys[{i}].tier", k.tier) for i, k in enumerate(settings.static_keys)
        ]
        if settings.anonymous:
            referenced.append(("anonymous.tier", settings.anonymous.tier))
        if settings.default_tier:
            referenced.append(("default_tier", settings.default_tier))
        if settings.jwt:
            referenced += [(f"jwt.tiers.{c}", tier) for c, tier in settings.jwt.tiers.items()]
        found = unknown_tiers(referenced, env.tiers)
        if settings.jwt:
            try:
                JwtVerifier(settings.jwt)
            except JwtConfigError as exc:
                found.append(f"jwt: {exc}")
        return found

    async def start(self) -> None:
        if self.settings.api_keys:
            storage = self.env.config.storage

            async def create() -> KeyStore:
                store = open_store(storage.database_url, storage.sqlite_path)
                await store.start()
                return store

            self.store = await self.env.resources.get("api_keys", create, lambda s: s.close())
            self.keys = KeyCache(self.store, self.settings.cache_seconds)
        if self.verifier:
            await self.verifier.start()

    async def close(self) -> None:
        if self.verifier:
            await self.verifier.close()

    async def readiness(self) -> Mapping[str, Check]:
        if self.store is None or not self.env.config.storage.database_url:
            return {}  # the embedded key store is a local file
        try:
            async with asyncio.timeout(READY_SECONDS / 2):
                await self.store.get("readiness-probe")  # no such key: one indexed lookup
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("the API key database fails its readiness check: %r", exc)
            return {"auth:database": Check(False)}
        return {"auth:database": Check(True)}

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        try:
            await self._admit(ctx)
        except GatewayError as err:
            reason = _failure_reason(err)
            if reason is not None:  # not a bad body (400, 413): that is no auth failure
                self.failures[reason].inc()
            raise
        return None

    async def _admit(self, ctx: RequestContext) -> None:
        caller = await self._authenticate(ctx)
        tier = self.env.tiers.get(caller.tier)
        if tier is None:
            raise forbidden(f"Your tier {caller.tier!r} is not configured; ask an admin.")
        ctx.principal, ctx.subject, ctx.key_id = caller.principal, caller.subject, caller.key_id
        ctx.tier = caller.tier
        ctx.model_allowed = tier.allows_model
        if not tier.allows_endpoint(ctx.endpoint):
            raise forbidden(f"Your tier '{caller.tier}' may not use {ctx.request.path}.")
        if ctx.endpoint in MODEL_ENDPOINTS:
            await self._check_body(ctx, tier)

    async def _check_body(self, ctx: RequestContext, tier: Tier) -> None:
        body = await ctx.json()
        if ctx.model is not None and not tier.allows_model(ctx.model):
            raise forbidden(
                f"Your tier '{ctx.tier}' may not use the model '{ctx.model}'; "
                f"GET {MODELS.path} lists the models you can use.",
                param="model",
            )
        # Every length field llama-server reads is capped, not only the first one named.
        if tier.max_tokens and ctx.endpoint in GENERATING:
            read = BY_NAME[ctx.endpoint].lengths
            ctx.body_changed = cap_lengths(body, tier.max_tokens, read) or ctx.body_changed

    async def _authenticate(self, ctx: RequestContext) -> Caller:
        token = credential(ctx)
        if token is None:
            anonymous = self.settings.anonymous
            if anonymous is None:
                raise MISSING
            ip = client_address(ctx.request, anonymous.trusted_proxies, anonymous.forwarded_header)
            return Caller(f"ip:{ip}", ip, anonymous.tier)
        if token.startswith(PREFIX) and self.keys is not None:
            verdict = await self._verify_key(token)
            if verdict.key is None:
                log.info("API key refused: %s", verdict.reason, extra={"key_id": verdict.key_id})
                raise INVALID
            key = verdict.key
            return Caller(f"key:{key.id}", key.owner, key.tier, key.id)
        static = self.static.get(hash_secret(token))
        if static is not None:
            return Caller(f"static:{static.owner}", static.owner, static.tier)
        if self.verifier is not None and token.count(".") == 2:
            return self._from_claims(await self._verify_jwt(token), ctx)
        raise INVALID

    async def _verify_jwt(self, token: str) -> Claims:
        assert self.verifier is not None
        try:
            return await self.verifier.verify(token)
        except JwtError as exc:
            if exc.reason == "keys_unavailable":  # the identity provider's keys, not the caller
                raise GatewayError(
                    503,
                    f"Bearer tokens cannot be checked right now: {exc.message}. Retry shortly.",
                    type="server_error",
                    code="auth_unavailable",
                    headers={"Retry-After": "5"},
                ) from exc
            log.info("bearer token refused: %s", exc.reason)
            raise unauthorized(f"Invalid bearer token: {exc.message}.") from exc

    def _from_claims(self, claims: Claims, ctx: RequestContext) -> Caller:
        # 403, not 401: the token is genuine, it just does not grant this.
        settings = self.settings.jwt
        assert settings is not None
        tier = self.settings.default_tier
        if claims.tier is not None and settings.tiers:
            tier = settings.tiers.get(claims.tier)
            if tier is None:
                raise forbidden(
                    f"Your token's tier {claims.tier!r} is not one this gateway accepts; "
                    "ask an admin to map it under jwt.tiers."
                )
        if tier is None:
            raise forbidden("Your token names no tier and no default tier is configured.")
        scope = self.scopes.get(PERMISSION[ctx.endpoint])
        if scope is not None and scope not in claims.scopes:
            raise forbidden(f"Your token lacks the scope {scope!r} that {ctx.request.path} needs.")
        return Caller(f"jwt:{claims.subject}", claims.subject, tier)

    async def _verify_key(self, token: str) -> Verdict:
        key_id = parse_key(token)
        if key_id is None:
            return Verdict(None, Reason.MALFORMED)
        assert self.keys is not None
        return judge(token, key_id, await self.keys.get(key_id), datetime.now(UTC))


def _failure_reason(err: GatewayError) -> str | None:
    if err is MISSING:
        return "missing"
    if err.status == 401:
        return "invalid_token" if err.message.startswith("Invalid bearer token") else "invalid_key"
    if err.status == 403:
        return "forbidden"
    return "unavailable" if err.code == "auth_unavailable" else None


def credential(ctx: RequestContext) -> str | None:
    headers = ctx.request.headers
    auth = headers.get("Authorization")
    if auth is not None:
        token = bearer_token(auth.strip())
        if token is None:
            raise unauthorized("Send the key as 'Authorization: Bearer <key>'.")
        return _printable_ascii(token)
    for name in KEY_HEADERS:
        api_key = headers.get(name)
        if api_key:
            return _printable_ascii(api_key.strip())
    return None


def _printable_ascii(token: str) -> str:
    if not printable_ascii(token):
        raise unauthorized(
            "The credential holds bytes no API key or token has; send it as printable ASCII."
        )
    return token
