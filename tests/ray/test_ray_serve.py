"""The lock on a real local Ray Serve cluster: the same answers and errors as `modelmora serve`,
scale from zero, a killed replica replaced, the exported config valid, files verified per node."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from modelfactory import (
    build_classification_model,
    build_embedding_model,
    build_generation_model,
)
from ray import serve
from ray.serve.schema import ServeDeploySchema
from servers import free_port, start_serve, stop
from waiting import eventually

from modelmora import project as use_cases
from modelmora.cache import Cache
from modelmora.project import Project
from modelmora.ray import plan
from modelmora.ray.app import build
from modelmora.ray.export import dumps, serve_config
from modelmora.ray.nodecache import ensure_model

pytestmark = pytest.mark.slow

MANIFEST = """\
[project]
name = "on-ray"

[models.minilm]
task = "embedding"
route = { v1 = 100 }

[models.minilm.versions.v1]
source = "../emb1"

[models.minilm.versions.v2]
source = "../emb2"
min_replicas = 0
max_replicas = 2
target_ongoing_requests = 4

[models.clf]
source = "../clf"
task = "text-classification"

[models.gen]
source = "../gen"
task = "text-generation"
"""
HELLO = {"inputs": ["hello world", "the quick brown fox"]}
GREEDY = {"inputs": "hello", "max_new_tokens": 4, "temperature": 0}
CHAT = {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "temperature": 0}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The project, locked (not installed: the replicas fetch their files), and a cache of its own
    that the cluster's processes inherit."""
    base = tmp_path_factory.mktemp("ray")
    build_embedding_model(base / "emb1", seed=1)
    build_embedding_model(base / "emb2", seed=2)
    build_classification_model(base / "clf")
    build_generation_model(base / "gen")
    root = base / "project"
    root.mkdir()
    (root / "modelmora.toml").write_text(MANIFEST)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELMORA_HOME", str(base / "home"))
        env.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.52+ asks local clients for a token
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        use_cases.lock(Project(root))
        yield root


@pytest.fixture(scope="module")
def cluster(project: Path) -> Iterator[str]:
    """The app on a local cluster (logical CPUs: the ingress takes none, a model replica one)."""
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"project": str(project)}), name=plan.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def http(cluster: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster, timeout=120) as client:
        yield client


def running(deployment: str) -> int:
    status = serve.status().applications[plan.APP_NAME].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def test_a_model_with_min_replicas_zero_starts_on_its_first_request(http: httpx.Client) -> None:
    deployment = plan.deployment_name("minilm@v2")
    assert running(deployment) == 0
    response = http.post("/infer/minilm@v2", json=HELLO)
    assert response.status_code == 200, response.text
    assert response.headers["x-modelmora-model-version"] == "v2"
    assert running(deployment) >= 1


def test_every_model_answers_as_modelmora_serve_does(
    project: Path, http: httpx.Client, isolated_env: Path
) -> None:
    url, process = start_serve(project)  # installs into this test's own cache
    try:
        with httpx.Client(base_url=url, timeout=120) as local:
            for path, body in [
                ("/infer/minilm", HELLO),
                ("/infer/minilm@v2", HELLO),
                ("/infer/clf", {**HELLO, "top_k": None}),
                ("/infer/gen", GREEDY),
                ("/v1/embeddings", {"model": "minilm", "input": ["hello", "world"]}),
                ("/v1/chat/completions", CHAT),
                (
                    "/v1/completions",
                    {"model": "gen", "prompt": "x", "max_tokens": 3, "temperature": 0},
                ),
                ("/infer/nope", HELLO),
                ("/infer/minilm@v9", HELLO),
                ("/infer/clf", {"inputs": []}),
                ("/v1/embeddings", {"model": "gen", "input": "x"}),
            ]:
                ours, theirs = http.post(path, json=body), local.post(path, json=body)
                assert ours.status_code == theirs.status_code, (path, ours.text, theirs.text)
                assert same(answer(ours), answer(theirs)), (path, ours.text, theirs.text)
    finally:
        stop(process)


def test_tokens_stream_as_server_sent_events(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


def test_a_killed_replica_is_replaced(http: httpx.Client) -> None:
    assert http.post("/infer/clf", json=HELLO).status_code == 200
    named = ray.util.list_named_actors(all_namespaces=True)
    replicas = [actor for actor in named if f"#{plan.deployment_name('clf')}#" in actor["name"]]
    assert len(replicas) == 1, named
    ray.kill(
        ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True
    )

    def answers() -> bool:
        return http.post("/infer/clf", json=HELLO, timeout=30).status_code == 200

    eventually(answers, 120, ignoring=(httpx.HTTPError,), what="a new replica of clf")
    assert running(plan.deployment_name("clf")) == 1


def test_the_exported_config_is_a_valid_serve_config(project: Path) -> None:
    text = dumps(serve_config(project))
    config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    application = config.applications[0]
    assert application.import_path == "modelmora.ray.app:build"
    assert application.args == {"project": str(project)}
    deployments = {deployment.name: deployment for deployment in application.deployments}
    assert set(deployments) == {
        "ingress",
        "model:minilm@v1",
        "model:minilm@v2",
        "model:clf",
        "model:gen",
    }
    scaling = deployments["model:minilm@v2"].autoscaling_config
    assert scaling == {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 4.0,
                       "initial_replicas": 0}  # fmt: skip
    assert deployments["model:clf"].num_replicas == 1


def test_a_corrupt_file_in_a_nodes_cache_is_fetched_again(
    project: Path, isolated_env: Path
) -> None:
    locked = Project(project).lock().models["clf"]
    cache = Cache()
    snapshot = ensure_model(locked, project, cache)
    weights = next(file for file in locked.files if file.path.endswith(".safetensors"))
    blob = cache.blob_path(weights.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"x" * weights.size)  # same size: only the hash can tell
    assert ensure_model(locked, project, cache) == snapshot
    assert (snapshot / weights.path).read_bytes() == (
        project.parent / "clf" / weights.path
    ).read_bytes()


def test_the_server_and_the_cli_never_import_ray() -> None:
    code = "import sys, modelmora.cli, modelmora.serve.app; print('ray' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def answer(response: httpx.Response) -> Any:
    """The body without what differs between two servers: ids, times, timings."""
    body = response.json()
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in ("id", "created", "request_id", "timing")}
    return body


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
