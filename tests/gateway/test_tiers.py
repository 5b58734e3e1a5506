"""Tiers: an empty model list allows no model, and check-config refuses it where it bites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.cli import main
from gateway.endpoints import ENDPOINTS
from gateway.tiers import Tier
from tests.support.auth import sha256
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory

STATIC = "static-key-for-the-tier-tests-0123456789"


def test_an_empty_model_list_allows_no_model() -> None:
    tier = Tier(endpoints=["models"], models=[])
    assert [m for m in ("fake", "", "*", "anything") if tier.allows_model(m)] == []


def test_model_patterns_still_match_as_before() -> None:
    tier = Tier(models=["fake", "gemma*"])
    assert [m for m in ("fake", "gemma-3", "fake2", "other") if tier.allows_model(m)] == [
        "fake",
        "gemma-3",
    ]


def test_an_empty_model_list_with_model_endpoints_is_refused() -> None:
    with pytest.raises(
        ValidationError, match=r"an empty list allows no model, so chat\.completions"
    ):
        Tier(endpoints=["chat.completions", "models"], models=[])
    with pytest.raises(
        ValidationError,
        match="completions, embeddings, messages, rerank, responses, tokenize would always be"
        " refused",
    ):
        Tier(models=[])


def test_a_tier_names_endpoints_by_permission_one_for_each_group() -> None:
    tier = Tier(endpoints=["tokenize", "models"])
    allowed = [e.name for e in ENDPOINTS if tier.allows_endpoint(e.name)]
    assert allowed == ["tokenize", "detokenize", "models", "models.retrieve"]
    with pytest.raises(ValidationError, match=r"Input should be 'chat\.completions'"):
        Tier(endpoints=["detokenize"])


def test_check_config_names_the_tier_whose_model_list_is_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("tiers:\n  free: {models: []}\n  listing: {endpoints: [models], models: []}\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tiers.free.models: an empty list allows no model" in err
    assert "tiers.listing" not in err


async def test_a_tier_with_no_models_lists_none_and_may_use_none(
    make_gateway: GatewayFactory, fake: FakeLlama, tmp_path: Path
) -> None:
    static = {"hash": sha256(STATIC), "owner": "o"}
    client = await make_gateway(
        storage={"data_dir": str(tmp_path)},
        tiers={"listing": {"endpoints": ["models"], "models": []}},
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": [{**static, "tier": "listing"}]}
        ],
    )
    headers = {"Authorization": f"Bearer {STATIC}"}
    resp = await client.get("/v1/models", headers=headers)
    assert resp.status == 200
    assert (await resp.json())["data"] == []
    chat: dict[str, Any] = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json=chat, headers=headers)
    assert resp.status == 403
    assert fake.requests == []


def test_an_unknown_endpoint_name_is_refused_with_the_names_there_are() -> None:
    with pytest.raises(ValidationError) as exc:
        Tier(endpoints=["chat", "models"])
    (error,) = exc.value.errors()
    assert error["loc"] == ("endpoints", 0)
    assert error["msg"] == (
        "Input should be 'chat.completions', 'completions', 'embeddings', 'responses',"
        " 'messages', 'rerank', 'tokenize' or 'models'"
    )
