"""MkDocs hook: the HTTP API reference, rendered at build time from the server's OpenAPI document.

The document is what `GET /openapi.json` answers on a server of one tiny model per built-in task
(`create_app` without its lifespan: no worker starts), so the pages can never drift from the code.
They are generated files of the build (`reference/http-api.md`, `reference/http-schemas.md` and
`reference/openapi.json`); nothing generated is committed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

API_PAGE = "reference/http-api.md"
SCHEMAS_PAGE = "reference/http-schemas.md"
DOCUMENT_FILE = "reference/openapi.json"
EXAMPLE_NAMES = {
    "embedding": "minilm",
    "text-classification": "sentiment",
    "text-generation": "chat",
}
"""The names the reference serves each built-in task under (any other task: its own name)."""
TAG_TITLES = {
    "openai": "OpenAI-compatible",
    "open inference protocol": "Open Inference Protocol (REST)",
}
_REF = re.compile(r"^#/components/schemas/(.+)$")


def served_document() -> dict[str, Any]:
    """`GET /openapi.json` of an app that serves one model per built-in task, no worker started."""
    from starlette.testclient import TestClient

    from modelmora.runtimes import BUILTIN_RUNTIMES
    from modelmora.serve.app import create_app
    from modelmora.serve.config import ServerSettings, SupervisorSettings
    from modelmora.serve.supervisor import ServedModel, Supervisor

    models = [ServedModel(EXAMPLE_NAMES.get(t, t), t, Path(".")) for t in BUILTIN_RUNTIMES]
    app = create_app(Supervisor(models, SupervisorSettings()), ServerSettings(api_key="key"))
    response = TestClient(app).get("/openapi.json")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def on_files(files: Files, config: MkDocsConfig) -> Files:
    document = served_document()
    generated = {
        API_PAGE: render_operations(document),
        SCHEMAS_PAGE: render_schemas(document),
        DOCUMENT_FILE: json.dumps(document, indent=2) + "\n",
    }
    for path, content in generated.items():
        files.append(File.generated(config, path, content=content))
    return files


def render_operations(document: dict[str, Any]) -> str:
    """Every operation of the document, grouped by tag in the order they first appear."""
    _learn_titles(document)
    by_tag: dict[str, list[str]] = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            tag = (operation.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append(_operation(path, method, operation))
    info = document["info"]
    lines = [
        f"# HTTP API reference ({info['title']} {info['version']})",
        "",
        "Generated when the site is built from the OpenAPI document that `modelmora serve`",
        "answers at `GET /openapi.json` ([download this one](openapi.json)); a running server",
        "documents its own models the same way, with Swagger UI at `/docs`. This one serves one",
        "model per built-in task: "
        + ", ".join(f"`{name}` ({task})" for task, name in _example_models())
        + ".",
        "The request and response bodies are in [the schemas](http-schemas.md); the",
        "[HTTP API guide](../api.md) explains them with examples.",
        "",
    ]
    if "security" in document:
        lines += [
            "Every operation but the health probes, `/`, `/openapi.json` and `/docs` needs the",
            "server's API key, when it has one: `Authorization: Bearer KEY`",
            "([keys and scopes](../api.md#keys-scopes-and-limits)).",
            "",
        ]
    for tag, operations in by_tag.items():
        lines += [f"## {TAG_TITLES.get(tag, tag.capitalize())}", "", *operations]
    return "\n".join(lines)


def _example_models() -> list[tuple[str, str]]:
    from modelmora.runtimes import BUILTIN_RUNTIMES

    return [(task, EXAMPLE_NAMES.get(task, task)) for task in BUILTIN_RUNTIMES]


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    lines = [f"### `{method.upper()} {path}`", "", _cell(operation.get("summary", "")), ""]
    if operation.get("parameters"):
        lines += ["| parameter | in | required | type |", "| --- | --- | --- | --- |"]
        lines += [
            f"| `{p['name']}` | {p['in']} | {_yes(p.get('required'))} | {_type(p['schema'])} |"
            for p in operation["parameters"]
        ]
        lines.append("")
    body = operation.get("requestBody")
    if body is not None:
        optional = "" if body.get("required") else " (optional)"
        for media_type, content in body["content"].items():
            lines += [f"Request body{optional}, `{media_type}`: {_type(content['schema'])}", ""]
    lines += ["| status | content | body |", "| --- | --- | --- |"]
    for status, response in operation["responses"].items():
        for media_type, content in response.get("content", {}).items():
            lines.append(f"| {status} | `{media_type}` | {_type(content['schema'])} |")
    return "\n".join([*lines, ""])


def render_schemas(document: dict[str, Any]) -> str:
    """Every component schema: a table of its fields, or its type when it is not an object."""
    _learn_titles(document)
    lines = [
        "# HTTP API schemas",
        "",
        "The request and response bodies of the [HTTP API reference](http-api.md), generated from",
        "the server's OpenAPI document when the site is built.",
        "",
    ]
    for name, schema in document["components"]["schemas"].items():
        lines += [f"## {schema.get('title', name)} {{#{_anchor(name)}}}", ""]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        lines += [*_fields(schema), ""]
    return "\n".join(lines)


def _fields(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties")
    if not properties:
        return [f"Type: {_type(schema)}"]
    required = set(schema.get("required", ()))
    rows = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for name, field in properties.items():
        notes = [_description(field)]
        if "default" in field and field["default"] is not None:
            notes.append(f"default `{json.dumps(field['default'])}`")
        description = _cell("; ".join(note for note in notes if note))
        rows.append(f"| `{name}` | {_type(field)} | {_yes(name in required)} | {description} |")
    extra = schema.get("additionalProperties")
    tail = ["", "Other fields are refused (422)."] if extra is False else []
    alternatives = schema.get("oneOf") or schema.get("anyOf") or []
    if alternatives and all(set(each) == {"required"} for each in alternatives):
        names = ", ".join(f"`{'`, `'.join(each['required'])}`" for each in alternatives)
        tail += ["", f"Exactly one of {names}."]
    elif alternatives:
        tail += ["", f"Also one of: {_type({'oneOf': alternatives})}"]
    return rows + tail


def _description(field: dict[str, Any]) -> str:
    """The field's description, or the one its type carries (`X | None` nests it in anyOf)."""
    nested = [_description(each) for each in field.get("anyOf", field.get("oneOf", []))]
    return str(field.get("description") or next((each for each in nested if each), ""))


def _type(schema: dict[str, Any]) -> str:
    """A JSON schema in a few words, with links to the component schemas it names."""
    if "$ref" in schema:
        name = _REF.match(schema["$ref"])
        if name is None:
            return f"`{schema['$ref']}`"
        title = titles.get(name[1], name[1])
        return f"[{title}]({SCHEMAS_PAGE.rsplit('/', 1)[1]}#{_anchor(name[1])})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(dict.fromkeys(_type(each) for each in schema[key]))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    return _plain_type(schema)


def _plain_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    if "contentSchema" in schema:
        return f"JSON text of {_type(schema['contentSchema'])}"
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}{_bounds(schema, 'Items')}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if kind == "object" and "properties" in schema:
        fields = ", ".join(f"`{name}`: {_type(s)}" for name, s in schema["properties"].items())
        return f"object ({fields})"
    detail = f" ({schema['format']})" if "format" in schema else ""
    return f"{kind}{detail}{_bounds(schema, 'imum')}"


def _bounds(schema: dict[str, Any], key: str) -> str:
    """` (1 to 8)`, ` (at least 1)`, ` (above 0.0 to 1.0)`: `minimum`/`maximum`, or
    `minItems`/`maxItems` with key `Items`."""
    low, high = schema.get(f"min{key}"), schema.get(f"max{key}")
    above = schema.get("exclusiveMinimum") if key == "imum" else None
    if above is not None:
        low = f"above {above}"
    if low is None and high is None:
        return ""
    if high is None:
        return f" (at least {low})" if above is None else f" ({low})"
    if low is None:
        return f" (at most {high})"
    return f" ({low} to {high})"


titles: dict[str, str] = {}
"""The component schemas' titles by name: the name may be qualified where two titles collide."""


def _learn_titles(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"].items()
    titles.update({name: schema.get("title", name) for name, schema in schemas})


def _anchor(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell or paragraph."""
    return " ".join(text.split()).replace("|", "\\|")


def _yes(flag: object) -> str:
    return "yes" if flag else ""
