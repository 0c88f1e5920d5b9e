"""The in-memory proxy the fuzz tests share, and a collector of logged crashes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.fuzz.checks import ErrorLog
from tests.fuzz.harness import InMemoryProxy


@pytest.fixture(scope="module")
def proxy() -> Iterator[InMemoryProxy]:
    in_memory = InMemoryProxy()
    yield in_memory
    in_memory.close()


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    for name in ("maitred", "asyncio"):
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in ("maitred", "asyncio"):
        logging.getLogger(name).removeHandler(handler)
