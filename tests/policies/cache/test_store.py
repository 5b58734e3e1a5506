"""The in-process store's byte bound and TTL, and the stored form of an entry."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from policies.cache.entry import Entry, decode, encode
from policies.cache.store import ENTRY_OVERHEAD, MemoryStore

PUTS = st.lists(
    st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 3000)), min_size=1, max_size=40
)


def entry(size: int) -> Entry:
    return Entry(b"x" * size, {"total_tokens": 3})


@given(PUTS, st.integers(0, 8000))
async def test_memory_store_never_holds_more_than_its_bound(
    puts: list[tuple[str, int]], bound: int
) -> None:
    store = MemoryStore(bound)
    for key, size in puts:
        await store.put(key, entry(size), 60)
        assert store.bytes <= bound
        held = [await store.get(k) for k in "abcdefgh"]
        assert store.bytes == sum(e.size + 1 + ENTRY_OVERHEAD for e in held if e is not None)


async def test_least_recently_used_goes_first() -> None:
    one = 1000 + 1 + ENTRY_OVERHEAD
    store = MemoryStore(3 * one)
    for key in "abc":
        await store.put(key, entry(1000), 60)
    assert await store.get("a") is not None  # b is now the least recently used
    await store.put("d", entry(1000), 60)
    assert await store.get("b") is None
    assert [await store.get(k) is not None for k in "acd"] == [True, True, True]
    assert store.evictions == 1


async def test_an_entry_larger_than_the_whole_store_is_not_kept() -> None:
    store = MemoryStore(100)
    assert await store.put("a", entry(1000), 60) == 0
    assert len(store) == 0
    assert store.bytes == 0


async def test_an_entry_expires_after_its_ttl() -> None:
    store = MemoryStore(10_000)
    await store.put("a", entry(10), 0.05)
    assert await store.get("a") is not None
    await asyncio.sleep(0.06)
    assert await store.get("a") is None
    assert store.bytes == 0


@given(
    st.binary(max_size=2000),
    st.none() | st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)),
)
def test_an_entry_survives_its_stored_form(body: bytes, usage: dict[str, int] | None) -> None:
    stored = Entry(body, usage, 1234.5)
    assert decode(encode(stored)) == stored


@given(st.binary(max_size=200))
def test_a_damaged_value_reads_as_no_entry(value: bytes) -> None:
    found = decode(value)
    assert found is None or isinstance(found, Entry)


def test_a_value_of_another_format_reads_as_no_entry() -> None:
    assert decode(b"\x02" + encode(entry(10))[1:]) is None
    assert decode(encode(entry(10))[:-3]) is None
