"""The benchmark suite's pure parts: output parsing, tables and generated configs.

No load runs here; the configs are checked by the programs that will read
them (haproxy -c, nginx -t, maitred check) when those are installed. The one
process started is the ceiling's reference forwarder, in front of a recording
origin, to check that it passes bytes through unchanged.
"""

from __future__ import annotations

import math
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from bench import (
    capacity,
    ceiling,
    failover,
    hotpath_bench,
    instructions,
    load,
    nginx,
    origins,
    procfs,
    reference_forwarder,
    report,
    targets,
)
from bench.ceiling import FORWARDER, Results, Run
from bench.processes import Supervisor
from bench.procfs import CpuTicks
from bench.profile import top_functions
from bench.reference_forwarder import parse_origins
from bench.report import Goal, Row
from tests.support.recording import RecordedRequest, RecordingServer

WRK_CLEAN = """Running 3s test @ http://127.0.0.1:60311/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.04ms    0.94ms  11.29ms   91.54%
    Req/Sec    54.59k    13.98k   66.51k    80.00%
  162973 requests in 3.01s, 20.05MB read
Requests/sec:  54218.16
Transfer/sec:      6.67MB
"""

WRK_WITH_ERRORS = """Running 1s test @ http://127.0.0.1:50845/nothere
  1 threads and 20 connections
  92697 requests in 1.10s, 27.23MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 90
Requests/sec:  84282.80
"""

ORIGIN_PORTS = [9101, 9102, 9103, 9104]


def test_parse_wrk_reads_rate_count_and_duration() -> None:
    result = load.parse_wrk(WRK_CLEAN)
    assert result == load.WrkResult(162973, 3.01, 54218.16, 0)


def test_parse_wrk_counts_socket_errors_and_bad_statuses() -> None:
    assert load.parse_wrk(WRK_WITH_ERRORS).errors == 1 + 2 + 3 + 4 + 90


def test_parse_wrk_rejects_output_without_a_result() -> None:
    with pytest.raises(ValueError, match="unable to connect"):
        load.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_command_carries_headers_and_duration() -> None:
    argv = load.wrk_command("http://x/", 2.5, 50, 1, ("Connection: close",))
    assert argv[1:] == ["-t1", "-c50", "-d3s", "-H", "Connection: close", "http://x/"]
    assert load.wrk_command("http://x/", 8, 50, 1)[3] == "-d8s"


def test_warmup_is_a_third_of_a_run_in_whole_seconds_from_1_to_3() -> None:
    assert [load.warmup_seconds(d) for d in (2, 6, 8, 30)] == [1.0, 2.0, 3.0, 3.0]


def test_h2load_command_spreads_the_rate_over_clients() -> None:
    argv = load.h2load_command("http://x/", 10_000, 10, 50, Path("/tmp/log"))
    assert "--rps=200" in argv and "--clients=50" in argv and "--h1" in argv


def test_h2load_log_gives_percentiles_and_counts_failures() -> None:
    rows = [f"1700000000{i:06d}\t200\t{1000 * (i + 1)}" for i in range(100)]
    rows += ["1700000000999999\t503\t10", "1700000000999999\t-1\t0"]
    result = load.parse_h2load_log("\n".join(rows) + "\n", seconds=2)
    assert result.requests == 100
    assert result.requests_per_second == 50
    assert result.p50_ms == 50.0
    assert result.p99_ms == 99.0
    assert result.errors == 2


def test_percentile_is_nearest_rank_and_nan_when_empty() -> None:
    assert load.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert load.percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert math.isnan(load.percentile([], 0.5))


def test_median_ignores_missing_rounds() -> None:
    assert report.median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert report.median([]) is None


def test_ratios_pair_values_from_the_same_round() -> None:
    # The machine's load drifted across rounds; maitred was 1.25x in two of three.
    row = Row("small", "req/s", {"maitred": [100.0, 60.0, 30.0], "HAProxy": [80.0, 48.0, 120.0]})
    assert row.paired_ratio("maitred", "HAProxy") == pytest.approx(1.25)
    assert row.median("maitred") == 60.0 and row.median("HAProxy") == 80.0  # 0.75 if mixed
    row.runs["maitred"] = [math.nan, 60.0, 150.0]  # a round with no value drops out
    assert row.paired_ratio("maitred", "HAProxy") == pytest.approx(1.25)
    assert row.paired_ratio("maitred", "NGINX") is None
    assert row.paired_difference("maitred", "HAProxy") == pytest.approx(21.0)


def _row(maitred: list[float], haproxy: list[float]) -> Row:
    return Row("s", "m", {"maitred": maitred, "HAProxy": haproxy})


def test_goals_compare_maitred_with_haproxy_round_by_round() -> None:
    assert Goal("ratio_at_least", 1.2).met(_row([120.0], [100.0])) is True
    assert Goal("ratio_at_least", 1.2).met(_row([119.0], [100.0])) is False
    assert Goal("haproxy_plus_at_most", 0.5).met(_row([1.5, 9.0], [1.0, 8.5])) is True
    assert Goal("haproxy_plus_at_most", 0.5).met(_row([1.6], [1.0])) is False
    assert Goal("at_most", 2.5).met(_row([2.4], [])) is True
    assert Goal("ratio_at_least", 1.0).met(_row([], [100.0])) is None


def test_table_shows_medians_ratios_and_goal() -> None:
    rows = [
        Row(
            "small",
            "req/s",
            {
                "maitred": [30000, 33000, 31000],
                "HAProxy": [30000, 30000, 29000],
                "NGINX": [20000, 22000, 20000],
            },
            Goal("ratio_at_least", 1.0),
        ),
        Row("https", "req/s", skipped="needs TLS termination (issue 7)"),
    ]
    lines = report.table(rows).splitlines()
    assert lines[0].startswith(
        "| scenario | metric | maitred | HAProxy | NGINX | HAProxy-xff | maitred/HAProxy |"
    )
    # per-round ratios: 1.00, 1.10, 1.07 -> 1.07; 1.50, 1.50, 1.55 -> 1.50
    assert lines[2] == (
        "| small | req/s | 31,000 | 30,000 | 20,000 | n/a | 1.07 | 1.50 | n/a"
        " | ≥ 1× HAProxy | yes |"
    )
    assert "skipped: needs TLS termination (issue 7)" in lines[3]


def test_table_says_na_for_a_target_that_did_not_run() -> None:
    row = Row("small", "req/s", {"HAProxy": [100.0], "NGINX": [90.0]}, Goal("ratio_at_least", 1))
    assert (
        "| small | req/s | n/a | 100 | 90.0 | n/a | n/a | n/a | n/a | ≥ 1× HAProxy | n/a |"
        in report.table([row])
    )


def test_results_markdown_names_command_machine_and_notes() -> None:
    text = report.results_markdown(
        [Row("small", "req/s", {"maitred": [1.0, math.nan, 2.0]})],
        "python -m bench --quick",
        "2026-01-01 00:00 UTC",
        {"nproc": "2", "kernel": "6.1"},
        ["NGINX has no active health checks."],
    )
    assert "`python -m bench --quick`" in text
    assert "- nproc: 2" in text
    assert "- small req/s: maitred 1.00, n/a, 2.00; HAProxy ; NGINX ; HAProxy-xff " in text
    assert "- NGINX has no active health checks." in text


def test_top_functions_ranks_self_and_inclusive_time() -> None:
    document = {
        "shared": {
            "frames": [
                {"name": "run", "file": "loop.py", "line": 1},
                {"name": "data_received", "file": "proxy.py", "line": 10},
                {"name": "parse", "file": "proxy.py", "line": 20},
            ]
        },
        "profiles": [{"samples": [[0, 1], [0, 1, 2], [0, 1, 2], [0]], "weights": [1, 1, 1, 1]}],
    }
    text = top_functions(document, count=3)
    lines = text.splitlines()
    first = lines.index("self%   total%  function") + 1
    assert lines[first] == " 50.0     50.0  parse (proxy.py:20)"
    assert " 25.0     75.0  data_received (proxy.py:10)" in lines
    assert "100.0  run (loop.py:1)" in text


@pytest.mark.skipif(
    shutil.which("haproxy") is None or shutil.which("nginx") is None,
    reason="haproxy and nginx not installed",
)
def test_every_target_adds_the_headers_maitred_adds(tmp_path: Path) -> None:
    # The comparison is fair only if HAProxy and NGINX do maitred's header work
    # too; HAProxy-xff is the X-Forwarded-For-only yardstick of earlier runs.
    added = (b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id")
    with RecordingServer() as origin, Supervisor() as supervisor:
        for name in targets.ALL_TARGETS:
            target = targets.start(name, supervisor, tmp_path, [origin.port], None)
            assert target.available, f"{name}: {target.problem}"
            path = f"/{name.lower()}".encode()
            with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: bench.test:81\r\n\r\n")
                answer = _read_answer(sock).lower()
            origin.wait_for(lambda server, path=path: _received(server, path) is not None)
            request = _received(origin, path)
            assert request is not None
            assert request.header_values(b"x-forwarded-for") == [b"127.0.0.1"], name
            if name == targets.HAPROXY_XFF_ONLY:
                assert not any(request.header_values(header) for header in added)
                assert b"\r\nx-request-id:" not in answer
                continue
            assert request.header_values(b"x-forwarded-proto") == [b"http"], name
            assert request.header_values(b"x-forwarded-host") == [b"bench.test:81"], name
            [request_id] = request.header_values(b"x-request-id")
            assert b"\r\nx-request-id: " + request_id.lower() + b"\r\n" in answer, name


def _received(origin: RecordingServer, target: bytes) -> RecordedRequest | None:
    return next((r for r in origin.complete_requests() if r.target == target), None)


def test_configs_hold_the_equivalent_settings(tmp_path: Path) -> None:
    haproxy = targets.haproxy_config(8000, ORIGIN_PORTS)
    for setting in ("nbthread 1", "option http-keep-alive", "http-reuse always"):
        assert setting in haproxy
    assert "option forwardfor" in haproxy and "option httpchk GET /health" in haproxy
    assert haproxy.count("check inter 2s") == 4 and "balance roundrobin" in haproxy
    assert "\n    log" not in haproxy
    proxy = targets.nginx_proxy_config(tmp_path, 8000, ORIGIN_PORTS)
    assert "keepalive 64;" in proxy and 'proxy_set_header Connection "";' in proxy
    assert "worker_processes 1;" in proxy and "access_log off;" in proxy
    maitred = targets.maitred_config(8000, ORIGIN_PORTS)
    assert "algorithm: round_robin" in maitred and "interval: 2s" in maitred
    assert maitred.count("address: 127.0.0.1:91") == 4


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_its_config(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(targets.haproxy_config(8000, ORIGIN_PORTS))
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
@pytest.mark.parametrize("which", ["origins", "proxy"])
def test_nginx_accepts_its_configs(tmp_path: Path, which: str) -> None:
    if which == "origins":
        conf = origins.config(tmp_path, ORIGIN_PORTS)
    else:
        conf = targets.nginx_proxy_config(tmp_path, 8000, ORIGIN_PORTS)
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    log = str(tmp_path / "error.log")
    check = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(path), "-e", log],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "temp_path" in nginx.temp_paths(tmp_path)


def test_maitred_accepts_its_config(tmp_path: Path) -> None:
    pytest.importorskip("maitred.cli", reason="maitred's CLI is not there yet")
    config = tmp_path / "maitred.yaml"
    config.write_text(targets.maitred_config(8000, ORIGIN_PORTS))
    argv, env = targets.maitred_argv(config)
    argv[argv.index("run")] = "check"
    check = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _maitred_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "maitred.yaml"
    config.write_text(text)
    argv, env = targets.maitred_argv(config)
    argv[argv.index("run")] = "check"
    return subprocess.run(argv, env=env, capture_output=True, text=True)


def _haproxy_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    return subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)


def test_worker_and_layer4_settings_reach_the_configs() -> None:
    haproxy = targets.haproxy_config(8000, ORIGIN_PORTS, threads=2, tcp_port=8001)
    assert "nbthread 2" in haproxy and "bind 127.0.0.1:8001" in haproxy
    tcp_part = haproxy[haproxy.index("defaults tcp_defaults") :]
    assert "mode tcp" in tcp_part and "balance roundrobin" in tcp_part
    assert "option forwardfor" not in tcp_part and tcp_part.count("check inter 2s") == 4
    assert "bench_tcp" not in targets.haproxy_config(8000, ORIGIN_PORTS)
    maitred = targets.maitred_config(8000, ORIGIN_PORTS, workers=2, tcp_port=8001)
    assert maitred.startswith("workers: 2\n")
    assert "bind: 127.0.0.1:8001\n    protocol: tcp\n    pool: origins" in maitred
    assert "protocol: tcp" not in targets.maitred_config(8000, ORIGIN_PORTS)


def test_opt_in_scenarios_are_selectable_but_not_default() -> None:
    from bench import scenarios

    for name in ("workers", "tcp", "failover", "capacity"):
        assert name in scenarios.SCENARIOS and name not in scenarios.DEFAULT_SCENARIOS
    assert "small" in scenarios.DEFAULT_SCENARIOS and "https" in scenarios.DEFAULT_SCENARIOS


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_its_two_thread_layer4_config(tmp_path: Path) -> None:
    text = targets.haproxy_config(8000, ORIGIN_PORTS, threads=2, tcp_port=8001)
    check = _haproxy_check(tmp_path, text)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "WARNING" not in check.stderr, check.stderr  # no HTTP option leaks into tcp mode


def test_maitred_accepts_its_two_worker_layer4_config(tmp_path: Path) -> None:
    pytest.importorskip("maitred.cli", reason="maitred's CLI is not there yet")
    check = _maitred_check(
        tmp_path, targets.maitred_config(8000, ORIGIN_PORTS, workers=2, tcp_port=8001)
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(
    shutil.which("nginx") is None or not targets.NGINX_STREAM_MODULE.exists(),
    reason="nginx or its stream module not installed",
)
def test_nginx_accepts_its_stream_config(tmp_path: Path) -> None:
    conf = targets.nginx_proxy_config(tmp_path, 8000, ORIGIN_PORTS, tcp_port=8001)
    assert conf.lstrip().startswith("load_module ")
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    log = str(tmp_path / "error.log")
    check = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(path), "-e", log],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_failover_configs_hold_the_same_check_and_timeout_settings(tmp_path: Path) -> None:
    haproxy = failover.haproxy_config(8000, ORIGIN_PORTS)
    for setting in (
        "retries 2",
        "option redispatch",
        "retry-on all-retryable-errors",
        "check inter 1s fastinter 333ms fall 2 rise 2",
        "timeout check 500ms",
        "timeout server 5s",
        "timeout connect 1s",
    ):
        assert setting in haproxy
    maitred = failover.maitred_config(8000, ORIGIN_PORTS)
    for setting in ("interval: 1s", "timeout: 500ms", "unhealthy_threshold: 2", "response: 5s"):
        assert setting in maitred
    assert "retries" not in maitred and "outlier" not in maitred  # maitred's defaults


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_the_failover_config(tmp_path: Path) -> None:
    check = _haproxy_check(tmp_path, failover.haproxy_config(8000, ORIGIN_PORTS))
    assert check.returncode == 0, check.stdout + check.stderr


def test_maitred_accepts_the_failover_and_capacity_configs(tmp_path: Path) -> None:
    pytest.importorskip("maitred.cli", reason="maitred's CLI is not there yet")
    for text in (failover.maitred_config(8000, ORIGIN_PORTS), capacity.maitred_config(8000, 9101)):
        check = _maitred_check(tmp_path, text)
        assert check.returncode == 0, check.stdout + check.stderr


def test_answer_heads_give_status_length_and_keep_alive() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Backend: b0\r\n\r\n"
    assert failover.parse_head(head) == (200, 3, True)
    closing = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 107\r\nConnection: close\r\n\r\n"
    )
    assert failover.parse_head(closing) == (503, 107, False)
    assert failover.parse_head(b"HTTP/1.0 504 Gateway Timeout\r\n\r\n") == (504, 0, False)


def test_failover_summary_counts_failures_from_the_fault() -> None:
    outcomes = [
        failover.Outcome(0.0, 0.1, True),
        failover.Outcome(3.0, 8.0, False),  # hung on the frozen server until the timeout
        failover.Outcome(3.1, 3.4, False),
        failover.Outcome(4.0, 4.2, True),
    ]
    result = failover.summarize(outcomes, fault_time=3.05)
    assert (result.requests, result.failed) == (4, 2)
    assert result.seconds_to_last_failure == pytest.approx(4.95)
    assert result.slowest_seconds == pytest.approx(5.0)
    clean = failover.summarize([failover.Outcome(0.0, 0.5, True)], fault_time=0.2)
    assert clean.failed == 0 and math.isnan(clean.seconds_to_last_failure)


def test_capacity_extrapolation_names_limits_ports_and_memory() -> None:
    assert capacity.ephemeral_ports("32768\t60999") == 28232
    idle = capacity.Measurement(15000, 0, 4.0, 10.0, 7.0, 11.0)
    active = capacity.Measurement(2000, 0, 8.0, 6.0, 1.0, math.nan)
    text = capacity.extrapolation(idle, active)
    assert "2,000,000 (client + server side)" in text
    assert "| 3.81 GiB | 7.63 GiB |" in text  # 4 and 8 KiB x 1,000,000
    port_range = capacity.read_sys("net.ipv4.ip_local_port_range")
    if port_range != "unknown":
        needed = math.ceil(1_000_000 / capacity.ephemeral_ports(port_range))
        assert f"≥ {needed} server addresses" in text


def test_results_markdown_adds_sections_before_the_notes() -> None:
    text = report.results_markdown(
        [], "python -m bench", "now", {}, ["a note"], [("Failover, every run", "| t |")]
    )
    assert text.index("## Failover, every run\n\n| t |") < text.index("## Notes")


# -- the ceiling (bench/ceiling.py) and its reference forwarder -------------------------


def _stat_line(name: str, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    return f"4242 ({name}) S 1 4242 4242 0 -1 4194560 900 0 0 0 {utime} {stime} 7 8 20 0 1 0\n"


def test_parse_cpu_ticks_reads_utime_and_stime_after_any_command_name() -> None:
    assert procfs.parse_cpu_ticks(_stat_line("haproxy", 125, 380)) == CpuTicks(125, 380)
    # A command name may hold spaces and parentheses.
    assert procfs.parse_cpu_ticks(_stat_line("py (x) 1 2", 3, 4)) == CpuTicks(3, 4)


def test_parse_cpu_ticks_agrees_with_the_kernel_for_this_process() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    before = os.times()
    mine = procfs.parse_cpu_ticks(Path(f"/proc/{os.getpid()}/stat").read_text())
    # The same counters, read a moment later: never less, and not much more.
    assert round(before.user * ticks) <= mine.user <= round(before.user * ticks) + ticks // 2
    assert round(before.system * ticks) <= mine.system <= round(before.system * ticks) + ticks // 2
    total = procfs.cpu_ticks(os.getpid())  # this process and whatever it started
    assert total.user >= mine.user and total.system >= mine.system


def test_cpu_per_request_from_two_readings() -> None:
    # 100 ticks/s: 1 s of user and 4 s of system time over 200,000 requests in 8 s.
    run = ceiling.run_figures(
        200_000, 25_000.0, 8.0, CpuTicks(1000, 2000), CpuTicks(1100, 2400), 100, errors=3
    )
    assert run.requests_per_second == 25_000.0
    assert run.user_us == pytest.approx(5.0)
    assert run.system_us == pytest.approx(20.0)
    assert run.busy_percent == pytest.approx(62.5)
    assert run.errors == 3
    nothing = ceiling.run_figures(0, 0.0, 0.0, CpuTicks(1, 1), CpuTicks(1, 1), 100)
    assert math.isnan(nothing.user_us) and math.isnan(nothing.busy_percent)


def _ceiling_results() -> Results:
    results = Results()
    # (req/s, user µs, sys µs, CPU %) per round; maitred produced nothing in round 3.
    rounds: list[dict[str, Run | None]] = [
        {
            "maitred": Run(30_000, 10.0, 18.0, 100.0, 0),
            "HAProxy": Run(60_000, 4.0, 12.0, 95.0, 0),
            FORWARDER: Run(60_000, 2.0, 14.0, 100.0, 0),
        },
        {
            "maitred": Run(40_000, 11.0, 17.0, 99.0, 0),
            "HAProxy": Run(50_000, 4.0, 13.0, 90.0, 0),
            FORWARDER: Run(55_000, 2.0, 15.0, 100.0, 0),
        },
        {
            "maitred": None,
            "HAProxy": Run(40_000, 5.0, 12.0, 92.0, 0),
            FORWARDER: Run(48_000, 2.0, 14.0, 100.0, 0),
        },
    ]
    for runs in rounds:
        for target, run in runs.items():
            results.add("small", target, run)
    return results


def test_ceiling_throughput_table_gives_medians_and_paired_ratios() -> None:
    lines = ceiling.throughput_table(_ceiling_results()).splitlines()
    assert lines[0] == (
        "| scenario | maitred req/s | HAProxy req/s | forwarder req/s | maitred/HAProxy "
        "| forwarder/HAProxy | maitred/forwarder | goal (issue 3) | maitred meets it "
        "| forwarder would |"
    )
    # Per-round ratios: maitred/HAProxy 0.5, 0.8 (round 3 missing); forwarder/HAProxy
    # 1.0, 1.1, 1.2; maitred/forwarder 0.5, 0.727.
    assert lines[2] == (
        "| small | 35,000 | 50,000 | 55,000 | 0.65 | 1.10 | 0.61 | ≥ 1× HAProxy | **no** | yes |"
    )
    assert lines[3] == "| 50k | n/a | n/a | n/a | n/a | n/a | n/a | ≥ 1.2× HAProxy | n/a | n/a |"
    assert lines[4].startswith("| https |") and "≥ 0.9× HAProxy" in lines[4]


def test_ceiling_cpu_table_splits_user_and_system_time() -> None:
    lines = ceiling.cpu_table(_ceiling_results()).splitlines()
    assert lines[0] == (
        "| scenario | target | user µs/req | sys µs/req | total µs/req | total / HAProxy "
        "| proxy CPU % |"
    )
    # maitred's totals 28, 28 against HAProxy's 16, 17: 1.75, 1.65 -> 1.70.
    assert lines[2:5] == [
        "| small | maitred | 10.5 | 17.5 | 28.0 | 1.70 | 99.5 |",
        "| small | HAProxy | 4.00 | 12.0 | 17.0 | 1.00 | 92.0 |",
        "| small | forwarder | 2.00 | 14.0 | 16.0 | 1.00 | 100 |",
    ]
    assert "| https | forwarder | n/a | n/a | n/a | n/a | n/a |" in lines


def test_ceiling_markdown_names_command_machine_rounds_and_notes() -> None:
    text = ceiling.results_markdown(
        _ceiling_results(),
        "python -m bench.ceiling --quick",
        "2026-01-01 00:00 UTC",
        {"nproc": "2", "uvloop": "0.21.0"},
        ["maitred ran as 1 process at start."],
    )
    assert "Command: `python -m bench.ceiling --quick`" in text
    assert "- nproc: 2\n- uvloop: 0.21.0" in text
    assert text.index("maitred/forwarder") < text.index("| small | maitred | 10.5 |")
    assert "- small req/s: maitred 30,000, 40,000, n/a; HAProxy 60,000, 50,000, 40,000;" in text
    assert text.rstrip().endswith("- maitred ran as 1 process at start.")


def test_ceiling_quick_is_one_short_round_written_aside() -> None:
    quick = ceiling.parse_args(["--quick"])
    assert (quick.rounds, quick.duration, quick.results) == (1, 2.0, ceiling.QUICK_RESULTS)
    full = ceiling.parse_args([])
    assert (full.rounds, full.duration, full.results) == (3, 8.0, ceiling.DEFAULT_RESULTS)
    assert ceiling.parse_args(["--results", "x.md"]).results == Path("x.md")


def _ceiling_results_with_work() -> Results:
    """_ceiling_results' rounds, plus a forwarder spinning 7.5 µs per read."""
    plain = _ceiling_results()
    results = Results(extra_targets=("forwarder+7.5µs",))
    for key, row in plain.rows.items():
        results.rows[key].runs.update({t: list(v) for t, v in row.runs.items()})
    work = [Run(33_000, 9.5, 13.5, 100.0, 0), Run(36_000, 9.7, 14.0, 100.0, 0), None]
    for run in work:
        results.add("small", "forwarder+7.5µs", run)
    return results


def test_ceiling_names_the_work_forwarders_by_their_spin() -> None:
    assert ceiling.work_target(7.5) == "forwarder+7.5µs"
    assert ceiling.work_target(4.0) == "forwarder+4µs"
    assert Results(extra_targets=("forwarder+4µs",)).targets == (
        "maitred",
        "HAProxy",
        FORWARDER,
        "forwarder+4µs",
    )


def test_ceiling_tables_are_unchanged_without_extra_targets() -> None:
    plain = _ceiling_results()
    assert plain.targets == ceiling.TARGETS and plain.extra_targets == ()
    assert "µs" not in ceiling.throughput_table(plain).splitlines()[0]


def test_ceiling_throughput_table_adds_a_column_pair_per_extra_target() -> None:
    lines = ceiling.throughput_table(_ceiling_results_with_work()).splitlines()
    assert lines[0] == (
        "| scenario | maitred req/s | HAProxy req/s | forwarder req/s | forwarder+7.5µs req/s "
        "| maitred/HAProxy | forwarder/HAProxy | forwarder+7.5µs/HAProxy | maitred/forwarder "
        "| goal (issue 3) | maitred meets it | forwarder would |"
    )
    assert lines[1] == "|" + "---|" * 12
    # forwarder+7.5µs/HAProxy per round: 0.55, 0.72 (round 3 missing) -> 0.635.
    assert lines[2] == (
        "| small | 35,000 | 50,000 | 55,000 | 34,500 | 0.65 | 1.10 | 0.64 | 0.61 "
        "| ≥ 1× HAProxy | **no** | yes |"
    )
    assert lines[3] == (
        "| 50k | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | ≥ 1.2× HAProxy | n/a | n/a |"
    )


def test_ceiling_cpu_table_and_rounds_list_every_extra_target() -> None:
    results = _ceiling_results_with_work()
    lines = ceiling.cpu_table(results).splitlines()
    # Totals 23.0, 23.7 against HAProxy's 16, 17: 1.4375, 1.394 -> 1.42.
    assert lines[2:6] == [
        "| small | maitred | 10.5 | 17.5 | 28.0 | 1.70 | 99.5 |",
        "| small | HAProxy | 4.00 | 12.0 | 17.0 | 1.00 | 92.0 |",
        "| small | forwarder | 2.00 | 14.0 | 16.0 | 1.00 | 100 |",
        "| small | forwarder+7.5µs | 9.60 | 13.8 | 23.4 | 1.42 | 100 |",
    ]
    assert lines[-1] == "| https | forwarder+7.5µs | n/a | n/a | n/a | n/a | n/a |"
    assert len(lines) == 2 + 3 * 4
    rounds = ceiling.every_round(results)
    assert "; forwarder 60,000, 55,000, 48,000; forwarder+7.5µs 33,000, 36,000, n/a" in rounds
    assert "- https req/s: maitred ; HAProxy ; forwarder ; forwarder+7.5µs \n" in rounds


def test_ceiling_markdown_explains_the_work_forwarders() -> None:
    note = ceiling.work_note([4.0, 7.5])
    assert note.startswith("forwarder+4µs, forwarder+7.5µs: ")
    assert "--work-us N" in note and "per request" in note
    text = ceiling.results_markdown(_ceiling_results_with_work(), "c", "d", {}, [note])
    assert text.rstrip().endswith(note)
    assert "| small | forwarder+7.5µs | 9.60 |" in text


def test_ceiling_work_us_takes_several_distinct_spins() -> None:
    assert ceiling.parse_args([]).work_us == []
    assert ceiling.parse_args(["--quick", "--work-us", "4", "7.5"]).work_us == [4.0, 7.5]
    assert ceiling.parse_args(["--work-us", "0"]).work_us == [0.0]
    for bad in (["--work-us", "-1"], ["--work-us", "7.5", "7.50"], ["--work-us", "nan"]):
        with pytest.raises(SystemExit):
            ceiling.parse_args(bad)


def test_forwarder_work_us_is_nanoseconds_to_spin_per_read() -> None:
    base = ["--port", "0", "--origins", "9001"]
    assert reference_forwarder.parse_args(base).work_us == 0.0
    assert reference_forwarder.parse_args([*base, "--work-us", "7.5"]).work_us == 7.5
    with pytest.raises(SystemExit):
        reference_forwarder.parse_args([*base, "--work-us", "-2"])
    assert reference_forwarder.work_nanoseconds(7.5) == 7500
    client = reference_forwarder.client_factory([("127.0.0.1", 9001)], 7.5)()
    assert client.work_ns == 7500
    assert reference_forwarder.client_factory([("127.0.0.1", 9001)])().work_ns == 0
    start = time.perf_counter_ns()
    reference_forwarder.spin(2_000_000)
    assert time.perf_counter_ns() - start >= 2_000_000


def test_forwarder_origins_are_ports_or_addresses() -> None:
    assert parse_origins("9001, 9002") == [("127.0.0.1", 9001), ("127.0.0.1", 9002)]
    assert parse_origins("10.0.0.1:80,[::1]:81") == [("10.0.0.1", 80), ("::1", 81)]
    with pytest.raises(ValueError):
        parse_origins(" , ")


FORWARDER_START_TIMEOUT = 15.0


@contextmanager
def _reference_forwarder(origin_port: int, *extra: str) -> Iterator[dict[str, int]]:
    """`python -m bench.reference_forwarder` on free ports: {"http": port[, "https": port]}."""
    argv = [sys.executable, "-m", "bench.reference_forwarder", "--port", "0"]
    argv += ["--origins", str(origin_port), *extra]
    expected = 2 if "--cert" in extra else 1
    env = {**os.environ, "PYTHONPATH": str(targets.PROJECT_ROOT)}
    proc = subprocess.Popen(
        argv, cwd=targets.PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        ports: dict[str, int] = {}
        received = b""
        deadline = time.monotonic() + FORWARDER_START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while received.count(b"\n") < expected:
                remaining = deadline - time.monotonic()
                assert remaining > 0 and selector.select(remaining), "forwarder did not start"
                data = os.read(proc.stdout.fileno(), 4096)
                assert data, f"forwarder exited with {proc.wait()} before listening"
                received += data
        for line in received.decode().splitlines():
            _listening, _on, scheme, address = line.split()
            ports[scheme] = int(address.rpartition(":")[2])
        yield ports
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM: a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _read_answer(sock: socket.socket) -> bytes:
    """The raw bytes of exactly one answer with a Content-Length (the origin's kind)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed inside an answer head: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, "connection closed inside an answer body"
        body += piece
    assert len(body) == length, "more bytes than one answer"
    return head + b"\r\n\r\n" + body


# Odd but valid: lower-case names, spacing and order a proxy might "fix".
FIRST_REQUEST = (
    b"GET /one?x=1 HTTP/1.1\r\nhost: origin.test\r\nX-Odd:   spaced  \r\nAccept: */*\r\n\r\n"
)
SECOND_REQUEST = b"GET /two HTTP/1.1\r\nHost: origin.test\r\nx-forwarded-for: 192.0.2.9\r\n\r\n"


def test_reference_forwarder_passes_bytes_through_unchanged_with_keep_alive() -> None:
    with RecordingServer() as origin, _reference_forwarder(origin.port) as ports:
        with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as direct:
            direct.sendall(FIRST_REQUEST)
            from_origin = _read_answer(direct)
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as sock:
            sock.sendall(FIRST_REQUEST)
            first = _read_answer(sock)
            sock.sendall(SECOND_REQUEST)  # the same client connection: keep-alive
            second = _read_answer(sock)
        assert first == second == from_origin
        origin.wait_for_requests(3)
        # One origin connection for the client connection, carrying the exact bytes.
        assert len(origin.connections) == 2
        assert bytes(origin.connections[1].raw) == FIRST_REQUEST + SECOND_REQUEST
        assert origin.errors() == []


def test_reference_forwarder_closes_on_a_malformed_request() -> None:
    with RecordingServer() as origin, _reference_forwarder(origin.port) as ports:
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert sock.recv(100) == b""  # closed, nothing answered
        origin.drain()
        assert b"NOT HTTP" not in origin.raw_bytes()


def test_reference_forwarder_buffers_a_large_body_sent_before_the_origin_connects() -> None:
    body = os.urandom(1 << 20)  # 16x the buffer limit: the client gets paused, then resumed
    request = (
        b"POST /upload HTTP/1.1\r\nHost: origin.test\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with RecordingServer() as origin, _reference_forwarder(origin.port) as ports:
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as sock:
            sock.sendall(request)
            assert _read_answer(sock).endswith(b"\r\n\r\nok")
        origin.wait_for_requests(1)
        assert origin.complete_requests()[0].body == body
        assert bytes(origin.connections[0].raw) == request


def test_reference_forwarder_terminates_tls_with_alpn_http11(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["http/1.1"])
    tls_args = ("--cert", str(cert), "--key", str(key), "--tls-port", "0")
    with RecordingServer() as origin, _reference_forwarder(origin.port, *tls_args) as ports:
        with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as direct:
            direct.sendall(FIRST_REQUEST)
            from_origin = _read_answer(direct)
        raw = socket.create_connection(("127.0.0.1", ports["https"]), timeout=10)
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"
            sock.sendall(FIRST_REQUEST)
            assert _read_answer(sock) == from_origin
        origin.wait_for_requests(2)
        assert bytes(origin.connections[1].raw) == FIRST_REQUEST  # plain HTTP to the origin


WORK_US = 20_000  # 20 ms per read: large enough to see in wall time


def test_reference_forwarder_with_work_us_still_relays_unchanged_and_spins() -> None:
    with (
        RecordingServer() as origin,
        _reference_forwarder(origin.port, "--work-us", str(WORK_US)) as ports,
    ):
        with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as direct:
            direct.sendall(FIRST_REQUEST)
            from_origin = _read_answer(direct)
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(FIRST_REQUEST)
            first = _read_answer(sock)
            sock.sendall(SECOND_REQUEST)
            second = _read_answer(sock)
            elapsed = time.monotonic() - start
        assert first == second == from_origin
        assert elapsed >= 2 * WORK_US / 1e6  # each request's read spun before it went on
        origin.wait_for_requests(3)
        assert len(origin.connections) == 2
        assert bytes(origin.connections[1].raw) == FIRST_REQUEST + SECOND_REQUEST
        assert origin.errors() == []


# -- instruction counts (bench.instructions) ---------------------------------------------

CALLGRIND_EXIT = """==4242== Events    : Ir
==4242== Collected : 2,247,252,764
==4242==
==4242== I   refs:      2,247,252,764
"""


def test_instruction_count_is_read_from_callgrind_s_report() -> None:
    assert instructions.parse_collected(CALLGRIND_EXIT) == 2_247_252_764
    with pytest.raises(ValueError):
        instructions.parse_collected("==1== valgrind: failed to start tool 'callgrind'\n")


def test_instructions_per_request_count_the_warm_up_too() -> None:
    runs = instructions.REQUESTS + hotpath_bench.WARMUP_REQUESTS
    assert instructions.per_request(29_000 * runs) == 29_000


def test_instruction_runs_count_only_inside_the_event_loop_s_calls() -> None:
    argv = instructions.run_command("/venv/bin/python", "browser", Path("/o/cg.out"))
    assert argv[0].endswith("valgrind")
    assert argv[1:3] == ["--tool=callgrind", "--collect-atstart=no"]
    assert "--toggle-collect=CPyPy_*data_received" in argv
    assert "--callgrind-out-file=/o/cg.out" in argv
    assert argv[-3:-1] == ["/venv/bin/python", "-c"]
    assert f"h.run({instructions.REQUESTS}, h.BROWSER_REQUEST, False)" in argv[-1]
