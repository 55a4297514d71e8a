"""Model versions as use cases: what a model's versions are, and the changes to its traffic.

The manifest says what is served and how traffic is split (`[models.NAME.versions.V]`, `route`);
the lock pins each version's bytes; the registry (`versiontables.py`) remembers every version ever
seen, its state and who added it, and each route a model has had, so that `rollback` knows where to
go back to. Every change here edits the manifest first (validated before it is written), then
records the change in the registry and the audit log. `sync` catches the registry up with a
manifest edited by hand, and rebuilds it when the file was deleted.

The CLI calls these when no server runs; the server's admin routes call them when one does.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from modelmora import audit, manifest, manifestedit
from modelmora.errors import ConflictError, UnknownModelError
from modelmora.files import write_atomic
from modelmora.lockfile import Lock
from modelmora.manifest import Manifest, ModelSpec
from modelmora.project import EDITS, Project
from modelmora.routing import Route

UNVERSIONED = ""
"""The registry's version of a model that has no versions."""
STATES = ("active", "deprecated", "archived")


@dataclass(frozen=True)
class VersionRecord:
    """One version as the registry knows it, with its share of the current route."""

    model: str
    version: str
    source: str
    revision: str
    commit: str
    task: str
    created_at: float
    created_by: str
    state: str
    weight: int = 0
    """Its share of the route (of `route.total`); 0 when it gets no traffic."""
    shadow: bool = False


@dataclass(frozen=True)
class RouteRecord:
    """One route a model has had: when, who, why, and the route."""

    id: int
    at: float
    actor: str
    action: str
    route: Route


@dataclass(frozen=True)
class VersionsReport:
    model: str
    versions: tuple[VersionRecord, ...]
    route: Route | None
    """None for a model without versions."""
    history: tuple[RouteRecord, ...]


@dataclass(frozen=True)
class RouteUpdate:
    model: str
    before: Route
    after: Route


def route_table(route: Route) -> dict[str, Any]:
    """A route as plain data: the registry's JSON, the API's body, the audit's before and after."""
    return {
        "weights": dict(sorted(route.weights.items())),
        "shadow": route.shadow,
        "shadow_fraction": route.shadow_fraction,
    }


def route_from_table(table: dict[str, Any]) -> Route:
    return Route(table["weights"], table.get("shadow"), table.get("shadow_fraction") or 0.0)


# --- keeping the registry in step with the manifest ---------------------------------------------


def sync(
    connection: sqlite3.Connection, current: Manifest, lock: Lock, actor: str = "manifest"
) -> None:
    """Record the versions and routes of `current` that the registry lacks; archive the rest.

    Run before every read and change, it is what rebuilds a deleted registry from the manifest and
    the lock (the lock stays the source of truth for bytes).
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        _sync(connection, current, lock, actor)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _sync(connection: sqlite3.Connection, current: Manifest, lock: Lock, actor: str) -> None:
    now = time.time()
    seen = set()
    for spec in current.models.values():
        locked = lock.models.get(spec.name)
        if locked is None:
            continue  # not locked yet: recorded once it is
        version = spec.version or UNVERSIONED
        seen.add((spec.model, version))
        state = "deprecated" if spec.deprecated else "active"
        row = (spec.model, version, locked.source, locked.revision, locked.commit, locked.task)
        connection.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (model, version) DO UPDATE SET source = excluded.source, "
            "revision = excluded.revision, commit_id = excluded.commit_id, "
            "task = excluded.task, state = excluded.state",
            (*row, now, actor, state),
        )
    for model, version in connection.execute("SELECT model, version FROM versions").fetchall():
        if (model, version) not in seen:
            connection.execute(
                "UPDATE versions SET state = 'archived' WHERE model = ? AND version = ?",
                (model, version),
            )
    for model, route in current.routes.items():
        last = _history(connection, model)[-1:]
        if not last or last[0].route != route:
            _append_route(connection, model, route, actor, "sync")


def _append_route(
    connection: sqlite3.Connection, model: str, route: Route, actor: str, action: str
) -> None:
    connection.execute(
        "INSERT INTO routes (model, at, actor, action, route) VALUES (?, ?, ?, ?, ?)",
        (model, time.time(), actor, action, json.dumps(route_table(route), sort_keys=True)),
    )


def _history(connection: sqlite3.Connection, model: str) -> list[RouteRecord]:
    rows = connection.execute(
        "SELECT id, at, actor, action, route FROM routes WHERE model = ? ORDER BY id", (model,)
    )
    return [
        RouteRecord(id, at, actor, action, route_from_table(json.loads(route)))
        for id, at, actor, action, route in rows
    ]


# --- reading ------------------------------------------------------------------------------------


def report(connection: sqlite3.Connection, current: Manifest, model: str) -> VersionsReport:
    """A model's versions (archived ones too), its route and the history of its routes."""
    if not current.versions(model) and not _known(connection, model):
        raise UnknownModelError(f"no model named '{model}'", "see `modelmora list`")
    route = current.routes.get(model)
    rows = connection.execute(
        "SELECT model, version, source, revision, commit_id, task, created_at, created_by, state "
        "FROM versions WHERE model = ? ORDER BY created_at, version",
        (model,),
    )
    records = [_with_share(VersionRecord(*row), route) for row in rows]
    return VersionsReport(model, tuple(records), route, tuple(_history(connection, model)))


def _known(connection: sqlite3.Connection, model: str) -> bool:
    row = connection.execute("SELECT 1 FROM versions WHERE model = ? LIMIT 1", (model,))
    return row.fetchone() is not None


def _with_share(record: VersionRecord, route: Route | None) -> VersionRecord:
    if route is None:
        weight = 100 if record.state != "archived" else 0  # a model without versions: all of it
        return dataclasses.replace(record, weight=weight)
    weight = route.weights.get(record.version, 0)
    shadow = route.shadow == record.version
    return dataclasses.replace(record, weight=weight, shadow=shadow)


# --- changing traffic ---------------------------------------------------------------------------


def change_route(
    project: Project,
    connection: sqlite3.Connection,
    model: str,
    route: Route,
    actor: str,
    action: str = "route",
) -> RouteUpdate:
    """Give `model` the route `route`: checked against its versions, written, recorded, audited."""
    with EDITS:
        return _change_route(project.manifest(), connection, model, route, actor, action)


def _change_route(
    root_manifest: Manifest,
    connection: sqlite3.Connection,
    model: str,
    route: Route,
    actor: str,
    action: str,
) -> RouteUpdate:
    before = _route_of(root_manifest, model)
    _check_route(root_manifest, model, route)
    text = manifestedit.set_route(root_manifest.path.read_text(), model, route)
    manifest.loads(text, root_manifest.path)  # a route the manifest would refuse is not written
    connection.execute("BEGIN IMMEDIATE")
    try:
        write_atomic(root_manifest.path, text)
        _append_route(connection, model, route, actor, action)
        audit.record(
            connection, actor, f"model.{action}", model, route_table(before), route_table(route)
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return RouteUpdate(model, before, route)


def promote(
    project: Project, connection: sqlite3.Connection, model: str, version: str, actor: str
) -> RouteUpdate:
    """All of `model`'s traffic to `version`; the shadow, if any, stays."""
    with EDITS:
        current = project.manifest()
        before = _route_of(current, model)
        version_spec(current, model, version)
        shadow = before.shadow if before.shadow != version else None
        route = Route({version: 100}, shadow, before.shadow_fraction if shadow else 0.0)
        return _change_route(current, connection, model, route, actor, "promote")


def rollback(
    project: Project, connection: sqlite3.Connection, model: str, actor: str
) -> RouteUpdate:
    """Back to the route `model` had before its current one (a second rollback undoes the first)."""
    with EDITS:
        current = project.manifest()
        now = _route_of(current, model)
        earlier = [record.route for record in _history(connection, model) if record.route != now]
        if not earlier:
            raise ConflictError(
                f"model '{model}' has had no other route to roll back to",
                f"see `modelmora versions {model}`",
            )
        return _change_route(current, connection, model, earlier[-1], actor, "rollback")


def deprecate(
    project: Project,
    connection: sqlite3.Connection,
    model: str,
    version: str,
    actor: str,
    deprecated: bool = True,
) -> ModelSpec:
    """Mark a version deprecated (it keeps serving requests that name it, and gets no route)."""
    with EDITS:
        return _deprecate(project.manifest(), connection, model, version, actor, deprecated)


def _deprecate(
    current: Manifest,
    connection: sqlite3.Connection,
    model: str,
    version: str,
    actor: str,
    deprecated: bool,
) -> ModelSpec:
    spec = version_spec(current, model, version)
    route = _route_of(current, model)
    if deprecated and (version in route.versions or route.shadow == version):
        raise ConflictError(
            f"version '{version}' of '{model}' gets traffic ({_describe(route)})",
            f"promote another version first: `modelmora promote {model} VERSION`",
        )
    text = manifestedit.set_deprecated(current.path.read_text(), spec.name, deprecated)
    edited = manifest.loads(text, current.path).models[spec.name]
    connection.execute("BEGIN IMMEDIATE")
    try:
        write_atomic(current.path, text)
        state = "deprecated" if deprecated else "active"
        connection.execute(
            "UPDATE versions SET state = ? WHERE model = ? AND version = ?", (state, model, version)
        )
        action = "model.deprecate" if deprecated else "model.undeprecate"
        before = {"state": "deprecated" if spec.deprecated else "active"}
        audit.record(connection, actor, action, spec.name, before, {"state": state})
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return edited


def check_removable(current: Manifest, reference: str) -> None:
    """A version may go unless it is the only one its model's route sends traffic to."""
    model, _, version = reference.partition("@")
    if not version:
        if not current.versions(model):
            raise UnknownModelError(f"no model named '{model}'", "see `modelmora list`")
        return
    version_spec(current, model, version)
    route = current.routes[model]
    if route.versions == [version]:
        raise ConflictError(
            f"version '{version}' is the only one '{model}' routes traffic to",
            f"promote another version first: `modelmora promote {model} VERSION`",
        )


def version_spec(current: Manifest, model: str, version: str) -> ModelSpec:
    """The manifest's entry of `model@version`; 404 with the versions there are otherwise."""
    spec = current.models.get(f"{model}@{version}")
    if spec is not None:
        return spec
    versions = [s.version for s in current.versions(model) if s.version]
    if not current.versions(model):
        raise UnknownModelError(f"no model named '{model}'", "see `modelmora list`")
    if not versions:
        raise UnknownModelError(
            f"model '{model}' has no versions", f"declare them as [models.{model}.versions.V]"
        )
    raise UnknownModelError(
        f"model '{model}' has no version '{version}'", f"its versions: {', '.join(versions)}"
    )


def _route_of(current: Manifest, model: str) -> Route:
    route = current.routes.get(model)
    if route is not None:
        return route
    if not current.versions(model):
        raise UnknownModelError(f"no model named '{model}'", "see `modelmora list`")
    raise ConflictError(
        f"model '{model}' has no versions, so no route",
        f"declare them as [models.{model}.versions.V] (docs/versions.md)",
    )


def _check_route(current: Manifest, model: str, route: Route) -> None:
    named = [*route.weights, *([route.shadow] if route.shadow else [])]
    for version in named:
        spec = version_spec(current, model, version)
        if spec.deprecated and version in route.versions:
            raise ConflictError(
                f"version '{version}' of '{model}' is deprecated",
                f"undo it first: `modelmora deprecate {model} {version} --undo`",
            )


def _describe(route: Route) -> str:
    shares = ", ".join(f"{v} {route.weights[v] * 100 / route.total:g}%" for v in route.versions)
    return shares + (f", shadow {route.shadow}" if route.shadow else "")


def describe_route(route: Route) -> str:
    """`v3 90%, v2 10%, shadow v4 (5%)`: a route for people."""
    text = _describe(route)
    return text + (f" ({route.shadow_fraction * 100:g}%)" if route.shadow else "")
