"""Prefix-cache-aware routing (`routing: prefix`): the next turn of a conversation goes to
the llama-server that was last sent the longest part of its prompt, where the KV cache of
that prefix most likely still is, so that only the new part of the prompt is evaluated.

A prompt is cut into blocks: a chat request's tools, then each message (role and content;
a content longer than BLOCK_CHARS in pieces of that size), a completion's prompt in pieces
of BLOCK_CHARS. Each block is named by a hash chained over the blocks before it: equal
names, equal prefixes. Each upstream remembers the names of what it was sent in an LRU of
bounded size (`PrefixIndex`): approximate, as a prefix the server has evicted still counts
until the LRU forgets it, and one another gateway replica sent it is not known.

With no match, the first block's stable name (`anchor`, the same in every gateway process)
ranks the upstreams by rendezvous hashing: a new conversation goes to its first-ranked
upstream when that one is as lightly loaded as any, and a later turn that this replica has
no record of (another replica served the earlier ones) goes there too, so replicas agree
without talking to each other in the common case. A local record that stops short of the
conversation's last answer means another replica served the latest turn: the anchor is the
better guess then too.

The load guard (`choose`) routes by load instead when the preferred upstream is much busier
than the least busy one (counting the requests queued for it), and, with `move_to_idle`,
whenever it is full while another is idle. A request that does wait for its preferred
upstream's slot keeps that preference in the admission queue (`may_take`): on a CPU,
waiting for a slot where the prompt is cached costs less than evaluating it all again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import Field

from gateway.endpoints import CHAT_COMPLETIONS, COMPLETIONS
from gateway.settings import PolicySettings

# Characters per block of a long text: a prefix is matched to the last whole block it
# shares; a block is hashed once per request, whatever the size.
BLOCK_CHARS = 1024
_MASK = (1 << 64) - 1

# How a request was routed, the label values of `llama_gateway_prefix_routes_total`.
MATCH, ANCHOR, LOAD = ROUTES = ("match", "anchor", "load")


class PrefixConfig(PolicySettings):
    # Block names remembered per upstream (about 100 bytes each), least recently sent first out.
    max_blocks: int = Field(65536, ge=1)
    # Route by load instead when the upstream holding the prefix has more than this many
    # requests in flight or queued for it above the least busy one...
    imbalance_requests: int = Field(4, ge=0)
    # ... and more than this many times as many.
    imbalance_ratio: float = Field(1.5, ge=1)
    # Route by load whenever the preferred upstream is full while another has nothing in
    # flight, whatever the thresholds. Off: such a request waits for its cache (on a CPU,
    # evaluating a long prompt again costs more than waiting for a slot; bench/prefix_routing).
    move_to_idle: bool = False


class Routable(Protocol):
    """What `choose` reads of an upstream (`gateway.upstreams.Upstream`)."""

    in_flight: int
    wanted: int  # requests waiting in the admission queue for a slot of this one
    picks: int
    seed: int
    prefixes: PrefixIndex | None

    @property
    def full(self) -> bool: ...


U = TypeVar("U", bound=Routable)


@dataclass(slots=True)
class Prompt:
    """The blocks of one request's prompt, by name."""

    chain: list[int]
    anchor: int  # the first block's name, the same in every process
    follow_up: bool  # it continues a conversation: some earlier turn may be cached
    # Blocks before its last assistant message: what the server that answered the previous
    # turn was sent (it holds that answer too). 0 for a first turn.
    answered: int = 0
    route: str = LOAD  # how it was routed, once it was


class PrefixIndex:
    """The block names last sent to one upstream, an LRU of at most `capacity`."""

    __slots__ = ("capacity", "names")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.names: OrderedDict[int, None] = OrderedDict()

    def match(self, chain: Sequence[int]) -> int:
        """How many leading blocks of `chain` were sent here."""
        names, matched = self.names, 0
        for name in chain:
            if name not in names:
                break
            matched += 1
        return matched

    def add(self, chain: Sequence[int]) -> None:
        """Remember `chain`, its first blocks as the most recent: a match starts there, and
        what many prompts share (a system prompt) is forgotten last."""
        names = self.names
        for name in reversed(chain):
            if name in names:
                names.move_to_end(name)
            else:
                names[name] = None
        while len(names) > self.capacity:
            names.popitem(last=False)


def stable_hash(data: bytes) -> int:
    """64 bits of `data` that every process computes alike (str hashes are salted)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prompt_of(endpoint: str, body: dict[str, Any]) -> Prompt | None:
    """The prompt's blocks; None for endpoints with no prompt to cache, or nothing to go on."""
    try:
        return _prompt(endpoint, body)
    except _Unnamed:
        return None


def _prompt(endpoint: str, body: dict[str, Any]) -> Prompt | None:
    if endpoint == CHAT_COMPLETIONS.name:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        return _chat(messages, body.get("tools"))
    if endpoint == COMPLETIONS.name:
        text = body.get("prompt")
        if isinstance(text, str):
            chain = _chain(0, None, text, [])
            return Prompt(chain, stable_hash(text[:BLOCK_CHARS].encode()), False)
        if text:
            block = _dumps(text)
            return Prompt([hash(block)], stable_hash(block), False)
    return None


def _chat(messages: list[Any], tools: object) -> Prompt | None:
    chain: list[int] = []
    first = _dumps(tools) if tools else None
    if first is not None:
        chain.append(hash(first))
    answered = 0
    for message in messages:
        if not isinstance(message, dict):
            break
        role, content = message.get("role"), message.get("content")
        if role == "assistant":
            answered = len(chain)
        name = chain[-1] if chain else 0
        if isinstance(role, str) and isinstance(content, str) and len(message) <= 2:
            _chain(name, role, content, chain)
            if first is None:
                first = f"{role}\0{content[:BLOCK_CHARS]}".encode()
        else:  # parts, tool calls, names: the message as a whole
            block = _dumps(message)
            chain.append(hash((name, block)))
            first = block if first is None else first
    if first is None:
        return None
    return Prompt(chain, stable_hash(first), answered > 0, answered)


def _chain(name: int, role: str | None, text: str, chain: list[int]) -> list[int]:
    """`chain` with the names of `text`'s pieces of BLOCK_CHARS (one, if shorter) added."""
    if len(text) <= BLOCK_CHARS:
        chain.append(hash((name, role, text)))
        return chain
    for start in range(0, len(text), BLOCK_CHARS):
        name = hash((name, role, text[start : start + BLOCK_CHARS]))
        chain.append(name)
    return chain


class _Unnamed(Exception):
    """A prompt too deeply nested to name (orjson stops at 255 levels, repr at Python's
    recursion limit): it is routed by load."""


def _dumps(value: object) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what orjson cannot write (an integer past 64 bits) is still named
        try:
            return repr(value).encode()
        except RecursionError:
            raise _Unnamed from None


def rank(anchor: int, seed: int) -> int:
    """The rendezvous weight of the upstream named `seed` for `anchor` (splitmix64)."""
    x = anchor ^ seed
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def choose(prompt: Prompt, candidates: Sequence[U], least: U, config: PrefixConfig) -> U:
    """The upstream for `prompt` of `candidates` (usable ones; `least` the least busy),
    with how it was chosen in `prompt.route`."""
    preferred, longest = least, 0
    for upstream in candidates:
        matched = upstream.prefixes.match(prompt.chain) if upstream.prefixes else 0
        if matched > longest or (matched == longest and matched and lighter(upstream, preferred)):
            preferred, longest = upstream, matched
    prompt.route = MATCH
    if not longest or longest < prompt.answered:  # no record here of the latest turn
        first = max(candidates, key=lambda u: rank(prompt.anchor, u.seed))
        if prompt.follow_up:
            preferred = first
        else:  # a new conversation only where it costs nothing
            ties = [u for u in candidates if load(u) <= load(least)]
            preferred = max(ties, key=lambda u: rank(prompt.anchor, u.seed))
        prompt.route = ANCHOR if preferred is first else LOAD
    if preferred is least or not too_busy(preferred, least, config, preferred.wanted):
        return preferred
    prompt.route = LOAD
    return least


def may_take(preferred: Routable, other: Routable, config: PrefixConfig) -> bool:
    """May a request queued for `preferred`'s slot take one of `other`'s instead?"""
    return too_busy(preferred, other, config, preferred.wanted - 1)


def load(upstream: Routable) -> tuple[bool, int]:
    """How busy `upstream` is: full (all its slots taken) above not, then by requests."""
    return upstream.full, upstream.in_flight


def lighter(upstream: Routable, other: Routable) -> bool:
    """Is `upstream` a better pick than `other` by load: free before full, then fewer in
    flight, then picked longer ago."""
    mine, theirs = load(upstream), load(other)
    return mine < theirs or (mine == theirs and upstream.picks < other.picks)


def too_busy(preferred: Routable, least: Routable, config: PrefixConfig, queued: int) -> bool:
    """Is `preferred` much busier than `least`, counting `queued`, the requests waiting
    for its slots before this one? With `move_to_idle`, a request never waits for a slot of
    `preferred` while `least` is idle."""
    if config.move_to_idle and preferred.full and least.in_flight == 0:
        return True
    busy, idle = preferred.in_flight + queued, least.in_flight
    return busy - idle > config.imbalance_requests and busy > idle * config.imbalance_ratio
