"""Edit `modelmora.toml` text with tomlkit, so that comments, order and formatting survive.

A reference with a version (`minilm@v2`) names the table `[models.minilm.versions.v2]`; a model's
route is its `route`, `shadow` and `shadow_fraction` keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelmora.errors import ManifestError
from modelmora.manifest import MANIFEST_NAME, ROUTE_KEYS, VERSIONS_KEY
from modelmora.routing import Route, split_reference


def render_new(project_name: str, template: str) -> str:
    return template.replace("{{name}}", project_name)


def add_model(text: str, name: str, table: Mapping[str, Any], drop: Sequence[str] = ()) -> str:
    """The manifest text with `[models.NAME]` added, or updated in place, and the rest untouched.

    An existing entry gets `table`'s values (None leaves a key as it is) and loses the keys in
    `drop`; its other keys (serving settings, comments) stay. `name@version` adds a version.
    """
    import tomlkit

    document = tomlkit.parse(text)
    entry = _table(_table(document, "models", super_table=True), *_path(name))
    for key in drop:
        entry.pop(key, None)
    for key, value in table.items():
        if value is not None:
            entry[key] = list(value) if isinstance(value, tuple) else value
    return tomlkit.dumps(document)


def remove_model(text: str, name: str) -> str:
    """Without `[models.NAME]`; `name@version` removes that version and its place in the route,
    and the whole model when it was the last."""
    import tomlkit

    document = tomlkit.parse(text)
    models = document.get("models")
    model, version = split_reference(name)
    entry: Any = models.get(model) if models is not None else None
    versions: Any = entry.get(VERSIONS_KEY) if entry is not None and version else None
    if entry is None or (version is not None and (versions is None or version not in versions)):
        raise ManifestError(f"no model named '{name}' in {MANIFEST_NAME}", "see `modelmora list`")
    if version is None or len(versions) == 1:
        del document["models"][model]
    else:
        del versions[version]
        _forget_version(entry, version)
    return tomlkit.dumps(document).rstrip() + "\n"


def set_route(text: str, model: str, route: Route) -> str:
    """The manifest with `model`'s route (weights and shadow) replaced by `route`."""
    import tomlkit

    document = tomlkit.parse(text)
    entry = _existing(document, model)
    weights = tomlkit.inline_table()
    weights.update({version: route.weights[version] for version in sorted(route.weights)})
    entry["route"] = weights
    for key in ("shadow", "shadow_fraction"):
        entry.pop(key, None)
    if route.shadow is not None:
        entry["shadow"] = route.shadow
        entry["shadow_fraction"] = route.shadow_fraction
    return tomlkit.dumps(document)


def set_deprecated(text: str, reference: str, deprecated: bool) -> str:
    """The manifest with the version's `deprecated` set (or removed, when False)."""
    import tomlkit

    document = tomlkit.parse(text)
    model, version = split_reference(reference)
    entry = _existing(document, model)[VERSIONS_KEY][version]
    if deprecated:
        entry["deprecated"] = True
    else:
        entry.pop("deprecated", None)
    return tomlkit.dumps(document)


def _path(name: str) -> list[str]:
    model, version = split_reference(name)
    return [model] if version is None else [model, VERSIONS_KEY, version]


def _table(parent: Any, *keys: str, super_table: bool = False) -> Any:
    import tomlkit

    for key in keys:
        if key not in parent:
            parent[key] = tomlkit.table(is_super_table=super_table or key == VERSIONS_KEY)
        parent = parent[key]
    return parent


def _existing(document: Any, model: str) -> Any:
    models = document.get("models")
    if models is None or model not in models:
        raise ManifestError(f"no model named '{model}' in {MANIFEST_NAME}", "see `modelmora list`")
    return models[model]


def _forget_version(entry: Any, version: str) -> None:
    """A removed version leaves the route (it had no traffic) and stops being the shadow."""
    route = entry.get("route")
    if route is not None:
        route.pop(version, None)
    if entry.get("shadow") == version:
        for key in ROUTE_KEYS[1:]:
            entry.pop(key, None)
