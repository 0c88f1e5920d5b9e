"""The OpenAPI document tells the truth: schemathesis against a running admin API.

Every operation of /api/v1/openapi.json gets valid and invalid generated
requests; the answers must be documented (status, content type, headers) and
match their schemas, invalid input must be refused with a 4xx, and nothing may
answer 5xx. Generated server addresses are pinned to 127.0.0.1 so that no
health check ever leaves the machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import admin_config
from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerFactory

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 15
TOKEN = "openapi-test-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
_PORT = re.compile(r":([0-9]{1,5})$")


def on_loopback(body: Any) -> Any:
    """The same body with every server address moved to 127.0.0.1 (same port)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if isinstance(body.get("host"), str):
        body["host"] = "127.0.0.1"
    servers = body.get("servers")
    if isinstance(servers, list):
        body["servers"] = [_server_on_loopback(server) for server in servers]
    return body


def _server_on_loopback(server: Any) -> Any:
    if isinstance(server, dict) and isinstance(server.get("address"), str):
        match = _PORT.search(server["address"])
        server = {**server, "address": f"127.0.0.1:{match.group(1) if match else '1'}"}
    return server


def test_the_admin_api_matches_its_openapi_document(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    lb = balancer(admin_config(backends[:2], tmp_path / "state", token=TOKEN))
    host, port = lb.admin
    base_url = f"http://{host}:{port}"
    schema = schemathesis.openapi.from_url(
        f"{base_url}/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14

    for operation in operations:
        for mode, checks in (
            (GenerationMode.POSITIVE, CHECKS),
            (GenerationMode.NEGATIVE, [*CHECKS, negative_data_rejection]),
        ):
            try:
                exercise(operation, mode, checks, base_url, auth)
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE
                continue  # nothing in this operation can be made invalid
            except Exception as exc:  # collect every operation's failure, then report
                failures.append(f"{operation.label} ({mode.value}): {exc}")

    assert not failures, "\n\n".join(failures)
    # The balancer survived all of it and still serves.
    assert lb.proc.poll() is None


def exercise(
    operation: Any, mode: Any, checks: list[Any], base_url: str, headers: dict[str, str]
) -> None:
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if isinstance(case.body, dict):
            case.body = on_loopback(case.body)
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

    run()
