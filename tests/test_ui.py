"""The web UI at `/ui`: its files and `/errors` in-process, then the pages in a real browser.

The browser tests drive Debian's Chromium (`/usr/bin/chromium`, headless) with Playwright against
one real `modelmora serve` with real worker processes: a tiny embedding model in two versions, a
classifier and a generator built offline, plus two models on the tests' torch-free runtimes: `echo`
(sleeps as long as a request says, to hold a job running while another waits) and `broken` (its
load fails, so that the server has an error to show). Every test asserts that the page logged no
console error and raised no exception. With `MODELMORA_UI_SCREENSHOTS=DIR` the page tour writes
one PNG per page into DIR (`docs/ui`, see docs/ui.md).
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from modelfactory import (
    build_classification_model,
    build_embedding_model,
    build_generation_model,
    build_image_model,
)
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from servers import start_serve, stop
from starlette.testclient import TestClient
from waiting import eventually

from modelmora import keys, registry
from modelmora.serve.api import ui
from modelmora.serve.api.recent_errors import ErrorBuffer
from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

TESTS = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KEY = "ui-s3cret"
WAIT_MS = 60_000
MANIFEST = """\
[project]
name = "ui"

[serve]
keep_alive = "10m"
drain_timeout = "1s"

[models.minilm]
task = "embedding"
route = { v1 = 100 }

[models.minilm.versions.v1]
source = "../m1"

[models.minilm.versions.v2]
source = "../m2"

[models.sentiment]
task = "text-classification"
source = "../cls"

[models.tiny-gpt]
task = "text-generation"
source = "../gen"

[models.echo]
task = "echo"
source = "../plain"
runtime = "runtimes_for_tests:SlowRuntime"

[models.broken]
task = "echo"
source = "../plain"
runtime = "runtimes_for_tests:FailOnLoadRuntime"
options = { message = "the weights are corrupt" }
"""


# In-process: the files, the key rules, the error buffer.


def http_client(**settings: object) -> TestClient:
    models = [ServedModel("emb", "embedding", Path("."))]
    supervisor = Supervisor(models, SupervisorSettings())
    return TestClient(create_app(supervisor, ServerSettings(**settings)))  # type: ignore[arg-type]


def test_the_page_and_its_files_need_no_key_and_fetch_nothing_from_elsewhere() -> None:
    http = http_client(api_key="s3cret")
    page = http.get("/ui/")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    files = {name: http.get(f"/ui/{name}") for name in ui.ASSETS}

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert http.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    assert not [source for source in sources if "://" in source]
    assert {name: r.status_code for name, r in files.items()} == dict.fromkeys(ui.ASSETS, 200)
    scripts = "".join(r.text for name, r in files.items() if name.endswith(".js"))
    assert not re.findall(r"https?://", scripts)  # no CDN, no remote import
    assert http.get("/errors").status_code == 401  # the data is not public
    assert http.get("/").json()["links"]["ui"] == "/ui/"


def test_every_file_of_the_page_is_package_data() -> None:
    folder = importlib.resources.files("modelmora.serve").joinpath(ui.UI_FOLDER)
    names = {entry.name for entry in folder.iterdir()}
    imported = set()
    for name in names - {"index.html", "app.css"}:
        imported |= set(re.findall(r'from "\./([\w.]+)"', folder.joinpath(name).read_text()))

    assert names == {"index.html", *ui.ASSETS}
    assert imported <= set(ui.ASSETS)  # every module a script imports is served


def test_the_buffer_keeps_warnings_errors_and_5xx_responses_and_only_the_last_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelmora")
    buffer = ErrorBuffer(capacity=3)
    logger = logging.getLogger("modelmora.test_ui")
    logger.addHandler(buffer)
    access = logging.getLogger("modelmora.access")
    access.addHandler(buffer)
    try:
        logger.info("fine")
        logger.warning("first")
        access.info("request", extra={"fields": {"status": 200, "path": "/a", "method": "GET"}})
        access.info("request", extra={"fields": {"status": 503, "path": "/b", "method": "POST"}})
        access.info("request", extra={"fields": {"status": 503, "path": "/ready", "method": "GET"}})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("second")
        logger.error("third")
    finally:
        logger.removeHandler(buffer)
        access.removeHandler(buffer)
    recent = buffer.recent()

    assert [entry.message for entry in recent] == ["third", "second", "POST /b answered 503"]
    assert recent[2].status == 503 and recent[2].path == "/b" and recent[2].method == "POST"
    assert recent[1].traceback is not None and "ValueError: boom" in recent[1].traceback


def test_errors_needs_the_admin_scope(tmp_path: Path) -> None:
    connection = registry.connect(tmp_path / "registry.sqlite3")
    _, infer_secret = keys.create(connection, "app", "infer", keys.Limits(), actor="test")
    _, admin_secret = keys.create(connection, "ops", "admin", keys.Limits(), actor="test")
    connection.close()
    models = [ServedModel("emb", "embedding", Path("."))]
    app = create_app(
        Supervisor(models, SupervisorSettings()), registry_path=tmp_path / "registry.sqlite3"
    )
    http = TestClient(app)

    refused = http.get("/errors", headers={"Authorization": f"Bearer {infer_secret}"})
    allowed = http.get("/errors", headers={"Authorization": f"Bearer {admin_secret}"})

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    app.state.modelmora.keys.close()

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert allowed.status_code == 200 and allowed.json() == {"errors": [], "capacity": 200}


# In Chromium, against a real server.


@dataclass
class Tab:
    """A page of its own browser context (a fresh sessionStorage) and what it logged."""

    page: Page
    problems: list[str] = field(default_factory=list)

    def record(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui")
    build_embedding_model(root / "m1", seed=1)
    build_embedding_model(root / "m2", seed=2)
    build_classification_model(root / "cls")
    build_generation_model(root / "gen")
    (root / "plain").mkdir()
    (root / "plain" / "config.json").write_text("{}")
    (root / "project").mkdir()
    manifest = MANIFEST
    pipeline = build_image_model(root / "tiny-sd")
    manifest += f'\n[models.sd]\ntask = "text-to-image"\nsource = "{pipeline}"\n'
    (root / "project" / "modelmora.toml").write_text(manifest)
    return root / "project"


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium (apt-get install chromium)")
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    url, process = start_serve(
        project, "--api-key", KEY, "--preload", "minilm", env={"PYTHONPATH": pythonpath}, key=KEY
    )
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as client:
        yield client


def open_ui(browser: Browser, server: str, where: str = "models", key: str | None = KEY) -> Tab:
    """The UI at `#/where` in a new tab whose session already holds `key` (as once the user has
    entered it: the key field keeps it in sessionStorage)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    if key is not None:
        context.add_init_script(f"sessionStorage.setItem('modelmora.api-key', {json.dumps(key)})")
    tab = Tab(context.new_page())
    tab.page.set_default_timeout(WAIT_MS)
    tab.page.on("console", tab.record)
    tab.page.on("pageerror", lambda error: tab.problems.append(f"exception: {error}"))
    tab.page.goto(f"{server}/ui/#/{where}")
    return tab


@pytest.mark.slow
def test_the_models_page_lists_the_models_and_routes_and_promotes_versions(
    browser: Browser, server: str, http: httpx.Client
) -> None:
    tab = open_ui(browser, server)
    page = tab.page
    v1 = page.locator('#models tr[data-model="minilm@v1"]')
    card = page.locator('#routes section[data-model="minilm"]')

    expect(v1.locator(".state")).to_have_text("ready")
    expect(v1.locator("td").nth(4)).to_have_text("100%")  # its share of the route
    for name in ("minilm@v2", "sentiment", "tiny-gpt", "echo", "broken"):
        expect(page.locator(f'#models tr[data-model="{name}"]')).to_be_visible()
    expect(page.locator("#rate-chart")).to_be_visible()
    latency = v1.locator("td").nth(10)  # the mean of the requests since the page's last poll

    def has_latency() -> bool:
        http.post("/infer/minilm@v1", json={"inputs": ["keep the chart busy"]}).raise_for_status()
        return latency.inner_text().endswith(" ms")

    eventually(has_latency, what="a latency from /metrics in the row of minilm@v1")
    card.locator('tr[data-version="v2"] input').fill("25")
    card.locator('tr[data-version="v1"] input').fill("75")
    card.locator("button.set-route").click()
    eventually(lambda: route(http) == {"v1": 75, "v2": 25}, what="the route set in the UI")
    page.locator('#routes section[data-model="minilm"] tr[data-version="v2"] .promote').click()
    eventually(lambda: route(http) == {"v2": 100}, what="v2 promoted in the UI")
    expect(page.locator('#models tr[data-model="minilm@v2"] td').nth(4)).to_have_text("100%")
    assert tab.problems == []


def route(http: httpx.Client) -> dict[str, int]:
    weights: dict[str, int] = http.get("/models/minilm/versions").json()["route"]["weights"]
    return weights


@pytest.mark.slow
def test_unload_in_the_models_page_unloads_the_model(
    browser: Browser, server: str, http: httpx.Client
) -> None:
    assert http.post("/models/sentiment/load").json()["state"] == "ready"
    tab = open_ui(browser, server)
    row = tab.page.locator('#models tr[data-model="sentiment"]')

    expect(row.locator(".state")).to_have_text("ready")
    row.locator("button.unload").click()

    expect(row.locator(".state")).to_have_text("unloaded")
    assert http.get("/models/sentiment").json()["state"] == "unloaded"
    assert tab.problems == []


@pytest.mark.slow
def test_the_playground_embeds_and_shows_the_similarity_and_the_request(
    browser: Browser, server: str
) -> None:
    tab = open_ui(browser, server, "playground/minilm@v1")
    page = tab.page
    page.fill("#inputs", "a cat\na kitten\nthe stock market")
    page.click("#run")

    expect(page.locator("#result")).to_have_attribute("data-done", "true")
    diagonal = [page.locator(f"#similarity tbody tr >> nth={i} >> td >> nth={i}") for i in range(3)]
    assert [cell.inner_text() for cell in diagonal] == ["1.0000"] * 3
    off_diagonal = float(page.locator("#similarity tbody tr >> nth=0 >> td >> nth=1").inner_text())
    assert -1 <= off_diagonal < 1
    assert page.locator(".vectors li").count() == 3
    curl = page.inner_text("#curl")
    assert f"curl -s {server}/infer/minilm@v1" in curl and "$MODELMORA_API_KEY" in curl
    assert KEY not in curl and KEY not in page.inner_text("#python")  # never the secret itself
    assert '"inputs": ["a cat", "a kitten", "the stock market"]' in page.inner_text("#python")
    copied = [ast.literal_eval(run_snippet(page.inner_text("#python"), sys.executable, "-c"))]
    if shutil.which("curl"):
        copied.append(json.loads(run_snippet(curl, "bash", "-c")))
    for answer in copied:  # the snippets, copied and run, get the answer the page shows
        vectors = answer["result"]["embeddings"]
        assert len(vectors) == 3
        assert cosine(vectors[0], vectors[1]) == pytest.approx(off_diagonal, abs=2e-4)
    assert tab.problems == []


def run_snippet(code: str, *command: str) -> str:
    env = {**os.environ, "MODELMORA_API_KEY": KEY}
    done = subprocess.run([*command, code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


@pytest.mark.slow
def test_the_playground_classifies_and_streams_a_generation(browser: Browser, server: str) -> None:
    tab = open_ui(browser, server, "playground/sentiment")
    page = tab.page
    page.click("#run")
    expect(page.locator("#result")).to_have_attribute("data-done", "true")
    labels = page.locator(".predictions > li").first.inner_text()

    page.select_option("#model", "tiny-gpt")
    page.fill("#max-tokens", "5")
    page.click("#run")

    assert "negative" in labels and "positive" in labels
    expect(page.locator("#result")).to_have_attribute("data-done", "true")
    expect(page.locator("#result .timing")).to_contain_text("finish reason")
    assert "/v1/chat/completions" in page.inner_text("#curl")
    run_snippet(page.inner_text("#python"), sys.executable, "-c")  # runs, with the openai client
    assert tab.problems == []


@pytest.mark.slow
def test_the_playground_draws_an_image(browser: Browser, server: str) -> None:
    tab = open_ui(browser, server, "playground/sd")
    page = tab.page
    page.fill("#size", "64x64")
    page.click("#run")

    expect(page.locator("#result")).to_have_attribute("data-done", "true")
    image = page.locator("#result img.generated-image")
    assert image.evaluate("image => [image.naturalWidth, image.naturalHeight]") == [64, 64]
    assert '"response_format":"b64_json"' in page.inner_text("#curl")
    assert tab.problems == []


@pytest.mark.slow
def test_the_jobs_page_lists_inspects_and_cancels_a_job(
    browser: Browser, server: str, http: httpx.Client
) -> None:
    running = http.post("/jobs", json={"model": "echo", "input": {"ms": 600_000}}).json()["id"]
    eventually(lambda: http.get(f"/jobs/{running}").json()["state"] == "running")
    waiting = http.post("/jobs", json={"model": "echo", "input": {"ms": 0}}).json()["id"]
    tab = open_ui(browser, server, "jobs")
    page = tab.page
    row = page.locator(f'#jobs tr[data-job="{waiting}"]')

    expect(row.locator(".state")).to_have_text("queued")
    row.locator("a.inspect").click()
    expect(page.locator("#job-detail")).to_contain_text(f'"id": "{waiting}"')
    row.locator("button.cancel").click()

    expect(row.locator(".state")).to_have_text("cancelled")
    assert http.get(f"/jobs/{waiting}").json()["state"] == "cancelled"
    expect(page.locator("#job-detail")).to_contain_text('"state": "cancelled"')
    page.select_option("#new-job-model", "sentiment")
    page.fill("#new-job-input", '{"inputs": "what a fine day"}')
    page.select_option("#new-job-priority", "high")
    page.click("#submit-job")
    expect(page.locator("#job-detail h3")).not_to_have_text(f"Job {waiting}")
    submitted = page.inner_text("#job-detail h3").removeprefix("Job ")
    expect(page.locator(f'#jobs tr[data-job="{submitted}"] .state')).to_have_text("succeeded")
    job = http.get(f"/jobs/{submitted}").json()
    assert job["model"] == "sentiment" and job["priority"] == 2
    assert {p["label"] for p in job["result"]["predictions"][0]} <= {"negative", "positive"}
    page.select_option("#job-state", "running")
    expect(page.locator(f'#jobs tr[data-job="{running}"]')).to_be_visible()
    expect(row).to_have_count(0)  # the filter hides the cancelled one
    assert tab.problems == []


@pytest.mark.slow
def test_without_a_key_or_with_a_wrong_one_the_page_says_what_to_do(
    browser: Browser, server: str
) -> None:
    tab = open_ui(browser, server, key=None)
    page, notice, rows = tab.page, tab.page.locator("#notice"), tab.page.locator("#models tbody tr")
    expect(notice).to_contain_text("401 Unauthorized: this server needs an API key")
    refused_without = len(tab.problems)

    page.fill("#key", "not-the-key")
    page.click("#key-form button")
    expect(notice).to_contain_text("401 Unauthorized: the key you entered is not valid")
    expect(rows).to_have_count(0)
    page.fill("#key", KEY)
    page.click("#key-form button")

    expect(rows.first).to_be_visible()
    expect(notice).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('modelmora.api-key')") == KEY
    assert refused_without >= 1  # the browser logs each refused request; nothing else
    assert all("status of 401" in problem for problem in tab.problems), tab.problems


@pytest.mark.slow
def test_an_infer_key_is_told_that_errors_need_an_admin_key(
    browser: Browser, server: str, project: Path
) -> None:
    with closing(registry.connect(project / ".modelmora" / "registry.sqlite3")) as connection:
        _, secret = keys.create(connection, "viewer", "infer", keys.Limits(), actor="test")
    viewer = {"Authorization": f"Bearer {secret}"}
    eventually(lambda: httpx.get(f"{server}/models", headers=viewer).status_code == 200)
    tab = open_ui(browser, server, "errors", key=secret)

    expect(tab.page.locator("#notice")).to_contain_text("403 Forbidden")
    expect(tab.page.locator("#notice")).to_contain_text("admin key")
    assert tab.problems and all("status of 403" in problem for problem in tab.problems), (
        tab.problems
    )


@pytest.mark.slow
def test_every_page_shows_without_console_errors_and_the_errors_page_shows_a_failed_load(
    browser: Browser, server: str, http: httpx.Client
) -> None:
    assert http.post("/models/broken/load").status_code >= 500
    http.post("/infer/minilm", json={"inputs": ["warm the chart"]}).raise_for_status()
    folder = os.environ.get("MODELMORA_UI_SCREENSHOTS")
    tab = open_ui(browser, server)
    page = tab.page
    expect(page.locator('#models tr[data-model="broken"] .state')).to_have_text("failed")
    for where in ("models", "playground/minilm", "jobs", "errors"):
        page.goto(f"{server}/ui/#/{where}")
        expect(page.locator(f'main[data-page="{where.split("/")[0]}"]')).to_have_attribute(
            "data-loaded", "true"
        )
        if where.startswith("playground"):
            page.click("#run")
            expect(page.locator("#result")).to_have_attribute("data-done", "true")
        if folder and where == "models":
            fill_the_chart(page, http)
        if folder:
            page.screenshot(path=str(Path(folder) / f"{where.split('/')[0]}.png"), full_page=True)

    expect(page.locator("#errors")).to_contain_text("the weights are corrupt")
    assert tab.problems == []


def fill_the_chart(page: Page, http: httpx.Client) -> None:
    """Traffic of changing sizes until the charts have some history (for the screenshot only)."""
    sizes = itertools.count(1)

    def has_history() -> bool:
        size = next(sizes)
        for _ in range(1 + size % 5):
            http.post("/infer/minilm", json={"inputs": ["warm the chart"] * size})
            http.post("/infer/minilm@v1", json={"inputs": ["and v1"]})
        return int(page.locator("#rate-chart").get_attribute("data-samples") or 0) >= 15

    eventually(has_history, timeout=300, what="15 samples in the chart")
