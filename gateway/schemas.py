"""The request and response bodies of the endpoints, as pydantic models, for the OpenAPI
document (`gateway.openapi`); the relay itself never parses a body into them.

A request model says what the gateway accepts: the fields it checks
(`gateway.validate`) with the same bounds, and the fields each endpoint needs. Every model
allows other fields, as the gateway passes them on to llama-server untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.endpoints import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    DETOKENIZE,
    EMBEDDINGS,
    MODEL,
    MODELS,
    RERANK,
    TOKENIZE,
)
from gateway.validate import INT32_MAX


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


Count = Annotated[int, Field(ge=1, le=INT32_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX, description="below the model's vocabulary")]
ModelName = Annotated[
    str | None,
    Field(description="a configured model; may be left out when only one is configured"),
]


class StreamOptions(Open):
    include_usage: bool | None = None


class Generation(Open):
    model: ModelName = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    n_predict: Count | None = None
    n: Count | None = None
    seed: int | None = None
    temperature: float | None = None


class ChatMessage(Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(Generation):
    messages: list[ChatMessage]


class CompletionRequest(Generation):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(Open):
    model: ModelName = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None


class RerankRequest(Open):
    model: ModelName = None
    query: str
    documents: list[str] = Field(min_length=1)
    top_n: Count | None = None


class TokenizeRequest(Open):
    model: ModelName = None
    content: str | list[str | TokenId]
    add_special: bool | None = None
    with_pieces: bool | None = None


class DetokenizeRequest(Open):
    model: ModelName = None
    tokens: list[TokenId]


class Usage(Open):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class AssistantMessage(Open):
    role: str
    content: str | None = None


class ChatChoice(Open):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None


class ChatCompletion(Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(Open):
    index: int
    text: str
    finish_reason: str | None = None


class Completion(Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(Open):
    object: Literal["list"]
    data: list[Embedding]
    model: str | None = None
    usage: Usage | None = None


class RerankResult(Open):
    index: int
    relevance_score: float


class RerankResponse(Open):
    results: list[RerankResult]
    model: str | None = None
    usage: Usage | None = None


class TokenPiece(Open):
    id: int
    piece: str | list[int] = Field(description="its bytes, when they are not valid UTF-8")


class TokenizeResponse(Open):
    tokens: list[int] | list[TokenPiece]


class DetokenizeResponse(Open):
    content: str


class Model(Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Open):
    object: Literal["list"]
    data: list[Model]


class ErrorDetail(Open):
    message: str
    type: str | None = None
    param: str | None = None
    # The gateway's codes are strings; llama-server's own errors carry their HTTP status.
    code: str | int | None = None


class Error(Open):
    error: ErrorDetail


class Health(Open):
    status: Literal["ok"]


class Ready(Open):
    status: Literal["ready", "not ready"]
    draining: bool
    checks: dict[str, bool]


# Per endpoint name: its request body (None: no body) and its answer. An endpoint missing
# here gets a body derived from its entry in `gateway.endpoints.ENDPOINTS`.
BODIES: dict[str, tuple[type[BaseModel] | None, type[BaseModel]]] = {
    CHAT_COMPLETIONS.name: (ChatCompletionRequest, ChatCompletion),
    COMPLETIONS.name: (CompletionRequest, Completion),
    EMBEDDINGS.name: (EmbeddingRequest, EmbeddingList),
    RERANK.name: (RerankRequest, RerankResponse),
    TOKENIZE.name: (TokenizeRequest, TokenizeResponse),
    DETOKENIZE.name: (DetokenizeRequest, DetokenizeResponse),
    MODELS.name: (None, ModelList),
    MODEL.name: (None, Model),
}
