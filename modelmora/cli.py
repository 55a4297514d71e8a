"""The `modelmora` command: thin Typer commands that parse, call `project`, and print with rich.

Heavy modules (pydantic, huggingface_hub, the server) are imported inside the commands that need
them, so `modelmora --help` starts fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from modelmora import __version__, output
from modelmora.errors import ModelmoraError

if TYPE_CHECKING:
    from rich.console import Console

    from modelmora.cache import SnapshotUse
    from modelmora.project import InstallMode, InstallResult, ModelInfo, Progress, Project

app = typer.Typer(
    name="modelmora",
    help="Pin, cache and serve machine-learning models on your own machine.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion; costs no import
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs 0.2 s of imports
)
cache_app = typer.Typer(
    help="Inspect and maintain the shared model cache.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(cache_app, name="cache")


@dataclass
class Options:
    project: Path | None = None
    quiet: bool = False
    debug: bool = False


options = Options()


def _version(value: bool) -> None:
    if value:
        print(f"modelmora {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    project: Path | None = typer.Option(
        None,
        "--project",
        "-p",
        help="Project folder (default: nearest with a modelmora.toml).",
        envvar="MODELMORA_PROJECT",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    options.project, options.quiet, options.debug = project, quiet, debug


# --- output helpers -----------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    if not options.quiet:
        _console().print(message)


def warn(message: str) -> None:
    """A warning on stderr, even with --quiet: something may not work as the user expects."""
    from rich.markup import escape

    _console(stderr=True).print(f"[bold yellow]warning:[/] {escape(message)}")


def emit_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _project() -> Project:
    from modelmora.project import find_project

    return find_project(options.project)


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Progress]:
    """Download progress for `add` and `install`; on Ctrl-C, say what becomes of the downloads."""
    try:
        with _progress_display(enabled) as progress:
            yield progress
    except KeyboardInterrupt:
        _console(stderr=True).print(
            "[bold red]interrupted:[/] partial downloads are kept in the cache; "
            "`modelmora install` resumes them"
        )
        raise SystemExit(130) from None


@contextmanager
def _progress_display(enabled: bool) -> Iterator[Progress]:
    from modelmora.progress import PlainProgress, RichProgress, SilentProgress

    if options.quiet or not enabled:
        yield SilentProgress()
    elif sys.stderr.isatty():
        with RichProgress(_console(stderr=True)) as progress:
            yield progress
    else:
        yield PlainProgress(lambda line: print(line, file=sys.stderr))


# --- project commands ---------------------------------------------------------------------------


@app.command()
def init(
    folder: Path = typer.Argument(Path("."), help="Where to create modelmora.toml."),
    name: str | None = typer.Option(None, help="Project name (default: the folder's name)."),
) -> None:
    """Create a modelmora.toml in FOLDER."""
    from modelmora import project

    created = project.init(folder, name)
    say(f"Created [bold]{created.manifest_path}[/]; next: `modelmora add hf://ORG/REPO`")


@app.command()
def add(
    source: str = typer.Argument(
        help="hf://ORG/REPO[@REV], https://URL, pkg://MODULE/PATH or a folder."
    ),
    name: str | None = typer.Option(None, help="Name for the model (default: from the source)."),
    task: str | None = typer.Option(None, help="embedding, text-generation, text-classification."),
    revision: str | None = typer.Option(None, help="Branch, tag or commit (Hub sources)."),
    include: list[str] | None = typer.Option(None, help="Glob of files to take; repeatable."),
    exclude: list[str] | None = typer.Option(None, help="Glob of files to leave; repeatable."),
    allow_pickle: bool | None = typer.Option(
        None, "--allow-pickle", help="Accept pickle weights (*.bin, *.pt): they can run code."
    ),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps."),
    replace: bool = typer.Option(
        False, "--replace", help="Give an existing model NAME this source; keeps its settings."
    ),
    offline: bool = typer.Option(False, help="Work from the cache only."),
) -> None:
    """Add a model to the manifest, then lock and install it."""

    from modelmora import project

    say(f"Resolving {source} (its files, their sizes and hashes)...")
    with _progress() as progress:
        result = project.add(
            _project(),
            source,
            name=name,
            task=task,
            revision=revision,
            include=include or None,
            exclude=exclude or None,
            allow_pickle=allow_pickle,
            device=device,
            replace=replace,
            offline=offline,
            progress=progress,
        )
    for warning in result.warnings:
        warn(warning)
    locked = result.locked
    say(
        f"Added [bold]{result.name}[/] ({locked.task}) at {locked.commit[:12]}: "
        f"{plural(len(locked.files), 'file')}, {human_size(locked.size)}"
    )


@app.command()
def remove(name: str = typer.Argument(help="The model to remove.")) -> None:
    """Remove a model from the manifest and the lock."""
    from modelmora import project

    project.remove(_project(), name)
    say(f"Removed [bold]{name}[/]; `modelmora cache gc` frees its files if nothing else uses them")


@app.command()
def lock(
    names: list[str] | None = typer.Argument(None, help="Models to upgrade (with --upgrade)."),
    upgrade: bool = typer.Option(False, "--upgrade", "-U", help="Re-resolve moving revisions."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the lock is out of date."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; write nothing."),
    offline: bool = typer.Option(False, help="Resolve from local sources only."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Resolve the manifest to exact commits and file hashes in modelmora.lock."""
    from modelmora import project

    current = _project()
    if check and as_json:
        return _check_lock_json(current)
    if check:
        project.check_lock(current)
        return say("modelmora.lock is up to date")
    if names and not upgrade:
        raise ModelmoraError("naming models needs --upgrade", "run `modelmora lock --upgrade NAME`")
    result = project.lock(current, upgrade=names or upgrade, dry_run=dry_run, offline=offline)
    if as_json:
        return emit_json(output.lock_json(result))
    for warning in result.warnings:
        warn(warning)
    _print_lock(result.changes, dry_run, result.written)


def _check_lock_json(current: Project) -> None:
    """`{"fresh": ...}` on stdout; exit 1 when stale, as the plain `lock --check`."""
    from modelmora import lockfile

    stale = lockfile.changes(current.manifest(), current.lock())
    emit_json(output.lock_check_json(stale))
    if stale:
        raise SystemExit(1)


def _print_lock(changes: Any, dry_run: bool, written: bool) -> None:
    for change in changes:
        if change.kind == "updated":
            say(
                f"  [yellow]~[/] {change.name} {change.old_commit[:12]} -> {change.new_commit[:12]}"
            )
        elif change.kind == "added":
            say(f"  [green]+[/] {change.name} {change.new_commit[:12]}")
        elif change.kind == "removed":
            say(f"  [red]-[/] {change.name}")
    changed = sum(change.kind != "unchanged" for change in changes)
    if dry_run:
        say(f"Would change {changed} of {plural(len(changes), 'model')} (dry run, nothing written)")
    else:
        state = "written" if written else "unchanged"
        say(f"Locked {plural(len(changes), 'model')} ({changed} changed); modelmora.lock {state}")


@app.command()
def install(
    frozen: bool = typer.Option(False, "--frozen", help="Install the lock as is; never change it."),
    locked: bool = typer.Option(False, "--locked", help="Fail if the lock is out of date."),
    offline: bool = typer.Option(False, help="Use only the cache; fail on a missing file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make the project's models match the lock exactly."""
    from modelmora import project

    if frozen and locked:
        raise typer.BadParameter("use either --frozen or --locked, not both")
    mode: InstallMode = "frozen" if frozen else "locked" if locked else "sync"
    with _progress(not as_json) as progress:
        result = project.install(_project(), mode=mode, offline=offline, progress=progress)
    if as_json:
        return emit_json(output.install_json(result))
    _print_install(result)


def _print_install(result: InstallResult) -> None:
    fetched = f"{plural(result.files_downloaded, 'file')} ({human_size(result.bytes_downloaded)})"
    models = plural(len(result.models), "model")
    say(f"Installed {models}: fetched {fetched}, {result.files_cached} already cached")
    for name in result.removed:
        say(f"  [red]-[/] {name} (no longer in the lock)")


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the project's models and whether they are locked and installed."""
    from modelmora import project

    infos = project.list_models(_project())
    if as_json:
        return emit_json([output.model_json(info, files=False) for info in infos])
    if not infos:
        return say("No models yet; add one with `modelmora add hf://ORG/REPO`")
    _print_table(infos)


LIST_COLUMNS = ("name", "task", "source", "commit", "size", "status")
MIN_SOURCE_WIDTH = 16  # narrower, a folded URL is unreadable: leave the column out instead


def _print_table(infos: list[ModelInfo]) -> None:
    """Names, tasks and sizes never wrap; a long source folds, or is left out when it cannot fit."""
    from rich.table import Table

    console = _console()
    rows = [_list_row(info) for info in infos]
    room = console.width - _width_without_source(rows)
    needed = min(MIN_SOURCE_WIDTH, max(len(row["source"]) for row in rows))
    columns = [c for c in LIST_COLUMNS if c != "source" or room >= needed]
    table = Table(box=None, pad_edge=False)
    for column in columns:
        fold = column == "source"
        table.add_column(
            column,
            justify="right" if column == "size" else "left",
            no_wrap=not fold,
            overflow="fold" if fold else "ellipsis",
        )
    for row in rows:
        color = "green" if row["status"] == "installed" else "yellow"
        row["status"] = f"[{color}]{row['status']}[/]"
        table.add_row(*(row[column] for column in columns))
    console.print(table)
    if "source" not in columns:
        say("[dim](sources left out at this width: `modelmora show NAME` has them)[/]")


def _list_row(info: ModelInfo) -> dict[str, str]:
    return {
        "name": info.name,
        "task": info.task,
        "source": info.source,
        "commit": (info.commit or "-")[:12],
        "size": human_size(info.size) if info.commit else "-",
        "status": "installed" if info.installed else "locked" if info.commit else "not locked",
    }


def _width_without_source(rows: list[dict[str, str]]) -> int:
    """Columns the table prints in full, and the two spaces between each pair of columns."""
    others = [column for column in LIST_COLUMNS if column != "source"]
    widths = [max(len(column), *(len(row[column]) for row in rows)) for column in others]
    return sum(widths) + 2 * (len(LIST_COLUMNS) - 1)


@app.command()
def show(
    name: str = typer.Argument(metavar="NAME", help="The model to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show a model's source, commit, files and where it is installed."""
    from modelmora import project

    current = _project()
    info = project.show(current, _known_model(current, name))
    if as_json:
        return emit_json(output.model_json(info, files=True))
    for key, value in _show_fields(info):
        say(f"[bold]{key:>9}[/]  {value}")
    for file in info.files:
        say(f"           {file.path}  {human_size(file.size)}  sha256:{file.sha256[:16]}")


def _show_fields(info: ModelInfo) -> list[tuple[str, str]]:
    """What `show` prints for people: `yes`/`no`, `-` for nothing, sizes in kB/MB/GB."""
    return [
        ("name", info.name),
        ("task", info.task),
        ("source", info.source),
        ("revision", info.revision or "-"),
        ("commit", info.commit or "-"),
        ("size", human_size(info.size) if info.commit else "-"),
        ("files", str(len(info.files)) if info.commit else "-"),
        ("installed", "yes" if info.installed else "no"),
        ("path", str(info.path.resolve()) if info.path else "-"),
    ]


def _known_model(current: Project, name: str) -> str:
    """`name` if the manifest has it; else an error that suggests the closest name."""
    names = list(current.manifest().models)
    if name in names:
        return name
    raise _no_such_model(name, names)


def _no_such_model(name: str, names: list[str]) -> ModelmoraError:
    import difflib

    from modelmora.errors import ManifestError

    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see `modelmora list`"
    return ManifestError(f"no model named '{name}' in modelmora.toml", hint)


@app.command()
def path(name: str = typer.Argument(help="The model whose folder to print.")) -> None:
    """Print the folder a model is installed in (loadable with from_pretrained)."""
    from modelmora import project

    current = _project()
    print(project.model_path(current, _known_model(current, name)))


@app.command()
def pull(
    model: str = typer.Argument(
        metavar="SOURCE|NAME", help="A model of the manifest, or a source: hf://ORG/REPO, ORG/REPO."
    ),
    name: str | None = typer.Option(None, help="Name for a new model (default: from the source)."),
    task: str | None = typer.Option(None, help="embedding, text-generation, text-classification."),
    offline: bool = typer.Option(False, help="Work from the cache only."),
) -> None:
    """Install a model, adding it to the manifest first if it is not there (like `ollama pull`)."""
    from modelmora import project

    current = _project()
    known = _named_in_manifest(current, model)
    with _progress() as progress:
        if known is not None:
            _print_install(project.install(current, offline=offline, progress=progress))
            return say(f"Pulled [bold]{known}[/]: `modelmora path {known}` is its folder")
        source = _source_of(current, model)
        result = project.add(
            current, source, name=name, task=task, offline=offline, progress=progress
        )
    locked = result.locked
    files = plural(len(locked.files), "file")
    say(
        f"Pulled [bold]{result.name}[/] ({locked.task}) at {locked.commit[:12]}: {files}, "
        f"{human_size(locked.size)}; added to modelmora.toml"
    )


def _named_in_manifest(current: Project, model: str) -> str | None:
    """The manifest's name for `model`: itself if it is a name, or the name of its source."""
    specs = current.manifest().models
    if model in specs:
        return model
    return next((spec.name for spec in specs.values() if spec.source == model), None)


def _source_of(current: Project, model: str) -> str:
    """`hf://ORG/REPO` for a bare `ORG/REPO`; an unknown bare name is a typo, not a source."""
    import re

    if "://" in model or Path(model).exists():
        return model
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return f"hf://{model}"
    raise _no_such_model(model, list(current.manifest().models))


app.command("rm", help="Remove a model from the manifest and the lock (same as `remove`).")(remove)
app.command("sync", help="Make the project's models match the lock (same as `install`).")(install)


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
) -> None:
    """Serve the project's models, or one SOURCE, over HTTP (native and OpenAI-compatible APIs)."""
    import os

    from modelmora import project
    from modelmora.serve import config
    from modelmora.serve.app import bind, run_server, served_models

    if task is not None and source is None:
        raise typer.BadParameter("--task goes with a SOURCE: `modelmora serve ./folder --task ...`")
    flags = {
        "host": host,
        "port": port,
        "max_loaded_models": max_loaded_models,
        "memory_budget": memory_budget,
        "keep_alive": keep_alive,
        "preload": tuple(preload or ()),
        "api_key": api_key,
        "metrics_public": metrics_public or None,
        "log_format": log_format,
        "log_file": log_file,
    }
    current = None if source else _project()
    manifest = current.manifest() if current else None
    table, where = (manifest.serve, manifest.path.name) if manifest else ({}, "SOURCE")
    settings = config.resolve(flags, os.environ, table, where)
    settings = settings.quiet() if options.quiet else settings
    sock = bind(settings.server)  # a port in use fails here, before installing or starting
    if current is None:
        current = _scratch_project(str(source), task, offline)
    elif not frozen:
        _install_before_serving(current, offline)
    installed = project.installed_models(current, frozen=True)  # the lock is fresh by now
    models = served_models(installed, settings.preload)
    server = settings.server
    say(f"Serving {plural(len(models), 'model')} on http://{server.host}:{server.port}")
    run_server(models, settings, current.jobs_path, sock)


def _scratch_project(source: str, task: str | None, offline: bool) -> Project:
    """The cache's throwaway project for `serve SOURCE`: added and installed on first use."""
    from modelmora import project

    with _progress() as progress:
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
    with _progress() as progress:
        result = project.install(current, offline=offline, progress=progress)
    done = ["updated modelmora.lock to match modelmora.toml"] if stale else []
    if result.files_downloaded:
        size = human_size(result.bytes_downloaded)
        done.append(f"fetched {plural(result.files_downloaded, 'file')} ({size})")
    if done:
        say(f"Before serving: {', '.join(done)}")


def _client(url: str, api_key: str | None) -> Any:
    from modelmora.serve.client import Client

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
    url: str = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the whole reply as JSON."),
) -> None:
    """Run one inference on a running server (`modelmora serve`), like `ollama run`."""
    opts = {
        k: v
        for k, v in {"max_new_tokens": max_new_tokens, "temperature": temperature}.items()
        if v is not None
    }
    with _client(url, api_key) as client:
        model = client.model(name)
        if model.task == "text-generation" and not as_json:
            for piece in client.stream_text(name, " ".join(text), **opts):
                print(piece, end="", flush=True)
            print()
            return
        reply = client.infer(name, text if len(text) > 1 else text[0], **opts)
    if as_json:
        return emit_json(reply.model_dump(mode="json"))
    _print_result(model.task, text, reply.result)


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
        manifest = _project().manifest()
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
    for column in ("name", "task", "state", "memory", "pid", "device", "until", "error"):
        table.add_column(column)
    for model in models:
        memory = human_size(model.memory_bytes) if model.memory_bytes else "-"
        table.add_row(
            model.name,
            model.task,
            _state(model.state, model.crash_streak),
            memory,
            str(model.pid or "-"),
            model.device or "-",
            _until(model.expires_at, model.restart_at),
            model.error or "",
        )
    _console().print(table)


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

    path = _project().jobs_path
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
    _console().print(table)
    say(f"{len(listed.jobs)} of {plural(listed.total, 'job')} (page {listed.page})")


# --- cache commands -----------------------------------------------------------------------------


@cache_app.command("dir")
def cache_dir() -> None:
    """Print the cache folder ($MODELMORA_HOME)."""
    from modelmora.cache import default_root

    print(default_root().absolute())


@cache_app.command()
def verify(
    repair: bool = typer.Option(False, "--repair", help="Fetch corrupt files again."),
    offline: bool = typer.Option(False, help="Repair from local sources only."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Re-hash every file in the cache and report (or repair) corrupt ones."""
    from modelmora.cache import Cache
    from modelmora.project import verify_cache

    result = verify_cache(Cache(), repair=repair, offline=offline)
    if as_json:
        return emit_json(output.verify_json(result))
    say(f"Checked {plural(result.blobs, 'file')} ({human_size(result.bytes_checked)})")
    for sha in result.corrupt:
        fixed = " (repaired)" if sha in result.repaired else ""
        _console(stderr=True).print(f"[red]corrupt[/] sha256:{sha}{fixed}")
    if set(result.corrupt) - set(result.repaired):
        hint = "run `modelmora cache verify --repair`" if not repair else "see the files above"
        left = len(result.corrupt) - len(result.repaired)
        raise ModelmoraError(plural(left, "corrupt file"), hint)


@cache_app.command()
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Remove files no known project's lock uses."""
    from modelmora.cache import Cache, gc_preview
    from modelmora.project import gc_cache

    cache = Cache()
    removed = gc_preview(cache)  # the names, before they are gone
    report = gc_cache(cache, dry_run=dry_run)
    if as_json:
        return emit_json(output.gc_json(report, removed, dry_run=dry_run))
    verb = "Would free" if dry_run else "Freed"
    counts = f"{plural(report.blobs, 'file')}, {plural(report.snapshots, 'snapshot')}"
    say(f"{verb} {human_size(report.bytes_freed)}: {counts}")
    for snapshot in removed:
        say(f"  [red]-[/] {snapshot.label}  {human_size(snapshot.size)}")


@cache_app.command()
def du(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Disk use per snapshot, bytes shared between snapshots, and which projects use each."""
    from modelmora.cache import Cache, disk_use

    cache = Cache()
    use = disk_use(cache)
    if as_json:
        return emit_json(output.cache_du_json(use, cache.root))
    _print_snapshots(use.snapshots)
    shared = human_size(use.shared_bytes)
    say(
        f"{human_size(use.blob_bytes)} on disk in {cache.root}: "
        f"{plural(len(use.snapshots), 'snapshot')}, {plural(use.blobs, 'file')}; "
        f"{shared} shared between snapshots"
    )
    if use.loose_blobs:
        loose = f"{plural(use.loose_blobs, 'file')} ({human_size(use.loose_bytes)})"
        say(f"{loose} in no snapshot: `modelmora cache gc` frees what no lock names")


def _print_snapshots(snapshots: Sequence[SnapshotUse]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("snapshot", "files", "size", "shared", "used by"):
        numeric = column in ("files", "size", "shared")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=numeric)
    for snapshot in snapshots:
        users = ", ".join(f"{Path(m.project).name}:{m.name}" for m in snapshot.models)
        table.add_row(
            snapshot.label,
            str(snapshot.files),
            human_size(snapshot.size),
            human_size(snapshot.shared),
            users or "[yellow]no project[/]",
        )
    _console().print(table)


@cache_app.command("list")
def cache_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Every model of every project this cache knows, with its snapshot and size."""
    from modelmora.cache import Cache, disk_use

    use = disk_use(Cache())
    by_path = {snapshot.path: snapshot for snapshot in use.snapshots}
    rows = [output.cache_model_json(model, by_path) for model in use.models]
    if as_json:
        return emit_json(rows)
    if not rows:
        return say("No project uses this cache yet; `modelmora install` in a project registers it")
    _print_cache_models(rows)


def _print_cache_models(rows: list[output.CacheModelJson]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("model", "size", "snapshot", "project"):
        wrap = column == "project"  # a long path may fold; names never break
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=not wrap)
    for row in rows:
        size = human_size(row["size"]) if row["installed"] else "[yellow]missing[/]"
        table.add_row(row["model"], size, row["snapshot"], row["project"])
    _console().print(table)


# --- entry point --------------------------------------------------------------------------------


def fail(error: BaseException) -> NoReturn:
    from rich.markup import escape

    _console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}")
    raise SystemExit(1)


GLOBAL_FLAGS = ("-q", "--quiet", "--debug")
GLOBAL_OPTIONS = ("-p", "--project")  # followed by a value: `-p DIR`, `-pDIR`, `--project=DIR`


def _global_flags_first(args: list[str]) -> list[str]:
    """Accept the global options anywhere before `--` (as uv does), not only before the command."""
    end = args.index("--") if "--" in args else len(args)
    tokens = iter(args[:end])
    front: list[str] = []
    rest: list[str] = []
    for arg in tokens:
        if arg in GLOBAL_OPTIONS:
            value = next(tokens, None)
            if value is None:  # the parser says "Option '-p' requires an argument.", exit 2
                return [arg]
            front += [arg, value]
        elif arg in GLOBAL_FLAGS or _is_global_with_value(arg):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest + args[end:]


def _is_global_with_value(arg: str) -> bool:
    return arg.startswith("--project=") or (arg.startswith("-p") and not arg.startswith("--"))


def main() -> None:
    try:
        app(args=_global_flags_first(sys.argv[1:]), prog_name="modelmora")
    except ModelmoraError as error:
        if options.debug:
            raise
        fail(error)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
