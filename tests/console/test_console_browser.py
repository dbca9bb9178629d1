"""The operator console in a real browser: Debian's Chromium, headless, driven by
Playwright against the real stack. Each test is something an operator does: watch
counts and rows move without reloading, stop and retry from the page, read a task's
timeline, keep filters in the URL, see the fleet by host, tail events, be refused
without a key, and read /docs on a host with no internet.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import nats
import pytest

from tests.e2e.harness import wait_until

from .conftest import HOSTS, ConsoleStack, create, missing_file, post_body, task_status

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIVE = 15_000  # ms: how long the page may take to show what the stream told it
DIGITS = re.compile(r"^\d+$")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright Python package (make setup installs it)")
    if not CHROMIUM.exists():
        found = shutil.which("chromium")
        pytest.skip(
            f"browser tests need Debian's chromium at {CHROMIUM} (found: {found}); "
            "`make browser` installs it with apt-get when run as root"
        )
    expect.set_options(timeout=LIVE)
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


def _context(browser: Browser, key: str | None) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    if key:
        context.add_init_script(f"localStorage.setItem('fleet.apiKey', {json.dumps(key)})")
    context.set_default_timeout(LIVE)
    return context


@pytest.fixture
def page(browser: Browser, console_stack: ConsoleStack) -> Iterator[Page]:
    """A page whose browser holds the admin key, as after the operator typed it once."""
    context = _context(browser, console_stack.admin_key)
    yield context.new_page()
    context.close()


def _mark(page: Page) -> None:
    """A flag in the page's JS state: still there later means the page never reloaded."""
    page.evaluate("window.__notReloaded = true")


def _not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("window.__notReloaded === true"))


def test_a_keyed_gateway_refuses_the_console_without_a_key_and_works_with_one(
    browser: Browser, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    context = _context(browser, None)
    page = context.new_page()
    page.goto(f"{console_stack.url}/console")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text("missing API key")
    expect(page.locator("#stat-total")).to_have_text("—")
    refused = page.evaluate("fetch('/api/v1/task/stats').then(r => r.status)")
    assert refused == 401

    page.fill("#key-input", "fk_not-a-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-reason")).to_contain_text("unknown API key")

    page.fill("#key-input", console_stack.admin_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#stat-total")).to_have_text(DIGITS)
    expect(page.locator("#who")).to_have_text("ops-admin · admin")
    expect(dialog).to_be_hidden()
    context.close()


def test_counts_and_rows_change_live_without_a_reload(
    page: Page, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    api = console_stack.client()
    page.goto(f"{console_stack.url}/console")
    expect(page.locator("#stat-total")).to_have_text(DIGITS)
    expect(page.locator("#live")).to_have_text("live")
    before = int(page.locator("#stat-total").inner_text())
    completed = int(page.locator("#stat-completed").inner_text())
    _mark(page)

    ids = create(api, post_body(["device_serial_1", "phone_b_1"], console_stack.video))
    expect(page.locator("#stat-total")).to_have_text(str(before + 2))
    expect(page.locator("#stat-completed")).to_have_text(str(completed + 2))
    expect(page.locator("#rate-finished")).not_to_have_text("0")
    for host, (_, count) in HOSTS.items():
        row = page.locator(f"#hosts tr[data-host='{host}'] td")
        expect(row.nth(1)).to_have_text(str(count))
    expect(page.locator("#agents tr")).to_have_count(len(HOSTS))
    expect(page.locator("#agents")).to_contain_text("ago")

    page.goto(f"{console_stack.url}/console/tasks")
    expect(page.locator(f"#task-rows tr[data-task-id='{ids[0]}']")).to_be_visible()
    _mark(page)
    (new,) = create(api, post_body(["device_serial_2"], console_stack.video, wait=2))
    row = page.locator(f"#task-rows tr[data-task-id='{new}']")
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "completed")
    assert _not_reloaded(page)


def test_stop_and_retry_from_the_page_and_the_timeline_says_who_and_why(
    page: Page, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    api = console_stack.client()
    # upload_wait_time 600 s at 0.05x: about 30 s of running, time enough to stop it.
    (task_id,) = create(api, post_body(["device_serial_3"], console_stack.video, wait=600))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{console_stack.url}/console/tasks?serial=device_serial_3")
    row = page.locator(f"#task-rows tr[data-task-id='{task_id}']")
    expect(row).to_have_attribute("data-status", "running")
    row.locator("button.stop").click()
    expect(row).to_have_attribute("data-status", "failed")
    expect(row.locator("td.reason")).to_contain_text("stopped")
    assert task_status(api, task_id) == 3

    row.locator("button.retry").click()
    expect(row).not_to_have_attribute("data-status", "failed")
    assert task_status(api, task_id) in (0, 1)

    page.goto(f"{console_stack.url}/console/tasks/{task_id}")
    timeline = page.locator("#timeline")
    for kind in ("task.created", "task.started", "task.stopped", "task.retried"):
        expect(timeline.locator(f"tr[data-type='{kind}']").first).to_be_visible()
    expect(page.locator("#task-config")).to_contain_text('"upload_wait_time": 600')
    # Stopped again from the task page: the timeline grows live, with the reason.
    page.click("#task-stop")
    expect(page.locator("#task-reason")).to_contain_text("Failed: stopped")
    expect(timeline.locator("tr[data-type='task.stopped']")).to_have_count(2)
    history = api.get(f"/task/{task_id}/events").json()["data"]
    actors = [e.get("actor") for e in history if e.get("actor")]
    if actors:  # where the log records actors, the page shows them
        expect(timeline.locator("td.actor").filter(has_text="ops-admin").first).to_be_visible()
    expect(page.locator("#artifacts")).to_be_hidden()


def test_a_task_created_from_the_page_runs_and_bad_input_is_named(
    page: Page, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{console_stack.url}/console/tasks")
    page.click("#new-task summary")
    form = page.locator("#create-form")
    expect(form.locator("select[name=script_name] option", has_text="post")).to_have_count(1)
    config = {"material_list": [console_stack.video], "upload_wait_time": 0}
    form.locator("textarea[name=script_config]").fill(json.dumps(config))
    form.locator("button[type=submit]").click()
    expect(page.locator("#notice")).to_contain_text("serials")  # neither phones nor accounts

    form.locator("input[name=serials]").fill("phone_b_2, device_serial_2")
    form.locator("input[name=min_interval]").fill("5")
    form.locator("input[name=max_interval]").fill("1")
    form.locator("button[type=submit]").click()
    expect(page.locator("#notice")).to_contain_text("max_interval")

    form.locator("input[name=min_interval]").fill("0")
    form.locator("input[name=max_interval]").fill("0")
    form.locator("button[type=submit]").click()
    expect(page.locator("#created")).to_contain_text("created 2 task(s)")
    ids = page.locator("#created").inner_text().split(": ")[1].split(", ")
    for task_id in ids:
        row = page.locator(f"#task-rows tr[data-task-id='{task_id}']")
        expect(row).to_have_attribute("data-status", "completed")


def test_filters_live_in_the_url_and_survive_a_reload(
    page: Page, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    api = console_stack.client()
    failing = post_body(["phone_b_2"], missing_file())
    (bad,) = create(api, failing)
    (good,) = create(api, post_body(["phone_b_2"], console_stack.video))
    page.goto(f"{console_stack.url}/console/tasks")
    page.select_option("select[name=status]", "3")
    page.fill("input[name=serial]", "phone_b_2")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/console/tasks?*")
    query = urlparse(page.url).query
    assert "status=3" in query and "serial=phone_b_2" in query

    for _ in range(2):  # as filtered, then the same after a reload
        rows = page.locator("#task-rows tr")
        expect(page.locator(f"#task-rows tr[data-task-id='{bad}']")).to_be_visible()
        expect(page.locator(f"#task-rows tr[data-task-id='{good}']")).to_have_count(0)
        for status in rows.evaluate_all("rows => rows.map(r => r.dataset.status)"):
            assert status == "failed"
        expect(page.locator("select[name=status]")).to_have_value("3")
        expect(page.locator("input[name=serial]")).to_have_value("phone_b_2")
        page.reload()


def test_the_device_grid_shows_each_host_and_a_phones_last_error(
    page: Page, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    api = console_stack.client()
    page.goto(f"{console_stack.url}/console/devices")
    for host, (prefix, count) in HOSTS.items():
        section = page.locator(f"section[data-host='{host}']")
        expect(section.locator(".device")).to_have_count(count)
        expect(section.locator(f".device[data-serial='{prefix}1']")).to_contain_text("battery")
    _mark(page)
    (bad,) = create(api, post_body(["device_serial_4"], missing_file()))
    card = page.locator(".device[data-serial='device_serial_4']")
    expect(card.locator(".error")).to_contain_text(f"#{bad}")
    assert _not_reloaded(page)

    card.locator("a").first.click()
    page.wait_for_url("**/console/devices/device_serial_4")
    expect(page.locator(f"#device-tasks tr[data-task-id='{bad}']")).to_be_visible()
    expect(page.locator("dd[data-field=host]")).to_have_text("host-a")


def test_the_event_tail_filters_and_resumes(page: Page, console_stack: ConsoleStack) -> None:
    from playwright.sync_api import expect

    api = console_stack.client()
    page.goto(f"{console_stack.url}/console/events?type=task.&serial=phone_b_3")
    expect(page.locator("#live")).to_have_text("live")
    (first,) = create(api, post_body(["phone_b_3"], console_stack.video))
    create(api, post_body(["device_serial_1"], console_stack.video))
    done = page.locator("#event-rows tr[data-type='task.completed']")
    expect(done).to_have_count(1)
    rows = page.locator("#event-rows tr")
    for serial_cell in rows.locator("td:nth-child(5)").all_inner_texts():
        assert serial_cell in ("", "phone_b_3")
    created = page.locator("#event-rows tr[data-type='task.created']")
    expect(created.locator("td:nth-child(4)")).to_have_text(f"#{first}")
    created_id = created.get_attribute("data-id")

    # Resume after the created event: what followed it comes back, it does not.
    page.goto(f"{console_stack.url}/console/events?task_id={first}&since={created_id}")
    expect(page.locator("#event-rows tr[data-type='task.completed']")).to_have_count(1)
    expect(page.locator("#event-rows tr[data-type='task.created']")).to_have_count(0)


def test_a_viewer_key_sees_the_fleet_but_no_actions(
    browser: Browser, console_stack: ConsoleStack
) -> None:
    from playwright.sync_api import expect

    context = _context(browser, console_stack.viewer_key)
    page = context.new_page()
    page.goto(f"{console_stack.url}/console/tasks")
    expect(page.locator("#who")).to_have_text("wall-screen · viewer")
    expect(page.locator("#task-rows tr").first).to_be_visible()
    expect(page.locator("#retry-all")).to_be_hidden()
    expect(page.locator("#task-rows button.delete").first).to_be_hidden()
    context.close()


def test_docs_render_with_no_internet(browser: Browser, console_stack: ConsoleStack) -> None:
    from playwright.sync_api import Route, expect

    context = _context(browser, None)
    outside: list[str] = []

    def offline(route: Route) -> None:
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", offline)
    page = context.new_page()
    page.goto(f"{console_stack.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Fleet task API")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert outside == []
    page.goto(f"{console_stack.url}/")
    expect(page.locator("ul.home a[href='/console']")).to_be_visible()
    context.close()


def test_a_failed_tasks_page_shows_its_screenshot_and_ui_dump(
    page: Page, console_stack: ConsoleStack
) -> None:
    """A step that fails on a (simulated) phone leaves a screenshot and a UI dump in the
    artifacts bucket; the task page shows them, fetched with the console's key."""
    from playwright.sync_api import Request, expect

    async def break_step() -> None:
        nc = await nats.connect(console_stack.stack.nats.url)
        try:
            await nc.request(
                "sim.host-b.fail",
                json.dumps({"serial": "phone_b_3", "step": "post"}).encode(),
                timeout=5,
            )
        finally:
            await nc.close()

    # Playwright's sync API owns this thread's event loop: the NATS call gets its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, break_step()).result(timeout=30)
    api = console_stack.client()
    (bad,) = create(api, post_body(["phone_b_3"], console_stack.video))
    wait_until(lambda: task_status(api, bad) == 3, what="the broken step to fail the task")
    keys_sent: list[str | None] = []

    def note_key(request: Request) -> None:
        if f"/api/v1/task/{bad}/artifacts" in request.url:
            keys_sent.append(request.headers.get("x-api-key"))

    page.on("request", note_key)
    page.goto(f"{console_stack.url}/console/tasks/{bad}")
    expect(page.locator("#task-reason")).to_contain_text("post step 'post' failed")
    image = page.locator("#artifact-list img[alt='screenshot.png']")
    expect(image).to_be_visible()
    page.wait_for_function(
        "() => document.querySelector(\"#artifact-list img[alt='screenshot.png']\")"
        ".naturalWidth > 0"
    )
    expect(page.locator("#artifact-list a[download='hierarchy.xml']")).to_be_visible()
    assert keys_sent and set(keys_sent) == {console_stack.admin_key}
