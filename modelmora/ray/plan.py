"""What `serve --ray` deploys and `export ray` writes: one deployment per model, its name and its
replicas from the manifest (pure: imports neither ray nor serving code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmora import lockfile
from modelmora.errors import ModelmoraError
from modelmora.lockfile import LockedModel
from modelmora.manifest import ModelSpec
from modelmora.project import Project

APP_NAME = "modelmora"
INGRESS = "ingress"
IMPORT_PATH = "modelmora.ray.app:build"
DEFAULT_TARGET_ONGOING_REQUESTS = 2.0


@dataclass(frozen=True)
class PlannedModel:
    """One served name (`minilm`, `minilm@v2`): its manifest entry and its lock entry."""

    spec: ModelSpec
    locked: LockedModel

    @property
    def deployment(self) -> str:
        return deployment_name(self.spec.name)


def deployment_name(name: str) -> str:
    """Serve's deployment of a served name: `model:minilm`, `model:minilm@v2`."""
    return f"model:{name}"


def planned_models(project: Project) -> list[PlannedModel]:
    """Every served name of the project, from its lock, which must match the manifest."""
    manifest = project.manifest()
    lock = project.lock()
    lockfile.check_fresh(manifest, lock)
    return [PlannedModel(spec, lock.models[name]) for name, spec in manifest.models.items()]


def replicas(spec: ModelSpec) -> dict[str, Any]:
    """The deployment's replica options: one replica, or autoscaling when the manifest asks."""
    if spec.min_replicas is None and spec.max_replicas is None and not spec.target_ongoing_requests:
        return {"num_replicas": 1}
    low = 1 if spec.min_replicas is None else spec.min_replicas
    high = spec.max_replicas if spec.max_replicas is not None else max(low, 1)
    if high < low:
        raise ModelmoraError(
            f"models.{spec.name}: max_replicas ({high}) is below min_replicas ({low})",
            "raise max_replicas in modelmora.toml",
        )
    target = spec.target_ongoing_requests or DEFAULT_TARGET_ONGOING_REQUESTS
    scaling = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target}
    if low == 0:
        scaling["initial_replicas"] = 0
    return {"autoscaling_config": scaling}


def application_args(root: Path) -> dict[str, Any]:
    """What `build` reads: the project, by the path the cluster's nodes see it at."""
    return {"project": str(root)}
