"""`modelmora cache` commands for the shared cache: dir, verify, gc, du, list."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelmora import output
from modelmora.cli.app import (
    cache_app,
    console,
    emit_json,
    human_size,
    plural,
    say,
)
from modelmora.errors import ModelmoraError

if TYPE_CHECKING:
    from modelmora.diskuse import SnapshotUse


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
        console(stderr=True).print(f"[red]corrupt[/] sha256:{sha}{fixed}")
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
    from modelmora.cache import Cache
    from modelmora.diskuse import gc_preview
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
    from modelmora.cache import Cache
    from modelmora.diskuse import disk_use

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
    console().print(table)


@cache_app.command("list")
def cache_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Every model of every project this cache knows, with its snapshot and size."""
    from modelmora.cache import Cache
    from modelmora.diskuse import disk_use

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
    console().print(table)
