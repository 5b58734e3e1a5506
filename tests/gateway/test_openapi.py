"""`GET /openapi.json`: a valid OpenAPI 3.1 document of every route the router holds,
made from the code's own tables."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.endpoints import BY_NAME, ENDPOINTS, Endpoint
from gateway.openapi import CATCH_ALL, document
from gateway.schemas import BODIES
from gateway.validate import INT32_MAX
from tests.support.gateways import GatewayFactory, gateway_config

CORS = {"cors": {"origins": ["https://app.example.com"]}}
# An endpoint the schemas do not know yet, as one added to ENDPOINTS later would be.
RESPONSES = Endpoint(
    "responses", "/v1/responses", upstream_path="/v1/responses", input_field="input", generates=True
)


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, but the catch-all that answers unknown URLs; a route
    of any method as `*`."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.name != CATCH_ALL and route.resource is not None
    }


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation; those of a route of any method as one `*`."""
    found = {(method, path) for path, item in doc["paths"].items() for method in item}
    for path, item in doc["paths"].items():
        if all(op["summary"].startswith("Always 404") for op in item.values()):
            found = {f for f in found if f[1] != path} | {("*", path)}
    return found


async def served(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc: dict[str, Any] = await resp.json()
    return doc


async def test_the_document_is_valid_openapi_3_1(every_policy: TestClient[Any, Any]) -> None:
    doc = await served(every_policy)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


@pytest.mark.parametrize("server", [{}, CORS], ids=["cors off", "cors on"])
async def test_every_route_of_the_router_is_in_the_document_and_no_other(
    make_gateway: GatewayFactory, tmp_path: Any, server: dict[str, Any]
) -> None:
    client = await make_gateway(
        server=server,
        storage={"data_dir": str(tmp_path)},
        policies=[{"type": "usage", "admin": {"key_hashes": []}}],
    )
    doc = await served(client)
    found, expected = operations(doc), routes(client.app)
    assert found == expected
    assert {("get", "/admin/usage"), ("head", "/v1/models/{model}")} <= found
    assert (("options", "/v1/rerank") in found) == bool(server)
    validate(doc)


async def test_every_endpoint_is_documented_with_its_own_bodies(
    gateway: TestClient[Any, Any],
) -> None:
    doc = await served(gateway)
    schemas = doc["components"]["schemas"]
    for name, (request, answer) in BODIES.items():  # others: test_an_endpoint_added_later...
        endpoint = BY_NAME[name]
        operation = doc["paths"][endpoint.path][endpoint.method.lower()]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{answer.__name__}"}, endpoint.name
        if request is None:
            continue
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{request.__name__}"}
        assert endpoint.input_field in schemas[request.__name__]["required"], endpoint.name


def test_the_schemas_bound_counts_as_the_gateway_checks_them() -> None:
    doc = document(create_app(gateway_config("http://127.0.0.1:9")).router, "0")
    schemas = doc["components"]["schemas"]
    for name in ("max_tokens", "n"):
        (bounded, _null) = schemas["ChatCompletionRequest"]["properties"][name]["anyOf"]
        assert (bounded["minimum"], bounded["maximum"]) == (1, INT32_MAX)
    (top_n, _) = schemas["RerankRequest"]["properties"]["top_n"]["anyOf"]
    assert (top_n["minimum"], top_n["maximum"]) == (1, INT32_MAX)


def test_an_endpoint_added_later_is_described_from_its_entry() -> None:
    app = create_app(gateway_config("http://127.0.0.1:9"))

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post(RESPONSES.path, handler)
    doc = document(app.router, "0", (*ENDPOINTS, RESPONSES))
    validate(doc)
    operation = doc["paths"]["/v1/responses"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["input"]
    kinds = set(operation["responses"]["200"]["content"])
    assert kinds == {"application/json", "text/event-stream"}
    assert {"400", "404", "413", "502"} <= set(operation["responses"])
