"""Health checking: active checks, the health state machine, passive outlier ejection.

- ``state``: ``HealthTracker``, the sans-I/O state machine of one server.
- ``outlier``: ``OutlierDetector``, sans-I/O passive ejection for one pool.
- ``spec`` / ``schedule`` / ``probe``: what a check does, when, and one run of it.
- ``checker``: ``ActiveChecker``, the asyncio tasks that check servers.
- ``monitor``: ``HealthMonitor``, results -> states, logged and counted.
"""

from maitred.health.checker import ActiveChecker, CheckTarget, targets_from_pools
from maitred.health.monitor import HealthMonitor
from maitred.health.outlier import Ejection, OutlierDetector, OutlierSettings
from maitred.health.probe import CheckResult, probe
from maitred.health.spec import CheckSpec, parse_expect_status
from maitred.health.state import HealthState, HealthTracker, Transition

__all__ = [
    "ActiveChecker",
    "CheckResult",
    "CheckSpec",
    "CheckTarget",
    "Ejection",
    "HealthMonitor",
    "HealthState",
    "HealthTracker",
    "OutlierDetector",
    "OutlierSettings",
    "Transition",
    "parse_expect_status",
    "probe",
    "targets_from_pools",
]
