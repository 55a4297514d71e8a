"""`modelmora` commands for the server: serve, run, load, stop, logs, ps, jobs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modelmora.cli.app import (
    app,
    console,
    current_project,
    download_progress,
    emit_json,
    human_size,
    options,
    plural,
    say,
    warn,
)
from modelmora.errors import ModelmoraError

if TYPE_CHECKING:
    from modelmora.project import Project
    from modelmora.serve.status import ModelStatus


# --- serving commands ---------------------------------------------------------------------------


@app.command()
def serve(
    source: str | None = typer.Argument(
        None,
        metavar="[SOURCE]",
        help="Try one model without a project: a folder, hf://ORG/REPO, https://URL or "
        "pkg://MODULE/PATH (kept in a scratch project in the cache, reused next time).",
    ),
    task: str | None = typer.Option(None, help="With SOURCE: its task, if it cannot be guessed."),
    host: str | None = typer.Option(None, help="Address to bind [default: 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Port [default: 8000]."),
    grpc_port: int | None = typer.Option(
        None, help="Also serve the Open Inference Protocol over gRPC there [default: off]."
    ),
    max_loaded_models: int | None = typer.Option(None, help="Most models loaded at once (0: any)."),
    memory_budget: str | None = typer.Option(None, help="Memory all workers may use, e.g. 8GB."),
    keep_alive: str | None = typer.Option(None, help="Idle time before unload: 5m, 0, -1 (never)."),
    preload: list[str] | None = typer.Option(None, help="Load this model at start; repeatable."),
    api_key: str | None = typer.Option(None, help="Require `Authorization: Bearer KEY`."),
    metrics_public: bool = typer.Option(False, help="Serve /metrics without the API key."),
    log_format: str | None = typer.Option(
        None, help="json or text [default: text on a terminal, else json]."
    ),
    log_file: str | None = typer.Option(None, help="Also write the log there (JSON lines)."),
    frozen: bool = typer.Option(False, "--frozen", help="Never lock or install; fail instead."),
    offline: bool = typer.Option(False, help="Install from the cache only."),
    ray: bool = typer.Option(
        False, "--ray", help="Deploy onto Ray Serve (pip install 'modelmora[ray]')."
    ),
    ray_address: str | None = typer.Option(
        None, envvar="RAY_ADDRESS", help="With --ray: the cluster [default: start a local one]."
    ),
    kafka: str | None = typer.Option(
        None,
        envvar="MODELMORA_KAFKA",
        metavar="HOST:PORT",
        help="Also take requests from Kafka, at these bootstrap servers (comma-separated); the "
        "[kafka] table says the rest (pip install 'modelmora[kafka]').",
    ),
) -> None:
    """Serve the project's models, or one SOURCE, over HTTP (native and OpenAI-compatible APIs)."""
    import os

    from modelmora import project, runfile
    from modelmora.serve import config
    from modelmora.serve.app import bind, run_server, served_models
    from modelmora.storage import Storage

    if task is not None and source is None:
        raise typer.BadParameter("--task goes with a SOURCE: `modelmora serve ./folder --task ...`")
    flags = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "max_loaded_models": max_loaded_models,
        "memory_budget": memory_budget,
        "keep_alive": keep_alive,
        "preload": tuple(preload or ()),
        "api_key": api_key,
        "metrics_public": metrics_public or None,
        "log_format": log_format,
        "log_file": log_file,
    }
    current = None if source else current_project()
    manifest = current.manifest() if current else None
    table, where = (manifest.serve, manifest.path.name) if manifest else ({}, "SOURCE")
    settings = config.resolve(flags, os.environ, table, where)
    settings = settings.quiet() if options.quiet else settings
    kafka_table = _kafka(kafka, manifest, where, ray)
    if ray:  # Ray Serve's proxies listen, on every node: see modelmora/ray
        from modelmora.ray import serve_on_ray

        current = current or _scratch_project(str(source), task, offline)
        if not frozen:
            _install_before_serving(current, offline)
        return serve_on_ray(current, settings, ray_address, say)
    sock = bind(settings.server)  # a port in use fails here, before installing or starting
    if current is None:
        current = _scratch_project(str(source), task, offline)
    elif not frozen:
        _install_before_serving(current, offline)
    installed = project.installed_models(current, frozen=True)  # the lock is fresh by now
    models = served_models(installed, settings.preload)
    server = settings.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    url = f"http://{host}:{server.port}"
    say(f"Serving {plural(len(models), 'model')} on {url}")
    if not runfile.is_writable(current.root):
        warn(
            f"{current.root / '.modelmora'} is read-only: serving without async jobs, the "
            "project's API keys and audit, and run-time model changes"
        )
        run_server(models, settings, None, sock, None, None, kafka=kafka_table)
        return
    with runfile.announced(current.root, url):
        run_server(
            models,
            settings,
            current.jobs_path,
            sock,
            current.registry_path,
            current.root,
            storage=Storage(manifest.storage) if manifest and manifest.storage else None,
            kafka=kafka_table,
        )


def _kafka(flag: str | None, manifest: Any, where: str, ray: bool) -> Any:
    """The `[kafka]` settings when `--kafka` or the table asks for Kafka, checked now (aiokafka
    installed, a broker answering, its topics there or created), before anything is installed
    or started; else None."""
    from modelmora.kafka import config as kafka_config

    table = kafka_config.resolve(flag, manifest.kafka if manifest else None, where)
    if table is not None and ray:
        raise ModelmoraError(
            "--ray does not take requests from Kafka", "leave out --ray or --kafka"
        )
    if table is not None:
        kafka_config.check(table)
        from modelmora.kafka.topics import ensure_topics

        created = ensure_topics(table)
        if created:
            say(f"Created the Kafka topics {', '.join(created)}")
    return table


def _scratch_project(source: str, task: str | None, offline: bool) -> Project:
    """The cache's throwaway project for `serve SOURCE`: added and installed on first use."""
    from modelmora import project

    with download_progress() as progress:
        scratch = project.scratch_project(source, task=task, offline=offline, progress=progress)
    say(f"Serving {source} from a scratch project in {scratch.root}")
    return scratch


def _install_before_serving(current: Project, offline: bool) -> None:
    """Relock and install what changed, as `uv run` does, and say so in one line if anything did."""
    from modelmora import project

    try:
        project.check_lock(current)
        stale = False
    except ModelmoraError:
        stale = True
    with download_progress() as progress:
        result = project.install(current, offline=offline, progress=progress)
    done = ["updated modelmora.lock to match modelmora.toml"] if stale else []
    if result.files_downloaded:
        size = human_size(result.bytes_downloaded)
        done.append(f"fetched {plural(result.files_downloaded, 'file')} ({size})")
    if done:
        say(f"Before serving: {', '.join(done)}")


def _client(url: str, api_key: str | None) -> Any:
    from modelmora.client import Client

    return Client(url, api_key=api_key)


URL_OPTION = typer.Option("http://127.0.0.1:8000", "--url", envvar="MODELMORA_URL", help="Server.")
KEY_OPTION = typer.Option(None, "--api-key", envvar="MODELMORA_API_KEY", help="API key.")


@app.command()
def run(
    name: str = typer.Argument(metavar="NAME", help="The model to run."),
    text: list[str] = typer.Argument(
        metavar="INPUT...", help="Text(s) to embed, classify or continue."
    ),
    max_new_tokens: int | None = typer.Option(None, help="Generation: most tokens to produce."),
    temperature: float | None = typer.Option(None, help="Generation: 0 is greedy."),
    size: str | None = typer.Option(None, help="Image: WIDTHxHEIGHT, e.g. 512x512."),
    steps: int | None = typer.Option(None, help="Image: denoising steps."),
    seed: int | None = typer.Option(None, help="Image: the same seed gives the same image."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Image: write it there [default: image-SEED.png]."
    ),
    url: str = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the whole reply as JSON."),
) -> None:
    """Run one inference on a running server (`modelmora serve`), like `ollama run`."""
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "size": size}
    given |= {"steps": steps, "seed": seed}
    opts = {k: v for k, v in given.items() if v is not None}
    with _client(url, api_key) as client:
        model = client.model(name)
        if model.task == "text-generation" and not as_json:
            for piece in client.stream_text(name, " ".join(text), **opts):
                print(piece, end="", flush=True)
            print()
            return
        if model.task == "text-to-image" and not as_json:
            return _run_image(client, name, " ".join(text), output, opts)
        prompt = " ".join(text) if model.task == "text-to-image" else None
        reply = client.infer(name, prompt or (text if len(text) > 1 else text[0]), **opts)
    if as_json:
        return emit_json(dict(reply.body))
    _print_result(model.task, text, reply.result)


def _run_image(client: Any, name: str, prompt: str, output: Path | None, opts: Any) -> None:
    from modelmora.cli.images import save_images, step_progress

    with step_progress() as on_progress:
        generated = client.generate_image(name, prompt, on_progress=on_progress, **opts)
    size = f"{generated.width}x{generated.height}"
    for path, image in zip(save_images(generated, output), generated.images, strict=True):
        say(f"Wrote {path} ({size}, seed {image.seed})")


def _print_result(task: str, texts: list[str], result: Any) -> None:
    """An embedding's size and first values, a classifier's `label  score` lines; else JSON."""
    if task == "embedding":
        for text, vector in zip(texts, result["embeddings"], strict=True):
            head = ", ".join(f"{value:.4f}" for value in vector[:4])
            more = ", ..." if len(vector) > 4 else ""
            print(f"{text}: {len(vector)} dimensions [{head}{more}] (--json for all)")
    elif task == "text-classification":
        indent = "  " if len(texts) > 1 else ""
        for text, labels in zip(texts, result["predictions"], strict=True):
            if indent:
                print(f"{text}:")
            width = max(len(label["label"]) for label in labels)
            for label in labels:
                print(f"{indent}{label['label']:<{width}}  {label['score']:.4f}")
    else:
        emit_json(result)


@app.command("load")
def load_model(
    name: str = typer.Argument(metavar="NAME", help="The model to load."),
    url: str = URL_OPTION,
    api_key: str | None = KEY_OPTION,
) -> None:
    """Load a model on a running server now, so that its first request does not wait."""
    with _client(url, api_key) as client:
        model = client.load(name)
    memory = f", {human_size(model.memory_bytes)}" if model.memory_bytes else ""
    took = f" in {model.last_load_ms / 1000:.1f} s" if model.last_load_ms is not None else ""
    say(f"Loaded [bold]{name}[/] on {model.device or '-'} (pid {model.pid}{memory}){took}")


@app.command("stop")
def stop_model(
    name: str = typer.Argument(metavar="NAME", help="The model to unload."),
    url: str = URL_OPTION,
    api_key: str | None = KEY_OPTION,
) -> None:
    """Unload a model on a running server, like `ollama stop`: its worker ends, memory is freed."""
    with _client(url, api_key) as client:
        client.unload(name)
    say(f"Unloaded [bold]{name}[/]; the next request loads it again")


@app.command()
def logs(
    lines: int = typer.Option(50, "--lines", "-n", min=1, help="How many of the last lines."),
    log_file: Path | None = typer.Option(None, help="The file [default: the serve log_file]."),
    as_json: bool = typer.Option(False, "--json", help="The JSON lines as they are."),
) -> None:
    """Show the end of the server's log file (`modelmora serve --log-file PATH`)."""
    import collections
    import os

    from modelmora.serve import config
    from modelmora.serve.api.telemetry import text_line

    if log_file is None:
        manifest = current_project().manifest()
        found = config.resolve({}, os.environ, manifest.serve, manifest.path.name).server.log_file
        if found is None:
            raise ModelmoraError(
                "the server logs to stderr only",
                "start it with `modelmora serve --log-file PATH` (or [serve] log_file)",
            )
        log_file = Path(found)
    if not log_file.is_file():
        raise ModelmoraError(f"no log file at {log_file}", "has `modelmora serve` run yet?")
    with log_file.open(encoding="utf-8", errors="replace") as file:
        last = collections.deque(file, maxlen=lines)
    for line in last:
        print(line.rstrip("\n") if as_json else _log_line(line, text_line))


def _log_line(line: str, render: Any) -> str:
    """A JSON log line for a person; a line that is no JSON object as it is."""
    import json

    try:
        entry = json.loads(line)
    except ValueError:
        return line.rstrip("\n")
    return str(render(entry)) if isinstance(entry, dict) else line.rstrip("\n")


@app.command()
def ps(
    url: str = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show what a running server has loaded: state, memory, pid, expiry, crash loops."""
    from rich.table import Table

    with _client(url, api_key) as client:
        models = client.models()
    if as_json:
        return emit_json([model.model_dump(mode="json") for model in models])
    table = Table(box=None, pad_edge=False)
    gpu = any(model.gpu_memory_bytes is not None for model in models)
    columns = ("name", "task", "state", "memory", "cpu", *(("gpu",) if gpu else ()), "pid")
    for column in (*columns, "device", "until", "error"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.name,
            model.task,
            _state(model.state, model.crash_streak),
            _memory(model),
            "-" if model.cpu_percent is None else f"{model.cpu_percent:.0f}%",
            *((_gpu(model),) if gpu else ()),
            str(model.pid or "-"),
            model.device or "-",
            _until(model.expires_at, model.restart_at),
            model.error or "",
        )
    console().print(table)


def _memory(model: ModelStatus) -> str:
    """The worker's resident memory, and the part only it holds (USS) where that is known."""
    rss = model.rss_bytes or model.memory_bytes
    if not rss:
        return "-"
    return human_size(rss) + (f" ({human_size(model.uss_bytes)} own)" if model.uss_bytes else "")


def _gpu(model: ModelStatus) -> str:
    if model.gpu_memory_bytes is None:
        return "-"
    busy = "" if model.gpu_utilization is None else f" {model.gpu_utilization:.0f}%"
    return human_size(model.gpu_memory_bytes) + busy


def _state(state: str, crash_streak: int) -> str:
    """`restarting (crash 3 in a row)` for a crash loop, else the state."""
    return f"{state} (crash {crash_streak} in a row)" if state == "restarting" else state


def _until(expires_at: float | None, restart_at: float | None) -> str:
    """When the next change comes: an idle unload, or a crashed worker's restart."""
    import time

    if restart_at is not None:
        return f"restart in {max(0, restart_at - time.time()):.0f}s"
    return "-" if expires_at is None else f"unload in {max(0, expires_at - time.time()):.0f}s"


@app.command()
def jobs(
    model: str | None = typer.Option(None, help="Only this model's jobs."),
    state: str | None = typer.Option(None, help="queued, running, succeeded, failed, cancelled."),
    limit: int = typer.Option(50, min=1, help="Jobs per page."),
    page: int = typer.Option(1, min=1, help="Page, newest jobs first."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON, results included."),
) -> None:
    """List the project's async jobs (POST /jobs), read from its jobs file; no server needed."""
    import asyncio

    from modelmora.serve.api.schemas import JobList
    from modelmora.serve.jobstore import JobPage

    path = current_project().jobs_path
    found = asyncio.run(_list_jobs(path, model, state, page, limit)) if path.exists() else None
    listed = found or JobPage([], 0, page, limit)
    if as_json:
        return emit_json(JobList.from_page(listed).model_dump(mode="json"))
    _print_jobs(listed)


async def _list_jobs(
    path: Path, model: str | None, state: str | None, page: int, limit: int
) -> Any:
    from modelmora.serve.jobstore import JobStore

    async with JobStore(path) as store:
        return await store.list_jobs(model=model, state=state, page=page, limit=limit)


def _print_jobs(listed: Any) -> None:
    from datetime import datetime

    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    id_width = max((len(job.id) for job in listed.jobs), default=2)
    table.add_column("id", no_wrap=True, min_width=id_width)  # whole: `GET /jobs/{id}` takes it
    for column in ("model", "state", "priority", "created", "run", "error"):
        table.add_column(column)
    for job in listed.jobs:
        created = datetime.fromtimestamp(job.created_at).strftime("%Y-%m-%d %H:%M:%S")
        run_ms = "-" if job.run_ms is None else f"{job.run_ms:.0f} ms"
        error = (job.error or {}).get("message", "")
        table.add_row(job.id, job.model, job.state, str(job.priority), created, run_ms, error)
    console().print(table)
    say(f"{len(listed.jobs)} of {plural(listed.total, 'job')} (page {listed.page})")
