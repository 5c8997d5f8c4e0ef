"""The admin dashboard in a real browser: Debian's headless Chromium driven by Playwright
against the real app served by uvicorn on a loopback port, the test PostgreSQL, and erasure
requests unlearned by the real worker code on a tiny digits model.

Clicks through: log in (wrong key, non-admin key, admin key), the requests list (a queued
row turns completed while the page is open: live polling), one request (per-model result,
the new version's metrics, the audit timeline), the model page (Chart.js chart of the
metrics per version), audit verification, log out. Screenshots go to
``var/test-artifacts/``; with ``LETHE_REFRESH_DOCS_IMAGES=1`` they also refresh
``docs/images/dashboard*.png`` (shown in the README), so a plain test run leaves the tree clean.

Chromium must be installed (``make test`` installs Debian's ``chromium``); without it this
test FAILS with the command that installs it: a skipped browser test would hide a broken UI.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.auth.service import revoke
from api.database.core import get_sessionmaker
from api.erasure.models import ErasureRequest
from api.registry.models import Model, ModelVersion
from tests.conftest import bearer
from tests.test_celery_workers import free_port
from tests.test_observability import MODEL, install_model, tiny_run, work  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "var" / "test-artifacts"
DOCS_IMAGES = ROOT / "docs" / "images"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    """Debian's Chromium (``LETHE_CHROMIUM`` overrides); fails the test when missing."""
    explicit = os.environ.get("LETHE_CHROMIUM")
    found = explicit if explicit and Path(explicit).exists() else None
    for name in CHROMIUM_CANDIDATES:
        found = found or shutil.which(name)
    if found is None:
        pytest.fail(
            "headless Chromium is not installed, so the dashboard cannot be tested in a browser. "
            "Install it with `apt-get update && apt-get install -y chromium` (`make test` does), "
            "or point LETHE_CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    return found


@pytest.fixture
def live_server(service_env: str) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port (a thread of this process)."""
    import uvicorn

    from api.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def seeded(live_server: str, tiny_run: Path, db_session: Any, api_keys: dict[str, str]) -> dict[str, Any]:  # noqa: F811
    """Two requests filed over HTTP and unlearned by the worker (versions 1 and 2), and a
    third one filed and left queued."""
    install_model(db_session, tiny_run)
    ids = []
    with httpx.Client(base_url=live_server, headers=bearer(api_keys["requester"]), timeout=30) as http:
        for subject in ("subject-0004", "subject-0011"):
            resp = http.post("/erasure-requests", json={"subject_id": subject})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
            assert work() == 1
        queued = http.post("/erasure-requests", json={"subject_id": "subject-0020"})
        assert queued.status_code == 202, queued.text
    return {"done": ids, "queued": queued.json()["id"]}


def shoot(page: Any, name: str, *, docs: bool = True, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000  # a real rendering, not a blank page
    if docs and os.environ.get("LETHE_REFRESH_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / name)
    return path


def test_dashboard_in_headless_chromium(live_server: str, seeded: dict[str, Any], api_keys: dict[str, str], db_session) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    first, second = seeded["done"]
    queued = seeded["queued"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 860}, base_url=live_server)
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        # script errors and CSP refusals; the expected 401s of the failed logins are not
        page.on(
            "console",
            lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource: the server responded with a status of 401")
            else None,
        )
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            # --- log in: a wrong key, a non-admin key, then the admin key -------------------
            page.goto("/dashboard")
            expect(page).to_have_url(f"{live_server}/dashboard/login?next=%2Fdashboard%2Frequests")
            page.fill("#api_key", "lethe_not-a-real-key-000000000")
            page.click("button[type=submit]")
            expect(page.locator("#login-error")).to_have_text("Unknown or revoked API key.")
            page.fill("#api_key", api_keys["registry"])
            page.click("button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("no admin scope")
            page.fill("#api_key", api_keys["admin"])
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{live_server}/dashboard/requests")
            (cookie,) = [c for c in context.cookies() if c["name"] == "lethe_dashboard"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
            assert api_keys["admin"] not in cookie["value"]  # the key itself never leaves the login form

            # --- the requests list; the queued one turns completed without a reload ---------
            rows = page.locator("#requests-table tbody tr[data-request-id]")
            expect(rows).to_have_count(3)
            done_row = page.locator(f'tr[data-request-id="{first}"]')
            expect(done_row.locator(".badge").first).to_have_text("completed")
            queued_row = page.locator(f'tr[data-request-id="{queued}"]')
            expect(queued_row.locator(".badge").first).to_have_text("queued")
            expect(queued_row).to_contain_text("subject-0020")
            expect(page.locator(".live")).to_be_visible()
            assert work() == 1  # the worker finishes it while the page is open
            expect(queued_row.locator(".badge").first).to_have_text("completed", timeout=10_000)
            expect(page.locator(".live")).to_have_count(0)  # nothing left to change: polling stops
            # filters: by status and by subject
            page.select_option("select[name=status]", "completed")
            page.fill("input[name=subject]", "subject-0011")
            page.click(".filters button[type=submit]")
            expect(rows).to_have_count(1)
            expect(page.locator(f'tr[data-request-id="{second}"]')).to_be_visible()
            page.goto("/dashboard/requests")
            expect(rows).to_have_count(3)
            shoot(page, "dashboard.png")

            # --- one request: per-model result, the new version's metrics, the timeline -----
            page.click(f'tr[data-request-id="{first}"] a')
            expect(page).to_have_url(f"{live_server}/dashboard/requests/{first}")
            job = page.locator(f'#jobs tr[data-model="{MODEL}"]')
            expect(job).to_contain_text("partial-amnesiac")
            expect(job).to_contain_text("100%")
            expect(job.locator("td[data-col=version]")).to_have_text("v1")
            expect(job.locator("td[data-guarantee]")).to_contain_text("approximate")
            version = db_session.scalar(
                select(ModelVersion).join(Model).where(Model.name == MODEL, ModelVersion.number == 1)
            )
            card = page.locator(f'.version-metrics[data-model="{MODEL}"][data-version="1"]')
            for metric in ("forget_acc", "retain_acc", "test_acc", "mia_auc", "unlearn_seconds"):
                expect(card.locator(f'td[data-metric="{metric}"]')).to_have_text(f"{version.metrics[metric]:.3f}")
            kinds = page.locator("#timeline li").evaluate_all("els => els.map(e => e.dataset.kind)")
            assert kinds[0] == "request.received" and kinds[-1] == "request.completed", kinds
            assert {"job.started", "version.published", "job.completed"} <= set(kinds)
            shoot(page, "dashboard-request.png", full_page=True)

            # --- the model: versions and the chart of their metrics ------------------------
            page.click(f'#jobs a[href="/dashboard/models/{MODEL}"]')
            expect(page.locator("#version-chart")).to_have_attribute("data-ready", "true")
            chart = page.evaluate(
                """() => { const c = Chart.getChart(document.getElementById('version-chart'));
                           return {labels: c.data.labels, series: c.data.datasets.map(d => [d.label, d.data])}; }"""
            )
            assert chart["labels"] == ["v0", "v1", "v2", "v3"]
            series = dict(chart["series"])
            assert set(series) == {"forget_acc", "retain_acc", "test_acc", "mia_auc"}
            assert series["forget_acc"][1] == pytest.approx(version.metrics["forget_acc"])
            assert all(v is not None and 0 <= v <= 1 for v in series["test_acc"][1:])
            expect(page.locator("#versions tbody tr")).to_have_count(4)
            expect(page.locator('#versions tr[data-version="1"]')).to_contain_text(first[:8])
            shoot(page, "dashboard-model.png")

            # --- a version's erasure report, linked from its row (v0 has none) ------------
            expect(page.locator('#versions tr[data-version="0"] a.report-link')).to_have_count(0)
            link = page.locator('#versions tr[data-version="1"] a.report-link')
            expect(link).to_have_count(1)
            page.goto(live_server + link.get_attribute("href"))
            expect(page.locator("h1")).to_contain_text(f"Erasure report: {MODEL} version 1")
            expect(page.locator("body")).to_contain_text(first)
            page.go_back()

            # --- audit verification, then log out ---------------------------------------
            page.click("nav >> text=Audit")
            expect(page.locator("#verify")).to_contain_text("Chain intact.")
            page.click(".logout button")
            expect(page).to_have_url(f"{live_server}/dashboard/login")
            page.goto("/dashboard/models")
            expect(page).to_have_url(f"{live_server}/dashboard/login?next=%2Fdashboard%2Fmodels")
            assert errors == [], errors  # no script errors (CSP included) on any page
        except Exception:
            shoot(page, "dashboard-failure.png", docs=False, full_page=True)
            raise
        finally:
            browser.close()


def test_revoking_the_key_ends_the_dashboard_session(live_server: str, api_keys: dict[str, str], db_session) -> None:
    with httpx.Client(base_url=live_server, timeout=10) as http:
        login = http.post("/dashboard/login", data={"api_key": api_keys["admin"], "next": "//evil.example/x"})
        assert login.status_code == 303 and login.headers["location"] == "/dashboard/requests"
        page = http.get("/dashboard/requests")
        assert page.status_code == 200 and "Content-Security-Policy" in page.headers
        bad = http.get("/dashboard/requests", params={"status": "nonsense"})
        assert bad.status_code == 422 and "unknown status 'nonsense'" in bad.json()["detail"]
        missing = http.get("/dashboard/requests/not-a-request")
        assert missing.status_code == 404

        with get_sessionmaker()() as db:
            from api.auth.models import ApiKey
            from api.auth.service import hash_key

            key_id = db.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(api_keys["admin"])))
            assert revoke(db, key_id)
            db.commit()
        after = http.get("/dashboard/requests")
        assert after.status_code == 303 and after.headers["location"].startswith("/dashboard/login")
        polled = http.get("/dashboard/requests/rows", headers={"HX-Request": "true"})
        assert polled.status_code == 401 and polled.headers["HX-Redirect"].startswith("/dashboard/login")
    assert db_session.scalar(select(ErasureRequest.id).limit(1)) is None  # nothing was filed
