"""Hypothesis profiles for the fuzz tests, applied to them alone.

``HYPOTHESIS_PROFILE=ci`` (the default) runs a couple of hundred examples per
test, so the package stays within seconds in CI; ``HYPOTHESIS_PROFILE=long`` is
for runs on demand. Other test modules keep hypothesis' own defaults.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_chosen = os.environ.get("HYPOTHESIS_PROFILE", "ci")
#: Decorate each fuzz test with this.
fuzz_settings = settings.get_profile(_chosen if _chosen in ("ci", "long") else "ci")
