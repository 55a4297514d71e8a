"""`modelmora run` for a text-to-image model: the images written as PNG files, not printed."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelmora.errors import ModelmoraError


def image_paths(output: Path | None, seeds: list[int]) -> list[Path]:
    """`-o cat.png` for one image, `cat-1.png`, `cat-2.png`... for more; else `image-SEED.png`."""
    if output is None:
        return [Path(f"image-{seed}.png") for seed in seeds]
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(1, len(seeds) + 1)]


def png_bytes(image: Mapping[str, Any], timeout: float = 300.0) -> bytes:
    """An image of a result: inline base64, or downloaded from object storage and checked."""
    if "b64_json" in image:
        return base64.b64decode(image["b64_json"])
    import httpx

    data = httpx.get(str(image["url"]), timeout=timeout).raise_for_status().content
    if hashlib.sha256(data).hexdigest() != image.get("sha256"):
        raise ModelmoraError(
            "an image downloaded from object storage does not match its sha256",
            hint="run the request again; if it persists, the object in storage was changed",
        )
    return data


def save_images(result: Mapping[str, Any], output: Path | None) -> list[Path]:
    """Write each image of a text-to-image result; the paths written, in order."""
    images = list(result["images"])
    paths = image_paths(output, [int(image["seed"]) for image in images])
    for image, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.part")
        temporary.write_bytes(png_bytes(image))
        temporary.replace(path)
    return paths
