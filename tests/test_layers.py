"""The import rules of docs/architecture.md, checked in fresh interpreters: the package manager
never imports serving code, and neither it nor the server process imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PACKAGE_MANAGER = [
    "modelmora.cli",
    "modelmora.project",
    "modelmora.manifest",
    "modelmora.lockfile",
    "modelmora.cache",
    "modelmora.sources",
    "modelmora.progress",
    "modelmora.diskuse",
    "modelmora.output",
    "modelmora.bundle",
    "modelmora.bundleimport",
]
SERVER_PROCESS = [
    "modelmora.serve.app",
    "modelmora.serve.supervisor",
    "modelmora.serve.scheduler",
    "modelmora.serve.launcher",
    "modelmora.serve.client",
]
HEAVY = ("torch", "transformers", "diffusers", "onnxruntime", "sentence_transformers")
CLIENT = ["modelmora.client"]
SERVER_FRAMEWORKS = ("starlette", "uvicorn", "grpc", "google.protobuf")

pytestmark = pytest.mark.slow  # a fresh interpreter each


def forbidden_imports(modules: list[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """For each module imported in turn in a fresh interpreter, the forbidden modules it loaded."""
    code = f"""
import importlib, json, sys
found = {{}}
for name in {modules!r}:
    before = set(sys.modules)
    importlib.import_module(name)
    new = set(sys.modules) - before
    found[name] = sorted(m for m in new if m.startswith({forbidden!r}))
print(json.dumps(found))
"""
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    result: dict[str, list[str]] = json.loads(output.stdout)
    return {name: loaded for name, loaded in result.items() if loaded}


def test_the_package_manager_never_imports_serving_code_or_torch() -> None:
    assert forbidden_imports(PACKAGE_MANAGER, ("modelmora.serve", *HEAVY)) == {}


def test_the_server_process_never_imports_torch() -> None:
    assert forbidden_imports(SERVER_PROCESS, HEAVY) == {}


def test_the_client_needs_no_server_and_no_torch() -> None:
    forbidden = (*HEAVY, *SERVER_FRAMEWORKS, "modelmora.serve", "modelmora.oip")
    assert forbidden_imports(CLIENT, forbidden) == {}
