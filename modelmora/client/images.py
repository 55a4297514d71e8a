"""Text-to-image through the client: the images as PNG bytes, with the progress as it comes.

`/infer/{name}` answers a text-to-image model with `{"images": [{"b64_json" | "url", "seed"}],
"width", "height", "steps"}`; with `"stream": true`, server-sent events: `progress` after each
denoising step, then `result` (or `error`). Images the server keeps in object storage come as
presigned URLs: they are downloaded and checked by size and sha256, as any stored result.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelmora.client import stored
from modelmora.errors import serve_error_class

ProgressHook = Callable[[int, int], None]
"""Called with (step, steps) after each denoising step."""


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    seed: int
    """The same prompt, options, `n` and seed give the same bytes again. This seed with `n=1`
    gives the same image up to rounding (a batch computes in other shapes)."""


@dataclass(frozen=True)
class Images:
    images: list[GeneratedImage]
    width: int
    height: int
    model: str
    version: str | None
    """The version that answered; None for a model without versions."""


class EventReader:
    """The server-sent events of a streamed text-to-image request, fed one line at a time."""

    def __init__(self, on_progress: ProgressHook) -> None:
        self.on_progress = on_progress
        self.event = "message"
        self.body: Mapping[str, Any] | None = None

    def feed(self, line: str) -> None:
        if line.startswith("event: "):
            self.event = line.removeprefix("event: ").strip()
        elif line.startswith("data: "):
            self.take(json.loads(line.removeprefix("data: ")))

    def take(self, data: Any) -> None:
        if self.event == "progress":
            self.on_progress(int(data["step"]), int(data["steps"]))
        elif self.event == "result":
            self.body = data
        elif self.event == "error":
            error = data.get("error", {})
            raise serve_error_class(error.get("code"))(error.get("message", "generation failed"))


def version_of(body: Mapping[str, Any], header: str | None) -> str | None:
    """The header's version, else the one `name@version` in the body's `model` names."""
    return header or (str(body["model"]).partition("@")[2] or None)


def images_of(body: Mapping[str, Any], version: str | None, timeout: float) -> Images:
    result = body["result"]
    pngs = [_png(entry, timeout) for entry in result["images"]]
    return _images(body, version, pngs)


async def images_of_async(body: Mapping[str, Any], version: str | None, timeout: float) -> Images:
    result = body["result"]
    pngs = []
    for entry in result["images"]:
        inline = _inline(entry)
        pngs.append(inline if inline is not None else await stored.download_async(entry, timeout))
    return _images(body, version, pngs)


def _images(body: Mapping[str, Any], version: str | None, pngs: list[bytes]) -> Images:
    result = body["result"]
    images = [
        GeneratedImage(png, int(entry["seed"]))
        for png, entry in zip(pngs, result["images"], strict=True)
    ]
    model = str(body["model"]).partition("@")[0]
    return Images(images, int(result["width"]), int(result["height"]), model, version)


def _inline(entry: Mapping[str, Any]) -> bytes | None:
    return base64.b64decode(entry["b64_json"]) if "b64_json" in entry else None


def _png(entry: Mapping[str, Any], timeout: float) -> bytes:
    inline = _inline(entry)
    return inline if inline is not None else stored.download(entry, timeout)
