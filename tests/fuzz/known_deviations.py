"""Inputs where maitred is known to differ from the reference, each one a reported bug.

Every entry names the strict xfail test of tests/test_http_policy.py that pins
the same bug down with raw bytes. The fuzz tests excuse a difference only when
an entry explains it; when the lead fixes a bug, its xfail starts passing
(strict: it fails as XPASS) and the entry here is to be deleted with it.
"""

from __future__ import annotations

from collections.abc import Callable

# Empty since the last bugs they held were fixed (issue 10); new ones go here.
KNOWN: list[tuple[str, Callable[[bytes], bool]]] = []


def known_deviation(raw: bytes) -> str | None:
    """The xfail test that covers maitred's difference on ``raw``, if one does."""
    for test, applies in KNOWN:
        if applies(raw):
            return test
    return None


KNOWN_ANSWERS: list[tuple[str, Callable[[bytes], bool]]] = []


def known_answer_deviation(raw: bytes) -> str | None:
    """The xfail test that covers maitred's difference on answer ``raw``, if one does."""
    for test, applies in KNOWN_ANSWERS:
        if applies(raw):
            return test
    return None
