"""The documentation site: `mkdocs build --strict` passes offline, and its generated reference.

The HTTP reference is rendered by a hook (docs/hooks/openapi.py) from the OpenAPI document of a
real app, the Examples page by another (docs/hooks/examples.py) from examples/; the build runs here
as CI runs it (`nox -s docs`), without network where the machine allows a namespace of its own,
else with every proxy pointing at a closed port, so that anything it tried to fetch from the
internet would fail the strict build.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def hook(name: str) -> ModuleType:
    """A module of docs/hooks/, loaded as mkdocs loads it (by path)."""
    spec = importlib.util.spec_from_file_location(
        f"docs_hook_{name}", ROOT / f"docs/hooks/{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_has_every_operation_and_schema_of_the_document() -> None:
    openapi = hook("openapi")
    document = openapi.served_document()
    operations = openapi.render_operations(document)
    schemas = openapi.render_schemas(document)

    for path, methods in document["paths"].items():
        for method in methods:
            assert f"### `{method.upper()} {path}`" in operations
    for name in document["components"]["schemas"]:
        assert f"{{#{name}}}" in schemas
    assert "`POST /infer/minilm`" in operations and "`POST /v1/chat/completions`" in operations
    assert "[ChatCompletionRequest](http-schemas.md#ChatCompletionRequest)" in operations
    # two schemas titled InferResponse: the link says the title, the anchor keeps them apart
    assert "[InferResponse](http-schemas.md#modelmora__serve__api__schemas__InferResponse)" in (
        operations
    )
    assert "Exactly one of `inputs`, `messages`." in schemas  # GenerationInferRequest's oneOf


def test_types_in_a_few_words() -> None:
    openapi = hook("openapi")
    nullable_list = {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
    bounded = {"type": "integer", "minimum": 1, "maximum": 8}
    positive = {"type": "number", "exclusiveMinimum": 0}
    some = {"type": "array", "items": {"type": "integer"}, "minItems": 1}

    assert openapi._type(nullable_list) == "array of string or null"
    assert openapi._type(bounded) == "integer (1 to 8)"
    assert openapi._type(positive) == "number (above 0)"
    assert openapi._type(some) == "array of integer (at least 1)"
    assert openapi._type({"enum": ["a", "b"]}) == 'one of `"a"`, `"b"`'
    assert openapi._type({"$ref": "#/components/schemas/Foo"}) == "[Foo](http-schemas.md#Foo)"
    assert openapi._cell("a | b\n c") == "a \\| b c"


def test_links_to_repository_files_are_found_only_when_the_file_exists() -> None:
    repo_files = hook("repo_files")
    markdown = "[x](../modelmora.toml.example), [y](../no-such-file), [z](api.md)"

    assert repo_files.repository_links(markdown, ROOT) == ["modelmora.toml.example"]


def test_the_examples_page_has_every_script_in_workflow_order() -> None:
    page = hook("examples").render_examples(ROOT / "examples")
    scripts = re.findall(r"^## `(\w+\.py)`$", page, re.M)

    assert sorted(scripts) == sorted(script.name for script in (ROOT / "examples").glob("*.py"))
    assert scripts[0] == "local_inference.py" and scripts[-1] == "canary.py"
    assert '??? example "examples/jobs.py"' in page and "    def poll(" in page


def without_network() -> list[str]:
    """A prefix that runs a command with no network at all (a user namespace of its own, where
    the machine allows one); elsewhere the proxies of the test point at a closed port."""
    probe = ["unshare", "-rn", "true"]
    if shutil.which("unshare") and subprocess.run(probe, capture_output=True).returncode == 0:
        return ["unshare", "-rn"]
    return []


@pytest.mark.slow
def test_the_site_builds_strictly_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    offline = {f"{k}_proxy": "http://127.0.0.1:9" for k in ("http", "https", "all")}
    offline |= {key.upper(): value for key, value in offline.items()}
    env = {**os.environ, **offline, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)]
    command = [*without_network(), *mkdocs]
    built = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)

    assert built.returncode == 0, built.stdout + built.stderr
    api = (site / "reference/http-api/index.html").read_text()
    client = (site / "reference/client/index.html").read_text()
    runtimes = (site / "reference/runtimes/index.html").read_text()
    assert "POST /v1/chat/completions" in api and "/openapi.json" in api
    assert '"openapi": "3.1.0"' in (site / "reference/openapi.json").read_text()
    assert "RetryPolicy" in client and "CircuitBreaker" in client
    assert "ModelSpec" in runtimes and "resolve_runtime" in runtimes
    examples = (site / "examples/index.html").read_text()
    assert all(script.name in examples for script in (ROOT / "examples").glob("*.py"))
    assert (site / "modelmora.toml.example").is_file()  # a link from manifest.md to the repository
    pages = [page.read_text() for page in site.rglob("*.html")]
    remote = [
        match
        for page in pages
        for match in re.findall(r'<(?:script|img|link)[^>]+(?:src|href)="(https?://[^"]+)"', page)
    ]
    assert remote == []  # nothing the reader's browser would fetch from the internet either
    assert not any("fonts.googleapis.com" in page for page in pages)
