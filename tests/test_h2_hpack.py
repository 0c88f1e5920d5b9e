"""The stateless answer-header encoder decodes to what it was given, with any
compliant HPACK decoder state, and keeps credentials out of every index."""

from __future__ import annotations

from hpack import Decoder
from hypothesis import given
from hypothesis import strategies as st

from maitred.proxy import h2_hpack
from maitred.proxy.h2_hpack import StatelessEncoder

ANSWER = [
    (b":status", b"200"),
    (b"server", b"nginx/1.22.1"),
    (b"content-type", b"text/html"),
    (b"content-length", b"615"),
    (b"etag", b'"6592-267"'),
    (b"x-request-id", b"a1b2-" + b"9" * 200),  # a length past the 7-bit prefix
    (b"set-cookie", b"session=secret"),
    (b"x-binary", bytes(range(32, 256))),
]


def test_blocks_decode_to_the_answer_and_leave_the_decoder_table_empty() -> None:
    encoder, decoder = StatelessEncoder(), Decoder()
    for _ in range(3):  # the second and third come from the cache
        assert decoder.decode(encoder.encode(ANSWER), raw=True) == ANSWER
    assert len(decoder.header_table.dynamic_entries) == 0


def test_a_changed_table_size_setting_is_answered_with_a_size_update() -> None:
    encoder, decoder = StatelessEncoder(), Decoder()
    encoder.header_table_size = 0  # what h2 does when the client's SETTINGS change it
    decoder.header_table_size = 0
    block = encoder.encode(ANSWER)
    assert block[:1] == h2_hpack.TABLE_SIZE_ZERO
    assert decoder.decode(block, raw=True) == ANSWER
    assert encoder.encode(ANSWER)[:1] != h2_hpack.TABLE_SIZE_ZERO  # once is enough


def test_credentials_are_never_indexed_and_not_cached() -> None:
    encoder = StatelessEncoder()
    block = encoder.encode([(b"set-cookie", b"session=secret")])
    assert block[0] & 0xF0 == 0x10  # literal never indexed (RFC 7541 section 6.2.3)
    assert (b"set-cookie", b"session=secret") not in h2_hpack._cache
    decoded = Decoder().decode(block, raw=True)
    assert decoded == [(b"set-cookie", b"session=secret")]
    assert type(decoded[0]).__name__ == "NeverIndexedHeaderTuple"


def test_the_cache_stays_bounded() -> None:
    encoder = StatelessEncoder()
    for n in range(h2_hpack.CACHE_LIMIT + 10):
        encoder.encode([(b"content-length", b"%d" % n)])
    assert len(h2_hpack._cache) <= h2_hpack.CACHE_LIMIT


names = st.binary(min_size=1, max_size=40).map(lambda b: b.lower())


@given(st.lists(st.tuples(names, st.binary(max_size=300)), max_size=20))
def test_any_field_list_round_trips(fields: list[tuple[bytes, bytes]]) -> None:
    assert Decoder().decode(StatelessEncoder().encode(fields), raw=True) == fields
