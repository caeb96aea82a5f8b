"""The board in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``),
driven by selenium: the page updates itself, its actions work, and markup from the
store shows as text. Skipped, with the reason, where Chromium or selenium is missing
(``.ci/run`` installs them).

``TASKPIPE_BOARD_SCREENSHOT=docs/board-overview.png`` makes the overview test save its
screenshot there (the one README.rst shows).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from taskpipe.board import make_app
from taskpipe.board.server import make_board_server
from taskpipe.context import WorkerContext
from taskpipe.sqlite import SqliteStorage, connect
from taskpipe.store import Outcome, OutcomeKind

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
WAIT = 10  # seconds at most for the page to show a change (it polls every 2)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI"):  # .ci/run installs them: a skip there would hide a failure
        pytest.fail(f"CI without {CHROMIUM} or {CHROMEDRIVER}", pytrace=False)
    pytest.skip(
        f"Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium "
        "chromium-driver",
        allow_module_level=True,
    )

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def ctx(name="worker"):
    """A worker run's context (its reports dropped)."""
    return WorkerContext(name, capacity=8, report=lambda exc: None)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module."""
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


@pytest.fixture
def board(tmp_path):
    """A store on a fresh SQLite file and the board serving it on a free loopback
    port, in a thread: ``(store, url)``."""
    path = tmp_path / "jobs.db"
    db = connect(str(path))
    SqliteStorage.setup(db)
    store = SqliteStorage(db)
    server = make_board_server(make_app(store), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield store, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()
    db.close()


def finish(store, kind, error=None):
    """Claim the next task and ack it with ``kind``; its id."""
    [claim] = store.claim(ctx(), 1)
    store.ack([Outcome(claim, kind, error=error, delay=3600)])
    return claim.id


def wait_for(browser, css):
    """The first element matching ``css`` once it is there."""
    return WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def open_page(browser, url):
    """Open the board at ``url`` and mark the window, to tell a reload later."""
    browser.get(url)
    wait_for(browser, "#status")
    browser.execute_script("window.notReloaded = true;")


def test_a_queued_task_appears_without_reloading(browser, board):
    store, url = board
    first = store.push({"n": 1})
    open_page(browser, url + "#tasks")
    wait_for(browser, f'tr[data-task-id="{first}"]')
    second = store.push({"n": 2})
    row = wait_for(browser, f'tr[data-task-id="{second}"]')
    assert row.find_element(By.CSS_SELECTOR, ".args").text == '{"n": 2}'
    assert browser.execute_script("return window.notReloaded") is True


def test_retry_a_dead_task_and_see_it_pending(browser, board):
    store, url = board
    store.push("doomed")
    dead = finish(store, OutcomeKind.DEAD, error="RuntimeError: no")
    open_page(browser, url + f"#task/{dead}")
    wait_for(browser, '#task h2 .badge[data-status="dead"]')
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="retry"]').click()
    wait_for(browser, '#task h2 .badge[data-status="pending"]')
    assert store.fetch_by_id(dead).status.value == "pending"
    assert browser.execute_script("return window.notReloaded") is True


def test_pause_a_queue(browser, board):
    store, url = board
    store.push("x")
    open_page(browser, url + "#overview")
    wait_for(browser, '[data-queue="default"] button[data-action="pause"]').click()
    wait_for(browser, '[data-queue="default"] [data-paused="1"]')
    assert "default" in store.paused_queues()


def test_markup_in_args_and_errors_shows_as_text(browser, board):
    store, url = board
    payloads = [
        "<script>window.pwned = 1</script>",
        '"><img src=x onerror="window.pwned = 2">',
    ]
    ids = []
    for payload in payloads:
        store.push({"note": payload})
        ids.append(finish(store, OutcomeKind.DEAD, error=payload))
    open_page(browser, url + "#tasks")
    for tid, payload in zip(ids, payloads, strict=True):
        row = wait_for(browser, f'tr[data-task-id="{tid}"]')
        assert row.find_element(By.CSS_SELECTOR, ".error").text == payload
    assert browser.find_elements(By.CSS_SELECTOR, "#main img") == []
    browser.get(url + f"#task/{ids[1]}")
    wait_for(browser, "#task .error-text")
    assert browser.find_element(By.CSS_SELECTOR, "#task .error-text").text == payloads[1]
    assert browser.find_elements(By.CSS_SELECTOR, "#main img, #main script") == []
    assert browser.execute_script("return window.pwned") is None
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_the_overview_shows_queues_charts_and_workers(browser, board, tmp_path):
    store, url = board
    _demo_data(store)
    open_page(browser, url)
    card = wait_for(browser, '[data-queue="emails"]')
    assert card.find_element(By.CSS_SELECTOR, '[data-count="dead"] b').text == "1"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart svg rect")) > 0
    WebDriverWait(browser, WAIT).until(
        lambda d: "mailer" in d.find_element(By.CSS_SELECTOR, "#overview table").text
    )
    target = Path(os.environ.get("TASKPIPE_BOARD_SCREENSHOT") or tmp_path / "overview.png")
    browser.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _demo_data(store):
    """Queues with tasks in every status, a day of throughput, two live workers."""
    import random

    from taskpipe import clock

    rng = random.Random(7)
    emails = SqliteStorage(store.db, queue="emails")
    reports = SqliteStorage(store.db, queue="reports")
    for queue, count in ((store, 40), (emails, 60), (reports, 25)):
        queue.push_bulk([{"n": i} for i in range(count)])
    for queue, done in ((store, 30), (emails, 50), (reports, 12)):
        for _ in range(done):
            finish(queue, OutcomeKind.DONE)
    finish(emails, OutcomeKind.DEAD, error="SMTPRecipientsRefused: <no such user>")
    finish(reports, OutcomeKind.RETRY, error="TimeoutError: the report took too long")
    now = clock.timestamp()
    # spread the finish times over the last day, busier in the last hours (a demo)
    rows = store.db.execute_sql("SELECT id FROM taskpipe_jobs WHERE status = 'done'").fetchall()
    for (task_id,) in rows:
        ago = rng.random() ** 2 * 86000
        store.db.execute_sql(
            "UPDATE taskpipe_jobs SET done_at = ?, started_at = ? WHERE id = ?",
            (now - ago, now - ago - 0.5, task_id),
        )
    for name, queue in (("mailer", emails), ("reporter", reports)):
        run = ctx(name)
        queue.beat(run)
        queue.claim(run, 2)


def test_a_dag_run_shows_as_a_graph(browser, board):
    from test_board_api import _etl

    from taskpipe import WorkerBuilder

    store, url = board
    dag = _etl()
    run_id = store.start_fan_out([1, 2, 3], flow=dag)
    WorkerBuilder("etl").backend(store).build(dag).run_until_idle()
    open_page(browser, url + f"#run/{run_id}")
    wait_for(browser, ".graph rect[data-step]")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".graph rect[data-step]")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, ".graph line")) == 3  # the fan-in
    assert "null" not in browser.find_element(By.ID, "run").text.split("Steps")[0]


def test_markup_in_queue_worker_schedule_and_workflow_names_shows_as_text(browser, board):
    from datetime import UTC, datetime

    from taskpipe import Task, WorkerBuilder
    from taskpipe.workflow import Workflow

    store, url = board
    evil = '"><img src=x onerror="window.pwned = 1"><script>window.pwned = 2</script>'
    queue = SqliteStorage(store.db, queue=evil)
    queue.push({"n": 1})
    finish(queue, OutcomeKind.DEAD, error=evil)
    run = ctx(evil)
    queue.beat(run)
    due = datetime(2030, 1, 1, 7, tzinfo=UTC).isoformat()
    store.push_task(Task({"due": due}, key=f"cron:{evil.replace(':', '%3A')}:{due}"))

    def step(n: int) -> int:
        return n

    flow = Workflow(evil).and_then(step)
    run_id = store.push_start(1, flow=flow)
    WorkerBuilder("flows").backend(store).build(flow).run_until_idle()
    pages = [
        ("", "#overview"),
        ("#tasks", "tr[data-task-id]"),
        ("#schedules", "#schedules table"),
        ("#runs", "#runs table"),
        (f"#run/{run_id}", ".graph, #run table"),
    ]
    for fragment, css in pages:
        open_page(browser, url + fragment)
        WebDriverWait(browser, WAIT).until(
            lambda d, css=css: (
                d.find_elements(By.CSS_SELECTOR, css)
                and "onerror" in d.find_element(By.ID, "main").text
            )
        )
        assert browser.find_elements(By.CSS_SELECTOR, "#main img, #main script") == []
        assert browser.execute_script("return window.pwned") is None, fragment
