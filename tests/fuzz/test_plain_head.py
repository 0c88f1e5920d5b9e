"""Plain heads read without llhttp, held against llhttp's reading.

``read_request_head`` and ``read_answer_head`` may only accept what llhttp
accepts, and must read it the way the slow path does from llhttp's callbacks:
for a request, the same method, target, version, fields and keep-alive, and no
body; for an answer, the same status, the same fields relayed (as ``name:
value`` lines, in order), the same Content-Length and keep-alive. Heads are
drawn in the plain form, with the fields the proxy treats apart, then mutated
(flipped, inserted and deleted bytes, duplicated lines). Plain heads must be
accepted: the fast paths must not quietly stop being taken.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.proxy.framing import (
    CONTENT_LENGTH,
    ORDINARY,
    REQUEST_HEADER_KINDS,
    REQUEST_ID,
    REQUEST_PREFILTER,
    RESPONSE_HEADER_KINDS,
    RESPONSE_PREFILTER,
    header_kind,
)
from maitred.proxy.plain_head import (
    PLAIN_METHODS,
    AnswerHead,
    RequestHead,
    read_answer_head,
    read_request_head,
)
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import header_names, mutated, paths, queries

PLAIN_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F))
plain_values = st.text(PLAIN_VALUE_CHARS, min_size=1, max_size=30).map(str.strip).filter(bool)
# Fields the relay treats apart, in the spellings servers use and some they should not.
SPECIAL_FIELDS = [
    ("Content-Length", "6"),
    ("content-length", "0"),
    ("Content-Length", "007"),
    ("Content-Length", "123456789012345678"),
    ("Content-Length", "1,1"),
    ("Connection", "keep-alive"),
    ("Connection", "close"),
    ("connection", "Keep-Alive"),
    ("Connection", "close, x-secret"),
    ("Connection", "upgrade"),
    ("X-Request-Id", "abc-1"),
    ("x-request-id", "r"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "h2c"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "close"),
    ("Trailer", "x"),
]


@st.composite
def plain_heads(draw: st.DrawFn, *, specials: bool = True) -> bytes:
    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 404, 418, 500, 503, 599]))
    reason = draw(st.sampled_from(["OK", "Some Reason", "X", "Ünïcode", "Not Found"]))
    fields = draw(st.lists(st.tuples(header_names, plain_values), max_size=6))
    if specials:
        extra = draw(st.lists(st.sampled_from(SPECIAL_FIELDS), max_size=3))
        fields = draw(st.permutations(fields + extra))
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class LlhttpReading:
    """What the slow path makes of a head: llhttp's callbacks, and its flags as they
    are when the head is complete (a message that ends there resets them)."""

    def __init__(self, head: bytes) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.version = ""
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)
        self.done = False
        try:
            self.parser.feed_data(head)
        except httptools.HttpParserError:
            self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True
        self.status = self.parser.get_status_code()
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()


def assert_same_reading(head: bytes, fast: AnswerHead) -> None:
    reading = LlhttpReading(head)
    assert reading.done, f"accepted a head llhttp refuses: {head!r}"
    assert reading.version == "1.1"
    assert fast.status == reading.status
    relayed = []
    lengths = []
    has_request_id = False
    for name, value in reading.fields:
        kind = header_kind(name, RESPONSE_HEADER_KINDS, RESPONSE_PREFILTER)
        if kind in (ORDINARY, REQUEST_ID):
            relayed.append(b"%s: %s\r\n" % (name, value))
            has_request_id |= kind == REQUEST_ID
        elif kind == CONTENT_LENGTH:
            lengths.append(value)
    assert b"".join(fast.fields) == b"".join(relayed)
    assert fast.has_request_id == has_request_id
    assert fast.length_value == (lengths[0] if lengths else None)
    assert fast.length == (int(lengths[0]) if lengths else -1)
    if fast.length >= 0 or fast.status in (204, 304):
        # The relay takes these (other answers are delimited by the close: llhttp's).
        assert fast.close == (not reading.keep_alive)


def head_of(data: bytes) -> bytes | None:
    end = data.find(b"\r\n\r\n")
    return data[: end + 4] if end >= 0 else None


@fuzz_settings
@given(raw=mutated(plain_heads()))
def test_what_the_fast_reading_accepts_llhttp_reads_the_same(raw: bytes) -> None:
    head = head_of(raw)
    if head is None:
        return
    fast = read_answer_head(raw, 0, len(head))
    if fast is not None:
        assert_same_reading(head, fast)


@fuzz_settings
@given(head=plain_heads(specials=False), prefix=st.binary(max_size=8))
def test_plain_heads_are_read_without_llhttp(head: bytes, prefix: bytes) -> None:
    data = prefix + head + b"body"
    fast = read_answer_head(data, len(prefix), len(prefix) + len(head))
    assert fast is not None, head
    assert_same_reading(head, fast)


NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\n"
)


def test_runs_of_unchanged_fields_are_slices_of_the_server_bytes() -> None:
    fast = read_answer_head(NGINX + b"hello\n", 0, len(NGINX))
    assert fast is not None
    assert fast.fields == [
        b"Server: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 06:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\n"
    ]
    assert (fast.status, fast.length_value, fast.length, fast.close) == (200, b"6", 6, False)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", id="http-1.0"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="interim"),
        pytest.param(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", id="switching"),
        pytest.param(b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n", id="no-reason"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA:b\r\n\r\n", id="no-space-after-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA:  b\r\n\r\n", id="two-spaces-after-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b \r\n\r\n", id="trailing-space"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: \r\n\r\n", id="empty-value"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\tc\r\n\r\n", id="htab-in-value"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", id="obs-fold"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\nB: c\r\n\r\n", id="bare-lf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\rB: c\r\n\r\n", id="bare-cr"),
        pytest.param(b"HTTP/1.1 200 OK\r\nA: b\x7f\r\n\r\n", id="del-in-value"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", id="two-lengths"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", id="signed-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close, x\r\n\r\n", id="connection-names"),
        pytest.param(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\n\r\n", id="hop-by-hop"),
        pytest.param(b"HTTP/1.1 600 Nope\r\n\r\n", id="status-600"),
        pytest.param(b"HTTP/1.1 20x OK\r\n\r\n", id="status-not-digits"),
    ],
)
def test_other_heads_are_left_to_llhttp(head: bytes) -> None:
    assert read_answer_head(head, 0, len(head)) is None


def test_a_range_that_is_not_a_whole_head_is_refused() -> None:
    assert read_answer_head(NGINX, 0, len(NGINX) - 1) is None
    assert read_answer_head(NGINX, 0, len(NGINX) + 1) is None
    assert read_answer_head(NGINX, 1, len(NGINX)) is None


# -- requests ----------------------------------------------------------------------------

SPECIAL_REQUEST_FIELDS = [
    ("Host", "example.com"),
    ("host", "a:8080"),
    ("Content-Length", "5"),
    ("Transfer-Encoding", "chunked"),
    ("Connection", "keep-alive"),
    ("Connection", "close"),
    ("connection", "Keep-Alive"),
    ("Connection", "Upgrade"),
    ("Connection", "close, x-secret"),
    ("Upgrade", "websocket"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Request-Id", "r-1"),
    ("Keep-Alive", "timeout=5"),
    ("Expect", "100-continue"),
]


@st.composite
def plain_requests(draw: st.DrawFn, *, specials: bool = True) -> bytes:
    methods = sorted(m.decode() for m in PLAIN_METHODS)
    if specials:
        methods += ["CONNECT", "get", "FROB", "TRACE"]
    method = draw(st.sampled_from(methods))
    target = draw(paths) + draw(queries)
    version = draw(st.sampled_from(["1.1", "1.0"]))
    fields = [("Host", "a")] + draw(st.lists(st.tuples(header_names, plain_values), max_size=6))
    if specials:
        extra = draw(st.lists(st.sampled_from(SPECIAL_REQUEST_FIELDS), max_size=3))
        fields = draw(st.permutations(fields + extra))
    lines = [f"{method} {target} HTTP/{version}"] + [f"{n}: {v}" for n, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class LlhttpRequestReading:
    """What the slow path makes of a request head."""

    def __init__(self, head: bytes) -> None:
        self.url = b""
        self.fields: list[bytes] = []
        self.method = b""
        self.version = ""
        self.keep_alive = False
        self.upgrade = False
        self.done = False
        self.complete = False
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            self.upgrade = True
        except httptools.HttpParserError:
            self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += (name, value)

    def on_headers_complete(self) -> None:
        self.done = True
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


def assert_same_request(head: bytes, fast: RequestHead) -> None:
    reading = LlhttpRequestReading(head)
    assert reading.done, f"accepted a head llhttp refuses: {head!r}"
    assert reading.complete, f"llhttp waits for a body: {head!r}"
    assert not reading.upgrade
    assert fast.method == reading.method
    assert fast.target == reading.url
    assert fast.http11 == (reading.version == "1.1")
    assert fast.fields == reading.fields
    assert fast.close == (not reading.keep_alive)
    # What goes to the server unchanged: the line as sent, and each field's kind.
    line = b"%s %s HTTP/1.1\r\n" % (reading.method, reading.url)
    assert fast.line == (line if fast.http11 else b"")
    assert head.startswith(fast.line)
    names = fast.fields[::2]
    assert fast.kinds == [header_kind(n, REQUEST_HEADER_KINDS, REQUEST_PREFILTER) for n in names]


@fuzz_settings
@given(raw=mutated(plain_requests()))
def test_what_the_fast_request_reading_accepts_llhttp_reads_the_same(raw: bytes) -> None:
    head = head_of(raw)
    if head is None or len(head) != len(raw):
        return  # the fast reading takes a whole head and nothing after it
    fast = read_request_head(raw)
    if fast is not None:
        assert_same_request(head, fast)


@fuzz_settings
@given(head=plain_requests(specials=False))
def test_plain_requests_are_read_without_llhttp(head: bytes) -> None:
    fast = read_request_head(head)
    assert fast is not None, head
    assert_same_request(head, fast)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", id="connect"),
        pytest.param(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-form"),
        pytest.param(b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", id="fragment"),
        pytest.param(b'GET /a"b HTTP/1.1\r\nHost: a\r\n\r\n', id="quote-in-target"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", id="http-2"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", id="length"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", id="upgrade"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nA:b\r\n\r\n", id="no-space"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET", id="bytes-after"),
    ],
)
def test_other_requests_are_left_to_llhttp(head: bytes) -> None:
    assert read_request_head(head) is None
