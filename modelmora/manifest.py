"""Read, validate and edit `modelmora.toml`, the project manifest people write.

Reading goes through tomllib and pydantic; editing goes through tomlkit so that comments, order and
formatting survive `modelmora add` and `modelmora remove`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelmora import routing
from modelmora.errors import InvalidInputError, ManifestError
from modelmora.kafka.config import KafkaTable, kafka_keys
from modelmora.routing import Route
from modelmora.units import parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MANIFEST_NAME = "modelmora.toml"
BUILTIN_TASKS = ("embedding", "text-classification", "text-generation", "text-to-image")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DEFAULT_INCLUDE = ("*.json", "*.txt", "*.safetensors", "*.model", "*.tiktoken", "*.jinja")
# A repository's own ONNX export (sentence-transformers, Xenova...): used as is, else exported.
ONNX_INCLUDE = ("onnx/model.onnx", "onnx/model.onnx_data")
BACKENDS = ("torch", "onnx")
ONNX_TASKS = ("embedding", "text-classification")
SOURCE_SCHEMES = ("hf://", "https://", "http://", "file://", "pkg://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_SOURCE = re.compile(r"^hf://[^/@\s]+/[^/@\s]+$")
GENERATION_HEADS = ("ForCausalLM", "LMHeadModel")
CLASSIFICATION_HEADS = ("ForSequenceClassification",)
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def known_tasks() -> tuple[str, ...]:
    """Built-in tasks plus those that installed plugins register as `modelmora.runtimes`."""
    from importlib.metadata import entry_points

    plugins = tuple(ep.name for ep in entry_points(group="modelmora.runtimes"))
    return BUILTIN_TASKS + tuple(sorted(set(plugins) - set(BUILTIN_TASKS)))


class ModelSpec(BaseModel):
    """One `[models.NAME]` table: where a model comes from and how it is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str
    revision: str | None = None
    task: str
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    allow_pickle: bool = False
    # Serving settings: they never make the lock stale.
    device: str = "auto"
    dtype: str = "auto"
    preload: bool = False
    keep_alive: str | float | None = None
    threads: int | None = Field(default=None, ge=1)
    runtime: str | None = None
    backend: str = "torch"
    options: dict[str, Any] = Field(default_factory=dict)
    # Scheduling (see modelmora.serve.scheduler.BatchSettings); None keeps the server's default.
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_queue: int | None = Field(default=None, ge=1)
    max_in_flight: int | None = Field(default=None, ge=1)
    # Ray Serve's autoscaling (`serve --ray`, `export ray`); plain `modelmora serve` ignores them.
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    target_ongoing_requests: float | None = Field(default=None, gt=0)
    # Set by a `[models.NAME.versions.V]` table, never written by hand in a plain table.
    version: str | None = None
    deprecated: bool = False

    @property
    def model(self) -> str:
        """The name clients use: `minilm` for `minilm@v2`."""
        return self.name.partition("@")[0]

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "source is empty; write hf://ORG/REPO, https://..., pkg://... or a path"
            )
        problem = source_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("include", "exclude")
    @classmethod
    def _check_patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(f"pattern '{pattern}' must be relative to the model folder")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"unknown device '{value}'; use auto, cpu, cuda or cuda:N")
        return value

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        dtypes = ("auto", "float32", "float16", "bfloat16")
        if value not in dtypes:
            raise ValueError(f"unknown dtype '{value}'; use one of {', '.join(dtypes)}")
        return value

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend '{value}'; use torch or onnx")
        return value

    @property
    def patterns(self) -> tuple[str, ...]:
        """The include patterns in effect: the manifest's, or the default (weights, configs, and
        for the onnx backend the repository's own export)."""
        if self.include is not None:
            return self.include
        return DEFAULT_INCLUDE + ONNX_INCLUDE if self.backend == "onnx" else DEFAULT_INCLUDE

    def lock_inputs(self) -> dict[str, Any]:
        """The fields that decide what gets locked; a change to any of them makes the lock stale."""
        return {
            "source": self.source,
            "revision": self.revision or ("main" if self.source.startswith("hf://") else ""),
            "task": self.task,
            "include": list(self.patterns),
            "exclude": list(self.exclude),
            "allow_pickle": self.allow_pickle,
        }


class ProjectTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str


MAX_URL_LIFETIME = 7 * 86400.0
"""S3's limit on a presigned URL's lifetime (SigV4): seven days."""


class StorageTable(BaseModel):
    """`[storage]`: where results over `threshold` bytes of JSON go (modelmora.storage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=1)
    endpoint_url: str | None = None
    prefix: str = ""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    threshold: int = 1_000_000
    expires: float = 3600.0

    @field_validator("threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: Any) -> int:
        size = parse_size(value)
        if size < 0:
            raise ValueError(f"{value!r} is below 0; write a size such as 1MB")
        return size

    @field_validator("expires", mode="before")
    @classmethod
    def _check_expires(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if not 1 <= seconds <= MAX_URL_LIFETIME:
            raise ValueError(f"{value!r}: a presigned URL lives 1s to 7d; write e.g. 1h")
        return seconds

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"'{value}' is no URL; write e.g. http://127.0.0.1:9000")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> StorageTable:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "access_key_id and secret_access_key go together; set both, or neither to use "
                "the AWS variables"
            )
        return self


class ManifestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: ProjectTable
    serve: dict[str, Any] = Field(default_factory=dict)
    storage: StorageTable | None = None
    kafka: KafkaTable | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    models: Mapping[str, ModelSpec]
    serve: Mapping[str, Any]
    routes: Mapping[str, Route] = field(default_factory=dict)
    """The route of each model with versions, by its name (`minilm`)."""
    storage: StorageTable | None = None
    """Where large results go; None keeps every result inline."""
    kafka: KafkaTable | None = None
    """The `[kafka]` table (modelmora/kafka); None: Kafka only with `serve --kafka`."""

    @property
    def root(self) -> Path:
        return self.path.parent

    def versions(self, model: str) -> list[ModelSpec]:
        """A model's versions in the manifest's order (one entry, version None, if it has none)."""
        return [spec for spec in self.models.values() if spec.model == model]


def _schemes() -> str:
    return ", ".join(SOURCE_SCHEMES)


def source_problem(source: str) -> str | None:
    """What is wrong with a source's form (None: nothing), found before any network call."""
    if "://" in source and not source.startswith(SOURCE_SCHEMES):
        scheme = source.split("://", 1)[0]
        return f"unknown source scheme '{scheme}://'; use one of {_schemes()}"
    base = split_revision(source)[0]
    if source.startswith("hf://") and not _HUB_SOURCE.match(base):
        return "not a Hub repository; write hf://ORG/REPO[@REV]"
    return None


def check_source(source: str) -> None:
    problem = source_problem(source)
    if problem:
        raise ManifestError(f"source '{source}': {problem}")


def architecture_task(architectures: Sequence[str]) -> str | None:
    """The built-in task a config's `architectures` is for; None when they do not say."""
    names = " ".join(architectures)
    if any(head in names for head in GENERATION_HEADS):
        return "text-generation"
    if any(head in names for head in CLASSIFICATION_HEADS):
        return "text-classification"
    return "embedding" if names.endswith("Model") else None


def task_conflict(task: str, architectures: Sequence[str]) -> str | None:
    """'wrong' when the config's architecture cannot do `task`, 'unsure' when it may not."""
    if task not in BUILTIN_TASKS or not architectures:
        return None
    implied = architecture_task(architectures)
    if implied == task:
        return None
    generative = implied == "text-generation"
    if (task != "text-generation" and generative) or (
        task == "text-generation" and implied == "text-classification"
    ):
        return "wrong"
    return "unsure"


def load(path: Path) -> Manifest:
    """Read and validate a manifest; every error names the file, the key and the fix."""
    return validate(expand_variables(_read_toml(path), path.name), path)


def loads(text: str, path: Path) -> Manifest:
    """Validate manifest text that is not written yet (an edit in progress)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ManifestError(f"{path.name}: invalid TOML: {error}") from None
    return validate(expand_variables(data, path.name), path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data: dict[str, Any] = tomllib.load(file)
            return data
    except FileNotFoundError:
        raise ManifestError(
            f"no {path.name} in {path.parent}", "run `modelmora init` to create one"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ManifestError(f"{path.name}: invalid TOML: {error}") from None


def validate(data: dict[str, Any], path: Path) -> Manifest:
    try:
        table = ManifestModel.model_validate(data)
    except ValidationError as error:
        raise ManifestError(_describe(error, path.name)) from None
    models: dict[str, ModelSpec] = {}
    routes: dict[str, Route] = {}
    for name, entry in table.models.items():
        if VERSIONS_KEY in entry:
            versions = _validate_versions(name, entry, path.name)
            models.update({spec.name: spec for spec in versions})
            routes[name] = _validate_route(name, entry, versions, path.name)
        else:
            _refuse_version_keys(name, entry, path.name)
            models[name] = _validate_model(name, entry, path.name)
    return Manifest(
        path, table.project.name, models, table.serve, routes, table.storage, table.kafka
    )


VERSIONS_KEY = "versions"
ROUTE_KEYS = ("route", "shadow", "shadow_fraction")
"""Keys of a model with versions that are about its traffic, not about any one version."""


def _refuse_version_keys(name: str, entry: dict[str, Any], filename: str) -> None:
    for key in ("version", "deprecated", *ROUTE_KEYS):
        if key in entry:
            raise ManifestError(
                f"{filename}: models.{name}.{key}: only a model with versions has it",
                f"declare them as [models.{name}.versions.V1] tables (docs/versions.md)",
            )


def _validate_versions(name: str, entry: dict[str, Any], filename: str) -> list[ModelSpec]:
    """One spec per `[models.NAME.versions.V]`, each the model's own keys overridden by its own."""
    where = f"{filename}: models.{name}.{VERSIONS_KEY}"
    versions = entry[VERSIONS_KEY]
    if not isinstance(versions, dict) or not versions:
        raise ManifestError(f"{where}: give at least one version", f"[models.{name}.versions.v1]")
    shared = {k: v for k, v in entry.items() if k not in (VERSIONS_KEY, *ROUTE_KEYS)}
    specs = []
    for version, own in versions.items():
        _check_version_name(version, f"{where}.{version}")
        if not isinstance(own, dict):
            raise ManifestError(f"{where}.{version}: not a table", "write source = ... in it")
        if "version" in own:
            raise ManifestError(f"{where}.{version}.version: the table's name is the version")
        merged = {**shared, **own, "version": version}
        specs.append(_validate_model(name, merged, filename, f"{name}@{version}"))
    return specs


def _check_version_name(version: str, where: str) -> None:
    try:
        routing.check_version(version)
    except InvalidInputError as error:
        raise ManifestError(f"{where}: {error.message}", error.hint) from None


def _validate_route(
    name: str, entry: dict[str, Any], versions: Sequence[ModelSpec], filename: str
) -> Route:
    """The model's route: the manifest's, else all traffic to the version listed last."""
    where = f"{filename}: models.{name}"
    weights = entry.get("route", {versions[-1].version: 100})
    if not isinstance(weights, dict):
        raise ManifestError(f"{where}.route: not a table", "write route = { v2 = 90, v1 = 10 }")
    try:
        route = Route(weights, entry.get("shadow"), entry.get("shadow_fraction", 0.0))
    except (InvalidInputError, TypeError) as error:
        message = error.message if isinstance(error, InvalidInputError) else str(error)
        raise ManifestError(f"{where}.route: {message}") from None
    known = {str(spec.version): spec for spec in versions}
    for version in [*route.weights, *([route.shadow] if route.shadow else [])]:
        if version not in known:
            raise ManifestError(
                f"{where}.route: no version '{version}'; the versions are {', '.join(known)}"
            )
    for version in route.versions:
        if known[version].deprecated:
            raise ManifestError(
                f"{where}.route: version '{version}' is deprecated but gets traffic",
                "route its share to another version, or remove deprecated",
            )
    return route


def _validate_model(
    name: str, table: dict[str, Any], filename: str, reference: str | None = None
) -> ModelSpec:
    """`reference` is the spec's name when it is not the table's: `minilm@v2`."""
    reference = reference or name
    where = f"{filename}: models.{reference.replace('@', '.versions.')}"
    if not _NAME.match(name):
        raise ManifestError(f"{where}: invalid model name; use letters, digits, '.', '_' and '-'")
    if isinstance(table.get("source"), str):
        source, revision = split_revision(table["source"])
        if revision and table.get("revision") not in (None, revision):
            raise ManifestError(
                f"{where}: source has @{revision} but revision is {table['revision']}"
            )
        table = {**table, "source": source, "revision": table.get("revision") or revision}
    try:
        spec = ModelSpec.model_validate({**table, "name": reference})
    except ValidationError as error:
        raise ManifestError(_describe(error, where, sep=".")) from None
    builtin = spec.task in BUILTIN_TASKS  # checked first: scanning entry points costs 0.1 s
    if spec.runtime is None and not builtin and spec.task not in known_tasks():
        raise ManifestError(f"{where}.task: {_unknown_task_message(spec.task)}")
    _check_backend(spec, where)
    _check_pickle_patterns(spec, where)
    return spec


def _unknown_task_message(task: str) -> str:
    tasks = known_tasks()
    close = difflib.get_close_matches(task, tasks, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(tasks)}"
    return f"unknown task '{task}'; {hint}"


def _check_backend(spec: ModelSpec, where: str) -> None:
    if spec.backend != "onnx":
        return
    if spec.task not in ONNX_TASKS:
        raise ManifestError(
            f"{where}.backend: the onnx backend serves {' and '.join(ONNX_TASKS)}, "
            f"not the task '{spec.task}'",
            "remove backend, or set it to torch",
        )
    if spec.dtype not in ("auto", "float32"):
        raise ManifestError(
            f"{where}.dtype: the onnx backend runs in float32, not {spec.dtype}",
            "remove dtype, or set backend = 'torch'",
        )


def _check_pickle_patterns(spec: ModelSpec, where: str) -> None:
    if spec.allow_pickle:
        return
    for pattern in spec.patterns:
        if pattern.endswith(PICKLE_SUFFIXES):
            raise ManifestError(
                f"{where}.include: '{pattern}' selects pickle weights, which can run code",
                "prefer *.safetensors, or set allow_pickle = true if you trust this model",
            )


def split_revision(source: str) -> tuple[str, str | None]:
    """`hf://org/repo@v1` -> (`hf://org/repo`, `v1`); other sources have no revision suffix."""
    if source.startswith("hf://") and "@" in source:
        base, revision = source.rsplit("@", 1)
        return base, revision
    return source, None


def _describe(error: ValidationError, where: str, sep: str = ": ") -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = _unknown_key_message(tuple(first["loc"]), error.title)
    elif first["type"] == "missing":
        message = "missing; add it"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{where}{sep}{location}: {message}" if location else f"{where}: {message}"


def _unknown_key_message(location: tuple[int | str, ...], title: str) -> str:
    """Suggest the key that was meant, from the table the unknown key is in."""
    if title == "ModelSpec":
        keys = [k for k in ModelSpec.model_fields if k != "name"]
    elif location[:1] == ("project",):
        keys = list(ProjectTable.model_fields)
    elif location[:1] == ("storage",):
        keys = list(StorageTable.model_fields)
    elif location[:1] == ("kafka",):
        keys = kafka_keys(location)
    else:
        keys = list(ManifestModel.model_fields) if len(location) == 1 else []
    close = difflib.get_close_matches(str(location[-1]), keys, n=1)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; the keys are {', '.join(keys)}" if keys else "unknown key"


def expand_variables(data: Any, filename: str, key: str = "") -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string value; `$$` is a literal `$`."""
    if isinstance(data, dict):
        return {
            k: expand_variables(v, filename, f"{key}.{k}" if key else k) for k, v in data.items()
        }
    if isinstance(data, list):
        return [expand_variables(item, filename, key) for item in data]
    if isinstance(data, str):
        return _VARIABLE.sub(lambda match: _expand(match, filename, key), data)
    return data


def _expand(match: re.Match[str], filename: str, key: str) -> str:
    if match.group(0) == "$$":
        return "$"
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is not None:
        return value
    if default is not None:
        return default
    raise ManifestError(
        f"{filename}: {key}: environment variable '{name}' is not set",
        f"set it, or write ${{{name}:-default}} to give a default",
    )
