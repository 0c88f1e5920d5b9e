"""maitred: a load balancer and health-check system."""

from pathlib import Path

from maitred.compiled import choose_source_or_build

__version__ = "0.1.0"

choose_source_or_build(Path(__file__).parent)
