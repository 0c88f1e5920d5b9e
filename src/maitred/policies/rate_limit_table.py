"""One rate limit over many keys, in process memory, with bounded memory.

Keys live in an ``OrderedDict`` from least to most recently used. A key whose
TAT is not after now is as good as a key never seen, so each new key first
drops up to two such idle keys from the least recently used end (amortised:
every key is inserted once, so idle keys never pile up while new ones arrive).
Past ``max_keys`` the least recently used key is forgotten even if not idle:
under a flood of addresses that is the key closest to idle, and forgetting it
costs at most one extra burst for that client.

Measured on CPython 3.11 (1,000,000 IPv4 client keys): about 175 bytes per
key, of which ~60 are the key string itself. See docs/rate-limiting.md.
"""

from __future__ import annotations

from collections import OrderedDict

from maitred.policies.gcra import Decision, GcraRate, evaluate, to_nanoseconds

#: A client address (str) or a header value (bytes).
LimitKey = str | bytes

# Idle keys dropped per new key: more than one, so the table shrinks back after a flood.
_IDLE_DROPPED_PER_INSERT = 2


class LocalLimiter:
    __slots__ = ("rate", "max_keys", "_tats", "__weakref__")

    def __init__(self, rate: GcraRate, max_keys: int) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._tats: OrderedDict[LimitKey, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, key: LimitKey, now: float) -> Decision:
        """Decide one request for ``key`` at ``now`` (seconds) and count it if admitted."""
        now_ns = to_nanoseconds(now)
        decision, tat = self.peek(key, now_ns)
        self.store(key, tat, now_ns)
        return decision

    def peek(self, key: LimitKey, now_ns: int) -> tuple[Decision, int]:
        """Decide without counting; ``store`` the returned TAT to count it."""
        return evaluate(self.rate, self._tats.get(key), now_ns)

    def store(self, key: LimitKey, tat: int, now_ns: int) -> None:
        """Keep ``tat`` for ``key`` and mark the key as the most recently used."""
        tats = self._tats
        if key in tats:
            tats[key] = tat
            tats.move_to_end(key)
            return
        if tat <= now_ns:
            return  # equivalent to a fresh key: nothing worth remembering
        self._make_room(now_ns)
        tats[key] = tat

    def touch(self, key: LimitKey) -> None:
        """Mark ``key`` as recently used without counting a request (refused elsewhere)."""
        if key in self._tats:
            self._tats.move_to_end(key)

    def _make_room(self, now_ns: int) -> None:
        tats = self._tats
        for _ in range(_IDLE_DROPPED_PER_INSERT):
            if not tats:
                return
            oldest = next(iter(tats))
            if tats[oldest] > now_ns:
                break
            del tats[oldest]
        while len(tats) >= self.max_keys:
            tats.popitem(last=False)
