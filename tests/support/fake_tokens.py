"""The fake llama-server's rerank, tokenize and detokenize answers, as llama-server gives
them (tools/server: `handle_rerank`, `handle_tokenize`, `handle_detokenize`), its failures
included: a 400 for a field of the wrong type, a 500 for a token id beyond the vocabulary
or a negative `top_n` (what the gateway must keep from reaching it).

Its vocabulary is one token per character below U+D800: ids are code points, so
detokenize(tokenize(text)) is the text.
"""

from __future__ import annotations

from typing import Any

VOCAB = 0xD800
Answer = tuple[int, dict[str, Any]]


def models_answer() -> dict[str, Any]:
    """What the fake's `/v1/models` says: one model, with the vocabulary size llama-server gives."""
    meta = {"n_vocab": VOCAB, "n_ctx": 4096}
    return {"object": "list", "data": [{"id": "fake", "object": "model", "meta": meta}]}


def answer(path: str, body: dict[str, Any], reranking: bool) -> Answer:
    """The answer to a call of `/tokenize`, `/detokenize` or a rerank route."""
    if path == "/tokenize":
        return tokenize(body)
    if path == "/detokenize":
        return detokenize(body)
    return rerank(body, reranking)


def error(status: int, message: str, kind: str) -> Answer:
    return status, {"error": {"code": status, "message": message, "type": kind}}


def _bad(message: str) -> Answer:
    return error(400, message, "invalid_request_error")


def _out_of_range(token: int) -> Answer:
    message = f"vector::_M_range_check: __n (which is {token}) >= this->size() (which is {VOCAB})"
    return error(500, message, "server_error")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int32(number: float) -> int:
    """A JSON number as llama-server reads a token id: an int32, wrapped around."""
    value = int(number) if abs(number) < 2**63 else 0
    return (value + 2**31) % 2**32 - 2**31


def _piece(token: int) -> str:
    return chr(token)


def rerank(body: dict[str, Any], served: bool) -> Answer:
    if not served:
        message = "This server does not support reranking. Start it with `--reranking`"
        return error(501, message, "not_supported_error")
    query, documents = body.get("query"), body.get("documents", body.get("texts"))
    if "query" not in body:
        return _bad('"query" must be provided')
    if not isinstance(query, str):
        return _bad('"query" must be a string')
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        documents = []
    if not documents:
        return _bad('"documents" must be a non-empty string array')
    top_n = body.get("top_n", len(documents))
    if not _is_int(top_n):
        top_n = len(documents)
    if top_n < 0:  # llama-server resizes its results to top_n: a length_error
        return error(500, "vector::_M_default_append", "server_error")
    words = set(query.lower().split())
    results = [
        {"index": i, "relevance_score": len(words & set(d.lower().split())) / (1 + len(words))}
        for i, d in enumerate(documents)
    ]
    results.sort(key=lambda r: -r["relevance_score"])
    tokens = sum(len(query) + len(d) + 2 for d in documents)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, {
        "model": body.get("model") or "fake",
        "object": "list",
        "usage": usage,
        "results": results[:top_n],
    }


def tokenize(body: dict[str, Any]) -> Answer:
    if "content" not in body:
        return 200, {"tokens": []}
    content = body["content"]
    if not isinstance(content, str | list):
        return _bad("[json.exception.type_error.302] type must be string")
    parts = content if isinstance(content, list) else [content]
    tokens: list[int] = []
    for part in parts:
        if isinstance(part, str):
            tokens += [ord(c) % VOCAB for c in part]
        elif _is_int(part) or isinstance(part, float):
            tokens.append(_int32(part))
        else:
            return _bad("[json.exception.type_error.302] type must be string")
    if body.get("with_pieces") is not True:
        return 200, {"tokens": tokens}
    for token in tokens:
        if not 0 <= token < VOCAB:
            return _out_of_range(token)
    return 200, {"tokens": [{"id": t, "piece": _piece(t)} for t in tokens]}


def detokenize(body: dict[str, Any]) -> Answer:
    tokens = body.get("tokens", [])
    if not isinstance(tokens, list):
        return _bad("[json.exception.type_error.302] type must be array")
    pieces = []
    for token in tokens:
        if not (_is_int(token) or isinstance(token, float)):
            return _bad("[json.exception.type_error.302] type must be number")
        if not 0 <= _int32(token) < VOCAB:
            return _out_of_range(_int32(token))
        pieces.append(_piece(_int32(token)))
    return 200, {"content": "".join(pieces)}
