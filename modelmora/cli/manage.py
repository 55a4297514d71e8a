"""`modelmora` commands for the project: init, add, remove, lock, install, list, show, pull."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modelmora import output
from modelmora.cli.app import (
    app,
    console,
    current_project,
    download_progress,
    emit_json,
    human_size,
    plural,
    say,
    warn,
)
from modelmora.errors import ModelmoraError

if TYPE_CHECKING:
    from modelmora.project import InstallMode, InstallResult, ModelInfo, Project


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
    with download_progress() as progress:
        result = project.add(
            current_project(),
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

    project.remove(current_project(), name)
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

    current = current_project()
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
    with download_progress(not as_json) as progress:
        result = project.install(current_project(), mode=mode, offline=offline, progress=progress)
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

    infos = project.list_models(current_project())
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

    out = console()
    rows = [_list_row(info) for info in infos]
    room = out.width - _width_without_source(rows)
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
    out.print(table)
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

    current = current_project()
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

    current = current_project()
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

    current = current_project()
    known = _named_in_manifest(current, model)
    with download_progress() as progress:
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
