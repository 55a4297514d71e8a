"""`modelmora serve`, `ps` and `run` as a person uses them: a real server process on loopback."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from modelfactory import build_embedding_model
from servers import free_port, outputs, start_serve, stop

from modelmora.errors import ModelmoraError
from modelmora.serve import config as settings
from modelmora.units import parse_duration, parse_size


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelmora", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def embedding_project(tmp_path: Path) -> Path:
    build_embedding_model(tmp_path / "tiny-bert")
    root = tmp_path / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text(
        '[project]\nname = "demo"\n\n[serve]\nkeep_alive = "10m"\n\n'
        '[models.bert]\nsource = "../tiny-bert"\ntask = "embedding"\n'
    )
    return root


@pytest.fixture
def server(embedding_project: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    url, process = start_serve(embedding_project, "--preload", "bert")
    try:
        yield url, process
    finally:
        stop(process)


@pytest.mark.slow
def test_serve_installs_serves_and_stops_cleanly(
    server: tuple[str, subprocess.Popen[str]], embedding_project: Path
) -> None:
    url, process = server
    assert (embedding_project / "modelmora.lock").is_file()  # serve locked and installed first
    reply = httpx.post(f"{url}/v1/embeddings", json={"model": "bert", "input": ["hello world"]})
    assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 32

    ps = cli("ps", "--url", url, "--json", cwd=embedding_project)
    assert ps.returncode == 0, ps.stderr
    [row] = json.loads(ps.stdout)
    assert row["name"] == "bert" and row["state"] == "ready" and row["pid"]
    assert row["expires_at"] is None  # preloaded models stay loaded
    ran = cli("run", "bert", "hello", "world", "--url", url, cwd=embedding_project)
    assert ran.returncode == 0, ran.stderr
    assert [line.split(" [")[0] for line in ran.stdout.splitlines()] == [
        "hello: 32 dimensions",
        "world: 32 dimensions",
    ]
    whole = cli("run", "bert", "hello", "--json", "--url", url, cwd=embedding_project)
    assert len(json.loads(whole.stdout)["result"]["embeddings"][0]) == 32

    children = psutil.Process(process.pid).children(recursive=True)
    assert children
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    stdout, _ = outputs(process)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    before, serving = stdout.splitlines()[:2]
    assert before.startswith("Before serving: updated modelmora.lock to match modelmora.toml, ")
    assert " files (" in before and serving == f"Serving 1 model on {url}"


@pytest.mark.slow
def test_serve_frozen_refuses_to_install(embedding_project: Path) -> None:
    result = cli("serve", "--frozen", cwd=embedding_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no modelmora.lock in {embedding_project}; run `modelmora lock`"
    ]


@pytest.mark.slow
def test_bad_serve_setting_is_one_line(embedding_project: Path) -> None:
    result = cli("serve", cwd=embedding_project, env={"MODELMORA_KEEP_ALIVE": "soon"})
    assert result.returncode == 1
    assert "MODELMORA_KEEP_ALIVE: 'soon' is not a duration" in result.stderr


@pytest.mark.slow
def test_ps_without_a_server(tmp_path: Path) -> None:
    result = cli("ps", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode == 1 and "start one with `modelmora serve`" in result.stderr


def test_settings_precedence_flag_then_env_then_manifest() -> None:
    table = {"port": 9000, "keep_alive": "10m", "memory_budget": "8GB", "preload": ["a"]}
    env = {"MODELMORA_PORT": "9100", "MODELMORA_PRELOAD": "b,c"}
    config = settings.resolve({"port": 9200}, env, table, "modelmora.toml")
    assert config.server.port == 9200
    assert config.preload == ("b", "c")
    assert config.supervisor.keep_alive == 600.0
    assert config.supervisor.memory_budget == 8_000_000_000
    assert settings.resolve({}, env, table, "modelmora.toml").server.port == 9100
    assert settings.resolve({}, {}, table, "modelmora.toml").server.port == 9000
    assert settings.resolve({}, {}, {}, "modelmora.toml").server.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("30s", 30.0), ("0", 0.0), ("-1", -1.0), ("1h", 3600.0), ("1d", 86400.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("2g", 2 * 10**9), ("100", 100)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_unknown_serve_key_names_the_key() -> None:
    with pytest.raises(ModelmoraError, match=r"modelmora\.toml: serve\.prot: unknown key"):
        settings.resolve({}, {}, {"prot": 1}, "modelmora.toml")


def test_quiet_serve_maps_to_a_real_logging_level() -> None:
    import logging.config

    from modelmora.serve.api.telemetry import log_config

    quiet = settings.ServeConfig().quiet().server
    logging.config.dictConfig(log_config(quiet.log_level))  # raised for the old "quiet"
    assert quiet.log_level == "warning"
    assert settings.ServeConfig().server.log_level == "info"


def test_a_request_deadline_is_its_timeout_else_the_servers_and_zero_means_none() -> None:
    limited = settings.SupervisorSettings(request_timeout=60)
    assert limited.deadline_after(100.0, None) == 160.0
    assert limited.deadline_after(100.0, 5) == 105.0
    assert limited.deadline_after(100.0, 0) == math.inf
    assert settings.SupervisorSettings(request_timeout=0).deadline_after(100.0, None) == math.inf


@pytest.mark.slow
def test_serve_on_a_port_in_use_is_one_line_before_anything_starts(embedding_project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = cli("serve", "--port", str(port), cwd=embedding_project)

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} is in use on 127.0.0.1; "
        "pass another --port, or stop what listens there"
    ]
    assert not (embedding_project / "modelmora.lock").exists()  # nothing installed either


@pytest.mark.slow
def test_a_template_whose_server_failed_to_start_exits_quietly() -> None:
    from modelmora.serve.protocol import pack

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    command = [sys.executable, "-m", "modelmora.serve.worker", "template"]
    with theirs:
        template = subprocess.Popen(
            [*command, str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    with ours:  # the server asks for the imports, then fails and leaves before they are done
        ours.send(pack({"kind": "prepare", "sys_path": sys.path, "imports": ["json"]}))

    _, stderr = template.communicate(timeout=60)
    assert template.returncode == 0 and stderr == ""


def test_run_prints_a_classifier_as_label_and_score_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from modelmora.cli.serving import _print_result

    labels = [{"label": "positive", "score": 0.75}, {"label": "neg", "score": 0.25}]
    _print_result("text-classification", ["good"], {"predictions": [labels]})
    _print_result("embedding", ["hi"], {"embeddings": [[0.5, -0.25, 0.0, 1.0, 2.0]]})

    assert capsys.readouterr().out.splitlines() == [
        "positive  0.7500",
        "neg       0.2500",
        "hi: 5 dimensions [0.5000, -0.2500, 0.0000, 1.0000, ...] (--json for all)",
    ]


@pytest.mark.slow
def test_jobs_shows_whole_ids(embedding_project: Path) -> None:
    import asyncio

    from modelmora.serve.jobstore import JobStore

    async def create() -> str:
        (embedding_project / ".modelmora").mkdir(exist_ok=True)
        async with JobStore(embedding_project / ".modelmora" / "jobs.sqlite3") as store:
            return (await store.create("bert", "hello")).id

    job_id = asyncio.run(create())
    listed = cli("jobs", cwd=embedding_project, env={"COLUMNS": "60"})

    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout


@pytest.mark.slow
def test_stop_and_load_a_model_of_a_running_server(
    server: tuple[str, subprocess.Popen[str]], embedding_project: Path
) -> None:
    url, _ = server

    stopped = cli("stop", "bert", "--url", url, cwd=embedding_project)
    state = httpx.get(f"{url}/models/bert").json()["state"]
    loaded = cli("load", "bert", "--url", url, cwd=embedding_project)

    assert stopped.returncode == 0 and state == "unloaded", stopped.stderr
    assert stopped.stdout == "Unloaded bert; the next request loads it again\n"
    assert loaded.returncode == 0 and loaded.stdout.startswith("Loaded bert on cpu (pid ")
    assert httpx.get(f"{url}/models/bert").json()["state"] == "ready"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_are_lines_for_a_person_on_a_terminal_and_json_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelmora.serve.api.telemetry import TextFormatter, log_config

    record = logging.LogRecord("modelmora.access", logging.INFO, "", 0, "request", None, None)
    record.fields = {"method": "GET", "path": "/models", "status": 200, "duration_ms": 1.25}
    record.fields |= {"request_id": "ab12", "model": None}
    with_file = log_config("info", "auto", "/tmp/server.log")
    monkeypatch.setattr(sys, "stderr", Terminal())

    assert TextFormatter().format(record)[12:] == " INFO    GET /models 200 1.2 ms request_id=ab12"
    assert log_config("info")["handlers"]["stderr"]["formatter"] == "text"
    assert with_file["handlers"]["stderr"]["formatter"] == "json"  # stderr was no terminal then
    assert with_file["handlers"]["file"] == {
        "class": "logging.FileHandler", "formatter": "json", "filename": "/tmp/server.log"
    }  # fmt: skip
    assert log_config("info", "json")["handlers"]["stderr"]["formatter"] == "json"


def test_log_settings_are_checked() -> None:
    flags = {"log_format": "text", "log_file": "s.log", "metrics_public": True}
    server = settings.resolve(flags, {}, {}, "modelmora.toml").server

    assert (server.log_format, server.log_file, server.metrics_public) == ("text", "s.log", True)
    with pytest.raises(ModelmoraError, match="--log-format: 'xml' is not a log format"):
        settings.resolve({"log_format": "xml"}, {}, {}, "modelmora.toml")
    with pytest.raises(ModelmoraError, match=r"--log-file: '/no/such/s\.log': there is no folder"):
        settings.resolve({"log_file": "/no/such/s.log"}, {}, {}, "modelmora.toml")


@pytest.mark.slow
def test_logs_shows_the_end_of_the_log_file(embedding_project: Path) -> None:
    log = embedding_project / "server.log"
    entries = [
        {"time": "2026-11-28T19:40:06.123+00:00", "level": "info", "message": f"request {i}"}
        for i in range(3)
    ]
    log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    env = {"MODELMORA_LOG_FILE": str(log)}

    shown = cli("logs", "-n", "2", cwd=embedding_project, env=env)
    raw = cli("logs", "-n", "1", "--json", cwd=embedding_project, env=env)
    none = cli("logs", cwd=embedding_project)

    assert shown.stdout.splitlines() == [
        "19:40:06.123 INFO    request 1",
        "19:40:06.123 INFO    request 2",
    ]
    assert json.loads(raw.stdout) == entries[2]
    assert none.returncode == 1 and none.stderr.strip() == (
        "error: the server logs to stderr only; "
        "start it with `modelmora serve --log-file PATH` (or [serve] log_file)"
    )


@pytest.mark.slow
def test_serve_a_folder_without_a_project(tmp_path: Path) -> None:
    build_embedding_model(tmp_path / "tiny-bert")
    home = {"MODELMORA_HOME": str(tmp_path / "home")}
    url, process = start_serve(tmp_path, "./tiny-bert", "--task", "embedding", env=home)
    try:
        answer = httpx.post(f"{url}/infer/tiny-bert", json={"inputs": "hello"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["dimensions"] == 32
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        stdout, _ = outputs(process)
    assert "from a scratch project in" in stdout
    assert not (tmp_path / "modelmora.toml").exists()  # nothing written where it was run
    assert list((tmp_path / "home").glob("**/scratch/*/modelmora.lock"))


@pytest.mark.slow
def test_task_without_a_source_is_a_usage_error(tmp_path: Path) -> None:
    refused = cli("serve", "--task", "embedding", cwd=tmp_path)
    assert refused.returncode == 2 and "--task goes with a SOURCE" in refused.stderr


def test_served_connections_send_without_nagle_delay() -> None:
    """A connection accepted on the socket `bind` makes has TCP_NODELAY, as asyncio sets it only
    for sockets that say they are TCP: without it a response's body waits for the client's
    delayed ACK of its headers, 40 ms per request on Linux."""
    import asyncio

    from modelmora.serve.app import bind

    async def accepted_nodelay() -> int:
        sock = bind(settings.ServerSettings(host="127.0.0.1", port=0))
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted = writer.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await seen
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
