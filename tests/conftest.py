"""Shared fixtures: an isolated HOME and caches for every test, and a fake Hugging Face Hub."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clirun import Result, in_process_cli
from fakehub import FakeHub
from huggingface_hub import close_session, constants
from huggingface_hub.utils import _cache_manager

# tests/ray run where Ray Serve is installed (`nox -s ray`: its dependencies conflict with the dev
# environment's); elsewhere they are not collected. Checked here, not in a conftest of that
# folder: a second module named `conftest` would shadow this one for `from conftest import ...`.
# `ray.serve`, not `ray`: with tests/ on the path, `ray` alone is found as the folder tests/ray.
HAS_RAY_SERVE = importlib.util.find_spec("ray") is not None and (
    importlib.util.find_spec("ray.serve") is not None
)
collect_ignore_glob = [] if HAS_RAY_SERVE else ["ray/*"]
if HAS_RAY_SERVE:
    # Ray's modules warn as they import (pydantic v1-style `Field(update_type=...)`), which
    # filterwarnings = error would turn into a collection error: import them once, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in ("ray.serve", "ray.serve.schema"):
            importlib.import_module(module)

DEFAULT_ENDPOINT = "https://huggingface.co"
URL_TEMPLATE = "{endpoint}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
UNSET_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_TOKEN_PATH",
    "HF_XET_CACHE",
)


def point_hub_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Send `huggingface_hub` calls, here and in child processes, to `endpoint`."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    set_hub_endpoint(monkeypatch, endpoint)


def set_hub_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    # Both are read at import; patching only ENDPOINT still downloads from huggingface.co.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", URL_TEMPLATE.format(endpoint=endpoint)
    )


def patch_hub_constants(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    # huggingface_hub reads its environment once, at import: mirror the env we set into it.
    paths = {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hf_home / "hub",
        "HUGGINGFACE_HUB_CACHE": hf_home / "hub",
        "HF_ASSETS_CACHE": hf_home / "assets",
        "HF_XET_CACHE": hf_home / "xet",
        "HF_TOKEN_PATH": hf_home / "token",
        "HF_STORED_TOKENS_PATH": hf_home / "stored_tokens",
    }
    for name, path in paths.items():
        monkeypatch.setattr(constants, name, str(path))
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    set_hub_endpoint(monkeypatch, DEFAULT_ENDPOINT)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME, the caches and MODELMORA_HOME into `tmp_path`; no token, no offline mode."""
    home = tmp_path / "home"
    folders = {
        "HOME": home,
        "XDG_CACHE_HOME": home / ".cache",
        "HF_HOME": tmp_path / "hf-home",
        "MODELMORA_HOME": tmp_path / "modelmora-home",
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in UNSET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    patch_hub_constants(monkeypatch, folders["HF_HOME"])
    return tmp_path


@pytest.fixture
def fake_hub(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started `FakeHub` that `huggingface_hub` (and child processes) talk to by default.

    Set `fake_hub.token = "..."` to make it refuse requests without that bearer token.
    """
    hub = FakeHub()
    point_hub_client_at(monkeypatch, hub.start())
    yield hub
    close_session()  # drop pooled keep-alive connections to this server
    hub.stop()


@pytest.fixture
def cli_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """`modelmora ARGS...` in this process, at 80 columns: `cli_run(*args, cwd=..., code=0)`."""
    return in_process_cli(monkeypatch, capsys)
