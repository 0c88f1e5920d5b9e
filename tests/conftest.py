from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import BackendProcess, start_backends
from tests.support.balancer import BalancerFactory, BalancerProcess


@pytest.fixture(scope="module")
def backends() -> Iterator[list[BackendProcess]]:
    started = start_backends(3)
    yield started
    for backend in started:
        backend.kill()


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[BalancerFactory]:
    """Start `maitred run -c FILE` with the given YAML; stopped at the end of the test."""
    started: list[BalancerProcess] = []

    def start(config_text: str) -> BalancerProcess:
        workdir = tmp_path / f"lb{len(started)}"
        workdir.mkdir()
        process = BalancerProcess(config_text, workdir)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
