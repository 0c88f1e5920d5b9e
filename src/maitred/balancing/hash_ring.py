"""A consistent-hash ring with virtual nodes, identical in every worker process.

Each server owns points on a 44-bit circle, ``POINTS_PER_WEIGHT`` per unit of
weight; a key belongs to the first point at or after its own hash, walking
clockwise. Removing one of N servers therefore moves only the keys on its own
points, about 1/N of them, and adding it back returns exactly those.

A server's points come from a pseudo-random sequence seeded by its address, and
keys are hashed with BLAKE2b: both are the same in every process and on every
restart, unlike ``hash()``, so all workers send a client to the same server.
Because a server's points are a prefix of its sequence, shrinking the number
of points per weight (huge pools) removes points without moving the others.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from hashlib import blake2b
from typing import Final

from maitred.balancing.base import LiveServer

POINT_BITS: Final = 44
#: Points and owners share one sorted list of ints: ``point << OWNER_BITS | owner``.
OWNER_BITS: Final = 20
OWNER_MASK: Final = (1 << OWNER_BITS) - 1
POINTS_PER_WEIGHT: Final = 100
#: Beyond this the ring costs more to build than it gains in evenness.
MAX_RING_POINTS: Final = 100_000


def key_point(key: str) -> int:
    """Where ``key`` falls on the circle."""
    digest = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - POINT_BITS)


class PointCache:
    """Each address's points, drawn once (drawing 100 points costs ~10 µs)."""

    def __init__(self) -> None:
        self._points: dict[str, list[int]] = {}

    def points(self, address: str, count: int) -> list[int]:
        points = self._points.get(address)
        if points is None or len(points) < count:
            # A str seed goes through SHA-512: the sequence is the same in every process.
            draw = random.Random(address).getrandbits
            points = [draw(POINT_BITS) for _ in range(count)]
            self._points[address] = points
        return points[:count]

    def keep_only(self, addresses: Iterable[str]) -> None:
        wanted = set(addresses)
        for address in [address for address in self._points if address not in wanted]:
            del self._points[address]


class HashRing:
    """The ring for a fixed list of members and weights."""

    __slots__ = ("members", "weights", "points", "owner_of")

    def __init__(
        self, members: Sequence[LiveServer], weights: Sequence[int], cache: PointCache
    ) -> None:
        self.members = tuple(members)
        self.weights = tuple(weights)
        self.owner_of = {server: owner for owner, server in enumerate(self.members)}
        total = sum(self.weights)
        per_weight = max(1, min(POINTS_PER_WEIGHT, MAX_RING_POINTS // total)) if total else 0
        points: list[int] = []
        for owner, (server, weight) in enumerate(zip(self.members, self.weights, strict=True)):
            points.extend(
                point << OWNER_BITS | owner
                for point in cache.points(server.address, per_weight * weight)
            )
        points.sort()
        self.points = points

    def first_index(self, point: int) -> int:
        """Index of the first ring point at or clockwise after ``point``."""
        index = bisect_left(self.points, point << OWNER_BITS)
        return index if index < len(self.points) else 0
