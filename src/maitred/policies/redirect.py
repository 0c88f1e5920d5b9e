"""``redirect_https``: a plain http listener answers every request with a 308 to https.

308 (not 301) keeps the method and body on the repeated request. The port is
dropped: the https side is expected on its default port 443.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maitred.config import Listener
from maitred.proxy.routing import RequestPolicy

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

# The balancer writes this header itself from the request's Host (a client's own
# X-Forwarded-Host is dropped), so it is the request's host, pipelining or not.
_FORWARDED_HOST = b"\r\nX-Forwarded-Host: "


class RedirectToHttps:
    """Answers 308 with ``Location: https://HOST/TARGET``; admits nothing."""

    __slots__ = ()

    def admit(self, exchange: Exchange, now: float) -> bool:
        location = https_location(exchange.head)
        if location is None:
            exchange.client.answer_error(exchange, 400, "a redirect to https needs a Host header")
        else:
            exchange.client.answer_error(
                exchange, 308, "use https", extra_headers=((b"Location", location),)
            )
        return False


def https_location(head: bytes) -> bytes | None:
    """The https URL for the request whose rebuilt head is ``head``; None without a host."""
    request_line_end = head.find(b"\r\n")
    target = head[:request_line_end].split(b" ")[1]
    start = head.find(_FORWARDED_HOST)
    if start == -1:
        return None
    start += len(_FORWARDED_HOST)
    host = _without_port(head[start : head.find(b"\r\n", start)])
    if not host:
        return None
    if target[:7].lower() == b"http://":
        # absolute-form target: its own authority wins over the Host header
        slash = target.find(b"/", 7)
        authority = target[7:] if slash == -1 else target[7:slash]
        host = _without_port(authority) or host
        target = b"/" if slash == -1 else target[slash:]
    elif not target.startswith(b"/"):
        target = b"/"  # "*" of OPTIONS, or anything unusual
    return b"https://" + host + target


def _without_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(b":")
    return host[:colon] if colon != -1 else host


def build_redirect(listener: Listener) -> RequestPolicy | None:
    """The policy that must run before all others of ``listener``, or None."""
    return RedirectToHttps() if listener.redirect_https else None
