"""`modelmora versions|route|promote|rollback|deprecate`: a model's versions and its traffic.

With a server running for the project (`.modelmora/serve.json`) or `--url`, they go through that
server, so that a change takes effect at once; otherwise they edit `modelmora.toml` and the
registry themselves, after catching the registry up with the manifest. Either way the output is
the same `versionjson` body (`--json`), and one line says which way it went.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from modelmora.cli.app import app, console, current_project, emit_json, say
from modelmora.errors import InvalidInputError

if TYPE_CHECKING:
    import sqlite3

    from modelmora.client import Client
    from modelmora.project import Project
    from modelmora.versionjson import RouteBody, RouteUpdateBody, VersionsBody
    from modelmora.versions import RouteUpdate

    Offline = Callable[[Project, sqlite3.Connection, str], RouteUpdate]

URL_OPTION = typer.Option(
    None,
    "--url",
    envvar="MODELMORA_URL",
    help="Go through the server at this URL [default: the project's running server, if any].",
)
KEY_OPTION = typer.Option(
    None, "--api-key", envvar="MODELMORA_API_KEY", help="The server's admin API key."
)
JSON_OPTION = typer.Option(False, "--json", help="Print as JSON.")
NAME_ARGUMENT = typer.Argument(..., metavar="NAME", help="The model (without @VERSION).")
HISTORY_SHOWN = 5
"""Route changes `modelmora versions` shows, newest first (`--json` has them all)."""


@app.command("versions")
def list_versions(
    name: str = NAME_ARGUMENT,
    url: str | None = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a model's versions, their share of traffic, its route and its last route changes."""
    from modelmora import versions
    from modelmora.versionjson import versions_body

    server = _server_url(url)
    if server is not None:
        with _client(server, api_key) as client:
            body = client.versions(name)
    else:
        with _offline() as (project, connection):
            body = versions_body(versions.report(connection, project.manifest(), name))
    if as_json:
        return emit_json(body.model_dump(mode="json"))
    say(f"Versions of [bold]{name}[/], {_where(server)}")
    _print_versions(body)


@app.command()
def route(
    name: str = NAME_ARGUMENT,
    weights: list[str] = typer.Argument(..., metavar="VERSION=WEIGHT", help="e.g. v3=90 v2=10"),
    shadow: str | None = typer.Option(None, help="A version that gets a copy of some requests."),
    shadow_fraction: float | None = typer.Option(
        None, help="The fraction of requests copied to --shadow, 0 to 1."
    ),
    url: str | None = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Set a model's route: each version's share of requests, and an optional shadow."""
    from modelmora import versions
    from modelmora.routing import Route
    from modelmora.versionjson import route_body

    if (shadow is None) != (shadow_fraction is None):
        raise InvalidInputError(
            "--shadow and --shadow-fraction go together",
            "for example --shadow v4 --shadow-fraction 0.1",
        )
    wanted = Route(parse_weights(weights), shadow, shadow_fraction or 0.0)
    _change(
        name,
        url,
        api_key,
        as_json,
        lambda client: client.set_route(name, route_body(wanted)),
        lambda project, connection, actor: versions.change_route(
            project, connection, name, wanted, actor
        ),
        "Routed",
    )


@app.command()
def promote(
    name: str = NAME_ARGUMENT,
    version: str = typer.Argument(..., help="The version to send all traffic to."),
    url: str | None = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Send all of a model's traffic to one version (its shadow, if any, stays)."""
    from modelmora import versions

    _change(
        name,
        url,
        api_key,
        as_json,
        lambda client: client.promote(name, version),
        lambda project, connection, actor: versions.promote(
            project, connection, name, version, actor
        ),
        "Promoted",
    )


@app.command()
def rollback(
    name: str = NAME_ARGUMENT,
    url: str | None = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Go back to the route a model had before its current one (again: undo the rollback)."""
    from modelmora import versions

    _change(
        name,
        url,
        api_key,
        as_json,
        lambda client: client.rollback(name),
        lambda project, connection, actor: versions.rollback(project, connection, name, actor),
        "Rolled back",
    )


@app.command()
def deprecate(
    name: str = NAME_ARGUMENT,
    version: str = typer.Argument(..., help="A version that gets no traffic."),
    undo: bool = typer.Option(False, "--undo", help="Make a deprecated version active again."),
    url: str | None = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Mark a version deprecated: it gets no route, but requests that name it are still served."""
    from modelmora import audit, versions
    from modelmora.versionjson import versions_body

    server = _server_url(url)
    if server is not None:
        with _client(server, api_key) as client:
            body = client.deprecate(name, version, undo)
    else:
        with _offline() as (project, connection):
            actor = audit.cli_actor()
            versions.deprecate(project, connection, name, version, actor, deprecated=not undo)
            body = versions_body(versions.report(connection, project.manifest(), name))
    if as_json:
        return emit_json(body.model_dump(mode="json"))
    done = "is active again" if undo else "is deprecated"
    say(f"[bold]{name}@{version}[/] {done}, {_where(server)}")
    _print_versions(body)


def parse_weights(pairs: list[str]) -> dict[str, int]:
    """`["v3=90", "v2=10"]` as `{"v3": 90, "v2": 10}`; a malformed pair is one clear error."""
    weights: dict[str, int] = {}
    for pair in pairs:
        version, equals, weight = pair.partition("=")
        if not equals or not version or not weight.strip().isdigit():
            raise InvalidInputError(
                f"'{pair}' is not VERSION=WEIGHT with a whole number >= 0",
                "for example `modelmora route NAME v3=90 v2=10`",
            )
        if version in weights:
            raise InvalidInputError(f"version '{version}' is given twice", "name it once")
        weights[version] = int(weight)
    return weights


# --- online or offline --------------------------------------------------------------------------


def _server_url(url: str | None) -> str | None:
    """`--url`, else the server running for this project, else None (edit the files)."""
    if url:
        return url
    from modelmora import runfile

    return runfile.running_url(current_project().root)


def _client(url: str, api_key: str | None) -> Client:
    from modelmora.client import Client

    return Client(url, api_key=api_key)


@contextmanager
def _offline() -> Iterator[tuple[Project, sqlite3.Connection]]:
    """The project and its registry, caught up with the manifest and the lock."""
    from modelmora import audit, registry, versions

    project = current_project()
    connection = registry.connect(project.registry_path)
    try:
        manifest = project.manifest()
        versions.sync(connection, manifest, project.lock_or_empty(), audit.cli_actor())
        yield project, connection
    finally:
        connection.close()


def _change(
    name: str,
    url: str | None,
    api_key: str | None,
    as_json: bool,
    online: Callable[[Client], RouteUpdateBody],
    offline: Offline,
    verb: str,
) -> None:
    """One route change, through the server or in the files; then what changed."""
    from modelmora import audit
    from modelmora.versionjson import update_body

    server = _server_url(url)
    if server is not None:
        with _client(server, api_key) as client:
            body = online(client)
    else:
        with _offline() as (project, connection):
            body = update_body(offline(project, connection, audit.cli_actor()))
    if as_json:
        return emit_json(body.model_dump(mode="json"))
    change = f"{_describe(body.before)} -> {_describe(body.after)}"
    say(f"{verb} [bold]{name}[/]: {change}, {_where(server)}")


def _where(server: str | None) -> str:
    if server is not None:
        return f"through the server at {server}"
    return "in modelmora.toml (no server running)"


# --- printing -----------------------------------------------------------------------------------


def _describe(body: RouteBody | None) -> str:
    from rich.markup import escape

    from modelmora.versions import describe_route

    return "all traffic (no versions)" if body is None else escape(describe_route(body.route()))


def _print_versions(body: VersionsBody) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False, collapse_padding=True)
    for column in ("VERSION", "STATE", "SHARE", "SHADOW"):
        table.add_column(column, no_wrap=True)
    table.add_column("SOURCE", overflow="fold")
    table.add_column("COMMIT", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("BY", overflow="fold")
    fraction = body.route.shadow_fraction if body.route is not None else 0.0
    for v in body.versions:
        shadow = f"{fraction * 100:g}%" if v.shadow else ""
        row = (v.version or "-", v.state, f"{v.share * 100:g}%", shadow, v.source, v.commit[:12])
        table.add_row(*map(escape, row), _when(v.created_at), escape(v.created_by))
    console().print(table)
    say(f"Route: {_describe(body.route)}")
    if body.history:
        _print_history(body)


def _print_history(body: VersionsBody) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        box=None,
        pad_edge=False,
        title="Last route changes",
        title_justify="left",
        collapse_padding=True,
    )
    for column in ("WHEN", "WHO", "ACTION"):
        table.add_column(column, no_wrap=True)
    table.add_column("ROUTE", overflow="fold")
    for change in reversed(body.history[-HISTORY_SHOWN:]):
        route_text = _describe(change.route)
        table.add_row(_when(change.at), escape(change.actor), change.action, route_text)
    console().print(table)


def _when(at: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")
