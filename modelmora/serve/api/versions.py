"""The admin routes of models and their versions: register, remove, route, promote, roll back,
deprecate. Each needs the admin scope and is audited; each edits the project (manifest, lock,
registry) through `modelmora.versions` or `modelmora.project`, then changes what is served, so a
change takes effect at once and without a restart. Requests already routed finish where they went.
"""

from __future__ import annotations

import asyncio
import sqlite3

from starlette.requests import Request
from starlette.responses import Response

from modelmora import audit, manifest, project, sources, versions
from modelmora.cache import Cache
from modelmora.errors import (
    ConflictError,
    InvalidInputError,
    JobNotFoundError,
    ManifestError,
    ServeError,
    UnknownModelError,
)
from modelmora.project import InstalledModel, Project
from modelmora.routing import Route, split_reference
from modelmora.serve.api.auth import require_admin
from modelmora.serve.api.http import (
    AppState,
    PydanticResponse,
    RequestValidationError,
    app_state,
    read_json,
)
from modelmora.serve.api.openapi import Endpoint
from modelmora.serve.api.schemas import FieldError, RegisterRequest, Registration, Removed
from modelmora.serve.catalog import served
from modelmora.serve.registrations import Registration as Record
from modelmora.versionjson import (
    DeprecateBody,
    PromoteBody,
    RouteBody,
    RouteUpdateBody,
    VersionsBody,
    update_body,
    versions_body,
)
from modelmora.versions import RouteUpdate

LOCAL_KINDS = ("folder", "package")
"""Sources that need no download: registered before the answer (201), the others after (202)."""


async def list_versions(request: Request) -> Response:
    """A model's versions (archived ones too), its route, and the history of its routes."""
    state = app_state(request)
    model = request.path_params["name"]
    if state.project is None:
        raise UnknownModelError(
            f"no versions of '{model}' are recorded: this server serves no project",
            "run `modelmora serve` in a project folder",
        )
    served_project, connection = _project(state)
    current = served_project.manifest()
    versions.sync(connection, current, served_project.lock_or_empty())
    return PydanticResponse(versions_body(versions.report(connection, current, model)))


async def set_route(request: Request) -> Response:
    """Replace the model's route: each version's share, and an optional shadow."""
    actor = require_admin(request)
    body = await read_json(request, RouteBody)
    state = app_state(request)
    served_project, connection = _project(state)
    model = request.path_params["name"]
    route = _checked(body)
    update = versions.change_route(served_project, connection, model, route, actor)
    return _routed(state, update)


async def promote(request: Request) -> Response:
    """Send all of the model's requests to one version."""
    actor = require_admin(request)
    body = await read_json(request, PromoteBody)
    state = app_state(request)
    served_project, connection = _project(state)
    model = request.path_params["name"]
    update = versions.promote(served_project, connection, model, body.version, actor)
    return _routed(state, update)


async def rollback(request: Request) -> Response:
    """Go back to the route the model had before its current one."""
    actor = require_admin(request)
    state = app_state(request)
    served_project, connection = _project(state)
    update = versions.rollback(served_project, connection, request.path_params["name"], actor)
    return _routed(state, update)


async def deprecate(request: Request) -> Response:
    """Mark a version deprecated (or active again with `undo`); a routed one is refused (409)."""
    actor = require_admin(request)
    body = await read_json(request, DeprecateBody)
    state = app_state(request)
    served_project, connection = _project(state)
    model = request.path_params["name"]
    versions.deprecate(served_project, connection, model, body.version, actor, not body.undo)
    report = versions.report(connection, served_project.manifest(), model)
    return PydanticResponse(versions_body(report))


def _checked(body: RouteBody) -> Route:
    try:
        return body.route()
    except ServeError as error:
        raise InvalidInputError(error.message, error.hint) from None


def _routed(state: AppState, update: RouteUpdate) -> Response:
    """The new route serves from now on; requests already routed finish where they went."""
    if state.traffic is not None:
        state.traffic.set_route(update.model, update.after)
    return PydanticResponse(update_body(update))


# --- registering and removing -------------------------------------------------------------------


async def register_model(request: Request) -> Response:
    """Add a model (or a version) to the project, lock and install it, and serve it."""
    actor = require_admin(request)
    body = await read_json(request, RegisterRequest)
    state = app_state(request)
    served_project, connection = _project(state)
    _check_new(served_project, body)
    name = body.reference
    registrations = state.registrations
    assert registrations is not None  # set with the project

    async def run() -> None:
        await asyncio.to_thread(_install, served_project, body)
        _serve_new(state, served_project, connection, name, actor)

    record, task = registrations.start(name, run)
    headers = {"Location": f"/registrations/{record.id}"}
    if sources.kind(body.source) in LOCAL_KINDS:
        await asyncio.shield(task)
        if record.state == "failed":
            raise InvalidInputError(f"cannot register '{name}': {record.error}")
        return PydanticResponse(_registration(record), status_code=201, headers=headers)
    return PydanticResponse(_registration(record), status_code=202, headers=headers)


async def get_registration(request: Request) -> Response:
    """A registration's state: running, done, or failed with the reason."""
    registrations = app_state(request).registrations
    if registrations is None:
        raise JobNotFoundError(
            f"no registration '{request.path_params['id']}': this server serves no project"
        )
    return PydanticResponse(_registration(registrations.get(request.path_params["id"])))


def _registration(record: Record) -> Registration:
    return Registration(
        id=record.id,
        name=record.name,
        state=record.state,
        error=record.error,
        created_at=record.created_at,
        finished_at=record.finished_at,
    )


def _check_new(served_project: Project, body: RegisterRequest) -> None:
    """What can be told before anything is fetched: 422 for a bad field, 409 for a name taken."""
    problem = manifest.source_problem(body.source)
    if problem:
        raise _field_error("source", problem)
    if body.task is not None and body.task not in manifest.known_tasks():
        raise _field_error("task", f"unknown task '{body.task}'")
    current = served_project.manifest()
    if body.reference in current.models:
        raise ConflictError(
            f"model '{body.reference}' exists already", f"DELETE /models/{body.reference} first"
        )
    if body.version and body.name in current.models:
        raise ConflictError(
            f"model '{body.name}' has no versions, so version '{body.version}' cannot join it",
            f"declare its versions in modelmora.toml: [models.{body.name}.versions.V1]",
        )
    if not body.version and current.versions(body.name):
        raise ConflictError(
            f"model '{body.name}' has versions; name the new one", 'add "version" to the body'
        )


def _field_error(field: str, message: str) -> InvalidInputError:
    return RequestValidationError([FieldError(field=field, message=message)])


def _install(served_project: Project, body: RegisterRequest) -> None:
    """`modelmora add`, in a thread: lock, download, and only then write manifest and lock."""
    project.add(
        served_project,
        body.source,
        name=body.reference,
        task=body.task,
        revision=body.revision,
        include=body.include,
        exclude=body.exclude,
        allow_pickle=body.allow_pickle or None,
        cwd=served_project.root,
    )


def _serve_new(
    state: AppState, served_project: Project, connection: sqlite3.Connection, name: str, actor: str
) -> None:
    current, lock = served_project.manifest(), served_project.lock()
    spec, locked = current.models[name], lock.models[name]
    state.supervisor.add(served(InstalledModel(spec, locked, Cache().snapshot_path(locked))))
    if spec.version is not None and state.traffic is not None:
        state.traffic.set_route(spec.model, current.routes[spec.model])
    versions.sync(connection, current, lock, actor)
    after = {"source": locked.source, "revision": locked.revision, "commit": locked.commit}
    audit.record(connection, actor, "model.register", name, None, after)


async def remove_model(request: Request) -> Response:
    """Stop serving a model (or one version) and remove it from the project; a version that is
    the only one its model routes to is refused (409). Requests in flight on it finish first."""
    actor = require_admin(request)
    state = app_state(request)
    served_project, connection = _project(state)
    name = request.path_params["name"]
    model, version = split_reference(name)
    before = served_project.manifest()
    versions.check_removable(before, name)
    gone = [spec.name for spec in before.versions(model) if version in (None, spec.version)]
    try:
        project.remove(served_project, name)
    except ManifestError as error:
        raise ConflictError(error.message, error.hint) from None
    after = served_project.manifest()
    route = after.routes.get(model)
    if state.traffic is not None:  # first: no new request goes to what is leaving
        if route is None:
            state.traffic.forget(model)
        else:
            state.traffic.set_route(model, route)
    versions.sync(connection, after, served_project.lock_or_empty(), actor)
    audit.record(connection, actor, "model.remove", name, {"served": gone}, None)
    for served_name in gone:
        if served_name in state.supervisor.names():
            await state.supervisor.remove(served_name)
    weights = dict(route.weights) if route is not None else None
    return PydanticResponse(Removed(removed=gone, route=weights))


def _project(state: AppState) -> tuple[Project, sqlite3.Connection]:
    """The project served; a 409 on a server that serves none (`serve SOURCE`, an embedded app),
    whose models are fixed: a client's request, not the server, is what cannot be done here."""
    if state.project is None or state.registry is None:
        raise ConflictError(
            "this server serves no project, so its models and versions cannot change at run time",
            "run `modelmora serve` in a project folder",
        )
    return state.project, state.registry


ENDPOINTS = [
    Endpoint("/models", "POST", register_model, request=(RegisterRequest,), response=Registration,
             tag="admin", status=201),
    Endpoint("/registrations/{id}", "GET", get_registration, response=Registration, tag="admin"),
    Endpoint("/models/{name}", "DELETE", remove_model, response=Removed, tag="admin"),
    Endpoint("/models/{name}/versions", "GET", list_versions, response=VersionsBody, tag="models"),
    Endpoint("/models/{name}/route", "PUT", set_route, request=(RouteBody,),
             response=RouteUpdateBody, tag="admin"),
    Endpoint("/models/{name}/promote", "POST", promote, request=(PromoteBody,),
             response=RouteUpdateBody, tag="admin"),
    Endpoint("/models/{name}/rollback", "POST", rollback, response=RouteUpdateBody, tag="admin"),
    Endpoint("/models/{name}/deprecate", "POST", deprecate, request=(DeprecateBody,),
             response=VersionsBody, tag="admin"),
]  # fmt: skip
