"""Differential fuzzing of the request parser against h11, the reference.

Valid requests, smuggling-style framing and mutated bytes (flips, inserted
CR/LF/NUL/spaces, deleted bytes, duplicated lines) are fed to maitred's client
side in memory, cut at random points. Whatever maitred forwards must be a
request h11 accepts in the client's bytes and must mean the same thing; what
h11 refuses must never reach a server; and maitred must never raise.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.checks import ErrorLog, check_against_reference
from tests.fuzz.harness import InMemoryProxy
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import framing_tricks, mutated, split_points, valid_requests

requests_as_bytes = valid_requests().map(lambda request: request.to_bytes())


@fuzz_settings
@given(data=st.data(), raw=mutated(requests_as_bytes), pooled=st.booleans())
def test_mutated_requests_agree_with_h11(
    proxy: InMemoryProxy, error_log: ErrorLog, data: st.DataObject, raw: bytes, pooled: bool
) -> None:
    pieces = data.draw(split_points(raw))
    check_against_reference(raw, proxy.run(pieces, pooled=pooled), error_log)


@fuzz_settings
@given(data=st.data(), raw=mutated(framing_tricks()), pooled=st.booleans())
def test_framing_tricks_agree_with_h11(
    proxy: InMemoryProxy, error_log: ErrorLog, data: st.DataObject, raw: bytes, pooled: bool
) -> None:
    pieces = data.draw(split_points(raw))
    check_against_reference(raw, proxy.run(pieces, pooled=pooled), error_log)


@fuzz_settings
@given(raw=st.binary(max_size=200), prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n"]))
def test_random_bytes_never_crash_or_forward_garbage(
    proxy: InMemoryProxy, error_log: ErrorLog, raw: bytes, prefix: bytes
) -> None:
    check_against_reference(prefix + raw, proxy.run([prefix + raw]), error_log)


@pytest.mark.parametrize(
    "raw",
    [
        b"G\r\n ET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"P\r\nOST /0 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
        b"GET /\r\nHost: a\r\n\r\n",
        b"A\r\n\r\n",
    ],
)
def test_a_request_line_shorter_than_a_version_is_refused_not_crashed_on(
    proxy: InMemoryProxy, error_log: ErrorLog, raw: bytes
) -> None:
    # Found by the long fuzz profile: the compiled version check sliced from a
    # negative start, which mypyc turns into a SystemError instead of b"".
    outcome = proxy.run([raw])
    assert outcome.answered.split(b" ", 2)[1] in (b"400", b"505"), outcome.answered
    assert outcome.client_closed
    assert not outcome.all_forwarded
    check_against_reference(raw, outcome, error_log)


POST_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n"


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(len(POST_HEAD), id="whole-head"),
        pytest.param(20, id="head-split-in-a-field"),
        pytest.param(POST_HEAD.index(b"\r\n") + 1, id="request-line-split-in-its-crlf"),
        pytest.param(len(POST_HEAD) - 1, id="blank-line-split"),
        pytest.param(len(POST_HEAD) - 3, id="blank-line-split-after-cr"),
    ],
)
@pytest.mark.parametrize(
    "next_request",
    [b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n"],
    ids=["lone-lf-first", "repeated-spaces"],
)
def test_the_request_line_checks_hold_however_the_request_before_was_read(
    proxy: InMemoryProxy, cut: int, next_request: bytes
) -> None:
    # A head split across reads used to reach llhttp with its body in one piece, so
    # where the request ended was unknown and the next request line went unchecked.
    raw = POST_HEAD + b"x"
    outcome = proxy.run([raw[:cut], raw[cut:], next_request], answer_requests=True)
    statuses = [line.split(b"\r\n")[0] for line in outcome.answered.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200 OK", b"400 Bad Request"], outcome.answered
    assert outcome.client_closed
