"""gateway.prefix on its own: block names mean equal prefixes, the index stays bounded,
rendezvous hashing is the same in every process and moves little when upstreams change,
the load guard's rule, and a record that misses the latest turn."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.prefix import (
    ANCHOR,
    BLOCK_CHARS,
    LOAD,
    MATCH,
    PrefixConfig,
    PrefixIndex,
    choose,
    prompt_of,
    rank,
    stable_hash,
)
from gateway.upstreams import Pool
from tests.support.gateways import gateway_config

CHAT, COMPLETIONS = "chat.completions", "completions"
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=3000)}
)


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


@given(st.lists(MESSAGE, min_size=1, max_size=6), st.lists(MESSAGE, min_size=1, max_size=6))
def test_equal_names_mean_equal_prefixes(head: list[Any], tail: list[Any]) -> None:
    one, both = prompt_of(CHAT, chat(*head)), prompt_of(CHAT, chat(*head, *tail))
    assert one is not None
    assert both is not None
    assert both.chain[: len(one.chain)] == one.chain
    assert one.anchor == both.anchor
    changed = [*head[:-1], {**head[-1], "content": "!" + head[-1]["content"]}]
    other = prompt_of(CHAT, chat(*changed, *tail))
    assert other is not None
    shared = sum(len(range(0, max(len(m["content"]), 1), BLOCK_CHARS)) for m in head[:-1])
    assert other.chain[:shared] == one.chain[:shared]
    assert other.chain[shared] != one.chain[shared]


@given(JSON)
def test_any_body_gives_a_prompt_or_none_and_never_raises(value: Any) -> None:
    for body in (chat(value), chat({"role": "user", "content": value}), {"prompt": value}):
        for endpoint in (CHAT, COMPLETIONS, "embeddings"):
            prompt_of(endpoint, body if isinstance(body, dict) else {})


def test_what_the_blocks_are_made_of() -> None:
    system = {"role": "system", "content": "s" * (2 * BLOCK_CHARS + 1)}
    prompt = prompt_of(CHAT, chat(system, {"role": "user", "content": "q"}))
    assert prompt is not None
    assert len(prompt.chain) == 4
    assert not prompt.follow_up
    tools = prompt_of(CHAT, chat(system, tools=[{"type": "function"}]))
    assert tools is not None
    assert tools.chain[0] != prompt.chain[0]
    later = prompt_of(CHAT, chat(system, {"role": "assistant", "content": "a"}))
    assert later is not None
    assert later.follow_up
    assert later.answered == 3  # the system prompt's three blocks come before the answer
    text = prompt_of(COMPLETIONS, {"prompt": "p" * (3 * BLOCK_CHARS)})
    assert text is not None
    assert len(text.chain) == 3
    assert prompt_of("embeddings", {"input": "x"}) is None
    assert prompt_of(CHAT, chat()) is None
    assert prompt_of(CHAT, {"messages": "not a list"}) is None


def test_the_index_is_an_lru_of_bounded_size_that_forgets_the_ends_of_prompts_first() -> None:
    index = PrefixIndex(4)
    index.add([1, 2, 3])
    index.add([1, 9])  # 1 is sent again: 3 and 2 are now the oldest
    assert list(index.names) == [3, 2, 9, 1]
    index.add([1, 5, 6])
    assert list(index.names) == [9, 6, 5, 1]
    assert index.match([1, 5, 6, 7]) == 3
    assert index.match([1, 2]) == 1
    assert index.match([2]) == 0


def test_anchors_and_ranks_are_the_same_in_another_process() -> None:
    prompt = prompt_of(CHAT, chat({"role": "system", "content": "the same words"}))
    assert prompt is not None
    here = (prompt.anchor, rank(prompt.anchor, stable_hash(b"http://a")))
    code = (
        "from gateway.prefix import prompt_of, rank, stable_hash\n"
        "p = prompt_of('chat.completions', "
        "{'messages': [{'role': 'system', 'content': 'the same words'}]})\n"
        "print(p.anchor, rank(p.anchor, stable_hash(b'http://a')))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": "."},
            capture_output=True,
            text=True,
            check=True,
        )
        assert tuple(map(int, out.stdout.split())) == here


def test_rendezvous_spreads_evenly_and_moves_only_the_removed_upstreams_share() -> None:
    seeds = [stable_hash(f"http://10.0.0.{i}:8080".encode()) for i in range(4)]
    anchors = [stable_hash(str(i).encode()) for i in range(4000)]
    owner = {a: max(seeds, key=lambda s: rank(a, s)) for a in anchors}
    shares = [sum(o == s for o in owner.values()) / len(anchors) for s in seeds]
    assert all(0.22 < share < 0.28 for share in shares), shares
    rest = seeds[1:]
    moved = [a for a in anchors if max(rest, key=lambda s: rank(a, s)) != owner[a]]
    assert all(owner[a] == seeds[0] for a in moved)


@dataclass(eq=False)
class Up:
    in_flight: int = 0
    limit: int = 0
    wanted: int = 0
    picks: int = 0
    seed: int = 0
    prefixes: PrefixIndex | None = field(default_factory=lambda: PrefixIndex(100))

    @property
    def full(self) -> bool:
        return 0 < self.limit <= self.in_flight


def test_the_load_guard() -> None:
    config = PrefixConfig(imbalance_requests=1, move_to_idle=True)
    prompt = prompt_of(CHAT, chat({"role": "user", "content": "q"}))
    assert prompt is not None
    home, other = Up(seed=1), Up(seed=2)
    assert home.prefixes is not None
    home.prefixes.add(prompt.chain)
    for busy, idle, limit, route in [
        (1, 0, 0, MATCH),  # one more in flight: the cache is worth it
        (2, 1, 0, MATCH),  # not 1.5 times as busy
        (2, 0, 0, LOAD),  # two more than an idle one
        (1, 0, 1, LOAD),  # full, and the other is idle
        (1, 1, 1, MATCH),  # both full: wait where the prefix is
        (2, 1, 2, MATCH),  # full, the other busy but for a slot: wait for the cache
    ]:
        home.in_flight, other.in_flight, home.limit, other.limit = busy, idle, limit, limit
        least = other if (other.full, other.in_flight) < (home.full, home.in_flight) else home
        picked = choose(prompt, [home, other], least, config)
        assert (picked is home, prompt.route) == (route == MATCH, route)
    fresh = prompt_of(CHAT, chat({"role": "user", "content": "new"}))
    assert fresh is not None
    top = max((home, other), key=lambda u: rank(fresh.anchor, u.seed))
    home.in_flight = other.in_flight = 0
    assert choose(fresh, [home, other], home, config) is top
    assert fresh.route == ANCHOR
    top.in_flight = 1  # a new conversation goes to its anchor only if that costs nothing
    rest = other if top is home else home
    assert choose(fresh, [home, other], rest, config) is rest


def conversation(turns: int) -> list[dict[str, Any]]:
    """A conversation's messages as its turn `turns` sends them."""
    messages = [{"role": "system", "content": "the system prompt"}]
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": f"answer {turn}"})
        messages.append({"role": "user", "content": f"question {turn}"})
    return messages


def test_a_record_that_stops_short_of_the_last_answer_defers_to_the_anchor() -> None:
    """Another gateway replica served the latest turn, most likely where the anchor points:
    this replica's older record of the conversation is not followed."""
    config = PrefixConfig()
    turn1, turn2, turn3 = (prompt_of(CHAT, chat(*conversation(n))) for n in (1, 2, 3))
    assert turn1 is not None
    assert turn2 is not None
    assert turn3 is not None
    a, b = Up(seed=1), Up(seed=2)
    first = max((a, b), key=lambda u: rank(turn1.anchor, u.seed))
    other = b if first is a else a
    assert other.prefixes is not None
    other.prefixes.add(turn1.chain)  # this replica sent turn 1 there (by load, say)
    assert choose(turn2, [a, b], a, config) is other  # it answered turn 1: its cache has it
    assert turn2.route == MATCH
    assert choose(turn3, [a, b], a, config) is first  # turn 2 was served elsewhere
    assert turn3.route == ANCHOR
    other.prefixes.add(turn3.chain)
    assert choose(turn3, [a, b], a, config) is other
    assert turn3.route == MATCH


def test_by_default_a_turn_waits_for_its_cache_unless_its_upstream_is_much_busier() -> None:
    prompt = prompt_of(CHAT, chat({"role": "user", "content": "q"}))
    assert prompt is not None
    home, other = Up(seed=1), Up(seed=2)
    assert home.prefixes is not None
    home.prefixes.add(prompt.chain)
    for busy, queued, idle, limit, route in [
        (1, 0, 0, 1, MATCH),  # full while the other is idle: it waits for its cache
        (2, 2, 0, 2, MATCH),  # four more than an idle one
        (2, 3, 0, 2, LOAD),  # five more
        (2, 3, 1, 2, MATCH),  # four more than one with a request
        (2, 4, 1, 2, LOAD),  # five more, six times as many
    ]:
        home.in_flight, home.wanted, other.in_flight = busy, queued, idle
        home.limit = other.limit = limit
        picked = choose(prompt, [home, other], other, PrefixConfig())
        assert (picked is home, prompt.route) == (route == MATCH, route), (busy, queued, idle)


def test_the_requests_queued_for_an_upstream_count_as_its_load() -> None:
    config = PrefixConfig(imbalance_requests=1)
    prompt = prompt_of(CHAT, chat(*conversation(2)))
    assert prompt is not None
    home, other = Up(seed=1, limit=2, in_flight=2), Up(seed=2, limit=2, in_flight=1)
    assert home.prefixes is not None
    home.prefixes.add(prompt.chain)
    assert choose(prompt, [home, other], other, config) is home  # it waits for home's slot
    home.wanted = 1  # one waits already: three against one
    assert choose(prompt, [home, other], other, config) is other
    assert prompt.route == LOAD


def nested(depth: int) -> Any:
    value: Any = "hi"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_a_prompt_nested_past_every_serialiser_s_limit_is_routed_by_load(depth: int) -> None:
    assert prompt_of(CHAT, chat({"role": "user", "content": nested(depth)})) is None
    assert prompt_of(COMPLETIONS, {"prompt": nested(depth)}) is None
    # What orjson cannot write (past 255 levels, past 64 bits) but repr can is still named.
    for prompt in (nested(300), [2**70]):
        assert prompt_of(COMPLETIONS, {"prompt": prompt}) is not None


def test_a_model_with_one_upstream_is_not_routed_by_prefix() -> None:
    """Nothing to choose: no prompt hashed, no index kept, no routes counted."""
    one, two = "http://127.0.0.1:9001", "http://127.0.0.1:9002"
    models = {"solo": {"upstreams": [one]}, "twice": {"upstreams": [one, one]}}
    models["pair"] = {"upstreams": [one, two]}
    pool = Pool.from_config(gateway_config(one, models=models))
    assert list(pool.prefix) == ["pair"]
    body = chat({"role": "user", "content": "q"})
    assert pool.prompt("solo", CHAT, body) is None
    assert pool.prompt("twice", CHAT, body) is None
    assert pool.prompt("pair", CHAT, body) is not None
