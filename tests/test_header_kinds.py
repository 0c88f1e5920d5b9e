"""Header classification: the length-and-first-letter prefilter never hides a header
the proxy acts on, whatever its case."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.proxy.framing import (
    ORDINARY,
    REQUEST_HEADER_KINDS,
    REQUEST_PREFILTER,
    RESPONSE_HEADER_KINDS,
    RESPONSE_PREFILTER,
    header_kind,
)

TABLES = {
    "request": (REQUEST_HEADER_KINDS, REQUEST_PREFILTER),
    "response": (RESPONSE_HEADER_KINDS, RESPONSE_PREFILTER),
}
# RFC 9110 5.6.2 token characters (st.binary covers every other byte).
TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def expected(kinds: dict[bytes, int], name: bytes) -> int:
    return kinds.get(name.lower(), ORDINARY)


def case_mixes(name: bytes) -> list[bytes]:
    return [name, name.upper(), name.title(), name.swapcase(), name[:1].upper() + name[1:]]


@pytest.mark.parametrize("table", TABLES)
def test_every_listed_name_is_found_in_any_case(table: str) -> None:
    kinds, prefilter = TABLES[table]
    for listed in kinds:
        for name in case_mixes(listed):
            assert header_kind(name, kinds, prefilter) == expected(kinds, name), name
            assert header_kind(name, kinds, prefilter) != ORDINARY, name


@pytest.mark.parametrize("table", TABLES)
def test_common_names_are_ordinary_without_a_lookup(table: str) -> None:
    kinds, prefilter = TABLES[table]
    for name in (b"User-Agent", b"Accept", b"Cookie", b"Content-Type", b"Date", b"Server"):
        assert not prefilter[len(name) << 7 | name[0]], name
        assert header_kind(name, kinds, prefilter) == ORDINARY


@pytest.mark.parametrize("table", TABLES)
@given(
    name=st.one_of(
        st.binary(max_size=40),
        st.lists(st.sampled_from(list(TOKEN)), max_size=40).map(bytes),
        # Near misses of listed names: one byte changed, added or dropped.
        st.tuples(
            st.sampled_from(sorted(REQUEST_HEADER_KINDS | RESPONSE_HEADER_KINDS)),
            st.integers(0, 20),
            st.binary(max_size=2),
        ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]),
    )
)
def test_the_prefilter_agrees_with_a_plain_lookup(table: str, name: bytes) -> None:
    kinds, prefilter = TABLES[table]
    assert header_kind(name, kinds, prefilter) == expected(kinds, name)
