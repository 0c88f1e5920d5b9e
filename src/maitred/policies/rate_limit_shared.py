"""Rate limit state in memory shared by the worker processes of one maitred.

With ``workers: N`` and no ``rate_limit_store``, every worker decides against
this one table, so a limit holds as configured instead of N times over. The
table is storage only: the decision is the GCRA of :mod:`maitred.policies.gcra`.

Layout: a 64-byte header, then buckets of ``SLOTS_PER_BUCKET`` slots; a slot
is two signed 64-bit words, a key fingerprint (0: never used) and the key's
theoretical arrival time (TAT, ns on the host's monotonic clock, which every
process of the host shares). A key lives in the bucket its fingerprint names,
in any slot of it (set-associative: no probing chains, no tombstones).

- Fingerprint: 64 bits of keyed BLAKE2b over the key, keyed by the limit's
  identity, so one table holds every limit. Two keys of 1,000,000 share a
  fingerprint with probability ~3e-8; they would then share a budget.
- Expiry: a slot whose TAT is not after now is free for any key (a key whose
  bucket is full again is indistinguishable from a key never seen).
- Eviction: when every slot of a bucket holds a key that is not idle, the one
  with the earliest TAT (the closest to idle, hence the one whose client
  gains the least by being forgotten) gives its slot to the new key.
- Capacity: buckets for 1.5 slots per key of ``capacity``: 24 bytes per key,
  allocated by the kernel only as pages are touched.

Locking: ``STRIPES`` byte-range locks (fcntl) on the region's file; bucket b
is guarded by stripe ``b % STRIPES``. A decision locks its stripes in
ascending order (a request under two limits takes two), reads, decides,
writes, unlocks. fcntl locks were chosen over a POSIX semaphore in the region
(about 1.1 µs faster per decision, see bench/shared_state_bench.py) because
the kernel releases them when a process dies: a worker killed inside a
decision cannot wedge the others.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from maitred.policies.gcra import Decision, GcraRate, evaluate

SLOTS_PER_BUCKET = 8
STRIPES = 4096
SLOTS_PER_KEY = 1.5
HEADER_BYTES = 64
MAGIC = int.from_bytes(b"MTRDRL01", "little", signed=True)

_WORDS_PER_BUCKET = 2 * SLOTS_PER_BUCKET
_HEADER_WORDS = HEADER_BYTES // 8
_FINGERPRINT_MASK = (1 << 63) - 1


class SharedLimit(NamedTuple):
    """A limit as the shared table needs it: its rate, and the key of its fingerprints."""

    rate: GcraRate
    #: Up to 64 bytes naming the limit (listener, route, key, rate...).
    seed: bytes


def bucket_count(capacity: int) -> int:
    return max(1, math.ceil(capacity * SLOTS_PER_KEY / SLOTS_PER_BUCKET))


def table_bytes(capacity: int) -> int:
    """The region size for a table tracking up to about ``capacity`` keys."""
    return HEADER_BYTES + bucket_count(capacity) * _WORDS_PER_BUCKET * 8


def fingerprint(seed: bytes, key: bytes) -> int:
    digest = hashlib.blake2b(key, digest_size=8, key=seed).digest()
    value = int.from_bytes(digest, "little", signed=True)
    return value if value != 0 else 1  # 0 marks a slot never used


class SharedRateTable:
    """GCRA state of every limit, for every worker: ``decide`` is the only entry point."""

    __slots__ = ("lock_fd", "buckets", "_view")

    def __init__(self, memory: memoryview | bytearray | object, lock_fd: int) -> None:
        """Use ``memory`` (a writable buffer laid out by ``initialize``) and lock through
        ``lock_fd`` (an open descriptor of the file behind it)."""
        view = memoryview(memory).cast("B").cast("q")  # type: ignore[arg-type]
        if view[0] != MAGIC:
            raise ValueError("not a maitred rate limit table")
        self._view = view
        self.lock_fd = lock_fd
        self.buckets = view[1]

    @staticmethod
    def initialize(memory: memoryview | bytearray | object, capacity: int) -> None:
        """Lay out an empty table for ``capacity`` keys in zero-filled ``memory``."""
        view = memoryview(memory).cast("B").cast("q")  # type: ignore[arg-type]
        buckets = bucket_count(capacity)
        if len(view) * 8 < table_bytes(capacity):
            raise ValueError("memory too small for the table")
        view[1] = buckets
        view[2] = SLOTS_PER_BUCKET
        view[0] = MAGIC
        view.release()

    def close(self) -> None:
        self._view.release()

    def decide(
        self,
        limits: Sequence[SharedLimit],
        keys: Sequence[bytes],
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> tuple[list[Decision], bool]:
        """One request under ``limits`` (one key each): every limit's decision, and
        whether all admitted it. Counted only by all of them when all admit; a limit
        that refuses keeps its (clamped) TAT, as the in-process table does.

        ``clock`` (ns, the host's monotonic clock) is read once the stripes are
        locked: decisions on a key then see time only move forward, whichever
        process takes them. (A time read before waiting for the lock could be
        older than a TAT another process wrote meanwhile by more than a burst,
        which GCRA takes for a clock gone backwards and forgives.)"""
        if len(limits) == 1:
            decision = self._decide_one(limits[0], keys[0], clock)
            return [decision], decision.allowed
        prints = [fingerprint(limit.seed, key) for limit, key in zip(limits, keys, strict=True)]
        buckets = [(fp & _FINGERPRINT_MASK) % self.buckets for fp in prints]
        stripes = sorted({bucket % STRIPES for bucket in buckets})
        fd = self.lock_fd
        for stripe in stripes:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, stripe)
        try:
            now_ns = clock()
            peeked = [
                evaluate(limit.rate, self._lookup(bucket, fp), now_ns)
                for limit, bucket, fp in zip(limits, buckets, prints, strict=True)
            ]
            admitted = all(decision.allowed for decision, _ in peeked)
            for (decision, tat), bucket, fp in zip(peeked, buckets, prints, strict=True):
                if admitted or not decision.allowed:
                    self._store(bucket, fp, tat, now_ns)
        finally:
            for stripe in reversed(stripes):
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, stripe)
        return [decision for decision, _ in peeked], admitted

    def _decide_one(self, limit: SharedLimit, key: bytes, clock: Callable[[], int]) -> Decision:
        """``decide`` for the common case of one limit: one bucket read, one write."""
        fp = fingerprint(limit.seed, key)
        bucket = (fp & _FINGERPRINT_MASK) % self.buckets
        stripe = bucket % STRIPES
        fd = self.lock_fd
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, stripe)
        try:
            now_ns = clock()
            base = _HEADER_WORDS + bucket * _WORDS_PER_BUCKET
            view = self._view
            words = view[base : base + _WORDS_PER_BUCKET].tolist()
            prints = words[0::2]
            if fp in prints:
                position = base + 2 * prints.index(fp) + 1
                decision, tat = evaluate(limit.rate, view[position], now_ns)
                view[position] = tat
            else:
                decision, tat = evaluate(limit.rate, None, now_ns)
                if tat > now_ns:
                    self._insert(base, words, fp, tat, now_ns)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, stripe)
        return decision

    # -- the bucket (called with its stripe locked) ---------------------------------

    def _lookup(self, bucket: int, fp: int) -> int | None:
        base = _HEADER_WORDS + bucket * _WORDS_PER_BUCKET
        words = self._view[base : base + _WORDS_PER_BUCKET].tolist()
        prints = words[0::2]
        if fp not in prints:
            return None
        tat: int = words[2 * prints.index(fp) + 1]
        return tat

    def _store(self, bucket: int, fp: int, tat: int, now_ns: int) -> None:
        base = _HEADER_WORDS + bucket * _WORDS_PER_BUCKET
        view = self._view
        words = view[base : base + _WORDS_PER_BUCKET].tolist()
        prints = words[0::2]
        if fp in prints:
            view[base + 2 * prints.index(fp) + 1] = tat
        elif tat > now_ns:  # else as good as a key never seen: nothing worth remembering
            self._insert(base, words, fp, tat, now_ns)

    def _insert(self, base: int, words: list[int], fp: int, tat: int, now_ns: int) -> None:
        """Put a new key in the bucket at ``base`` (``words``: its current content)."""
        prints = words[0::2]
        tats = words[1::2]
        view = self._view
        chosen = 0
        for index, existing in enumerate(prints):
            if existing == 0 or tats[index] <= now_ns:
                chosen = index
                break
            if tats[index] < tats[chosen]:
                chosen = index
        # Writers hold the stripe lock; readers of this bucket too, so no torn reads.
        view[base + 2 * chosen] = fp
        view[base + 2 * chosen + 1] = tat

    def used_slots(self) -> int:
        """Slots ever used (a scan of the whole table: tests and benches)."""
        words = self._view[_HEADER_WORDS:].tolist()
        return sum(1 for fp in words[0::2] if fp != 0)

    def active_keys(self, now_ns: int) -> int:
        """Keys whose bucket is not full again (a scan of the whole table)."""
        words = self._view[_HEADER_WORDS:].tolist()
        return sum(
            1 for fp, tat in zip(words[0::2], words[1::2], strict=True) if fp != 0 and tat > now_ns
        )
