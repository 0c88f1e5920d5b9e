"""Load-balancing algorithms: pure strategies behind one ``Balancer`` per pool."""

from maitred.balancing.balancer import STRATEGIES, Balancer, make_strategy
from maitred.balancing.base import LiveServer, Strategy
from maitred.balancing.common import BalancingStrategy

#: The algorithm names a pool's ``algorithm`` may take.
ALGORITHMS: tuple[str, ...] = tuple(STRATEGIES)

__all__ = [
    "ALGORITHMS",
    "STRATEGIES",
    "Balancer",
    "BalancingStrategy",
    "LiveServer",
    "Strategy",
    "make_strategy",
]
