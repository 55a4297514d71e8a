"""API keys, scopes, rate limits and the audit log: the registry, the CLI, and a real server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from clirun import Result
from liveserver import serve
from modelfactory import build_embedding_model, build_generation_model
from servers import start_serve, stop
from waiting import eventually

from modelmora import audit, keys, registry
from modelmora.errors import ModelmoraError
from modelmora.serve.api.auth import REFRESH_SECONDS, KeyRing
from modelmora.serve.app import create_app
from modelmora.serve.config import SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text('[project]\nname = "demo"\n')
    return root


@pytest.fixture
def connection(project: Path) -> Iterator[sqlite3.Connection]:
    opened = registry.connect(project / ".modelmora" / "registry.sqlite3")
    yield opened
    opened.close()


# --- the registry and the keys ------------------------------------------------------------------


def test_the_registry_is_migrated_once_and_says_its_version(project: Path) -> None:
    path = project / ".modelmora" / "registry.sqlite3"
    first = registry.connect(path)
    keys.create(first, "app", "infer", keys.Limits(), "test")
    first.close()

    again = registry.connect(path)  # opening an existing file keeps its rows
    assert registry.schema_version(again) == len(registry.MIGRATIONS)
    assert [key.name for key in keys.listed(again)] == ["app"]
    assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_a_key_is_stored_hashed_never_in_plain_text(
    project: Path, connection: sqlite3.Connection
) -> None:
    key, secret = keys.create(connection, "app", "infer", keys.Limits(), "test")
    connection.close()

    stored = b"".join(path.read_bytes() for path in (project / ".modelmora").iterdir())
    assert secret.startswith("mm_") and len(secret) > 40
    assert secret.encode() not in stored
    assert secret[len(key.prefix) :].encode() not in stored
    assert keys.hash_secret(secret).encode() in stored


def test_scopes_admin_implies_infer(connection: sqlite3.Connection) -> None:
    infer, _ = keys.create(connection, "app", "infer", keys.Limits(), "test")
    admin, _ = keys.create(connection, "ops", "admin", keys.Limits(), "test")

    assert infer.allows("infer") and not infer.allows("admin")
    assert admin.allows("infer") and admin.allows("admin")
    with pytest.raises(ModelmoraError, match="unknown scope 'root'"):
        keys.create(connection, "x", "root", keys.Limits(), "test")


def test_a_name_is_taken_until_its_key_is_revoked(connection: sqlite3.Connection) -> None:
    keys.create(connection, "app", "infer", keys.Limits(), "test")
    with pytest.raises(ModelmoraError, match="a key named 'app' exists"):
        keys.create(connection, "app", "admin", keys.Limits(), "test")

    revoked = keys.revoke(connection, "app", "test")
    _, secret = keys.create(connection, "app", "admin", keys.Limits(), "test")

    assert revoked.revoked_at is not None
    assert [key.scope for key in keys.live(connection).values()] == ["admin"]
    assert keys.live(connection).keys() == {keys.hash_secret(secret)}
    with pytest.raises(ModelmoraError, match="no live key named 'nope'"):
        keys.revoke(connection, "nope", "test")


def test_limits_are_checked_and_bursts_default_to_a_second_and_a_minute(
    connection: sqlite3.Connection,
) -> None:
    with pytest.raises(ModelmoraError, match="--rps 0: must be above 0"):
        keys.create(connection, "a", "infer", keys.Limits(requests_per_second=0), "test")
    with pytest.raises(ModelmoraError, match="--burst goes with --rps"):
        keys.create(connection, "a", "infer", keys.Limits(burst=3), "test")

    key, _ = keys.create(
        connection, "a", "infer", keys.Limits(requests_per_second=5, tokens_per_minute=600), "t"
    )
    assert key.limits.request_burst() == 5 and key.limits.tokens_burst() == 600
    assert keys.Limits(requests_per_second=0.2).request_burst() == 1


def test_key_changes_are_audited_without_the_secret(connection: sqlite3.Connection) -> None:
    _, secret = keys.create(connection, "app", "infer", keys.Limits(), "cli:alice")
    keys.revoke(connection, "app", "cli:bob")

    revoked, created = audit.entries(connection)
    assert (created.actor, created.action, created.target) == ("cli:alice", "key.create", "app")
    assert created.before is None and created.after["scope"] == "infer"
    assert (revoked.actor, revoked.action, revoked.before["name"]) == (
        "cli:bob",
        "key.revoke",
        "app",
    )
    assert secret not in json.dumps([created.after, revoked.before])
    assert [entry.id for entry in audit.entries(connection, limit=1)] == [revoked.id]


# --- what the server accepts ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_keyring_sees_new_and_revoked_keys_once_the_file_changes(
    project: Path, connection: sqlite3.Connection
) -> None:
    clock = FakeClock()
    served = registry.connect(project / ".modelmora" / "registry.sqlite3")
    ring = KeyRing(served, api_key=None, clock=clock)
    assert not ring.is_guarding()  # no key anywhere: an open server, as before keys

    _, secret = keys.create(connection, "app", "infer", keys.Limits(requests_per_second=1), "t")
    clock.now += REFRESH_SECONDS
    assert ring.is_guarding()  # what the middleware asks first; it re-reads the keys
    caller = ring.caller(secret)
    assert caller is not None and caller.name == "app"
    assert ring.caller("mm_wrong") is None

    assert caller.admit() is None
    refused = caller.admit()
    keys.create(connection, "other", "admin", keys.Limits(), "t")  # the file changes
    clock.now += REFRESH_SECONDS
    ring.is_guarding()
    assert refused is not None and ring.caller(secret) is caller  # same limits: same buckets

    keys.revoke(connection, "app", "t")
    clock.now += REFRESH_SECONDS
    ring.is_guarding()
    assert ring.caller(secret) is None
    ring.close()


def test_the_single_api_key_is_an_admin_without_limits() -> None:
    ring = KeyRing(None, api_key="s3cret")
    caller = ring.caller("s3cret")

    assert ring.is_guarding()
    assert caller is not None and caller.name == "api-key" and caller.allows("admin")
    assert all(caller.admit() is None for _ in range(1000))
    assert ring.caller("s3cre") is None and ring.caller("") is None


# --- the commands ---------------------------------------------------------------------------------


def test_keys_create_list_revoke_and_audit_from_the_command_line(
    project: Path, cli_run: Callable[..., Result]
) -> None:
    def run(*args: str, code: int = 0) -> str:
        result = cli_run(*args, cwd=project, code=code)
        return result.stdout + result.stderr

    created = json.loads(run("keys", "create", "app", "--rps", "2", "--burst", "4", "--json"))
    shown = run("keys", "create", "ops", "--scope", "admin")
    listed = json.loads(run("keys", "list", "--json"))
    revoked = json.loads(run("keys", "revoke", "app", "--json"))
    table = run("keys", "list")
    log = json.loads(run("audit", "--json"))

    assert created["secret"].startswith(created["prefix"]) and created["scope"] == "infer"
    assert (created["requests_per_second"], created["burst"]) == (2.0, 4)
    assert "mm_" in shown and "shown only now" in shown
    assert [key["name"] for key in listed] == ["app", "ops"]
    assert all("secret" not in key for key in listed)
    assert revoked["name"] == "app" and revoked["revoked_at"] is not None
    assert "revoked" in table and created["secret"] not in table
    assert [(e["action"], e["target"]) for e in log] == [
        ("key.revoke", "app"),
        ("key.create", "ops"),
        ("key.create", "app"),
    ]
    assert all(e["actor"].startswith("cli:") for e in log)
    assert "key.revoke" in run("audit", "--limit", "1")
    assert "no live key named 'app'" in run("keys", "revoke", "app", code=1)
    assert "unknown scope" in run("keys", "create", "x", "--scope", "root", code=1)


# --- a real server --------------------------------------------------------------------------------


@pytest.fixture
def embedding_project(tmp_path: Path) -> Path:
    build_embedding_model(tmp_path / "tiny-bert")
    root = tmp_path / "served"
    root.mkdir()
    (root / "modelmora.toml").write_text(
        '[project]\nname = "served"\n\n[serve]\nkeep_alive = "10m"\n\n'
        '[models.bert]\nsource = "../tiny-bert"\ntask = "embedding"\n'
    )
    return root


def cli_json(root: Path, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-m", "modelmora", *args, "--json"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


INFER = {"inputs": ["hello world"]}


@pytest.mark.slow
def test_keys_scopes_and_audit_on_a_running_server(embedding_project: Path) -> None:
    url, process = start_serve(embedding_project, "--preload", "bert")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/infer/bert", json=INFER).status_code == 200  # no keys: open

            app = cli_json(embedding_project, "keys", "create", "app")
            ops = cli_json(embedding_project, "keys", "create", "ops", "--scope", "admin")
            assert isinstance(app, dict) and isinstance(ops, dict)
            eventually(
                lambda: http.post("/infer/bert", json=INFER).status_code == 401,
                what="a key created while the server runs to guard it",
            )
            missing = http.get("/models")
            infer = http.post("/infer/bert", json=INFER, headers=bearer(app["secret"]))
            listed = http.get("/models", headers=bearer(app["secret"]))
            forbidden = http.post("/models/bert/unload", headers=bearer(app["secret"]))
            unloaded = http.post("/models/bert/unload", headers=bearer(ops["secret"]))
            loaded = http.post("/models/bert/load", headers=bearer(ops["secret"]))
            health = http.get("/health")
            ready = http.get("/ready")  # probes send no key

            cli_json(embedding_project, "keys", "revoke", "app")
            eventually(
                lambda: http.get("/models", headers=bearer(app["secret"])).status_code == 401,
                what="a revoked key to be refused",
            )
            still = http.get("/models", headers=bearer(ops["secret"]))
    finally:
        stop(process)

    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert infer.status_code == 200 and listed.status_code == 200
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "insufficient_scope"
    assert "admin" in forbidden.json()["error"]["message"]
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
    assert health.status_code == 200 and still.status_code == 200
    assert ready.status_code == 200 and ready.json()["ready"] is True

    log = cli_json(embedding_project, "audit")
    assert isinstance(log, list)
    actions = [(e["actor"], e["action"], e["target"]) for e in log]
    assert actions[:3] == [
        (actions[0][0], "key.revoke", "app"),
        ("ops", "model.load", "bert"),
        ("ops", "model.unload", "bert"),
    ]
    assert log[1]["before"] == {"state": "unloaded"} and log[1]["after"] == {"state": "ready"}
    assert log[2]["before"] == {"state": "ready"} and log[2]["after"] == {"state": "unloaded"}


@pytest.mark.slow
def test_rate_limits_refuse_one_key_while_another_goes_on(embedding_project: Path) -> None:
    limited = cli_json(
        embedding_project, "keys", "create", "slow", "--rps", "0.001", "--burst", "2"
    )
    greedy = cli_json(embedding_project, "keys", "create", "greedy", "--tpm", "1")
    free = cli_json(embedding_project, "keys", "create", "free")
    assert isinstance(limited, dict) and isinstance(greedy, dict) and isinstance(free, dict)
    url, process = start_serve(
        embedding_project, "--preload", "bert", env={"MODELMORA_API_KEY": "s3cret"}, key="s3cret"
    )
    embed = {"model": "bert", "input": "a b c"}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:

            def post(key: str, path: str = "/infer/bert", body: object = INFER) -> httpx.Response:
                return http.post(path, json=body, headers=bearer(key))

            first = [post(limited["secret"]), post(limited["secret"])]
            refused, others = [], []
            for _ in range(5):  # the limited key floods; the other one is served meanwhile
                refused.append(post(limited["secret"]))
                others.append(post(free["secret"]))
            tokens = post(greedy["secret"], "/v1/embeddings", embed)
            over = post(greedy["secret"], "/v1/embeddings", embed)  # the first one's usage counts
            single = post("s3cret", "/models/bert/unload", None)
            wrong = http.get("/models", headers=bearer("s3cre"))
    finally:
        stop(process)

    assert [r.status_code for r in first] == [200, 200]
    assert [r.status_code for r in refused] == [429] * 5
    assert [r.status_code for r in others] == [200] * 5
    headers = refused[-1].headers
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Limit"] == "2" and headers["RateLimit-Remaining"] == "0"
    assert int(headers["RateLimit-Reset"]) >= 1
    assert refused[-1].json()["error"]["code"] == "rate_limited"
    assert tokens.status_code == 200 and tokens.json()["usage"]["prompt_tokens"] > 1
    assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error"
    assert int(over.headers["Retry-After"]) >= 1
    assert single.status_code == 200 and wrong.status_code == 401
    log = cli_json(embedding_project, "audit", "--limit", "1")
    assert isinstance(log, list) and log[0]["actor"] == "api-key"
    assert log[0]["action"] == "model.unload"


@pytest.mark.slow
def test_a_streamed_answer_counts_against_the_tokens_per_minute(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with closing(registry.connect(path)) as connection:
        _, secret = keys.create(connection, "chat", "infer", keys.Limits(tokens_per_minute=1), "t")
    gen = ServedModel("gen", "text-generation", build_generation_model(tmp_path / "gen"))
    app = create_app(Supervisor([gen], SupervisorSettings(request_timeout=60)), registry_path=path)
    body = {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body |= {"max_tokens": 3}
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        streamed = http.post("/v1/chat/completions", json=body, headers=bearer(secret))
        over = http.post("/v1/chat/completions", json=body, headers=bearer(secret))

    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
