"""Settings of `modelmora serve`: command-line flags, then `MODELMORA_*` variables, then the
manifest's `[serve]` table, then defaults. Also the parsers for durations ("5m") and sizes ("8GB").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from modelmora.errors import ModelmoraError

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_duration(value: str | float | int) -> float:
    """Seconds from `30`, `"30s"`, `"5m"`, `"1h"`, `"250ms"`; negative means never (as Ollama)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"'{value}' is not a duration; write e.g. 30s, 5m, 1h, 0 or -1")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return -1.0 if seconds < 0 else seconds


def parse_size(value: str | int) -> int:
    """Bytes from `1073741824`, `"8GB"`, `"512MiB"`, `"2g"`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if match is None:
        raise ValueError(f"'{value}' is not a size; write e.g. 8GB, 512MiB or a number of bytes")
    unit = match.group(2).lower()
    prefix = unit[0] if unit and unit[0] in "kmgt" else ""
    base = 1024 if "i" in unit else 1000
    power = "kmgt".index(prefix) + 1 if prefix else 0
    return int(float(match.group(1)) * base**power)


def _port(value: Any) -> int:
    port = _integer(value, "a port number")
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0-65535)")
    return port


def _count(value: Any) -> int:
    count = _integer(value, "a count")
    if count < 0:
        raise ValueError(f"{count} is negative; use 0 for no limit")
    return count


def _integer(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not {what}") from None


def _names(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def _optional_size(value: Any) -> int | None:
    return None if value in (None, "", 0, "0") else parse_size(value)


def _retention(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"'{value}' is negative; finished jobs are kept for a duration like 7d")
    return seconds


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_loaded_models: int = 0
    memory_budget: int | None = None
    keep_alive: float = 300.0
    preload: tuple[str, ...] = ()
    api_key: str | None = None
    drain_timeout: float = 30.0
    request_timeout: float = 60.0
    max_body_bytes: int = 8 * 1024 * 1024
    job_retention: float = 24 * 3600.0
    """How long finished jobs and their results are kept (`[serve] job_retention = "7d"`)."""


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "host": str,
    "port": _port,
    "max_loaded_models": _count,
    "memory_budget": _optional_size,
    "keep_alive": parse_duration,
    "preload": _names,
    "api_key": lambda value: str(value) or None,
    "drain_timeout": parse_duration,
    "request_timeout": parse_duration,
    "max_body_bytes": parse_size,
    "job_retention": _retention,
}


def resolve(
    flags: Mapping[str, Any], env: Mapping[str, str], table: Mapping[str, Any], filename: str
) -> ServeConfig:
    """Merge the three layers; each bad value is reported with where it came from."""
    unknown = sorted(set(table) - set(_PARSERS))
    if unknown:
        raise ModelmoraError(
            f"{filename}: serve.{unknown[0]}: unknown key", f"known keys: {', '.join(_PARSERS)}"
        )
    values: dict[str, Any] = {}
    for field in fields(ServeConfig):
        raw, where = _pick(field.name, flags, env, table, filename)
        if raw is not None:
            values[field.name] = _parse(field.name, raw, where)
    return ServeConfig(**values)


def _pick(
    name: str,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    table: Mapping[str, Any],
    filename: str,
) -> tuple[Any, str]:
    variable = f"MODELMORA_{name.upper()}"
    if flags.get(name) not in (None, ()):
        return flags[name], f"--{name.replace('_', '-')}"
    if variable in env:
        return env[variable], variable
    return table.get(name), f"{filename}: serve.{name}"


def _parse(name: str, raw: Any, where: str) -> Any:
    try:
        return _PARSERS[name](raw)
    except (TypeError, ValueError) as error:
        raise ModelmoraError(f"{where}: {error}") from None


def keep_alive_seconds(value: str | float | None, where: str) -> float | None:
    """A model's own keep_alive from the manifest, in seconds (None: the server's default)."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise ModelmoraError(f"{where}: {error}") from None
    return seconds if math.isfinite(seconds) else -1.0
