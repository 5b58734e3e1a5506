"""Vectors and this process's copy of the semantic index, bounded in memory.

A partition holds its newest `max_entries` (vector, key) pairs in a ring: a lookup is one
matrix-vector product over them (numpy: about 70 µs for 1024 entries of 640 floats, where a
pure-Python loop takes 12 ms or more of the event loop; docs/benchmarks.md). Partitions live in an
LRU bounded by bytes over all of them. With Redis, each partition also remembers the last
stream entry it has seen, so that a lookup fetches only what other replicas added since.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
# Similarities are float32 sums: a unit vector of 640 floats compared with itself gives as
# little as 1 - 3.6e-7; a threshold of 1 must still match it.
EPSILON = 1e-6
FIRST_ROWS = 16
KEY_OVERHEAD = 64  # bytes a stored key costs beside its characters, roughly


@dataclass(frozen=True, slots=True)
class Vector:
    """A unit-length embedding, and the identity of the model that made it: vectors of
    different models are never compared (they live under different index keys)."""

    values: Floats
    space: str

    @classmethod
    def of(cls, values: object, space: str) -> Vector | None:
        """Normalised float32 from a list or array; None for anything that is not a finite,
        non-zero, one-dimensional vector."""
        with np.errstate(all="ignore"):  # overflows become inf, refused below
            try:
                array = np.asarray(values, dtype=np.float32)
            except (TypeError, ValueError):
                return None
            if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
                return None
            # In float64: the squares of tiny float32 values underflow and skew the norm.
            wide = array.astype(np.float64)
            norm = float(np.linalg.norm(wide))
            if not np.isfinite(norm) or norm == 0.0:
                return None
            return cls((wide / norm).astype(np.float32), space)


class Partition:
    """The newest `capacity` entries of one partition, oldest overwritten first."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.capacity = capacity
        self.dim = dim
        self.rows: Floats = np.zeros((min(capacity, FIRST_ROWS), dim), dtype=np.float32)
        self.keys: list[str] = []
        self.head = 0  # where the next entry goes once the ring is full
        self.key_bytes = 0
        self.seen: tuple[int, int] | None = None  # the last Redis stream ID applied

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes) + self.key_bytes

    def add(self, values: Floats, key: str) -> None:
        if values.shape != (self.dim,):
            return  # another dimension: not comparable (a corrupt or foreign entry)
        count = len(self.keys)
        if count < self.capacity:
            if count == len(self.rows):
                grown = np.zeros((min(self.capacity, 2 * count), self.dim), dtype=np.float32)
                grown[:count] = self.rows
                self.rows = grown
            self.rows[count] = values
            self.keys.append(key)
        else:
            self.key_bytes -= len(self.keys[self.head]) + KEY_OVERHEAD
            self.rows[self.head] = values
            self.keys[self.head] = key
            self.head = (self.head + 1) % self.capacity
        self.key_bytes += len(key) + KEY_OVERHEAD

    def nearest(self, values: Floats) -> tuple[str, float] | None:
        count = len(self.keys)
        if count == 0 or values.shape != (self.dim,):
            return None
        # einsum runs in this thread; a matrix product goes to OpenBLAS, whose threads stall
        # for milliseconds on a machine whose cores llama-server keeps busy (measured: p50
        # 2.9 ms against 85 µs single-threaded, for 1024 entries).
        similarities = np.einsum("ij,j->i", self.rows[:count], values)
        best = int(np.argmax(similarities))
        return self.keys[best], min(1.0, float(similarities[best]))


class Mirror:
    """Partitions by index key, least recently used dropped first past `max_bytes` (the one
    in use is always kept, even alone over the bound)."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.partitions: OrderedDict[str, Partition] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.partitions.values())

    @property
    def entries(self) -> int:
        return sum(len(p.keys) for p in self.partitions.values())

    def get(self, name: str) -> Partition | None:
        partition = self.partitions.get(name)
        if partition is not None:
            self.partitions.move_to_end(name)
        return partition

    def create(self, name: str, dim: int) -> Partition:
        partition = self.partitions[name] = Partition(self.capacity, dim)
        return partition

    def drop(self, name: str) -> None:
        self.partitions.pop(name, None)

    def trim(self) -> None:
        """Drop the least recently used partitions until the mirror fits its bound."""
        total = self.nbytes
        while total > self.max_bytes and len(self.partitions) > 1:
            _, dropped = self.partitions.popitem(last=False)
            total -= dropped.nbytes
