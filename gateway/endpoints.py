"""The endpoints the gateway serves, one entry each.

Everything else derives from `ENDPOINTS`: the routes, the upstream URLs, the names a
tier's `endpoints:` and a JWT's `required_scopes` accept (`PERMISSIONS`), the body checks,
the OpenAPI document (`gateway.openapi`) and what the policies do per endpoint. A request
carries its endpoint's name (`ctx.endpoint`, the `endpoint` metric label); the sets below
answer per-request questions about a name with one lookup, built once at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from gateway.dialects import MESSAGES as ANTHROPIC
from gateway.dialects import OPENAI, Dialect
from gateway.dialects import RESPONSES as OPENAI_RESPONSES

# The fields llama-server reads as the most tokens to generate, first named first:
# `n_predict`, else `max_completion_tokens`, else `max_tokens` (-1 there means "until the
# context is full", 0 "none"); a null one is skipped.
READ_LENGTHS = ("n_predict", "max_completion_tokens", "max_tokens")


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
    # The input may be a list of conversation turns (`{role, content}`), estimated per turn.
    turns: bool = False
    # A field with more of the prompt (Anthropic's `system`, the Responses API's `instructions`).
    instructions_field: str | None = None
    # It generates tokens: the length fields (`max_tokens`, ...) and a tier's cap apply,
    # a rate limit reserves the answer's tokens, a stream is asked for its usage.
    generates: bool = False
    # The length fields llama-server reads on this route, the first named deciding.
    lengths: tuple[str, ...] = READ_LENGTHS
    # Its API family: the shape of errors and usage, how a stream ends (`gateway.dialects`).
    dialect: Dialect = OPENAI
    # Request headers passed on upstream as they came (credentials never are).
    passed_headers: tuple[str, ...] = ()
    # The endpoint whose permission it shares (detokenize goes with tokenize): a tier's
    # `endpoints:` and a JWT's `required_scopes` name that one. None: its own name.
    grouped_with: str | None = None
    # Integer fields of its own, each from 1 to 2**31 - 1 (llama-server reads them as int32).
    counts: tuple[str, ...] = ()
    # Its input may hold token ids: each an integer below the model's vocabulary size
    # (llama-server fails with a 500 on one out of range).
    token_ids: bool = False

    @property
    def permission(self) -> str:
        return self.grouped_with or self.name

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
    turns=True,
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
# OpenAI's Responses API: llama-server reads `max_output_tokens` as its `max_tokens`.
RESPONSES = Endpoint(
    "responses",
    "/v1/responses",
    upstream_path="/v1/responses",
    input_field="input",
    turns=True,
    instructions_field="instructions",
    generates=True,
    lengths=("n_predict", "max_completion_tokens", "max_output_tokens", "max_tokens"),
    dialect=OPENAI_RESPONSES,
)
# Anthropic's Messages API.
MESSAGES = Endpoint(
    "messages",
    "/v1/messages",
    upstream_path="/v1/messages",
    input_field="messages",
    chat=True,
    turns=True,
    instructions_field="system",
    generates=True,
    dialect=ANTHROPIC,
    passed_headers=("anthropic-version", "anthropic-beta"),
)
# Relevance scores of documents for a query (a reranking model's llama-server).
RERANK = Endpoint(
    "rerank", "/v1/rerank", upstream_path="/v1/rerank", input_field="documents", counts=("top_n",)
)
# Text to token ids and back with a model's vocabulary: `model` names the model, as elsewhere.
TOKENIZE = Endpoint(
    "tokenize", "/v1/tokenize", upstream_path="/tokenize", input_field="content", token_ids=True
)
DETOKENIZE = Endpoint(
    "detokenize",
    "/v1/detokenize",
    upstream_path="/detokenize",
    input_field="tokens",
    grouped_with="tokenize",
    token_ids=True,
)
# Answered by the gateway: the model list, and one model of it.
MODELS = Endpoint("models", "/v1/models")
MODEL = Endpoint("models.retrieve", "/v1/models/{model}", grouped_with="models")

ENDPOINTS: tuple[Endpoint, ...] = (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    MESSAGES,
    RERANK,
    TOKENIZE,
    DETOKENIZE,
    MODELS,
    MODEL,
)
BY_NAME: dict[str, Endpoint] = {e.name: e for e in ENDPOINTS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
# What a tier's `endpoints:` and a JWT's `required_scopes` name: one per group of endpoints.
PERMISSIONS: tuple[str, ...] = tuple(dict.fromkeys(e.permission for e in ENDPOINTS))
PERMISSION: dict[str, str] = {e.name: e.permission for e in ENDPOINTS}
# Names of the endpoints whose body names a model (all but the model list).
MODEL_ENDPOINTS: frozenset[str] = frozenset(e.name for e in ENDPOINTS if e.names_model)
# Names of the endpoints that generate tokens.
GENERATING: frozenset[str] = frozenset(e.name for e in ENDPOINTS if e.generates)
MODEL_PERMISSIONS: frozenset[str] = frozenset(PERMISSION[name] for name in MODEL_ENDPOINTS)
# Names of the endpoints whose input may hold token ids.
TOKEN_IDS: frozenset[str] = frozenset(e.name for e in ENDPOINTS if e.token_ids)
# Every length field of any route: all are capped by a tier's `max_tokens`.
LENGTHS: tuple[str, ...] = tuple(dict.fromkeys(n for e in ENDPOINTS for n in e.lengths))


def dialect_of(path: str) -> Dialect:
    """The API family of a path at or under an endpoint's route, for the answers given to
    requests the relay never sees (an unknown URL, a wrong method)."""
    for endpoint in ENDPOINTS:
        if path == endpoint.path or path.startswith(endpoint.path + "/"):
            return endpoint.dialect
    return OPENAI


if TYPE_CHECKING:
    EndpointName: TypeAlias = str
else:
    # In a settings model: one of PERMISSIONS, or pydantic's "Input should be
    # 'chat.completions', ...".
    EndpointName = Literal[PERMISSIONS]
