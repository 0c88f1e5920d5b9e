"""h11 as the reference parser, and the comparisons the fuzz tests make with it."""

from __future__ import annotations

from dataclasses import dataclass, field

import h11

# Fields a proxy removes, replaces or re-declares (RFC 9110 7.6.1, RFC 9112 6/7),
# and the ones maitred adds: they are compared on their own, not as end-to-end fields.
NOT_END_TO_END = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"transfer-encoding",
        b"content-length",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    }
)


@dataclass
class ParsedRequest:
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # lowercased names, h11-normalized values
    body: bytes = b""
    complete: bool = False

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def end_to_end(self) -> list[tuple[bytes, bytes]]:
        return end_to_end(self.headers)


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` (lowercased names) without the hop-by-hop ones: those listed in
    NOT_END_TO_END and those a Connection header names (RFC 9110 7.6.1)."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return [
        (name, value) for name, value in headers if name not in NOT_END_TO_END and name not in named
    ]


@dataclass
class Parsed:
    requests: list[ParsedRequest] = field(default_factory=list)
    error: str | None = None  # why h11 stopped, if it refused something


def parse_requests(data: bytes) -> Parsed:
    """Every request h11 finds in ``data``, as a server reading a connection would."""
    parsed = Parsed()
    if not data:
        return parsed  # (h11 reads empty data as the peer's close)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(data)
    try:
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                return parsed
            if event is h11.PAUSED:
                # Answer, so h11 moves on to the next pipelined request.
                parser.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                parser.send(h11.EndOfMessage())
                parser.start_next_cycle()
                continue
            if isinstance(event, h11.Request):
                parsed.requests.append(
                    ParsedRequest(
                        event.method,
                        event.target,
                        event.http_version,
                        [(name.lower(), value) for name, value in event.headers.raw_items()],
                    )
                )
            elif isinstance(event, h11.Data):
                parsed.requests[-1].body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                parsed.requests[-1].complete = True
            elif isinstance(event, h11.ConnectionClosed):
                return parsed
    except h11.ProtocolError as exc:
        parsed.error = f"{type(exc).__name__}: {exc}"
        return parsed


def strip_leading_empty_lines(data: bytes) -> bytes:
    """RFC 9112 2.2: a server SHOULD ignore empty lines before a request line.

    h11 does not, maitred (llhttp) does: the reference gets the same allowance.
    """
    while data.startswith(b"\r\n"):
        data = data[2:]
    return data


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """(path to forward, authority) of a request target; authority None for origin-form."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target, None
    end = len(rest)
    for delimiter in (b"/", b"?"):
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, path = rest[:end], rest[end:]
    return (path if path.startswith(b"/") else b"/" + path), authority


def assert_same_request(reference: ParsedRequest, forwarded: ParsedRequest) -> None:
    """What maitred forwarded means what the client sent (hop-by-hop aside)."""
    assert forwarded.method == reference.method
    path, authority = origin_form(reference.target)
    assert forwarded.target == path
    assert forwarded.http_version == b"1.1"
    assert forwarded.end_to_end() == reference.end_to_end()
    host = reference.values(b"host")
    expected_host = host if host else [authority if authority is not None else b""]
    assert forwarded.values(b"host") == expected_host
    # One X-Forwarded-For: the client's list (OWS around commas aside), then the client.
    (forwarded_for,) = forwarded.values(b"x-forwarded-for")
    received = [
        item.strip() for v in reference.values(b"x-forwarded-for") for item in v.split(b",")
    ]
    assert [item.strip() for item in forwarded_for.split(b",")] == [*received, b"127.0.0.1"]
    framing = forwarded.values(b"content-length") + forwarded.values(b"transfer-encoding")
    assert len(framing) <= 1, f"forwarded with {framing}: one framing, never two"
    if forwarded.complete:
        assert forwarded.body == reference.body
    else:
        assert reference.body.startswith(forwarded.body)
