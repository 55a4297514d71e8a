"""`modelmora bundle create|import`: a lock's models in one verified tar, for machines without
the Hub; `modelmora cache export|import`: the same for every installed model (docs/bundles.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import typer

from modelmora import output
from modelmora.cli.app import (
    app,
    cache_app,
    console,
    current_project,
    download_progress,
    emit_json,
    human_size,
    options,
    plural,
    say,
)
from modelmora.errors import BundleError

if TYPE_CHECKING:
    from modelmora.bundle import CreateResult
    from modelmora.lockfile import Lock
    from modelmora.project import Progress

bundle_app = typer.Typer(
    help="Carry a lock's models to machines without the Hub: one verified, deterministic tar.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(bundle_app, name="bundle")

STDIO = "-"
CREATE_INTERRUPTED = "the bundle was not written (its temp file is removed)"
IMPORT_INTERRUPTED = (
    "the files imported so far are kept; `modelmora bundle import` again skips them and finishes"
)


@bundle_app.command("create")
def create(
    names: list[str] | None = typer.Argument(
        None,
        metavar="NAMES",
        help="Models to pack; NAME takes all its versions [default: the whole lock].",
    ),
    output_path: str = typer.Option(
        ..., "--output", "-o", help="The bundle file to write, or - for stdout."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Pack the project's lock (or the models NAMES) and every file they need into one tar."""
    from modelmora import bundle

    _write(bundle.select(current_project().lock(), names or []), output_path, as_json)


@cache_app.command("export")
def cache_export(
    output_path: str = typer.Option(
        ..., "--output", "-o", help="The bundle file to write, or - for stdout."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Bundle every installed model of every project that uses this cache (e.g. a CI cache)."""
    from modelmora import bundle
    from modelmora.cache import Cache

    _write(bundle.cache_lock(Cache()), output_path, as_json)


def _write(lock: Lock, output_path: str, as_json: bool) -> None:
    if output_path == STDIO:
        _check_stdout(as_json)
    with download_progress(not as_json, CREATE_INTERRUPTED) as progress:
        result = _create(lock, output_path, progress)
    if as_json:
        return emit_json(output.bundle_create_json(result, output_path))
    _print_created(result, output_path)


def _create(lock: Lock, output_path: str, progress: Progress) -> CreateResult:
    from modelmora import bundle
    from modelmora.cache import Cache

    if output_path == STDIO:
        try:
            result = bundle.create(lock, Cache(), sys.stdout.buffer, progress)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
            raise BundleError(
                "the command reading the bundle from stdout stopped before its end",
                "see that command's error",
            ) from None
        return result
    return bundle.create_file(lock, Cache(), Path(output_path), progress)


def _check_stdout(as_json: bool) -> None:
    if as_json:
        raise BundleError(
            "--json and -o - both want stdout", "write the bundle to a file: -o models.tar"
        )
    if sys.stdout.isatty():
        raise BundleError(
            "refusing to write a bundle to the terminal",
            "pipe it (`-o - | ssh host modelmora bundle import -`) or write a file: -o models.tar",
        )


def _print_created(result: CreateResult, output_path: str) -> None:
    where = "stdout" if output_path == STDIO else output_path
    line = (
        f"Bundled {plural(len(result.models), 'model')} ({plural(result.blobs, 'file')}, "
        f"{human_size(result.blob_bytes)}) into {where}; sha256 {result.sha256}"
    )
    if output_path != STDIO:
        say(line)
    elif not options.quiet:  # stdout carries the bundle: the summary goes to stderr
        console(stderr=True).print(line)


@bundle_app.command("import")
def import_bundle(
    source: str = typer.Argument(metavar="FILE", help="The bundle to import, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Verify every file of a bundle and store it in the cache, with its models' snapshots."""
    _read(source, as_json)


@cache_app.command("import")
def cache_import(
    source: str = typer.Argument(metavar="FILE", help="The bundle to import, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fill the cache from `modelmora cache export` (or any bundle); same as `bundle import`."""
    _read(source, as_json)


def _read(source: str, as_json: bool) -> None:
    from modelmora import bundleimport
    from modelmora.cache import Cache

    label = "stdin" if source == STDIO else source
    with _opened(source) as stream, download_progress(not as_json, IMPORT_INTERRUPTED) as progress:
        result = bundleimport.import_bundle(stream, Cache(), label=label, progress=progress)
    if as_json:
        return emit_json(output.bundle_import_json(result))
    stored = f"{plural(result.blobs_stored, 'file')} ({human_size(result.bytes_stored)})"
    say(
        f"Imported {plural(len(result.models), 'model')} from {label}: stored {stored}, "
        f"{result.blobs_skipped} already cached; next: `modelmora install --frozen --offline`"
    )


@contextmanager
def _opened(source: str) -> Iterator[BinaryIO]:
    if source == STDIO:
        if sys.stdin.isatty():
            raise BundleError(
                "refusing to read a bundle from the terminal",
                "pipe one in (`... | modelmora bundle import -`) or name the file",
            )
        yield sys.stdin.buffer
        return
    try:
        stream = open(source, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise BundleError(f"no bundle at {source}", "check the path") from None
    except IsADirectoryError:
        raise BundleError(f"{source} is a folder, not a bundle", "name the bundle file") from None
    except OSError as error:
        raise BundleError(
            f"cannot read {source}: {error.strerror}", "check its permissions"
        ) from None
    with stream:
        yield stream
