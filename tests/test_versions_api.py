"""Model versions on a real server: `name@version` on every API, weighted and sticky routes,
promote and rollback under load, shadows and their disagreement in /metrics, registering and
removing models at run time (a folder and the test Hub), scopes and the audit log.

Two versions of a tiny embedding model built offline from different seeds, so their vectors
differ; a real `modelmora serve` on loopback with real worker processes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from modelfactory import build_embedding_model, model_files
from prometheus_client.parser import text_string_to_metric_families
from servers import start_serve, stop
from waiting import eventually

from modelmora import keys, registry

MANIFEST = """\
[project]
name = "versioned"

[serve]
keep_alive = "10m"

[models.minilm]
task = "embedding"
route = { v1 = 100 }

[models.minilm.versions.v1]
source = "../m1"

[models.minilm.versions.v2]
source = "../m2"
"""
HELLO = {"inputs": ["hello world"]}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    build_embedding_model(tmp_path / "m1", seed=1)
    build_embedding_model(tmp_path / "m2", seed=2)
    root = tmp_path / "versioned"
    root.mkdir()
    (root / "modelmora.toml").write_text(MANIFEST)
    return root


@pytest.fixture
def server(project: Path) -> Iterator[httpx.Client]:
    url, process = start_serve(project, "--preload", "minilm")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http
    finally:
        stop(process)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def vector(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    body = response.json()
    if "data" in body:
        return list(body["data"][0]["embedding"])
    return list(body["result"]["embeddings"][0])


def metric(http: httpx.Client, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when it is not there yet)."""
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.mark.slow
def test_every_api_addresses_a_version_and_says_which_answered(server: httpx.Client) -> None:
    v1 = server.post("/infer/minilm@v1", json=HELLO)
    v2 = server.post("/infer/minilm@v2", json=HELLO)
    routed = server.post("/infer/minilm", json=HELLO)
    openai_v2 = server.post("/v1/embeddings", json={"model": "minilm@v2", "input": "hello world"})
    openai_routed = server.post("/v1/embeddings", json={"model": "minilm", "input": "hello world"})
    job = server.post("/jobs", json={"model": "minilm@v2", "input": {"inputs": ["hello world"]}})
    unknown = server.post("/infer/minilm@v9", json=HELLO)
    listed = server.get("/v1/models").json()

    assert v1.headers["X-ModelMora-Model-Version"] == "v1" and v1.json()["model"] == "minilm@v1"
    assert v2.headers["X-ModelMora-Model-Version"] == "v2" and v2.json()["model"] == "minilm@v2"
    assert cosine(vector(v1), vector(v2)) < 0.99  # two different models
    assert routed.headers["X-ModelMora-Model-Version"] == "v1"  # the route: v1 = 100
    assert vector(routed) == pytest.approx(vector(v1))
    assert openai_v2.json()["model"] == "minilm@v2"
    assert vector(openai_v2) == pytest.approx(vector(v2), abs=1e-5)
    assert openai_routed.json()["model"] == "minilm@v1"
    assert job.status_code == 202 and job.json()["model"] == "minilm@v2"
    assert unknown.status_code == 404 and "v1, v2" in unknown.json()["error"]["message"]
    assert {"minilm", "minilm@v1", "minilm@v2"} <= {card["id"] for card in listed["data"]}
    done = eventually(
        lambda: (r := server.get(f"/jobs/{job.json()['id']}").json())["state"] == "succeeded" and r,
        what="the job on minilm@v2",
    )
    assert done["result"]["embeddings"][0] == pytest.approx(vector(v2), abs=1e-5)
    by_version = {"endpoint": "/infer/{name}", "model": "minilm", "status": "200"}
    eventually(  # counted once the response has gone
        lambda: metric(server, "modelmora_requests_total", version="v2", **by_version) >= 1,
        what="the request counted by its version",
    )


@pytest.mark.slow
def test_weights_split_traffic_and_route_keys_stick(server: httpx.Client) -> None:
    changed = server.put("/models/minilm/route", json={"weights": {"v1": 90, "v2": 10}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["after"]["weights"] == {"v1": 90, "v2": 10}

    def answered_by(index: int) -> str:
        response = server.post("/infer/minilm", json={"inputs": [f"text {index}"]})
        assert response.status_code == 200, response.text
        return response.headers["X-ModelMora-Model-Version"]

    with ThreadPoolExecutor(8) as pool:
        counts = Counter(pool.map(answered_by, range(2000)))
    assert counts["v1"] + counts["v2"] == 2000
    assert abs(counts["v2"] / 2000 - 0.10) < 0.03, counts  # binomial sd is 0.0067

    assert server.put("/models/minilm/route", json={"weights": {"v1": 1, "v2": 1}}).is_success

    def versions_for(key: str) -> set[str]:
        headers = {"X-ModelMora-Route-Key": key}
        return {
            server.post("/infer/minilm", json=HELLO, headers=headers).headers[
                "X-ModelMora-Model-Version"
            ]
            for _ in range(10)
        }

    per_key = {f"user-{n}": versions_for(f"user-{n}") for n in range(40)}
    assert all(len(seen) == 1 for seen in per_key.values()), per_key
    assert {next(iter(seen)) for seen in per_key.values()} == {"v1", "v2"}  # keys spread
    by_user = {
        server.post(
            "/v1/embeddings", json={"model": "minilm", "input": "x", "user": "user-7"}
        ).json()["model"]
        for _ in range(10)
    }
    assert by_user == {f"minilm@{next(iter(per_key['user-7']))}"}  # OpenAI's user is the key


@pytest.mark.slow
def test_promote_and_rollback_under_a_stream_of_requests_drop_nothing(
    server: httpx.Client, project: Path
) -> None:
    statuses: Counter[int] = Counter()
    seen: Counter[str] = Counter()
    stop_sending = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=str(server.base_url), timeout=60) as own:
            while not stop_sending.is_set():
                response = own.post("/infer/minilm", json=HELLO)
                statuses[response.status_code] += 1
                seen[response.headers.get("X-ModelMora-Model-Version", "?")] += 1

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        eventually(lambda: seen["v1"] >= 20, what="requests on v1")
        promoted = server.post("/models/minilm/promote", json={"version": "v2"})
        eventually(lambda: seen["v2"] >= 20, what="requests on v2 after the promotion")
        rolled = server.post("/models/minilm/rollback")
        after_rollback = seen["v1"]
        eventually(lambda: seen["v1"] >= after_rollback + 20, what="v1 again after rollback")
    finally:
        stop_sending.set()
        for sender in senders:
            sender.join()

    assert promoted.status_code == 200 and promoted.json()["after"]["weights"] == {"v2": 100}
    assert rolled.status_code == 200 and rolled.json()["after"]["weights"] == {"v1": 100}
    assert set(statuses) == {200}, statuses
    assert "route = {v1 = 100}" in (project / "modelmora.toml").read_text()
    history = server.get("/models/minilm/versions").json()["history"]
    assert [h["action"] for h in history] == ["sync", "promote", "rollback"]
    audit = cli_json(project, "audit")
    assert [e["action"] for e in audit[:2]] == ["model.rollback", "model.promote"]
    assert audit[0]["before"]["weights"] == {"v2": 100}
    assert audit[0]["after"]["weights"] == {"v1": 100}


@pytest.mark.slow
def test_a_shadow_never_changes_the_answer_and_its_disagreement_is_measured(
    server: httpx.Client,
) -> None:
    alone = vector(server.post("/infer/minilm@v1", json=HELLO))
    route = {"weights": {"v1": 100}, "shadow": "v2", "shadow_fraction": 1.0}
    assert server.put("/models/minilm/route", json=route).status_code == 200

    answers = [server.post("/infer/minilm", json=HELLO) for _ in range(10)]

    assert {a.headers["X-ModelMora-Model-Version"] for a in answers} == {"v1"}
    assert all(vector(a) == pytest.approx(alone) for a in answers)
    labels = {"model": "minilm@v1", "shadow": "minilm@v2"}

    def copies(outcome: str) -> float:
        return metric(server, "modelmora_shadow_requests_total", outcome=outcome, **labels)

    # Copies past the bound (4 at once) are dropped, not queued: on a busy machine some may be.
    eventually(lambda: copies("sent") + copies("dropped") == 10, what="10 copies sent or dropped")
    assert copies("sent") >= 1

    def compared() -> float:
        return metric(server, "modelmora_shadow_cosine_count", **labels)

    eventually(
        lambda: compared() + copies("failed") == copies("sent"),
        what="every copy sent to be compared (or to have failed) in /metrics",
    )
    assert compared() >= 1
    # The two seeds' vectors are far apart: every comparison falls under 0.99.
    close = metric(server, "modelmora_shadow_cosine_bucket", le="0.99", **labels)
    assert close == metric(server, "modelmora_shadow_cosine_count", **labels)


BAD_CHANGES = [
    ("PUT", "/models/minilm/route", {"weights": {}}, 422, "at least one version"),
    ("PUT", "/models/minilm/route", {"weights": {"v1": 0}}, 422, "every weight"),
    ("PUT", "/models/minilm/route", {"weights": {"v1": -1}}, 422, "weights"),
    ("PUT", "/models/minilm/route", {"weights": {"": 5}}, 422, "not a valid version"),
    ("PUT", "/models/minilm/route", {"weights": {"v9": 5}}, 404, "no version 'v9'"),
    ("PUT", "/models/minilm/route", {"weights": {"v1": 1}, "shadow_fraction": 2}, 422, "shadow_"),
    ("PUT", "/models/minilm/route", {"weights": {"v1": 1}, "extra": 1}, 422, "extra"),
    ("PUT", "/models/nope/route", {"weights": {"v1": 1}}, 404, "no model named 'nope'"),
    ("POST", "/models/minilm/promote", {"version": "v9"}, 404, "its versions: v1, v2"),
    ("POST", "/models/minilm/promote", {}, 422, "version"),
    ("POST", "/models/minilm/deprecate", {"version": "\u00e9\u00e9"}, 404, "no version"),
    ("POST", "/models/minilm/rollback", None, 409, "no other route"),
    ("DELETE", "/models/minilm@v9", None, 404, "no version 'v9'"),
    ("DELETE", "/models/nope", None, 404, "no model named 'nope'"),
    ("POST", "/models", {"name": "x", "source": "./nowhere"}, 422, "not a folder"),
    ("POST", "/models", {"name": "x", "source": "../m1", "task": "embeding"}, 422, "task"),
    ("POST", "/models", {"name": "x", "source": "s3://b/k"}, 422, "unknown source scheme"),
    ("POST", "/models", {"name": "minilm", "source": "../m1"}, 409, "has versions"),
    ("POST", "/models", {"name": "x", "version": "a b", "source": "../m1"}, 422, "version"),
]


@pytest.mark.slow
def test_bad_changes_are_refused_with_a_4xx_and_change_nothing(project: Path) -> None:
    url, process = start_serve(project)
    before = [(project / name).read_text() for name in ("modelmora.toml", "modelmora.lock")]
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            answers = [
                http.request(method, path, json=body) if body is not None else
                http.request(method, path)
                for method, path, body, _, _ in BAD_CHANGES
            ]  # fmt: skip
    finally:
        stop(process)

    for (method, path, body, status, words), answer in zip(BAD_CHANGES, answers, strict=True):
        assert answer.status_code == status, (method, path, body, answer.text)
        assert words in answer.json()["error"]["message"], (method, path, answer.text)
    after = [(project / name).read_text() for name in ("modelmora.toml", "modelmora.lock")]
    assert after == before


@pytest.mark.slow
def test_versions_deprecate_remove_and_the_registry_comes_back(project: Path) -> None:
    url, process = start_serve(project)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            refused = http.post("/models/minilm/deprecate", json={"version": "v1"})
            deprecated = http.post("/models/minilm/deprecate", json={"version": "v2"})
            only = http.delete("/models/minilm@v1")
            removed = http.delete("/models/minilm@v2")
            gone = http.post("/infer/minilm@v2", json=HELLO)
    finally:
        stop(process)

    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    states = {v["version"]: v["state"] for v in deprecated.json()["versions"]}
    assert states == {"v1": "active", "v2": "deprecated"}
    assert only.status_code == 409 and "only one" in only.json()["error"]["message"]
    assert removed.status_code == 200 and removed.json()["removed"] == ["minilm@v2"]
    assert gone.status_code == 404
    assert "versions.v2" not in (project / "modelmora.toml").read_text()
    assert "minilm@v2" not in (project / "modelmora.lock").read_text()

    (project / ".modelmora" / "registry.sqlite3").unlink()
    for suffix in ("-wal", "-shm"):
        (project / ".modelmora" / f"registry.sqlite3{suffix}").unlink(missing_ok=True)
    url, process = start_serve(project)
    try:
        report = httpx.get(f"{url}/models/minilm/versions", timeout=60).json()
    finally:
        stop(process)
    assert [v["version"] for v in report["versions"]] == ["v1"]
    assert report["route"]["weights"] == {"v1": 100}


@pytest.mark.slow
def test_models_are_registered_at_run_time_from_a_folder_and_the_hub(
    project: Path, fake_hub: object, tmp_path: Path
) -> None:
    build_embedding_model(tmp_path / "m3", seed=3)
    build_embedding_model(tmp_path / "hub-model", seed=4)
    fake_hub.add_commit("org/tiny", model_files(tmp_path / "hub-model"))  # type: ignore[attr-defined]
    with closing(registry.connect(project / ".modelmora" / "registry.sqlite3")) as connection:
        _, infer_secret = keys.create(connection, "app", "infer", keys.Limits(), actor="test")
        _, admin_secret = keys.create(connection, "ops", "admin", keys.Limits(), actor="test")
    app, ops = bearer(infer_secret), bearer(admin_secret)
    url, process = start_serve(project, key=admin_secret)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            folder = {"name": "minilm", "version": "v3", "source": "../m3", "task": "embedding"}
            forbidden = http.post("/models", json=folder, headers=app)
            forbidden_route = http.put(
                "/models/minilm/route", json={"weights": {"v2": 1}}, headers=app
            )
            created = http.post("/models", json=folder, headers=ops)
            v3 = http.post("/infer/minilm@v3", json=HELLO, headers=app)
            routed = http.post("/infer/minilm", json=HELLO, headers=app)

            hub = {"name": "hubbed", "source": "hf://org/tiny", "task": "embedding"}
            accepted = http.post("/models", json=hub, headers=ops)
            location = accepted.headers["Location"]
            done = eventually(
                lambda: (r := http.get(location, headers=ops).json())["state"] != "running" and r,
                what="the Hub registration",
            )
            hubbed = http.post("/infer/hubbed", json=HELLO, headers=app)

            bad_field = http.post("/models", json={"name": "x", "source": "hf://nope"}, headers=ops)
            bad_name = http.post("/models", json={"name": "a b", "source": "../m3"}, headers=ops)
            taken = http.post("/models", json=folder, headers=ops)
            missing = http.post(
                "/models", json={"name": "y", "source": "hf://org/missing"}, headers=ops
            )
            failed = eventually(
                lambda: (
                    (r := http.get(missing.headers["Location"], headers=ops).json())["state"]
                    != "running"
                    and r
                ),
                what="the failed registration",
            )
    finally:
        stop(process)

    assert forbidden.status_code == 403 and forbidden_route.status_code == 403
    assert created.status_code == 201 and created.json()["name"] == "minilm@v3"
    assert v3.status_code == 200 and v3.headers["X-ModelMora-Model-Version"] == "v3"
    assert routed.headers["X-ModelMora-Model-Version"] == "v1"  # a new version gets no traffic
    assert accepted.status_code == 202 and done["state"] == "done", done
    assert hubbed.status_code == 200
    assert bad_field.status_code == 422
    assert bad_field.json()["error"]["detail"][0]["field"] == "source"
    assert bad_name.status_code == 422 and bad_name.json()["error"]["detail"][0]["field"] == "name"
    assert taken.status_code == 409
    assert missing.status_code == 202 and failed["state"] == "failed"
    assert "org/missing" in failed["error"]
    manifest = (project / "modelmora.toml").read_text()
    assert "[models.minilm.versions.v3]" in manifest and "[models.hubbed]" in manifest
    lock = (project / "modelmora.lock").read_text()
    assert 'name = "minilm@v3"' in lock and 'name = "hubbed"' in lock
    audit = cli_json(project, "audit")
    registered = [(e["actor"], e["target"]) for e in audit if e["action"] == "model.register"]
    assert registered == [("ops", "hubbed"), ("ops", "minilm@v3")]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def cli_json(root: Path, *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "modelmora", *args, "--json"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data: list[dict[str, object]] = json.loads(done.stdout)
    return data
