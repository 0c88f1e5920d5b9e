"""Round trip: valid requests, alone or pipelined, come out as the same requests.

Each generated request is written out byte for byte (Content-Length or chunked
with extensions and trailers, origin- or absolute-form, HTTP/1.1 or 1.0), fed
to maitred in memory at random cut points, and every complete request a server
connection receives is answered, so pipelined ones follow. What the servers
received, parsed with h11, must be the same requests in the same order, each
framed once; the client must get one answer per request, in order.

The examples share one proxy: a connection left idle gives its request parser back,
and the next example's connection borrows it (see ``RequestReader``), so every
example also checks that a lent parser carries nothing over from the last one.
Wherever the reads were cut, a connection left idle knows where its last request
ended, and gives its parser back.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.checks import ErrorLog
from tests.fuzz.harness import InMemoryProxy
from tests.fuzz.known_deviations import known_deviation
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.reference import assert_same_request, parse_requests
from tests.fuzz.strategies import Request, split_points, valid_requests


@st.composite
def pipelines(draw: st.DrawFn) -> list[Request]:
    """One to three requests; only the last may end the connection."""
    count = draw(st.integers(1, 3))
    return [draw(valid_requests(allow_close=index == count - 1)) for index in range(count)]


@fuzz_settings
@given(data=st.data(), requests=pipelines(), pooled=st.booleans())
def test_valid_requests_are_forwarded_as_the_same_requests(
    proxy: InMemoryProxy,
    error_log: ErrorLog,
    data: st.DataObject,
    requests: list[Request],
    pooled: bool,
) -> None:
    raw = b"".join(request.to_bytes() for request in requests)
    outcome = proxy.run(data.draw(split_points(raw)), pooled=pooled, answer_requests=True)
    assert not error_log.records, [r.getMessage() for r in error_log.records]

    forwarded = []
    for connection_bytes in outcome.forwarded:
        parsed = parse_requests(connection_bytes)
        assert parsed.error is None, (parsed.error, connection_bytes)
        forwarded += parsed.requests
    # Each request parsed on its own: h11 does not keep HTTP/1.0 connections alive.
    reference = [parse_requests(request.to_bytes()) for request in requests]
    assert [parsed.error for parsed in reference] == [None] * len(requests)
    assert len(forwarded) == len(requests), (raw, outcome.forwarded)
    for sent, (meant,) in zip(forwarded, [parsed.requests for parsed in reference], strict=True):
        assert sent.complete
        assert sent.body == meant.body
        if known_deviation(raw) is None:  # else: a reported bug, see known_deviations
            assert_same_request(meant, sent)

    # One answer per request, in order, on the client connection.
    answers = outcome.answered.count(b"HTTP/1.1 200 OK\r\n")
    assert answers == len(requests), outcome.answered
    if not outcome.client_closed:
        # Left idle, it holds no parser: one it borrowed went back to the plane.
        assert not outcome.parser_held
