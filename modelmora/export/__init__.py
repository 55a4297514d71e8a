"""`modelmora export`: Kubernetes manifests for a project, built from its manifest and lock.

__init__.py  what every export shares: the `Deployable` facts of a project, Kubernetes names,
             the server's command line, and the deterministic YAML writer
helm.py      a Helm chart: Deployment or StatefulSet, Service, HPA, ConfigMap (docs/deployment.md)
kserve.py    a KServe ClusterServingRuntime and one InferenceService per locked model

Builders are pure functions returning plain dicts; only `write_yaml` touches the disk. Nothing
here imports the server: the few serve defaults needed are read inside functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmora.errors import ModelmoraError
from modelmora.project import Project

CACHE_DIR = "/cache"
PROJECT_DIR = "/project"
CONFIG_DIR = "/etc/modelmora"
RUN_AS = 1000
"""The uid and gid of the image's `modelmora` user (Dockerfile)."""
_GIB = 1024**3


@dataclass(frozen=True)
class Deployable:
    """What an export needs of a project: its name, files, models and ports."""

    name: str
    manifest_text: str
    lock_text: str
    models: tuple[str, ...]
    model_bytes: int
    http_port: int
    grpc_port: int
    writes_cache: bool
    """A model whose worker writes into the cache at run time (the onnx backend's exports)."""
    local_models: tuple[str, ...]
    """Models from a folder of this machine, which `install --frozen` in a pod cannot reach."""


def deployable(project: Project) -> Deployable:
    """Read the project's manifest and lock; a missing or stale lock is an error (`lock` first)."""
    from modelmora.project import check_lock

    lock = check_lock(project)
    manifest = project.manifest()
    http_port, grpc_port = _ports(manifest.serve, manifest.path.name)
    return Deployable(
        name=kubernetes_name(manifest.name),
        manifest_text=project.manifest_path.read_text(),
        lock_text=project.lock_path.read_text(),
        models=tuple(sorted(lock.models)),
        model_bytes=sum(model.size for model in lock.models.values()),
        http_port=http_port,
        grpc_port=grpc_port,
        writes_cache=any(spec.backend == "onnx" for spec in manifest.models.values()),
        local_models=tuple(sorted(n for n, m in lock.models.items() if "://" not in m.source)),
    )


def _ports(table: Mapping[str, Any], filename: str) -> tuple[int, int]:
    """The `[serve]` table's port and grpc_port, parsed as `modelmora serve` parses them."""
    from modelmora.serve.config import resolve

    keys = {key: table[key] for key in ("port", "grpc_port") if key in table}
    server = resolve({}, {}, keys, filename).server
    return server.port, server.grpc_port


def kubernetes_name(text: str) -> str:
    """A DNS-1035 label made from `text`: lowercase letters, digits and '-', at most 63, starting
    with a letter (what Services and InferenceServices need; every other name accepts it too)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not name:
        raise ModelmoraError(f"'{text}' gives no Kubernetes name", "use letters or digits in it")
    name = name if name[0].isalpha() else f"m-{name}"
    return name[:63].rstrip("-")


def cache_size(model_bytes: int) -> str:
    """Room for the models, their temp files while downloading, and a margin: whole GiB."""
    return f"{max(1, math.ceil(model_bytes * 1.5 / _GIB))}Gi"


def serve_args(http_port: int, grpc_port: int) -> list[str]:
    """`modelmora serve` for a container: every address, from the installed cache only."""
    args = ["serve", "--host", "0.0.0.0", "--port", str(http_port), "--frozen", "--offline"]
    return [*args, "--grpc-port", str(grpc_port)] if grpc_port else args


def write_yaml(path: Path, documents: Iterable[Mapping[str, Any]]) -> Path:
    """Write `documents` as YAML, keys in the builders' order, multi-line strings as blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, string)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump_all(
        [dict(document) for document in documents], Dumper=Dumper, sort_keys=False, width=100
    )
    path.write_text(text)
    return path
