"""The Endpoint table that both routes and documents the API: `/openapi.json` and `/docs`.

Each app documents its own models: a `{name}` in a path is one of the served names, an endpoint
with `per_model` is documented once per model (`POST /infer/minilm`, with the body of that model's
task), and the request bodies that name a model are replaced by the app's variants (see
`schemas.served_bodies`), so that the document says exactly what this server accepts.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import importlib.resources
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]
Bodies = Mapping[type[BaseModel], tuple[type[BaseModel], ...]]
_PATH_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Endpoint:
    """One route and what its documentation says: schemas of query, body and response."""

    path: str
    method: Literal["GET", "POST", "PUT", "DELETE"]
    handler: Handler
    request: tuple[type[BaseModel], ...] = ()
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    tag: str = ""
    media_type: str = "application/json"
    error: type[BaseModel] | None = None
    status: int = 200
    """The status of a success."""
    also: tuple[tuple[int, type[BaseModel]], ...] = ()
    """Other statuses whose body is not the error shape, e.g. `/ready`'s 503."""
    stream: type[BaseModel] | None = None
    """With `stream: true` a success is server-sent events, one of these chunks each."""
    per_model: Callable[[str], type[BaseModel]] | None = None
    """Document one operation per served model, `{name}` filled in, with this body for its task."""
    operation_id: str = ""
    binary: bool = False
    """A success may also be `application/octet-stream`: the binary tensor data extension."""
    body_optional: bool = False
    """The body may be left out (Triton's `POST /v2/repository/index`)."""


def routes(endpoints: Sequence[Endpoint]) -> list[Route]:
    """One route per path that dispatches on the method.

    So a wrong method gets a 405 whose `Allow` lists every method of the path (Starlette's router
    answers with the first route that matches the path), and OPTIONS gets a 204 with `Allow`.
    """
    handlers: dict[str, dict[str, Handler]] = {}
    for endpoint in endpoints:
        handlers.setdefault(endpoint.path, {})[endpoint.method] = endpoint.handler
    return [
        Route(path, _by_method(by_method), methods=[*by_method, "OPTIONS"], name=path)
        for path, by_method in handlers.items()
    ]


def _by_method(handlers: Mapping[str, Handler]) -> Handler:
    allowed = ", ".join([*handlers, *(["HEAD"] if "GET" in handlers else []), "OPTIONS"])

    async def dispatch(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allowed})
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return dispatch


def openapi_document(
    endpoints: Sequence[Endpoint],
    *,
    title: str,
    version: str,
    error: type[BaseModel],
    models: Mapping[str, str] | None = None,
    bodies: Bodies | None = None,
) -> dict[str, Any]:
    """An OpenAPI 3.1 document built from the endpoints' pydantic schemas.

    `models` maps the served models' names to their tasks; `bodies` the request schemas that this
    server documents in their place.
    """
    models, bodies = models or {}, bodies or {}
    documented = [each for endpoint in endpoints for each in _documented(endpoint, models, bodies)]
    refs, definitions = models_json_schema(_schema_models(documented, error), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in documented:
        operation = _operation(endpoint, refs, error, list(models))
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


def _documented(endpoint: Endpoint, models: Mapping[str, str], bodies: Bodies) -> list[Endpoint]:
    """The endpoint as a server of `models` documents it: once, or once per model."""
    request = tuple(variant for body in endpoint.request for variant in bodies.get(body, (body,)))
    endpoint = dataclasses.replace(endpoint, request=request)
    if endpoint.per_model is None:
        return [endpoint]
    return [
        dataclasses.replace(
            endpoint,
            path=endpoint.path.replace("{name}", name),
            request=(endpoint.per_model(task),),
            per_model=None,
            operation_id=f"{endpoint.handler.__name__}_{name}",
        )
        for name, task in models.items()
    ]


SchemaKey = tuple[type[BaseModel], JsonSchemaMode]
Refs = Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]]


def _schema_models(endpoints: Sequence[Endpoint], error: type[BaseModel]) -> list[SchemaKey]:
    """Every model the document refers to, in the mode it is used (input or output)."""
    keys: dict[SchemaKey, None] = {(error, "serialization"): None}
    for endpoint in endpoints:
        keys.update({(model, "validation"): None for model in endpoint.request})
        if endpoint.query is not None:
            keys[endpoint.query, "validation"] = None
        outputs = [endpoint.response, endpoint.error, endpoint.stream]
        outputs += [model for _, model in endpoint.also]
        keys.update({(model, "serialization"): None for model in outputs if model is not None})
    return list(keys)


def _operation(
    endpoint: Endpoint, refs: Refs, error: type[BaseModel], names: list[str]
) -> dict[str, Any]:
    """One OpenAPI operation: summary from the handler's docstring, parameters, body, responses."""
    success = _content(endpoint.media_type, _response_schema(endpoint, refs))
    if endpoint.stream is not None:
        chunk = refs[endpoint.stream, "serialization"]
        success["content"]["text/event-stream"] = {"schema": _event(chunk)}
    if endpoint.binary:
        binary = {"type": "string", "format": "binary", "description": _BINARY}
        success["content"]["application/octet-stream"] = {"schema": binary}
    responses = {str(endpoint.status): success}
    for status, model in endpoint.also:
        responses[str(status)] = _content("application/json", refs[model, "serialization"])
    responses["default"] = _content(
        "application/json", refs[endpoint.error or error, "serialization"]
    )
    operation: dict[str, Any] = {
        "summary": (endpoint.handler.__doc__ or "").strip().splitlines()[0],
        "operationId": endpoint.operation_id or endpoint.handler.__name__,
        "tags": [endpoint.tag] if endpoint.tag else [],
        "parameters": _parameters(endpoint, names),
        "responses": responses,
    }
    if endpoint.request:
        schemas = [refs[model, "validation"] for model in endpoint.request]
        schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
        required = not endpoint.body_optional
        operation["requestBody"] = {"required": required, **_content("application/json", schema)}
    return operation


_BINARY = (
    "the JSON response, `Inference-Header-Content-Length` bytes long, then the binary outputs' "
    "bytes in order"
)


def _event(chunk: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 describes a stream by its events): a chunk, or the end."""
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": chunk}
    return {
        "type": "object",
        "properties": {"data": {"anyOf": [data, {"const": "[DONE]"}]}},
        "required": ["data"],
        "description": "`data: {chunk}` per piece of text (or an error object if the model fails "
        "midway), then `data: [DONE]`",
    }


def _response_schema(endpoint: Endpoint, refs: Refs) -> dict[str, Any]:
    if endpoint.response is None:
        return {"type": "string"}
    return refs[endpoint.response, "serialization"]


def _content(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "", "content": {media_type: {"schema": schema}}}


def _parameters(endpoint: Endpoint, names: list[str]) -> list[dict[str, Any]]:
    """Path parameters from `{name}` in the path (a served model's), query ones from the model."""
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name, names)}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    if endpoint.query is not None:
        properties = endpoint.query.model_json_schema()["properties"]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in properties.items()
        ]
    return parameters


def _path_schema(parameter: str, names: list[str]) -> dict[str, Any]:
    if parameter == "name" and names:
        return {"type": "string", "enum": names, "description": "a served model"}
    return {"type": "string"}


SWAGGER_UI = "static/swagger-ui"
"""Where the Swagger UI assets are in `modelmora.serve` (npm's swagger-ui-dist; see its README)."""
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
PUBLIC_PATHS = frozenset(
    {
        "/", "/health", "/ready", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs",
        *(f"/docs/{a}" for a in _ASSETS),
    }
)  # fmt: skip
"""What needs no API key: the index, liveness, readiness (probes of Kubernetes and load balancers
send no credentials) and the API's description, which hold no data."""


def document_routes(document: dict[str, Any]) -> list[Route]:
    """`GET /openapi.json`, and `GET /docs`: Swagger UI ("try it out"), served from the package."""
    spec = JSONResponse(document).body
    page = _SWAGGER_PAGE.format(
        title=html.escape(f"{document['info']['title']} {document['info']['version']}"),
        static=render_docs(document, standalone=False),
    ).encode()

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        *(Route(f"/docs/{name}", _asset(name, kind)) for name, kind in _ASSETS.items()),
    ]


def _asset(name: str, media_type: str) -> Handler:
    """One Swagger UI file, read on first use (1.7 MB that most servers never send)."""

    @functools.cache
    def content() -> bytes:
        folder = importlib.resources.files("modelmora.serve")
        return folder.joinpath(f"{SWAGGER_UI}/{name}").read_bytes()

    async def serve_asset(request: Request) -> Response:
        headers = {"Cache-Control": "public, max-age=86400"}
        return Response(content(), media_type=media_type, headers=headers)

    return serve_asset


def render_docs(document: dict[str, Any], standalone: bool = True) -> str:
    """The document in plain HTML, no scripts: the page's fallback when JavaScript is off.

    `standalone`: a whole page; otherwise its body alone.
    """
    title = html.escape(f"{document['info']['title']} {document['info']['version']}")
    operations = "".join(
        _render_operation(path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    )
    schemas = "".join(
        f'<h3 id="{html.escape(name)}">{html.escape(name)}</h3><pre>{_pretty(schema)}</pre>'
        for name, schema in document["components"]["schemas"].items()
    )
    body = _BODY.format(title=title, operations=operations, schemas=schemas)
    return _PAGE.format(title=title, body=body) if standalone else body


def _render_operation(path: str, method: str, operation: dict[str, Any]) -> str:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    success = next(iter(operation["responses"].values()))
    ok = next(iter(success["content"].values()))
    rows = [("request", _links(body.get("schema", {}))), ("response", _links(ok["schema"]))]
    params = ", ".join(f"{p['name']} ({p['in']})" for p in operation["parameters"])
    rows.insert(0, ("parameters", html.escape(params) or "none"))
    cells = "".join(f"<tr><th>{name}</th><td>{value or 'none'}</td></tr>" for name, value in rows)
    return (
        f"<h3><code>{method.upper()} {html.escape(path)}</code></h3>"
        f"<p>{html.escape(operation['summary'])}</p><table>{cells}</table>"
    )


def _links(schema: dict[str, Any]) -> str:
    """Links to the component schemas that `schema` refers to."""
    names = re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema))
    if not names and schema.get("type") == "string":
        return "text"
    return ", ".join(f'<a href="#{html.escape(n)}">{html.escape(n)}</a>' for n in names)


def _pretty(schema: dict[str, Any]) -> str:
    return html.escape(json.dumps(schema, indent=2))


_STYLE = """<style>
.static {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; }}
.static {{ padding: 0 1rem; }}
.static pre {{ background: #f6f8fa; padding: .75rem; overflow-x: auto; }}
.static th {{ text-align: left; padding-right: 1rem; }}
</style>"""

_BODY = """<div class="static"><h1>{title}</h1>
<p>The machine-readable document is at <a href="/openapi.json">/openapi.json</a>.</p>
<h2>Endpoints</h2>{operations}
<h2>Schemas</h2>{schemas}</div>"""

_PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
"""
    + _STYLE
    + """</head>
<body>{body}</body></html>
"""
)

_SWAGGER_PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
"""
    + _STYLE
    + """</head>
<body><div id="swagger-ui"></div>
<noscript>{static}</noscript>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, tryItOutEnabled: true,
  persistAuthorization: true,
}});
</script>
</body></html>
"""
)
