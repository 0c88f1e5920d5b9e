"""Drawing a server at random in proportion to its effective weight, in O(log n)."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate


class WeightedSampler:
    """Indices 0..n-1 drawn with probability weight / total."""

    __slots__ = ("_bounds", "_total", "_size", "_uniform")

    def __init__(self, weights: Sequence[float]) -> None:
        self._bounds = list(accumulate(weights))
        self._total = self._bounds[-1] if self._bounds else 0.0
        self._size = len(weights)
        self._uniform = len(set(weights)) <= 1

    def draw(self, rng: random.Random) -> int:
        if self._uniform:
            return int(rng.random() * self._size)
        index = bisect_right(self._bounds, rng.random() * self._total)
        # Rounding can put the draw exactly on the last bound.
        return index if index < self._size else self._size - 1

    def draw_other(self, rng: random.Random, first: int) -> int:
        """A second index, different from ``first`` whenever that is reasonably possible."""
        if self._size < 2:
            return first
        if self._uniform:
            # Draw among the n - 1 others directly: no retries, never a repeat.
            other = int(rng.random() * (self._size - 1))
            return other + 1 if other >= first else other
        other = self.draw(rng)
        # Heavily skewed weights make a repeat likely; a few redraws fix nearly all.
        for _ in range(3):
            if other != first:
                break
            other = self.draw(rng)
        return other
