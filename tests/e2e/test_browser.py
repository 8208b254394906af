"""The Airflow UI in headless Chromium: log in, open model_lifecycle, trigger it from the Params form.

Debian's /usr/bin/chromium (`make browser` installs it), driven by Playwright
with executable_path (Playwright's own browser download is not used). The run
is followed through the REST API; the finished grid is saved as a screenshot
under the test's tmp dir (`grid.png`, printed at the end).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.test_airflow_stack import start_stack, task_states, wait_run
from tools.airflow_stack import ADMIN_USER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, or `make browser` as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("airflow-ui"))
    yield stack
    stack.stop()


def test_trigger_from_the_form_and_see_the_finished_grid(stack, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(60_000)
    base = stack.api_url

    # Log in (SimpleAuthManager's form), as a user does.
    page.goto(f"{base}/")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    page.locator("input[name=username]").fill(ADMIN_USER)
    page.locator("input[name=password]").fill(stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)

    # Open the DAG: its doc and the Trigger button.
    page.goto(f"{base}/dags/model_lifecycle")
    page.get_by_text("plan", exact=True).first.wait_for()
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    for title in ("Model name", "Epochs", "Variants to deploy", "Serving variant to promote", "Promotion policy"):
        assert dialog.get_by_text(title).count(), f"form field {title!r} missing"

    # The form keeps values in range: an epoch count below the minimum does not survive.
    epochs = dialog.get_by_label("Epochs")
    epochs.fill("0")
    epochs.press("Tab")
    smoke = dialog.get_by_label("Instances per smoke test")
    smoke.fill("3")
    smoke.press("Tab")
    page.screenshot(path=str(tmp_path / "form.png"))
    dialog.get_by_role("button", name="Trigger").click()

    # The UI opens the new run; follow it to the end through the API.
    page.wait_for_url(re.compile(r".*/dags/model_lifecycle/runs/.+"))
    run_id = urllib.parse.unquote(page.url.split("/runs/", 1)[1].split("?")[0].split("/")[0])
    run = wait_run(stack, "model_lifecycle", run_id, timeout=600)
    assert run["run_type"] == "manual"
    assert run["conf"]["smoke_instances"] == 3 and run["conf"]["epochs"] >= 1, run["conf"]
    assert run["state"] == "success", task_states(stack, "model_lifecycle", run_id)

    # The finished grid: every task of the run green, the run marked Success.
    page.goto(f"{base}/dags/model_lifecycle/runs/{urllib.parse.quote(run_id, safe='')}")
    page.get_by_text("Success").first.wait_for()
    page.get_by_text("record_promotion", exact=True).first.wait_for()
    page.wait_for_load_state("networkidle")
    grid = tmp_path / "grid.png"
    page.screenshot(path=str(grid), full_page=True)
    assert grid.stat().st_size > 10_000
    print(f"grid screenshot: {grid}")
