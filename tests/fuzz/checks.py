"""The properties every fuzzed request must keep, shared by hypothesis and atheris."""

from __future__ import annotations

import logging

from tests.fuzz.harness import Outcome
from tests.fuzz.known_deviations import known_deviation
from tests.fuzz.reference import assert_same_request, parse_requests, strip_leading_empty_lines


class ErrorLog(logging.Handler):
    """Collects maitred's ERROR records: a logged exception is a crash, caught or not."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_against_reference(raw: bytes, outcome: Outcome, error_log: ErrorLog) -> None:
    """maitred never crashed; never forwarded what h11 refuses in ``raw``; forwarded
    only well-formed requests; and what it forwarded means what ``raw`` says."""
    assert not error_log.records, [r.getMessage() for r in error_log.records]
    assert not outcome.answered.startswith(b"HTTP/1.1 500"), outcome.answered
    reference = parse_requests(strip_leading_empty_lines(raw))
    for forwarded_bytes in outcome.forwarded:
        forwarded = parse_requests(forwarded_bytes)
        # What leaves the balancer is always well-formed, whatever came in.
        assert forwarded.error is None, (forwarded.error, forwarded_bytes)
    forwarded = parse_requests(outcome.all_forwarded)
    if not forwarded.requests:
        return
    # Only the first request can be forwarded: nothing answers it here.
    (sent,) = forwarded.requests
    if known_deviation(raw) is not None:
        return  # a reported bug, pinned down by an xfail test of test_http_policy.py
    assert reference.requests, (
        f"maitred forwarded a request h11 refuses ({reference.error}):\n"
        f"in:  {raw!r}\nout: {outcome.all_forwarded!r}"
    )
    first = reference.requests[0]
    if sent.complete:
        assert first.complete, (
            f"maitred forwarded a complete request whose end h11 never reached "
            f"({reference.error}):\nin:  {raw!r}\nout: {outcome.all_forwarded!r}"
        )
    assert_same_request(first, sent)
