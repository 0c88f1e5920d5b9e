"""Access log lines (combined and JSON) and the buffered writer behind them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from maitred.config.model import AccessLog
from maitred.control.access_log import (
    FLUSH_AT,
    AccessEntry,
    AccessLogs,
    AccessLogWriter,
    format_combined,
    format_json,
)

# 2026-11-27 10:00:00.250 UTC
WHEN = 1795773600.25


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def entry(**changes: object) -> AccessEntry:
    base = AccessEntry(
        time=WHEN,
        client_ip="203.0.113.7",
        method=b"GET",
        target=b"/search?q=1",
        version=b"1.1",
        status=200,
        bytes_sent=512,
        duration=0.0123,
        host=b"example.com",
        referer=b"https://example.com/",
        user_agent=b"curl/8.5.0",
        request_id=b"abc-1",
        listener="public",
        pool="web",
        server="127.0.0.1:9001",
    )
    return base._replace(**changes)


def test_combined_format(utc: None) -> None:
    assert format_combined(entry()) == (
        '203.0.113.7 - - [27/Nov/2026:10:00:00 +0000] "GET /search?q=1 HTTP/1.1" 200 512 '
        '"https://example.com/" "curl/8.5.0"'
    )


def test_combined_format_marks_missing_values_and_escapes(utc: None) -> None:
    line = format_combined(
        entry(bytes_sent=0, referer=b"", user_agent=b'evil"agent\n\xff', target=b"/a b")
    )
    assert line.endswith('"GET /a b HTTP/1.1" 200 - "-" "evil\\x22agent\\x0A\\xFF"')
    assert "\n" not in line


def test_combined_format_uses_the_local_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Etc/GMT+5")  # POSIX sign: five hours behind UTC
    time.tzset()
    try:
        assert "[27/Nov/2026:05:00:00 -0500]" in format_combined(entry())
    finally:
        monkeypatch.undo()
        time.tzset()


def test_json_format() -> None:
    record = json.loads(format_json(entry(referer=b"", server="", user_agent=b"caf\xc3\xa9")))
    assert record == {
        "time": "2026-11-27T10:00:00.250Z",
        "client": "203.0.113.7",
        "method": "GET",
        "target": "/search?q=1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes_sent": 512,
        "duration_ms": 12.3,
        "host": "example.com",
        "referer": None,
        "user_agent": "café",
        "request_id": "abc-1",
        "listener": "public",
        "pool": "web",
        "server": None,
    }


def test_writer_buffers_until_flushed(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def scenario() -> None:
        writer = AccessLogWriter(str(path), "json", asyncio.get_running_loop(), flush_interval=60)
        for index in range(3):
            writer.log(entry(status=200 + index))
        assert path.read_text() == ""  # nothing written on the request path
        await writer.flushed()
        statuses = [json.loads(line)["status"] for line in path.read_text().splitlines()]
        assert statuses == [200, 201, 202]
        writer.log(entry(status=404))
        await writer.close()

    asyncio.run(scenario())
    assert [json.loads(line)["status"] for line in path.read_text().splitlines()][-1] == 404


def test_writer_flushes_on_its_timer_and_early_when_busy(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        writer = AccessLogWriter(str(path), "combined", loop, flush_interval=0.05)
        writer.log(entry())
        deadline = loop.time() + 5
        while not path.read_text():
            assert loop.time() < deadline, "the timer never flushed"
            await asyncio.sleep(0.01)
        assert path.read_text().count("\n") == 1

        slow = AccessLogWriter(str(path), "combined", loop, flush_interval=3600)
        for _ in range(FLUSH_AT):
            slow.log(entry())
        await asyncio.sleep(0)  # one turn of the loop: the early flush runs
        await slow.flushed()
        assert path.read_text().count("\n") == 1 + FLUSH_AT
        await writer.close()
        await slow.close()

    asyncio.run(scenario())


def test_access_logs_share_a_file_and_close_unused_ones(tmp_path: Path) -> None:
    async def scenario() -> None:
        logs = AccessLogs(asyncio.get_running_loop())
        first = logs.get(str(tmp_path / "a.log"), "combined")
        assert logs.get(str(tmp_path / "a.log"), "combined") is first
        second = logs.get(str(tmp_path / "b.log"), "json")
        second.log(entry())
        await logs.keep_only([first])
        assert (tmp_path / "b.log").read_text().count("\n") == 1
        assert logs.get(str(tmp_path / "a.log"), "combined") is first
        third = logs.get(str(tmp_path / "b.log"), "json")
        assert third is not second
        await logs.retain([AccessLog(format="json", path=str(tmp_path / "b.log")), None])
        assert logs.get(str(tmp_path / "b.log"), "json") is third
        assert logs.get(str(tmp_path / "a.log"), "combined") is not first
        await logs.close()

    asyncio.run(scenario())


def test_sink_keeps_raw_values_and_decodes_them_at_flush(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "access.log"
    head = (
        b"POST /api/items?x=1 HTTP/1.1\r\nHost: shop.example\r\nuser-agent: tester/1.0\r\n"
        b"Referer: https://shop.example/cart\r\nX-Forwarded-For: 198.51.100.2\r\n\r\n"
    )
    exchange = SimpleNamespace(
        client=SimpleNamespace(client_ip="198.51.100.2"),
        head=head,
        client_http11=False,
        request_id=b"req-7",
        received_at=100.0,
        pool=SimpleNamespace(name="web"),
        server=SimpleNamespace(address="127.0.0.1:9001"),
    )

    async def scenario() -> None:
        logs = AccessLogs(asyncio.get_running_loop())
        sink = logs.sink_for(AccessLog(format="json", path=str(path)), "public")
        assert sink is not None
        assert logs.sink_for(None, "public") is None
        sink(exchange, 201, 42, 100.25)  # type: ignore[arg-type]
        sink(exchange, 503, None, 100.5)  # type: ignore[arg-type]
        await logs.close()

    asyncio.run(scenario())
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert {key: first[key] for key in first if key != "time"} == {
        "client": "198.51.100.2",
        "method": "POST",
        "target": "/api/items?x=1",
        "protocol": "HTTP/1.0",
        "status": 201,
        "bytes_sent": 42,
        "duration_ms": 250.0,
        "host": "shop.example",
        "referer": "https://shop.example/cart",
        "user_agent": "tester/1.0",
        "request_id": "req-7",
        "listener": "public",
        "pool": "web",
        "server": "127.0.0.1:9001",
    }
    assert (second["status"], second["bytes_sent"], second["duration_ms"]) == (503, 0, 500.0)
