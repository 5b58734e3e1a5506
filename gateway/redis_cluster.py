"""Redis Cluster on the request path: the lean client once per node, each call routed by slot.

`storage.redis_url: redis+cluster://host:port,host:port` (`rediss+cluster://` for TLS,
credentials as in any Redis URL) names a few nodes of a cluster. The client reads which
primary serves which of the 16384 slots from the first of them that answers `CLUSTER
SLOTS`, and sends each command to the primary of its key's slot (CRC16 of the key, or of
its `{hash tag}`) on that node's one pipelined connection (`gateway.redis_client`): a call
costs what it costs on a single Redis, plus the slot's computation.

Redirections are followed within the caller's time bound: `MOVED` (the slot moved for
good) sets the slot's node and reads the whole map again in the background; `ASK` (the
slot is migrating and the key already went) sends `ASKING` and the command to the
importing node, once; `TRYAGAIN` (a script's keys split across the two nodes of a
migration) waits `TRYAGAIN_SECONDS` and starts over. A node that cannot be reached fails
the call with `Unreachable` (the caller's failure mode then applies to the keys that node
serves, and to them only) and has the map read again, at most once per `REFRESH_SECONDS`,
so that a replica promoted in its place takes its slots.

Keyless commands go to every primary: `PING` answers as the first node that answers,
`SCRIPT` (every node must know a script) once all have; either fails only if every node
does.
"""

from __future__ import annotations

import asyncio
import time
from binascii import crc_hqx
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from gateway.redis_client import RedisClient, ReplyError, Unreachable

SLOTS = 16384
TRIES = 16  # redirections and TRYAGAINs one call follows before it gives up
TRYAGAIN_SECONDS = 0.005
REFRESH_SECONDS = 1.0
MAP_SECONDS = 1.0  # each node's answer to CLUSTER SLOTS, when the map is read
SLOT_CACHE = 4096  # keys whose slots a client remembers (cleared when full)
SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SCRIPT_CALLS = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"})
_EVERYWHERE = frozenset({"PING", "SCRIPT"})


def is_cluster(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The URL every node is reached with, less its address (`redis://user:pass@`), and
    the seed nodes; ValueError for a URL that names none, or a database other than 0."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    netloc = netloc.partition("?")[0]
    userinfo, at, hosts = netloc.rpartition("@")
    if path.partition("?")[0] not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only")
    seeds = []
    for part in hosts.split(","):
        parts = urlsplit(f"//{part.strip()}")
        if not parts.hostname:
            raise ValueError(f"names no node in {part!r}: host:port,host:port,...")
        seeds.append((parts.hostname, parts.port or 6379))
    return f"{SCHEMES[scheme]}://{userinfo}{at}", seeds


def key_slot(key: str | bytes) -> int:
    """Redis Cluster's slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc_hqx(data, 0) % SLOTS


def command_key(args: tuple[Any, ...]) -> Any:
    """The key a command is routed by (a script's first key; otherwise the first argument),
    or None for a command without one."""
    name = args[0]
    if name != "EVALSHA":  # the request path's command, as the gateway spells it
        name = (name if isinstance(name, str) else name.decode()).upper()
    if name in _SCRIPT_CALLS:
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name in _EVERYWHERE or len(args) < 2:
        return None
    return args[1]


class Node(RedisClient):
    def __init__(self, base: str, host: str, port: int) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"{base}{self.address}")


class ClusterClient:
    def __init__(self, url: str) -> None:
        self._base, self.seeds = cluster_seeds(url)
        self.nodes: dict[str, Node] = {}
        self.slots: list[Node | None] = [None] * SLOTS
        self.primaries: list[Node] = []
        # Redirections followed, TRYAGAINs waited out, map reads: for tests and the curious.
        self.moved = self.asked = self.tried_again = self.refreshes = 0
        # The same keys come back (a caller's buckets): their slots are remembered.
        self._slot_of: dict[Any, int] = {}
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed = -REFRESH_SECONDS
        self._later: asyncio.TimerHandle | None = None  # a map read put off

    async def call(self, *args: Any) -> Any:
        key = command_key(args)
        if key is None:
            return await self._everywhere(args)
        slot = self._slot(key)
        node = self.slots[slot]
        if node is None:
            await self._mapped()
            node = self.slots[slot]
            if node is None:
                raise Unreachable(f"no node of the cluster serves slot {slot}")
        return await self._routed(node, slot, args)

    def node(self, args: tuple[Any, ...]) -> str:
        """The address of the node `args` would go to ("": every node, or not known yet)."""
        key = command_key(args)
        node = None if key is None else self.slots[self._slot(key)]
        return "" if node is None else node.address

    def _slot(self, key: Any) -> int:
        slot = self._slot_of.get(key)
        if slot is None:
            if len(self._slot_of) >= SLOT_CACHE:
                self._slot_of.clear()
            slot = self._slot_of[key] = key_slot(key)
        return slot

    async def _routed(self, node: Node, slot: int, args: tuple[Any, ...]) -> Any:
        asking = False
        for _ in range(TRIES):
            try:
                if asking:
                    return await node.call_asking(*args)
                return await node.call(*args)
            except ReplyError as exc:
                error = str(exc)
                if error.startswith("MOVED "):
                    self.moved += 1
                    node = self.slots[slot] = self._redirect(error, node)
                    asking = False
                    self._refresh_soon()
                elif error.startswith("ASK "):
                    self.asked += 1
                    node, asking = self._redirect(error, node), True
                elif error.startswith("TRYAGAIN"):
                    self.tried_again += 1
                    await asyncio.sleep(TRYAGAIN_SECONDS)
                    node, asking = self.slots[slot] or node, False
                else:
                    raise
            except Unreachable:
                self._refresh_soon()
                raise
        raise Unreachable(f"slot {slot} still redirected after {TRIES} tries")

    def _redirect(self, error: str, sender: Node) -> Node:
        """The node a `MOVED <slot> <host>:<port>` or `ASK ...` error names (an empty host
        is the sender's)."""
        host, _, port = error.split()[2].rpartition(":")
        return self._node(host.strip("[]") or sender.host, int(port))

    def _node(self, host: str, port: int) -> Node:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        node = self.nodes.get(address)
        if node is None:
            node = self.nodes[address] = Node(self._base, host, port)
        return node

    async def _everywhere(self, args: tuple[Any, ...]) -> Any:
        """`args` on every primary: the first success (`SCRIPT`: once every node answered),
        or the first failure if none succeeds."""
        if not self.primaries:
            await self._mapped()
            if not self.primaries:
                raise Unreachable("the cluster serves no slots")
        calls = [asyncio.ensure_future(node.call(*args)) for node in self.primaries]
        for call in calls:  # those left running after the first success are still retrieved
            call.add_done_callback(lambda f: f.cancelled() or f.exception())
        if str(args[0]).upper() == "SCRIPT":
            await asyncio.wait(calls)
        failure: BaseException | None = None
        for done in asyncio.as_completed(calls):
            try:
                return await done
            except (Unreachable, ReplyError) as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    async def _mapped(self) -> None:
        """Wait for the map being read, or read it."""
        if self._refresh is None or self._refresh.done():
            self._start_refresh()
        assert self._refresh is not None
        await asyncio.shield(self._refresh)

    def _refresh_soon(self) -> None:
        """Read the map again now, or once `REFRESH_SECONDS` have passed since the last read."""
        if (self._refresh is not None and not self._refresh.done()) or self._later is not None:
            return
        wait = self._refreshed + REFRESH_SECONDS - time.monotonic()
        if wait <= 0:
            self._start_refresh()
        else:
            self._later = asyncio.get_running_loop().call_later(wait, self._refresh_due)

    def _refresh_due(self) -> None:
        self._later = None
        self._refresh_soon()

    def _start_refresh(self) -> None:
        self._refresh = asyncio.ensure_future(self._read_map())
        # Retrieved even when every caller waiting for it gave up first.
        self._refresh.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _read_map(self) -> None:
        self._refreshed = time.monotonic()
        self.refreshes += 1
        failures = []
        for node in self._candidates():
            try:
                async with asyncio.timeout(MAP_SECONDS):
                    reply = await node.call("CLUSTER", "SLOTS")
            except TimeoutError:
                node.abort()
                failures.append(f"{node.address}: no answer in {MAP_SECONDS:g} s")
            except (Unreachable, ReplyError) as exc:
                failures.append(f"{node.address}: {exc}")
            else:
                self._apply(reply, node)
                return
        raise Unreachable("no node of the cluster answers CLUSTER SLOTS: " + "; ".join(failures))

    def _candidates(self) -> Iterator[Node]:
        """The nodes serving slots first, then the other known ones, then the seeds."""
        yield from list(self.primaries)
        yield from [n for n in self.nodes.values() if n not in self.primaries]
        for host, port in self.seeds:
            yield self._node(host, port)

    def _apply(self, reply: list[Any], source: Node) -> None:
        slots: list[Node | None] = [None] * SLOTS
        primaries: dict[str, Node] = {}
        for start, end, primary, *_ in reply:
            host = primary[0].decode() if isinstance(primary[0], bytes) else ""
            node = self._node(host if host not in ("", "?") else source.host, int(primary[1]))
            primaries[node.address] = node
            slots[int(start) : int(end) + 1] = [node] * (int(end) - int(start) + 1)
        self.slots, self.primaries = slots, list(primaries.values())

    def abort(self, *args: Any) -> None:
        """Drop the connection of the node the call `args` went to (every connection
        without `args`); the next call there connects again."""
        key = command_key(args) if args else None
        node = None if key is None else self.slots[self._slot(key)]
        for each in [node] if node is not None else list(self.nodes.values()):
            each.abort()

    async def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
        if self._refresh is not None:
            self._refresh.cancel()
        for node in self.nodes.values():
            await node.close()


def open_client(url: str) -> RedisClient | ClusterClient:
    """The client for a `storage.redis_url`: a cluster's for `redis+cluster://`."""
    return ClusterClient(url) if is_cluster(url) else RedisClient(url)
