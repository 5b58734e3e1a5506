"""`GET /admin/usage`: the report as JSON, for admin credentials only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import registry
from gateway.app import STATE, create_app
from gateway.config import ConfigError
from gateway.local import free_port
from gateway.policy import PolicyEnv
from gateway.resources import Resources
from policies.usage.report import ReportError, parse_time
from tests.support.gateways import CHAT, gateway_config
from tests.support.usage import ADMIN_TOKEN, UsageGateway, sha256, usage_settings
from tests.support.waiting import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def report(client: TestClient[Any, Any], query: str = "", **headers: str) -> Any:
    resp = await client.get(f"/admin/usage{query}", headers=headers or ADMIN)
    return resp.status, await resp.json()


async def test_admins_get_the_report_by_model(usage_gateway: UsageGateway, pg_url: str) -> None:
    client = await usage_gateway(database_url=pg_url)
    for body in (CHAT, CHAT, {**CHAT, "stream": True}, {**CHAT, "model": "nope"}):
        await (await client.post("/v1/chat/completions", json=body)).read()

    async def all_in() -> bool:  # and nothing left in memory or in the journal
        status, body = await report(client)
        idle = {"records": 0, "journal_bytes": 0}
        return status == 200 and body["total"]["requests"] == 4 and body["pending"] == idle

    await eventually(all_in)
    status, body = await report(client, "?since=1h&by=model")
    assert status == 200
    assert body["object"] == "usage.report"
    assert body["by"] == "model"
    groups = {g["group"]: g for g in body["data"]}
    assert set(groups) == {"fake", "nope"}
    assert groups["fake"]["requests"] == 3
    assert groups["fake"]["prompt_tokens"] == 15
    assert groups["fake"]["completion_tokens"] == 9
    assert groups["fake"]["cost"] == pytest.approx(3 * (5 * 1000 + 3 * 2000) / 1e6)
    assert groups["nope"]["errors"] == 1
    assert groups["fake"]["p95_ms"] >= groups["fake"]["p50_ms"] > 0
    # Admin calls are not requests of the chain: they leave no usage row.
    assert (await report(client))[1]["total"]["requests"] == 4


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}],
    ids=["none", "wrong token", "wrong scheme"],
)
async def test_others_get_401(usage_gateway: UsageGateway, headers: dict[str, str]) -> None:
    client = await usage_gateway()
    resp = await client.get("/admin/usage", headers=headers)
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_without_admin_credentials_configured_the_endpoint_is_off(
    usage_gateway: UsageGateway,
) -> None:
    client = await usage_gateway({"type": "request_id"}, usage_settings(admin=None))
    status, body = await report(client)
    assert status == 403
    assert body["error"]["code"] == "permission_denied"


async def test_an_admin_token_can_come_from_the_environment(
    usage_gateway: UsageGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USAGE_ADMIN_TOKEN", "token-from-the-environment")
    settings = usage_settings(admin={"token_env": "USAGE_ADMIN_TOKEN"})
    client = await usage_gateway({"type": "request_id"}, settings)
    status, _ = await report(client, Authorization="Bearer token-from-the-environment")
    assert status == 200


def test_an_admin_token_no_request_could_present_is_a_configuration_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USAGE_ADMIN_TOKEN", "caf\u00e9-token")
    config = gateway_config("http://127.0.0.1:9")
    settings = usage_settings(admin={"token_env": "USAGE_ADMIN_TOKEN"})
    with pytest.raises(ConfigError) as raised:
        registry.build_chain([settings], PolicyEnv(config, {}, Resources()))
    assert raised.value.problems == [
        "policies[0].admin.token_env: the token in USAGE_ADMIN_TOKEN is not printable ASCII, "
        "so no request could present it; use letters, digits and punctuation"
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [("?by=colour", "cannot group by 'colour'"), ("?since=yesterday", "is not a time")],
)
async def test_bad_parameters_get_400_saying_what_to_send(
    usage_gateway: UsageGateway, query: str, message: str
) -> None:
    client = await usage_gateway()
    status, body = await report(client, query)
    assert status == 400
    assert message in body["error"]["message"]


async def test_without_the_usage_policy_there_is_no_admin_route(
    usage_gateway: UsageGateway,
) -> None:
    client = await usage_gateway({"type": "request_id"})
    status, body = await report(client)
    assert (status, body["error"]["code"]) == (404, "unknown_url")


async def test_a_database_that_is_down_gives_503(usage_gateway: UsageGateway) -> None:
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    client = await usage_gateway(database_url=nobody)
    status, body = await report(client)
    assert status == 503
    assert body["error"]["code"] == "usage_unavailable"


async def test_a_reloaded_policy_serves_the_route_with_its_new_settings(
    aiohttp_client: Any, fake_url: str, tmp_path: Path
) -> None:
    def document(token_hash: str) -> str:
        settings = usage_settings(admin={"key_hashes": [token_hash]})
        return f"policies: {json.dumps([{'type': 'request_id'}, settings])}\n"

    policy = tmp_path / "policy.yaml"
    policy.write_text(document(sha256("first-admin-token")))
    config = gateway_config(
        fake_url, policy_file="policy.yaml", storage={"data_dir": str(tmp_path / "data")}
    )
    client = await aiohttp_client(create_app(config, config_path=tmp_path / "gateway.yaml"))
    assert (await report(client, Authorization="Bearer first-admin-token"))[0] == 200
    policy.write_text(document(sha256("second-admin-token")))
    assert await client.app[STATE].runtime.reload("test")
    assert (await report(client, Authorization="Bearer first-admin-token"))[0] == 401
    assert (await report(client, Authorization="Bearer second-admin-token"))[0] == 200


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?since=99999999999w", "since"),
        ("?since=" + "9" * 400 + "d", "since"),
        ("?until=0001-01-01T00:00:00%2B01:00", "until"),
        ("?until=tomorrow", "until"),
        ("?since=24h&by=%00", "by"),
    ],
)
async def test_any_bad_time_or_grouping_is_a_400_naming_the_parameter(
    usage_gateway: UsageGateway, query: str, param: str
) -> None:
    client = await usage_gateway()
    status, body = await report(client, query)
    assert status == 400
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_report_parameter",
        param,
    )
    assert error["message"].startswith(f"{param}: ")


async def raw_get(client: TestClient[Any, Any], header: bytes) -> tuple[int, Any]:
    """GET /admin/usage with a header line sent as raw bytes (no client would encode it)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /admin/usage HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n"
    )
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe" + ADMIN_TOKEN.encode(),
        b"Authorization: Bearer caf\xc3\xa9",
        b"api-key: \xff" + ADMIN_TOKEN.encode(),
        # Only the token is stripped: a no-break space before the scheme is no scheme.
        b"Authorization: \xc2\xa0Bearer " + ADMIN_TOKEN.encode(),
        b"Authorization: Bearer ",
    ],
    ids=["non-utf-8", "non-ascii", "api-key", "no-break space first", "no token"],
)
async def test_a_token_with_bytes_no_token_has_is_a_401(
    usage_gateway: UsageGateway, header: bytes
) -> None:
    client = await usage_gateway()
    status, body = await raw_get(client, header)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.text())
def test_parsing_a_report_time_fails_only_with_a_report_error(value: str) -> None:
    failure: ReportError | None = None
    try:
        moment = parse_time(value, param="since")
    except ReportError as exc:
        failure = exc
    if failure is not None:
        assert failure.param == "since"
        assert str(failure).startswith("since: ")
    else:
        assert moment.tzinfo is not None
        moment.astimezone(UTC)  # usable by both stores


@settings(max_examples=300, deadline=None)
@given(value=st.from_regex(r"\A\d{1,30}(\.\d{1,30})?[smhdw]\Z"))
def test_any_duration_parses_or_is_a_report_error(value: str) -> None:
    with contextlib.suppress(ReportError):
        assert parse_time(value).tzinfo is not None
