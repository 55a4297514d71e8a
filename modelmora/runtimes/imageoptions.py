"""The options of text-to-image: their names, defaults and bounds, defined once.

The API's schemas publish and enforce these bounds; the image runtime reads a request with
`ImageParams.from_request`, which enforces the same ones, so a request that reaches a worker another
way is held to the same rules. This module imports neither torch nor pydantic: the server process
imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelmora.errors import InvalidInputError
from modelmora.runtimes.sampling import Bounds, integer_option, number_option

SIZE_MULTIPLE = 8
"""Stable Diffusion's VAE works on blocks of 8 pixels: a side must be a multiple of it."""
MAX_SIDE = 2048
_SIDES = "|".join(str(side) for side in range(SIZE_MULTIPLE, MAX_SIDE + 1, SIZE_MULTIPLE))
SIZE_PATTERN = f"^({_SIDES})x({_SIDES})$"
"""Exactly the sizes served, so that the published schema accepts no size the runtime refuses."""
IMAGES = Bounds(1, 8)
"""Images per request (`n`)."""
STEPS = Bounds(1, 200)
DEFAULT_STEPS = 30
GUIDANCE = Bounds(0.0, 50.0)
"""Classifier-free guidance scale; 1 or less turns guidance (and the negative prompt) off."""
DEFAULT_GUIDANCE = 7.5
SEED = Bounds(0, 2**32 - 1)
"""Image i of a request is drawn from `seed + i`: the same seed gives the same image bytes."""
MAX_PROMPT_CHARS = 10_000
CONTENT_TYPE = "image/png"


@dataclass(frozen=True)
class ImageParams:
    """One text-to-image request, checked against the bounds above."""

    prompt: str
    negative_prompt: str | None
    size: tuple[int, int] | None
    """(width, height); None is the model's own default size."""
    n: int
    steps: int
    guidance: float
    seed: int | None

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> ImageParams:
        """The options of a runtime request; a missing or null option takes its default."""
        n = integer_option(request, "n", IMAGES)
        steps = integer_option(request, "steps", STEPS)
        size = request.get("size")
        return cls(
            prompt=text_option(request, "prompt", required=True) or "",
            negative_prompt=text_option(request, "negative_prompt"),
            size=None if size is None else parse_size(size),
            n=1 if n is None else n,
            steps=DEFAULT_STEPS if steps is None else steps,
            guidance=number_option(request, "guidance", GUIDANCE, DEFAULT_GUIDANCE),
            seed=integer_option(request, "seed", SEED),
        )


def parse_size(value: object) -> tuple[int, int]:
    """`"512x768"` as (512, 768): each side a multiple of 8, from 8 to MAX_SIDE."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,6}x[0-9]{1,6}", value):
        raise InvalidInputError(f"size: expected 'WIDTHxHEIGHT' such as '512x512', got {value!r}")
    if not re.fullmatch(SIZE_PATTERN, value):
        raise InvalidInputError(
            f"size: each side must be a multiple of {SIZE_MULTIPLE} from {SIZE_MULTIPLE} to"
            f" {MAX_SIDE}, got {value!r}"
        )
    width, height = value.split("x")
    return int(width), int(height)


def text_option(request: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = request.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidInputError(f"{name}: expected a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInputError(f"{name}: at most {MAX_PROMPT_CHARS} characters")
    return value
