"""Inputs where maitred is known to differ from the reference, each one a reported bug.

Every entry names the strict xfail test of tests/test_http_policy.py that pins
the same bug down with raw bytes. The fuzz tests excuse a difference only when
an entry explains it; when the lead fixes a bug, its xfail starts passing
(strict: it fails as XPASS) and the entry here is to be deleted with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_REQUEST_LINE = re.compile(rb"^(?:\r\n)*([^\r\n]*)")


def _first_line(raw: bytes) -> bytes:
    match = _REQUEST_LINE.match(raw)
    return match.group(1) if match else b""


def _leading_bare_cr_or_lf(raw: bytes) -> bool:
    rest = raw
    while rest.startswith(b"\r\n"):
        rest = rest[2:]
    return rest[:1] in (b"\r", b"\n")


def _repeated_space_in_request_line(raw: bytes) -> bool:
    return b"  " in _first_line(raw)


KNOWN: list[tuple[str, Callable[[bytes], bool]]] = [
    (
        "test_r_crlf_bare_cr_or_lf_in_the_head_is_400[bare-cr-before-request-line]",
        _leading_bare_cr_or_lf,
    ),
    ("test_r_line_invalid_request_line_is_400[double-space]", _repeated_space_in_request_line),
]


def known_deviation(raw: bytes) -> str | None:
    """The xfail test that covers maitred's difference on ``raw``, if one does."""
    for test, applies in KNOWN:
        if applies(raw):
            return test
    return None


def _control_character_in_a_status_line(raw: bytes) -> bool:
    status_lines = re.findall(rb"(?m)^HTTP/[^\r\n]*", raw)
    return any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line) for line in status_lines)


def _transfer_encoding_ending_in_a_tab(raw: bytes) -> bool:
    return re.search(rb"(?im)^transfer-encoding:[^\r\n]*\t[ \t]*\r?$", raw) is not None


def _lone_cr_or_lf_before_a_status_line(raw: bytes) -> bool:
    starts = [0, *(match.end() for match in re.finditer(rb"\r\n\r\n", raw))]
    return any(_leading_bare_cr_or_lf(raw[start:]) for start in starts)


KNOWN_ANSWERS: list[tuple[str, Callable[[bytes], bool]]] = [
    (
        "test_r_resp_answer_is_reframed_unambiguously[chunked-with-trailing-tab]",
        _transfer_encoding_ending_in_a_tab,
    ),
    (
        "test_r_resp_malformed_answer_is_502_and_never_forwarded[nul-in-reason-phrase]",
        _control_character_in_a_status_line,
    ),
    (
        "test_r_resp_malformed_answer_is_502_and_never_forwarded[bare-cr-before-status-line]",
        _lone_cr_or_lf_before_a_status_line,
    ),
]


def known_answer_deviation(raw: bytes) -> str | None:
    """The xfail test that covers maitred's difference on answer ``raw``, if one does."""
    for test, applies in KNOWN_ANSWERS:
        if applies(raw):
            return test
    return None
