"""Hypothesis strategies: valid HTTP/1.1 requests, framing tricks, and mutations."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
HOSTS = ("a", "example.com", "api.example.com:8080", "127.0.0.1:9000", "[::1]:80")
# Names a generator must not produce at random: they have their own strategies.
RESERVED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "expect",
        "te",
        "trailer",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    }
)


@dataclass
class Request:
    """A request to be written out byte for byte, and what it means."""

    method: str
    target: str
    version: str
    host: str | None
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: list[bytes] | None = None  # None: Content-Length framing (when a body)
    chunk_extensions: list[str] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    closes: bool = False  # the connection ends after this request

    def to_bytes(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/{self.version}"]
        if self.host is not None:
            lines.append(f"Host: {self.host}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.chunks is not None:
            lines.append("Transfer-Encoding: chunked")
        elif self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.chunks is None:
            return head + self.body
        out = [head]
        for index, chunk in enumerate(self.chunks):
            extension = (
                self.chunk_extensions[index % len(self.chunk_extensions)]
                if (self.chunk_extensions)
                else ""
            )
            out.append(b"%x%s\r\n%s\r\n" % (len(chunk), extension.encode(), chunk))
        out.append(b"0\r\n")
        out += [f"{name}: {value}\r\n".encode() for name, value in self.trailers]
        out.append(b"\r\n")
        return b"".join(out)


tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
header_names = tokens.filter(lambda name: name.lower() not in RESERVED)
header_values = st.text(VALUE_CHARS + " \t", min_size=0, max_size=20).map(
    lambda value: value.strip(" \t")
)
paths = st.text(PATH_CHARS, max_size=20).map(lambda path: "/" + path.lstrip("/"))
queries = st.one_of(st.just(""), st.text(PATH_CHARS + "?", max_size=12).map(lambda q: "?" + q))


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(body) + 1) for cut in cuts} | {0, len(body)})
    return [body[a:b] for a, b in zip(points, points[1:], strict=False) if body[a:b]]


@st.composite
def valid_requests(draw: st.DrawFn, *, allow_close: bool = True) -> Request:
    method = draw(st.sampled_from(METHODS))
    version = draw(st.sampled_from(("1.1", "1.1", "1.1", "1.0")))
    host = draw(st.sampled_from(HOSTS))
    path = draw(paths) + draw(queries)
    absolute = draw(st.booleans()) and draw(st.booleans())
    target = f"{draw(st.sampled_from(('http', 'https')))}://{host}{path}" if absolute else path
    send_host = version == "1.1" or draw(st.booleans())
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    extras = draw(
        st.lists(
            st.sampled_from(
                [
                    ("Connection", "keep-alive"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Request-Id", "fuzz-1"),
                    ("Proxy-Authorization", "Basic eDp5"),
                ]
            ),
            max_size=3,
            unique=True,
        )
    )
    headers += extras
    if version == "1.0":
        # HTTP/1.0 closes after one exchange unless it asks to keep alive.
        keep_alive = draw(st.booleans())
        if keep_alive:
            headers = [h for h in headers if h[0] != "Connection"] + [("Connection", "keep-alive")]
        closes = not keep_alive
    else:
        closes = allow_close and draw(st.integers(0, 9)) == 0
        if closes:
            headers = [h for h in headers if h[0] != "Connection"] + [("Connection", "close")]
    if not allow_close and closes:
        closes = False
        headers = [h for h in headers if h[0] != "Connection"] + [("Connection", "keep-alive")]
    body = draw(st.binary(max_size=300)) if method not in ("GET", "HEAD") else b""
    chunked = version == "1.1" and draw(st.booleans()) and method not in ("GET", "HEAD")
    request = Request(
        method,
        target,
        version,
        host if send_host else None,
        headers,
        body,
        closes=closes,
    )
    if chunked:
        request.chunks = _split(body, draw(st.lists(st.integers(0, 400), max_size=4)))
        request.chunk_extensions = draw(
            st.lists(st.sampled_from(["", ";a", ";a=b", ';n="q v"']), max_size=2)
        )
        request.trailers = draw(st.lists(st.tuples(header_names, header_values), max_size=2))
    return request


# -- framing tricks: the values request smuggling is made of --------------------------------

CONTENT_LENGTHS = ["5", "0", "+5", "05", "5 ", " 5", "5,5", "5, 6", "", "0x5", "-1", "1e1"]
TRANSFER_ENCODINGS = [
    "chunked",
    "Chunked",
    "chunked ",
    "\tchunked",
    "gzip, chunked",
    "chunked, gzip",
    "chunked, chunked",
    "identity",
    "chunked;q=1",
    "xchunked",
    "",
]


@st.composite
def framing_tricks(draw: st.DrawFn) -> bytes:
    """A request whose framing headers are drawn from the classic smuggling values."""
    version = draw(st.sampled_from(("1.1", "1.0")))
    lines = [f"POST /{draw(tokens)} HTTP/{version}", "Host: a"]
    framing = draw(
        st.lists(
            st.one_of(
                st.sampled_from(CONTENT_LENGTHS).map(lambda v: f"Content-Length: {v}"),
                st.sampled_from(TRANSFER_ENCODINGS).map(lambda v: f"Transfer-Encoding: {v}"),
                st.sampled_from(
                    ["Content-Length : 5", "Transfer-Encoding : chunked", "Content-Length\t: 5"]
                ),
            ),
            min_size=1,
            max_size=3,
        )
    )
    order = draw(st.permutations(framing))
    lines += list(order)
    body = draw(
        st.sampled_from(
            [
                b"hello",
                b"5\r\nhello\r\n0\r\n\r\n",
                b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
                b"3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
                b"",
            ]
        )
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- mutations ---------------------------------------------------------------------------

INSERTIONS = [b"\r", b"\n", b"\x00", b" ", b"\t", b"\r\n", b":", b",", b"0", b"\r\n ", b"\x7f"]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with up to three byte flips, insertions, deletions or duplicated lines."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate-line"]))
        if kind == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[position:position] = draw(st.sampled_from(INSERTIONS))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 4))]
        else:
            start = data.rfind(b"\n", 0, position) + 1
            end = data.find(b"\n", position)
            if end != -1:
                data[start:start] = data[start : end + 1]
    return bytes(data)


@st.composite
def split_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into pieces at random points, as TCP may deliver it."""
    cuts = draw(st.lists(st.integers(0, max(len(data), 1)), max_size=4))
    return _split(data, cuts) or [data]
