"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.admin import admin_config, api, servers_by_id, sid, spread
from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerFactory

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token"

if not Path(CHROMIUM).exists():
    pytest.skip(
        "chromium is not installed (apt-get install -y chromium); the dashboard browser "
        "test needs it",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def test_dashboard_lists_servers_and_drains_one(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    lb = balancer(admin_config(backends[:2], tmp_path / "state", token=TOKEN))
    spread(lb, 10)
    host, port = lb.admin
    b1, b2 = sid(backends[0]), sid(backends[1])
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.goto(f"http://{host}:{port}/")
            expect = sync_api.expect
            # The API needs the token: the page says so, then uses the one typed in.
            expect(page.locator("#conn")).to_have_text("token needed")
            page.fill("#token", TOKEN)
            page.click("#save-token")
            expect(page.locator("#conn")).to_have_text("live")

            for server in (b1, b2):
                row = page.locator(f'tr[data-server-id="{server}"]')
                expect(row.locator(".status")).to_have_text("healthy")
            expect(page.locator('.pool[data-pool="web"] h2')).to_have_text("web")
            expect(page.locator("#tiles")).to_contain_text("Requests/s")

            page.click(f'button[data-action="drain"][data-server="{b1}"]')
            expect(page.locator(f'tr[data-server-id="{b1}"] .status')).to_have_text("draining")
            assert servers_by_id(lb, TOKEN)[b1]["status"] == "draining"
            assert spread(lb, 4) == {"b2": 4}

            page.click(f'button[data-action="ready"][data-server="{b1}"]')
            expect(page.locator(f'tr[data-server-id="{b1}"] .status')).to_have_text("healthy")
            # The token stays in the browser for the next visit.
            assert page.evaluate("localStorage.getItem('maitred.adminToken')") == TOKEN
        finally:
            browser.close()
    runtime = api(lb, "GET", "/api/v1/runtime", token=TOKEN).json()
    assert runtime["changes"]["states"] == {}
