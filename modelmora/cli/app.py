"""The Typer app behind `modelmora`: global options, output helpers, and the entry point.

The commands live beside it, one module per family (`manage`, `serving`, `caching`, `keys`);
importing the package registers them. Heavy modules (pydantic, huggingface_hub, the server) are
imported inside the commands that need them, so `modelmora --help` starts fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from modelmora import __version__
from modelmora.errors import ModelmoraError

if TYPE_CHECKING:
    from rich.console import Console

    from modelmora.project import Progress, Project

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
keys_app = typer.Typer(
    help="Create, list and revoke the API keys of `modelmora serve`.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(keys_app, name="keys")


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


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    if not options.quiet:
        console().print(message)


def warn(message: str) -> None:
    """A warning on stderr, even with --quiet: something may not work as the user expects."""
    from rich.markup import escape

    console(stderr=True).print(f"[bold yellow]warning:[/] {escape(message)}")


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


def current_project() -> Project:
    from modelmora.project import find_project

    return find_project(options.project)


INTERRUPTED_DOWNLOADS = "partial downloads are kept in the cache; `modelmora install` resumes them"


@contextmanager
def download_progress(
    enabled: bool = True, interrupted: str = INTERRUPTED_DOWNLOADS
) -> Iterator[Progress]:
    """Progress for `add`, `install` and bundles; on Ctrl-C, say what became of the work."""
    try:
        with _progress_display(enabled) as progress:
            yield progress
    except KeyboardInterrupt:
        console(stderr=True).print(f"[bold red]interrupted:[/] {interrupted}")
        raise SystemExit(130) from None


@contextmanager
def _progress_display(enabled: bool) -> Iterator[Progress]:
    from modelmora.progress import PlainProgress, RichProgress, SilentProgress

    if options.quiet or not enabled:
        yield SilentProgress()
    elif sys.stderr.isatty():
        with RichProgress(console(stderr=True)) as progress:
            yield progress
    else:
        yield PlainProgress(lambda line: print(line, file=sys.stderr))


# --- entry point --------------------------------------------------------------------------------


def fail(error: BaseException) -> NoReturn:
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}")
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
