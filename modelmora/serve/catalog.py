"""What the server serves from a project: its installed models (and versions) as `ServedModel`s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelmora.errors import ModelmoraError
from modelmora.serve.config import batch_settings, keep_alive_seconds
from modelmora.serve.supervisor import ServedModel

if TYPE_CHECKING:
    from modelmora.project import InstalledModel


def served_models(installed: Sequence[InstalledModel], preload: Sequence[str]) -> list[ServedModel]:
    """What the supervisor serves: the project's installed models and their manifest entries."""
    names = {model.spec.name for model in installed} | {model.spec.model for model in installed}
    unknown = sorted(set(preload) - names)
    if unknown:
        raise ModelmoraError(f"--preload {unknown[0]}: no such model", "see `modelmora list`")
    wanted = set(preload)
    return [
        served(model, bool({model.spec.name, model.spec.model} & wanted)) for model in installed
    ]


def served(model: InstalledModel, preload: bool = False) -> ServedModel:
    """One installed model (a version of one) as the supervisor serves it."""
    spec = model.spec
    return ServedModel(
        name=spec.name,
        task=spec.task,
        path=model.path,
        source=model.locked.source,
        revision=model.locked.commit,
        device=spec.device,
        dtype=spec.dtype,
        preload=spec.preload or preload,
        keep_alive=keep_alive_seconds(spec.keep_alive, f"modelmora.toml: models.{spec.name}"),
        threads=spec.threads,
        runtime=spec.runtime,
        backend=spec.backend,
        options=spec.options,
        batching=batch_settings(spec.model_dump()),
    )
