"""Browser fixtures: Debian's Chromium driven by Playwright's sync API against pytest-django's live server.

Never ``playwright install``: the tests launch ``/usr/bin/chromium``. Playwright's sync API keeps an
asyncio loop marked as running in the main thread while it is started, which makes Django refuse ORM
calls from the test body ("async context"); the browser therefore lives for one module only, and
``DJANGO_ALLOW_ASYNC_UNSAFE`` is set for exactly that time (the live server answers from its own thread).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, sync_playwright

from faultproxy import FaultProxy
from tests.conftest import ROOT, WorkerProcess, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
PASSWORD = "pw-for-tests"  # the admin_user fixture's password; also used for the users made here

# Records, in sessionStorage (it survives reloads of the tab), every load of a job page and every
# in-place change the page's own poller makes to #job-percent: the tests can then tell a live update
# from a reload, and count reloads.
LIVE_LOG_KEY = "bw-live-log"
LIVE_RECORDER = """
(() => {
  const KEY = "__KEY__";
  function log(entry) {
    const all = JSON.parse(sessionStorage.getItem(KEY) || "[]");
    all.push(Object.assign({t: Date.now()}, entry));
    sessionStorage.setItem(KEY, JSON.stringify(all));
  }
  document.addEventListener("DOMContentLoaded", () => {
    const pct = document.getElementById("job-percent");
    const bar = document.getElementById("job-bar");
    const status = document.getElementById("job-status");
    if (!pct || !bar || !status) return;
    const state = (kind) => ({
      kind, text: pct.textContent.trim(), width: bar.style.width, status: status.textContent.trim(),
    });
    log(state("load"));
    new MutationObserver(() => log(state("live"))).observe(pct, {childList: true, characterData: true, subtree: true});
  });
})();
""".replace("__KEY__", LIVE_LOG_KEY)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True, locale="en-US")
    ctx.set_default_timeout(15_000)
    ctx.add_init_script(LIVE_RECORDER)
    yield ctx
    ctx.close()


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    tab = context.new_page()
    yield tab
    if request.node.stash.get(_CALL_FAILED, False):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        try:
            tab.screenshot(path=str(SCREENSHOTS / f"FAILED-{request.node.name}.png"), full_page=True)
        except Exception as exc:
            print(f"could not take the failure screenshot: {exc}")


@pytest.fixture
def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def log_in(page: Page, base_url: str, username: str, password: str = PASSWORD) -> None:
    """Through the real admin login form."""
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#login-form input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")
    assert page.locator("#user-tools").is_visible(), "not logged in"


def live_log(page: Page) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = page.evaluate(f"JSON.parse(sessionStorage.getItem({LIVE_LOG_KEY!r}) || '[]')")
    return entries


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxy]:
    """A fault proxy in front of DynamoDB Local (no faults until configured), for a worker's writes."""
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"]) as proxy:
        yield proxy


@pytest.fixture
def start_worker(worker_process: Callable[..., WorkerProcess], rq_queue: Any) -> Callable[..., WorkerProcess]:
    """``worker_process``, returned once the worker is registered and listening on the queue.

    Django takes about 2 s to boot in the worker: a test that must know when work can begin (the job
    page open before the job ends) starts the worker first, then enqueues.
    """
    from rq import Worker

    def start(**env: str) -> WorkerProcess:
        worker = worker_process(**env)

        def listening() -> bool:
            if worker.process.poll() is not None:
                pytest.fail(f"the worker exited with {worker.process.returncode}: {worker.log_path.read_text()}")
            return any(w.pid == worker.process.pid for w in Worker.all(queue=rq_queue))

        wait_for(listening, timeout=30, interval=0.1, what="the worker to listen on the queue")
        return worker

    return start


def explain(job: Any, worker: WorkerProcess | None, rq_queue: Any) -> str:
    """Where a job is, for a failure message: its status and counts, the queue, the worker's log."""
    job.refresh_from_db()
    text = (
        f"job {job.pk} is {job.status} ({job.done_items}/{job.total_items} done);"
        f" RQ queue {rq_queue.name!r} on {rq_queue.connection.connection_pool.connection_kwargs.get('db')}"
        f" holds {rq_queue.count} job(s)"
    )
    if worker is not None:
        log = worker.log_path.read_text(errors="replace").splitlines()
        text += f"; worker log {worker.log_path} ends:\n" + "\n".join(log[-15:])
    return text
