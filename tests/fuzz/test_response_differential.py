"""Differential fuzzing of the answer relay against h11, the reference client.

A server's answer (valid, or mutated: flips, inserted CR/LF/NUL/spaces, deleted
bytes, duplicated lines), cut at random points and maybe followed by the
server's close, is fed to maitred's server side in memory. What the client
receives, read by h11 as a client, must be either maitred's own 502/504, a
visibly cut answer (connection closed before its end), or the server's answer
meaning the same as h11 reads it in the server's bytes: same status, same
end-to-end fields, same body. Never a silent short body; never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.proxy.upstream import RAW_BODY_MIN
from tests.fuzz.checks import ErrorLog
from tests.fuzz.harness import InMemoryProxy
from tests.fuzz.known_deviations import known_answer_deviation
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.reference import end_to_end, strip_leading_empty_lines
from tests.fuzz.strategies import header_names, header_values, mutated, split_points

# The balancer's own statuses: servers here never send them.
OWN_STATUSES = (502, 504)
STATUSES = (200, 201, 204, 206, 301, 304, 404, 418, 500, 503)


@dataclass
class Answer:
    interim: list[int]
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length" | "chunked" | "close"

    def to_bytes(self) -> bytes:
        out = [b"HTTP/1.1 %d Reason\r\n\r\n" % code for code in self.interim]
        lines = [f"HTTP/1.1 {self.status} Some Reason"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        body = self.body
        if self.framing == "length":
            lines.append(f"Content-Length: {len(body)}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        else:
            lines.append("Connection: close")
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return b"".join(out)


# Short bodies, and long ones (a Content-Length body from RAW_BODY_MIN bytes on is
# relayed past llhttp).
bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda n, tail: bytes(n) + tail,
        st.integers(RAW_BODY_MIN - 50, RAW_BODY_MIN + 50),
        st.binary(max_size=20),
    ),
)


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    status = draw(st.sampled_from(STATUSES))
    no_body = status in (204, 304)
    return Answer(
        interim=draw(st.lists(st.sampled_from([100, 103]), max_size=2)),
        status=status,
        headers=draw(st.lists(st.tuples(header_names, header_values), max_size=5)),
        body=b"" if no_body else draw(bodies),
        framing="length" if no_body else draw(st.sampled_from(["length", "chunked", "close"])),
    )


@dataclass
class Read:
    """What h11, as a client, makes of a stream of answer bytes."""

    interim: list[int] = field(default_factory=list)
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    error: str | None = None

    def end_to_end(self) -> list[tuple[bytes, bytes]]:
        return end_to_end(self.headers)


def read_answer(method: bytes, data: bytes, closed: bool) -> Read:
    # h11 only speaks HTTP/1.1 as a client; how an answer is read does not depend
    # on the request's version (RFC 9112 6.3).
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    if closed:
        client.receive_data(b"")
    read = Read()
    try:
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return read
            if isinstance(event, h11.InformationalResponse):
                read.interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                read.status = event.status_code
                read.headers = [(n.lower(), v) for n, v in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                read.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                read.complete = True
                return read
            elif isinstance(event, h11.ConnectionClosed):
                return read
    except h11.ProtocolError as exc:
        read.error = f"{type(exc).__name__}: {exc}"
        return read


def skip_empty_lines_before_status_lines(raw: bytes) -> bytes:
    """Empty lines before a status line are skipped, as llhttp does and h11 does not.

    Harmless (an empty line cannot be read as anything else, and the status line is
    rewritten) and the same allowance RFC 9112 2.2 makes for request lines.
    """
    raw = strip_leading_empty_lines(raw)
    return re.sub(rb"(?<=\r\n\r\n)(?:\r\n)+(?=HTTP/)", b"", raw)


@fuzz_settings
@given(
    data=st.data(),
    raw=mutated(answers().map(Answer.to_bytes)),
    method=st.sampled_from([b"GET", b"HEAD"]),
    version=st.sampled_from([b"1.1", b"1.1", b"1.0"]),
    server_closes=st.booleans(),
)
def test_answers_agree_with_h11(
    proxy: InMemoryProxy,
    error_log: ErrorLog,
    data: st.DataObject,
    raw: bytes,
    method: bytes,
    version: bytes,
    server_closes: bool,
) -> None:
    request = b"%s / HTTP/%s\r\nHost: a\r\nX-Request-Id: r\r\n\r\n" % (method, version)
    outcome = proxy.run(
        [request], server_pieces=data.draw(split_points(raw)), server_closes=server_closes
    )
    assert not error_log.records, [r.getMessage() for r in error_log.records]
    got = read_answer(method, outcome.answered, outcome.client_closed)
    meant = read_answer(method, skip_empty_lines_before_status_lines(raw), server_closes)

    if got.status is None:
        # Nothing final yet: the answer has not arrived. A connection cut before any
        # byte of the final answer is a failure without its 502 -- a reported bug when
        # an interim answer came first (test_http_policy.py,
        # test_r_resp_malformed_final_answer_after_an_interim_one_is_502).
        assert not outcome.client_closed or got.interim, f"cut, no answer: {outcome.answered!r}"
        return
    if got.error is not None:
        # The only acceptable oddity after a status: a visible cut, closed before the end.
        assert outcome.client_closed and "peer closed connection" in got.error, got.error
    if got.status in OWN_STATUSES:
        return  # maitred refused the answer: always allowed
    if known_answer_deviation(raw) is not None:
        return  # a reported bug, pinned down by an xfail test of test_http_policy.py
    assert meant.status is not None, f"relayed an answer h11 refuses ({meant.error}): {raw!r}"
    assert got.status == meant.status
    assert got.end_to_end() == meant.end_to_end()
    if got.complete:
        # Never a silent short body: complete for the client means complete for h11.
        assert meant.complete, f"maitred completed what h11 did not ({meant.error}): {raw!r}"
        assert got.body == meant.body
    else:
        assert meant.body.startswith(got.body)
    if version == b"1.1":
        assert got.interim == meant.interim
    else:
        assert got.interim == []  # never sent to HTTP/1.0 clients


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param(
            [b"H", b"TTP/1.1 100 Season\r\n\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            id="interim-head-split-after-its-first-byte",
        ),
        pytest.param(
            [b"HTTP/1.1 100 Continue\r\n\r", b"\n\rHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            id="interim-head-end-split",
        ),
    ],
)
def test_lone_cr_or_lf_after_an_interim_answer_split_across_reads_is_502(
    proxy: InMemoryProxy, error_log: ErrorLog, pieces: list[bytes]
) -> None:
    """Found by the long fuzz run (the 200 was relayed): the interim head's end must be
    followed across reads. The 100 may be dropped with the refused answer (a 1xx is
    optional); the final answer must be a 502."""
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n\r\n"
    outcome = proxy.run([request], server_pieces=pieces, server_closes=False)
    assert not error_log.records, [r.getMessage() for r in error_log.records]
    got = read_answer(b"GET", outcome.answered, outcome.client_closed)
    assert got.status == 502


@pytest.mark.parametrize(
    ("status_line", "relayed"),
    [
        pytest.param(b"HTTP/1.1 200 OK", True, id="1.1"),
        pytest.param(b"HTTP/1.0 200 OK", True, id="1.0"),
        pytest.param(b"HTTP/1.2 200 OK", False, id="1.2"),
        pytest.param(b"HTTP/2.0 200 OK", False, id="2.0"),
        pytest.param(b"HTTP/0.9 200 OK", False, id="0.9"),
    ],
)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split-in-the-version"])
def test_only_http_1_0_and_1_1_answers_are_relayed(
    proxy: InMemoryProxy, error_log: ErrorLog, status_line: bytes, relayed: bool, split: bool
) -> None:
    """The common "HTTP/1.1 " start is recognised without llhttp's version string;
    every other version still goes through it."""
    raw = status_line + b"\r\nContent-Length: 2\r\n\r\nok"
    pieces = [raw[:6], raw[6:]] if split else [raw]
    outcome = proxy.run([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], server_pieces=pieces)
    got = read_answer(b"GET", outcome.answered, outcome.client_closed)
    assert got.status == (200 if relayed else 502)
    if relayed:
        assert got.body == b"ok"
        assert not error_log.records, [r.getMessage() for r in error_log.records]


LONG_BODY = bytes(range(256)) * 64  # 16 KiB: past RAW_BODY_MIN
LONG_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(LONG_BODY), LONG_BODY)
LONG_HEAD = LONG_ANSWER.index(b"\r\n\r\n") + 4


@pytest.mark.parametrize(
    "cuts",
    [[], [10], [len(LONG_ANSWER) - 16_000], [60, 5000, 9000, len(LONG_ANSWER) - 1]],
    ids=["one-read", "head-split", "body-split", "many-reads"],
)
def test_a_long_answer_arrives_whole_in_any_reads(
    proxy: InMemoryProxy, error_log: ErrorLog, cuts: list[int]
) -> None:
    edges = [0, *cuts, len(LONG_ANSWER)]
    pieces = [LONG_ANSWER[a:b] for a, b in zip(edges, edges[1:], strict=False)]
    outcome = proxy.run([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], server_pieces=pieces)
    got = read_answer(b"GET", outcome.answered, outcome.client_closed)
    assert (got.status, got.complete, got.body) == (200, True, LONG_BODY)
    assert not outcome.client_closed
    assert not error_log.records, [r.getMessage() for r in error_log.records]


def test_a_long_answer_cut_by_the_server_is_visibly_cut(
    proxy: InMemoryProxy, error_log: ErrorLog
) -> None:
    outcome = proxy.run(
        [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"],
        server_pieces=[LONG_ANSWER[:-100]],
        server_closes=True,
    )
    got = read_answer(b"GET", outcome.answered, outcome.client_closed)
    assert got.status == 200 and not got.complete
    assert outcome.client_closed
    assert LONG_BODY.startswith(got.body)


def test_bytes_past_a_long_answer_in_its_read_are_not_relayed(
    proxy: InMemoryProxy, error_log: ErrorLog
) -> None:
    """The answer is delivered; what the server sent beyond its framing is not, and
    the connection is not reused (the next request opens another)."""
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
    outcome = proxy.run(
        [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"],
        server_pieces=[LONG_ANSWER + extra],
    )
    first = read_answer(b"GET", outcome.answered, outcome.client_closed)
    assert (first.status, first.complete, first.body) == (200, True, LONG_BODY)
    assert b"extra" not in outcome.answered
    # The second request did not go out on the first server connection.
    assert outcome.forwarded[0].count(b"GET ") == 1


def test_a_long_body_after_a_head_answer_is_not_relayed(
    proxy: InMemoryProxy, error_log: ErrorLog
) -> None:
    outcome = proxy.run([b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"], server_pieces=[LONG_ANSWER])
    got = read_answer(b"HEAD", outcome.answered, outcome.client_closed)
    assert got.status == 200 and got.body == b""
    assert LONG_BODY[:64] not in outcome.answered


@pytest.mark.parametrize(
    "pieces",
    [
        [LONG_ANSWER, LONG_ANSWER],
        [LONG_ANSWER[:LONG_HEAD], LONG_ANSWER[LONG_HEAD:]] * 2,
        [LONG_ANSWER, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    ],
    ids=["one-read-each", "heads-alone", "then-a-short-one"],
)
def test_a_connection_stays_in_step_after_a_long_answer(
    proxy: InMemoryProxy, error_log: ErrorLog, pieces: list[bytes]
) -> None:
    """The second answer comes on the same server connection, after a body that
    did not go through llhttp."""
    outcome = proxy.run(
        [b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"],
        server_pieces=pieces,
    )
    assert outcome.forwarded[0].count(b"GET ") == 2
    rest = outcome.answered
    bodies = []
    for _ in range(2):  # each answer read by h11 in turn (it does not pipeline)
        head_end = rest.index(b"\r\n\r\n") + 4
        length = int(re.search(rb"Content-Length: (\d+)", rest[:head_end]).group(1))  # type: ignore[union-attr]
        got = read_answer(b"GET", rest[: head_end + length], closed=False)
        assert got.status == 200 and got.complete
        assert b"\r\nX-Request-Id: " in rest[:head_end]  # a head maitred made
        bodies.append(got.body)
        rest = rest[head_end + length :]
    assert bodies[0] == LONG_BODY
    assert bodies[1] == (b"ok" if len(pieces[-1]) < 100 else LONG_BODY)
    assert rest == b""
    assert not error_log.records, [r.getMessage() for r in error_log.records]


@pytest.mark.parametrize("code", [b"000", b"099", b"600"])
def test_a_status_code_outside_100_to_599_is_502_and_none_of_it_reaches_the_client(
    proxy: InMemoryProxy, code: bytes
) -> None:
    # Found by the long fuzz profile: llhttp reads "000" as a status, and maitred
    # took it for an interim answer, then relayed the body that followed.
    raw = b"HTTP/1.1 " + code + b" Odd\r\nContent-Length: 1\r\n\r\n\x00"
    outcome = proxy.run([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], server_pieces=[raw])
    assert outcome.answered.startswith(b"HTTP/1.1 502 "), outcome.answered
    assert b"\x00" not in outcome.answered


@pytest.mark.parametrize("code", [b"100", b"103", b"106"])
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "head-split"])
def test_an_interim_answer_has_no_body_whatever_its_content_length_says(
    proxy: InMemoryProxy, error_log: ErrorLog, code: bytes, split: bool
) -> None:
    # Found by the long fuzz profile: llhttp reads a body after a 1xx head with a
    # Content-Length (after any but 100), and maitred relayed it as answer bytes.
    interim = b"HTTP/1.1 " + code + b" Wait\r\nContent-Length: 1\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    raw = interim + final
    pieces = [raw[:10], raw[10:]] if split else [raw]
    outcome = proxy.run([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], server_pieces=pieces)
    got = read_answer(b"GET", outcome.answered, outcome.client_closed)
    assert got.interim == [int(code)], outcome.answered
    assert (got.status, got.body, got.complete) == (200, b"ok", True), outcome.answered
    assert not error_log.records, [r.getMessage() for r in error_log.records]


@pytest.mark.parametrize("cut", [1, 2, 3], ids=["after-cr", "after-crlf", "after-crlfcr"])
def test_an_interim_head_whose_blank_line_straddles_two_reads_ends_there(
    proxy: InMemoryProxy, cut: int
) -> None:
    # The end of a head that may be an interim answer's is looked for across reads
    # (the last bytes of the first are kept): the final answer follows at once.
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    split = len(interim) - 4 + cut
    outcome = proxy.run(
        [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"],
        server_pieces=[interim[:split], interim[split:] + final],
    )
    assert outcome.answered.startswith(b"HTTP/1.1 103 "), outcome.answered
    assert b"\r\n\r\nHTTP/1.1 200 OK\r\n" in outcome.answered, outcome.answered
    assert outcome.answered.endswith(b"\r\n\r\nok"), outcome.answered
