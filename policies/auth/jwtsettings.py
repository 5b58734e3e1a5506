"""The settings of the auth policy's JWT verifier (SPEC F2.5): algorithms, one key source,
the claims checked and how long a token may live."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.endpoints import EndpointName
from gateway.policy import PolicySettings

Algorithm = Literal["HS256", "RS256", "ES256"]

_KEY_SOURCES = ("public_key_file", "jwks_file", "jwks_url")


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
