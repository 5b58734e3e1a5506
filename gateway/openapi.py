"""The OpenAPI 3.1 document of every route the gateway serves (`GET /openapi.json`).

Made from the application's router, so every route is in it, policies' and CORS
preflights included; an endpoint of `gateway.endpoints.ENDPOINTS` is described from its
entry there and its bodies' models (`gateway.schemas`), and one without models from its
entry alone. Nothing here lists routes: a route added anywhere appears by itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import hdrs, web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.endpoints import ENDPOINTS, Endpoint
from gateway.schemas import BODIES, Error, Health, Ready

Json = dict[str, Any]
# The name of the route that answers every URL no other route serves (404 `unknown_url`).
CATCH_ALL = "unknown-url"
# A route answering any method is documented by those a client calls on such a path.
_ANY_METHODS = ("get", "post", "delete")
REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{(\w+)\}")
JSON = "application/json"
SSE = "text/event-stream"
# What any answer of the policy chain may be besides its own: a request the HTTP server
# could not parse, a policy's refusal (credentials, tier, rate limit, a dependency down),
# the gateway's own failure.
_CHAIN = (400, 401, 403, 429, 500, 503)
# What a relayed request adds: an unknown model, a body too large, llama-server's own
# errors (501 for what it does not serve), an upstream that fails, or does not answer.
_RELAYED = (*_CHAIN, 404, 413, 501, 502, 504)
_TEXT = {"type": "string"}
# One event of a stream (before OpenAPI 3.2, the `schema` of text/event-stream is an event's).
_EVENT = {
    "type": "object",
    "properties": {
        "data": {
            **_TEXT,
            "description": "a JSON chunk as OpenAI's (`chat.completion.chunk`, ...), an"
            ' `{"error": ...}` object when the stream breaks off, or `[DONE]`',
        },
        "event": _TEXT,
    },
    "required": ["data"],
}
# The core's routes outside the chain: summary, and per status the content type and schema.
_CORE: dict[str, tuple[str, dict[int, tuple[str, Json]]]] = {
    "/health": ("Liveness: 200 while the process runs", {200: (JSON, {"$ref": "Health"})}),
    "/ready": (
        "Readiness: every model has a healthy upstream, every required dependency answers",
        {200: (JSON, {"$ref": "Ready"}), 503: (JSON, {"$ref": "Ready"})},
    ),
    "/metrics": ("Prometheus metrics", {200: ("text/plain", _TEXT)}),
    "/openapi.json": ("This document", {200: (JSON, {"type": "object"})}),
}


def document(
    router: web.UrlDispatcher, version: str, endpoints: Iterable[Endpoint] = ENDPOINTS
) -> Json:
    by_path = {e.path: e for e in endpoints}
    paths: dict[str, Json] = {}
    for route in router.routes():
        if route.name == CATCH_ALL:  # not a route: what answers every unknown URL
            continue
        path = route.resource.canonical if route.resource is not None else ""
        item = paths.setdefault(path, {})
        if route.method == hdrs.METH_ANY:  # a route that only ever says there is nothing
            item.update({method: _nothing(method, path) for method in _ANY_METHODS})
            continue
        item[route.method.lower()] = _operation(route.method, path, by_path.get(path))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llama-gateway",
            "version": version,
            "description": "An OpenAI-compatible gateway in front of llama.cpp's llama-server.",
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": _SECURITY},
        # Whether credentials are needed depends on the policies configured (`{}`: none).
        "security": [{"bearer": []}, {"api_key": []}, {}],
    }


_SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "api_key": {"type": "apiKey", "in": "header", "name": "api-key"},
}


def _schemas() -> Json:
    models: list[type[BaseModel]] = [Error, Health, Ready]
    for request, response in BODIES.values():
        models += [response] if request is None else [request, response]
    unique = list(dict.fromkeys(models))
    _, top = models_json_schema([(m, "validation") for m in unique], ref_template=REF)
    schemas: Json = top.get("$defs", {})
    return schemas


def _operation(method: str, path: str, endpoint: Endpoint | None) -> Json:
    if method == hdrs.METH_OPTIONS:
        operation = _preflight(path)
    elif endpoint is not None:
        operation = _endpoint(endpoint)
    elif path in _CORE:
        summary, answers = _CORE[path]
        operation = {"summary": summary, "responses": _core_responses(answers)}
    else:  # a policy's route: the core knows its path, not its answers
        operation = {
            "summary": f"Served by a policy: {path}",
            "responses": {
                "200": {"description": "OK", "content": {JSON: {"schema": {}}}},
                "4XX": _error("Refused"),
                "5XX": _error("Failed"),
            },
        }
    operation["operationId"] = _operation_id(method, path)
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _TEXT}
        for name in _PARAM.findall(path)
    ]
    if parameters:
        operation["parameters"] = parameters
    if method == hdrs.METH_HEAD:  # the GET's answers without their bodies
        for answer in operation["responses"].values():
            answer.pop("content", None)
        operation["summary"] = f"{operation['summary']} (head only)"
    return operation


def _operation_id(method: str, path: str) -> str:
    return method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_")


def _endpoint(endpoint: Endpoint) -> Json:
    request, answer = BODIES.get(endpoint.name, (None, None))
    ok: Json = {JSON: {"schema": _ref(answer) if answer else {"type": "object"}}}
    if endpoint.generates:
        ok[SSE] = {"schema": _EVENT}
    statuses = _RELAYED if endpoint.names_model else (*_CHAIN, *_not_found(endpoint))
    operation: Json = {
        "summary": f"{endpoint.name} (tier endpoint `{endpoint.permission}`)",
        "responses": {"200": {"description": "OK", "content": ok}, **_errors(statuses)},
    }
    if endpoint.names_model:
        schema = _ref(request) if request else _derived_body(endpoint)
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
    return operation


def _not_found(endpoint: Endpoint) -> tuple[int, ...]:
    return (404,) if _PARAM.search(endpoint.path) else ()


def _derived_body(endpoint: Endpoint) -> Json:
    """The body of an endpoint without a model in `gateway.schemas`: what its entry says."""
    properties: Json = {"model": _TEXT}
    schema: Json = {"type": "object", "properties": properties}
    if endpoint.input_field:
        properties[endpoint.input_field] = {"type": "array"} if endpoint.chat else {}
        schema["required"] = [endpoint.input_field]
    return schema


def _core_responses(answers: dict[int, tuple[str, Json]]) -> Json:
    responses = {
        str(status): {"description": "OK", "content": {kind: {"schema": _resolve(schema)}}}
        for status, (kind, schema) in answers.items()
    }
    return {**_errors(s for s in (400, 500) if s not in answers), **responses}


def _resolve(schema: Json) -> Json:
    name = schema.get("$ref")
    return {"$ref": REF.format(model=name)} if name else schema


def _errors(statuses: Iterable[int]) -> Json:
    return {str(status): _error(f"Error {status}") for status in sorted(set(statuses))}


def _error(description: str) -> Json:
    return {"description": description, "content": {JSON: {"schema": _ref(Error)}}}


def _ref(model: type[BaseModel]) -> Json:
    return {"$ref": REF.format(model=model.__name__)}


def _nothing(method: str, path: str) -> Json:
    return {
        "summary": f"Always 404 ({path}: served by no upstream, whatever the method)",
        "operationId": _operation_id(method, path),
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": _TEXT}
            for name in _PARAM.findall(path)
        ],
        "responses": _errors((400, 404, 500)),
    }


def _preflight(path: str) -> Json:
    return {
        "summary": f"CORS preflight of {path} (server.cors); no credentials needed",
        "security": [{}],
        "responses": {
            "204": {"description": "Allowed: the Access-Control-Allow-* headers"},
            **_errors((400, 403, 404, 500)),
        },
    }
