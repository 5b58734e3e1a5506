"""A Redis Cluster of the test's own: three primaries (no replicas) on free ports in a
temporary directory, made with `redis-cli --cluster create`; a node can be killed and
started again, and a slot moved from one node to another by hand, step by step, as
`redis-cli --cluster reshard` does.

The nodes serve their slots while another is down (`cluster-require-full-coverage no`):
without a replica to take over, that is the only way a dead primary costs only its own
keys."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.rate_limits import free_port

START_SECONDS = 20.0
SLOTS = 16384


class Node:
    def __init__(self, workdir: Path, index: int) -> None:
        self.port = free_port()
        self.bus_port = free_port()
        self.dir = workdir / f"node{index}"
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed: apt-get install -y redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)]
        cmd += ["--cluster-config-file", str(self.dir / "nodes.conf")]
        cmd += ["--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"]
        cmd += ["--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.dir)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def command(self, *args: Any) -> Any:
        """A command on this node alone (redis-py, which follows no redirection)."""
        if self._client is None:
            self._client = redis.Redis(port=self.port, socket_timeout=2)
        return self._client.execute_command(*args)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no goodbye to its clients or the other nodes."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            self.proc.wait(10)
        if self._client is not None:
            self._client.close()
            self._client = None


class Cluster:
    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.nodes = [Node(workdir, i) for i in range(size)]

    @property
    def url(self) -> str:
        """The gateway's `storage.redis_url` for this cluster (every node a seed)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(lambda n=node: n.command("PING"), f"redis-server on port {node.port}")
        binary = shutil.which("redis-cli")
        assert binary is not None, "redis-cli is needed: apt-get install -y redis-tools"
        cmd = [binary, "--cluster", "create", *(n.address for n in self.nodes)]
        subprocess.run(
            [*cmd, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for node in self.nodes:
            _wait(lambda n=node: _ready(n, len(self.nodes)), f"the cluster on port {node.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def restart(self, node: Node) -> None:
        """Start a killed node again: it rejoins with the slots its nodes.conf names (and
        none of its keys: nothing is saved)."""
        node.start()
        size = len(self.nodes)
        for each in self.nodes:
            _wait(lambda n=each: _ready(n, size) and _serves_all(n), f"port {each.port} again")

    def owner(self, key: str) -> Node:
        """The node serving `key`'s slot, as the cluster itself says."""
        slot = self.slot(key)
        for node in self.nodes:
            for start, end, *_ in _slots(node):
                if start <= slot <= end:
                    return node
        raise AssertionError(f"no node serves slot {slot}")

    def node_id(self, node: Node) -> str:
        return str(node.command("CLUSTER", "MYID").decode())

    def slot(self, key: str) -> int:
        live = next(n for n in self.nodes if n.alive)
        return int(live.command("CLUSTER", "KEYSLOT", key))

    def begin_migration(self, slot: int, source: Node, target: Node) -> None:
        """`slot` migrating from `source` to `target`: keys not on `source` are asked for
        at `target` (ASK) from now on."""
        target_id, source_id = self.node_id(target), self.node_id(source)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

    def move_keys(self, slot: int, source: Node, target: Node) -> int:
        """Move every key of `slot` from `source` to `target` (MIGRATE); how many moved."""
        keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        return len(keys)

    def end_migration(self, slot: int, target: Node) -> None:
        """`slot` is `target`'s, as every node is told (the others answer MOVED)."""
        target_id = self.node_id(target)
        for node in sorted(self.nodes, key=lambda n: n is not target):
            if node.alive:
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def _slots(node: Node) -> list[list[int]]:
    """The slot ranges `node` serves itself, from its own CLUSTER SLOTS."""
    own = []
    for start, end, primary, *_ in node.command("CLUSTER", "SLOTS"):
        if int(primary[1]) == node.port:
            own.append([int(start), int(end)])
    return own


def _serves_all(node: Node) -> bool:
    return sum(end - start + 1 for start, end, *_ in _all_slots(node)) == SLOTS


def _all_slots(node: Node) -> list[list[int]]:
    return [[int(r[0]), int(r[1])] for r in node.command("CLUSTER", "SLOTS")]


def _ready(node: Node, size: int) -> bool:
    text = node.command("CLUSTER", "INFO").decode()
    info = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == size


def _wait(check: object, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        with contextlib.suppress(redis.RedisError):
            if check():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_cluster(workdir: Path, size: int = 3) -> Iterator[Cluster]:
    cluster = Cluster(workdir, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
