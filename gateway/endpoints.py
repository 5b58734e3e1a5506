"""The endpoints the gateway serves, one entry each.

Everything else derives from `ENDPOINTS`: the routes, the upstream URLs, the names a
tier's `endpoints:` and a JWT's `required_scopes` accept, the body checks and what the
policies do per endpoint. A request carries its endpoint's name (`ctx.endpoint`, the
`endpoint` metric label); the sets below answer per-request questions about a name
with one lookup, built once at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class Endpoint:
    # What requests, metric labels, logs, a tier's `endpoints:` and a JWT's
    # `required_scopes` call it.
    name: str
    # The route clients call.
    path: str
    # llama-server's path for it. A proxied endpoint takes a JSON body (a POST) naming the
    # model that routes it. None only for the model list, which the relay answers itself.
    upstream_path: str | None = None
    # The body field holding the input: a request without it is refused with a 400.
    input_field: str | None = None
    # The input is a list of chat messages: checked to be an array, estimated per message.
    chat: bool = False
    # It generates tokens: the length fields (`max_tokens`, ...) and a tier's cap apply,
    # a rate limit reserves the answer's tokens, a stream is asked for its usage.
    generates: bool = False

    @property
    def names_model(self) -> bool:
        return self.upstream_path is not None

    @property
    def method(self) -> str:
        return "POST" if self.names_model else "GET"


CHAT_COMPLETIONS = Endpoint(
    "chat.completions",
    "/v1/chat/completions",
    upstream_path="/v1/chat/completions",
    input_field="messages",
    chat=True,
    generates=True,
)
COMPLETIONS = Endpoint(
    "completions",
    "/v1/completions",
    upstream_path="/v1/completions",
    input_field="prompt",
    generates=True,
)
EMBEDDINGS = Endpoint(
    "embeddings", "/v1/embeddings", upstream_path="/v1/embeddings", input_field="input"
)
MODELS = Endpoint("models", "/v1/models")  # the model list, answered by the gateway

ENDPOINTS: tuple[Endpoint, ...] = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MODELS)
BY_NAME: dict[str, Endpoint] = {e.name: e for e in ENDPOINTS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
# Names of the endpoints whose body names a model (all but the model list).
MODEL_ENDPOINTS: frozenset[str] = frozenset(e.name for e in ENDPOINTS if e.names_model)
# Names of the endpoints that generate tokens.
GENERATING: frozenset[str] = frozenset(e.name for e in ENDPOINTS if e.generates)

if TYPE_CHECKING:
    EndpointName: TypeAlias = str
else:
    # In a settings model: one of NAMES, or pydantic's "Input should be 'chat.completions', ...".
    EndpointName = Literal[NAMES]
