"""Durations (`30s`, `5m`, `1d`) and sizes (`8GB`, `512MiB`): one parser each, so that
modelmora.toml, `MODELMORA_*` variables, flags and request bodies all read them alike.

This module imports nothing of the package.
"""

from __future__ import annotations

import math
import re

DURATION_PATTERN = r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_duration(value: str | float) -> float:
    """Seconds from `30`, `"30s"`, `"5m"`, `"1h"`, `"1d"`, `"250ms"`; negative means never (-1)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 1h, 1d, 0 or -1")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"'{value}' is not a duration; write e.g. 30s, 5m, 1h, 1d, 0 or -1")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if math.isnan(value):
        raise ValueError("NaN is not a duration; write e.g. 30s, 5m, 1h, 1d, 0 or -1")
    return -1.0 if value < 0 or math.isinf(value) else float(value)


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
