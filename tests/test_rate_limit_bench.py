"""Smoke tests of bench/rate_limit_bench.py: its parts run and its configs are valid."""

from __future__ import annotations

import argparse

import pytest

from bench import rate_limit_bench
from maitred.config import parse_config_text


@pytest.mark.parametrize("name", list(rate_limit_bench.TARGETS))
def test_every_target_config_is_valid(name: str) -> None:
    redis = "redis://127.0.0.1:6379/0" if name == "redis" else ""
    text = rate_limit_bench.maitred_config(
        8080, [9001, 9002], rate_limit_bench.TARGETS[name], redis
    )
    config = parse_config_text(text)
    assert (config.listeners[0].rate_limit is None) == (name == "none")
    assert (config.rate_limit_store is not None) == (name == "redis")


def test_memory_and_hotpath_figures_and_their_report() -> None:
    memory = rate_limit_bench.memory_figures(5000, "ipv4")
    assert 50 < memory["ipv4 table bytes/key"] < 400
    assert memory["ipv4 key bytes/key"] > 40
    assert memory["ipv4 hot key µs"] > 0
    hotpath = rate_limit_bench.hotpath_figures(500)
    assert list(hotpath) == list(rate_limit_bench.HOTPATH_LIMITS)
    assert all(cost > 0 for cost in hotpath.values())
    memory.update({key.replace("ipv4", "header"): value for key, value in memory.items()})
    results = rate_limit_bench.Results(memory=memory, hotpath=hotpath)
    args = argparse.Namespace(what="memory", rounds=1, duration=1.0, keys=5000)
    text = rate_limit_bench.report(results, args)
    assert "## Memory of 5,000 keys" in text
    assert "| memory, header key |" in text
