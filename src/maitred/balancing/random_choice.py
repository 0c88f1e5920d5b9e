"""random and power_of_two: randomised strategies, weighted, O(log n) per pick."""

from __future__ import annotations

from collections.abc import Sequence

from maitred.balancing.base import LiveServer
from maitred.balancing.common import BalancingStrategy
from maitred.balancing.sampling import WeightedSampler


class _SamplingStrategy(BalancingStrategy):
    weighted = True
    ramps = True

    def _init_state(self) -> None:
        super()._init_state()
        self._weights: tuple[float, ...] = ()
        self._sampler = WeightedSampler(())

    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        self.eligible = tuple(servers)
        self._weights = tuple(self.effective_weight(server, now) for server in servers)
        self._sampler = WeightedSampler(self._weights)


class RandomChoice(_SamplingStrategy):
    """A server drawn at random, in proportion to its weight."""

    name = "random"

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        if not self.eligible:
            return None
        return self.eligible[self._sampler.draw(self.rng)]


class PowerOfTwoChoices(_SamplingStrategy):
    """Two servers drawn at random (by weight); the one with fewer active requests per
    unit of weight wins. Nearly as even as least connections, without its herd
    behaviour when many balancers share a pool, and O(1) in pool size."""

    name = "power_of_two"

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        servers = self.eligible
        if len(servers) < 2:
            return servers[0] if servers else None
        first = self._sampler.draw(self.rng)
        second = self._sampler.draw_other(self.rng, first)
        weights = self._weights
        if servers[second].load / weights[second] < servers[first].load / weights[first]:
            return servers[second]
        return servers[first]
