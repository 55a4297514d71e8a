"""Every script in examples/ runs, for real, against a real `modelmora serve`, so none of them rots.

One server for the module, guarded by an API key, serving a project of tiny models built offline
(tests/modelfactory.py): `minilm` (embedding), `chat` (text generation) and `ranker` (embedding,
with versions). Each script runs as a subprocess, as a person would run it, and is judged by what
it prints. The scripts that register models (`register_and_infer.py`, `canary.py`) each add a
name or version of their own, so the order of the tests does not matter.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelfactory import (
    build_classification_model,
    build_embedding_model,
    build_generation_model,
)
from servers import start_serve, stop

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KEY = "examples-s3cret"
MANIFEST = """\
[project]
name = "examples"

[serve]
keep_alive = "-1"

[models.minilm]
source = "../models/minilm"
task = "embedding"

[models.chat]
source = "../models/chat"
task = "text-generation"

[models.ranker]
task = "embedding"

[models.ranker.versions.v1]
source = "../models/ranker-v1"
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples") / "models"
    build_embedding_model(folder / "minilm")
    build_generation_model(folder / "chat", seed=4)  # greedy answers to "Hi" in ASCII: "EEE..."
    build_embedding_model(folder / "ranker-v1", seed=1)
    build_embedding_model(folder / "ranker-v2", seed=2)
    build_classification_model(folder / "sentiment")
    return folder


@pytest.fixture(scope="module")
def url(models: Path) -> Iterator[str]:
    project = models.parent / "project"
    project.mkdir()
    (project / "modelmora.toml").write_text(MANIFEST)
    address, process = start_serve(project, "--api-key", KEY, key=KEY)
    try:
        yield address
    finally:
        stop(process)


def run_example(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What `python examples/SCRIPT ARGS` prints; fails the test, with its stderr, if it fails."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_says_how_to_run_it_and_takes_the_url_and_key() -> None:
    scripts = sorted(EXAMPLES.glob("*.py"))
    tested = set(re.findall(r'run_example\(\s*"(\w+\.py)"', Path(__file__).read_text()))

    assert {script.name for script in scripts} == tested  # a new example gets a test here
    for script in scripts:
        source = script.read_text()
        docstring = ast.get_docstring(ast.parse(source)) or ""
        assert f"python examples/{script.name}" in docstring, script.name
        assert "MODELMORA_URL" in source and "MODELMORA_API_KEY" in source, script.name


@pytest.mark.slow
def test_local_inference_ranks_by_similarity_with_both_clients(url: str) -> None:
    printed = run_example("local_inference.py", "--model", "minilm", "--query", "a fox and a dog",
                          env={"MODELMORA_URL": url, "MODELMORA_API_KEY": KEY})  # fmt: skip
    scores = [float(score) for score in re.findall(r"^([+-]\d\.\d{3})  ", printed, re.M)]

    assert "minilm (embedding," in printed and "chat (text-generation," in printed
    assert re.search(r"^minilm: 32 dimensions$", printed, re.M), printed
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert "openai client, same vector: True" in printed


@pytest.mark.slow
def test_register_and_infer_serves_a_folder_at_once(url: str, models: Path) -> None:
    printed = run_example(
        "register_and_infer.py", "--url", url, "--key", KEY, "--name", "sentiment",
        "--source", str(models / "sentiment"), "--task", "text-classification",
        "a good film", "a bad film",
    )  # fmt: skip

    assert "registered sentiment: done" in printed
    assert re.search(r"^task text-classification, revision [0-9a-f]{12}$", printed, re.M)
    assert re.search(r"^sentiment: labels: \w+, \w+$", printed, re.M), printed


@pytest.mark.slow
def test_a_job_is_submitted_polled_and_its_result_read(url: str) -> None:
    printed = run_example("jobs.py", "--url", url, "--key", KEY, "--model", "minilm", "a", "b", "c")

    assert re.search(r"^submitted job \S+: queued \(HTTP 202\)$", printed, re.M), printed
    assert re.search(r"^job \S+: succeeded$", printed, re.M)
    assert "result: 3 vectors of 32 dimensions; attempts 1" in printed


@pytest.mark.slow
def test_a_chat_streams_through_the_openai_client(url: str) -> None:
    printed = run_example("streaming_chat.py", "--url", url, "--key", KEY, "--model", "chat",
                          "--max-tokens", "6", "--temperature", "0", "Hi")  # fmt: skip
    text, _, last = printed.rstrip("\n").rpartition("\n")
    summary = re.fullmatch(r"\[(\d+) chunks, (\d+) tokens, finish_reason=(\w+)\]", last)

    assert summary is not None, printed
    assert len(text) == 6 and text.isprintable()  # one byte a token, all ASCII for this model
    assert int(summary[1]) > 1  # it came in pieces, as the worker generated them
    assert summary[2] == "6" and summary[3] == "length"


@pytest.mark.slow
def test_canary_adds_a_version_routes_promotes_and_rolls_back(url: str, models: Path) -> None:
    printed = run_example(
        "canary.py", "--url", url, "--key", KEY, "--model", "ranker", "--version", "v2",
        "--source", str(models / "ranker-v2"), "--users", "50",
    )  # fmt: skip
    answered = re.search(r"^answered by: (.+)$", printed, re.M)

    assert "ranker: route v1 100" in printed and "added ranker@v2" in printed
    assert "canary: v1 100 -> v1 90, v2 10" in printed
    assert answered is not None
    counts = dict(pair.split() for pair in answered[1].split(", "))
    # 50 users' route keys hash onto the 90/10 route: both versions get some (the hash is fixed)
    assert set(counts) == {"v1", "v2"} and sum(map(int, counts.values())) == 50
    assert "promote: v1 90, v2 10 -> v2 100" in printed
    assert "answered by: v2 3" in printed  # promoted: every request to v2
    assert "rollback: v2 100 -> v1 90, v2 10" in printed
    assert re.search(r"history: .*route \(\S+\) -> promote \(\S+\) -> rollback \(\S+\)$",
                     printed, re.M), printed  # fmt: skip


@pytest.mark.slow
def test_the_quickstart_project_is_locked_and_its_lock_fresh(tmp_path: Path) -> None:
    project = tmp_path / "quickstart"
    shutil.copytree(EXAMPLES / "quickstart", project)
    checked = subprocess.run(
        [sys.executable, "-m", "modelmora", "lock", "--check"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert checked.returncode == 0, checked.stdout + checked.stderr
