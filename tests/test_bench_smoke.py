"""The benchmark suite's pure parts: output parsing, tables and generated configs.

No load runs here; the configs are checked by the programs that will read
them (haproxy -c, nginx -t, maitred check) when those are installed.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import capacity, failover, load, nginx, origins, report, targets
from bench.profile import top_functions
from bench.report import Goal, Row

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
    assert argv[1:] == ["-t1", "-c50", "-d2.5s", "-H", "Connection: close", "http://x/"]


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
    assert lines[0].startswith("| scenario | metric | maitred | HAProxy | NGINX |")
    # per-round ratios: 1.00, 1.10, 1.07 -> 1.07; 1.50, 1.50, 1.55 -> 1.50
    assert lines[2] == (
        "| small | req/s | 31,000 | 30,000 | 20,000 | 1.07 | 1.50 | ≥ 1× HAProxy | yes |"
    )
    assert "skipped: needs TLS termination (issue 7)" in lines[3]


def test_table_says_na_for_a_target_that_did_not_run() -> None:
    row = Row("small", "req/s", {"HAProxy": [100.0], "NGINX": [90.0]}, Goal("ratio_at_least", 1))
    assert "| small | req/s | n/a | 100 | 90.0 | n/a | n/a | ≥ 1× HAProxy | n/a |" in report.table(
        [row]
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
    assert "- small req/s: maitred 1.00, n/a, 2.00; HAProxy ; NGINX " in text
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
