"""The `text-to-image` task: diffusers pipelines (Stable Diffusion and the like), PNG images out.

A request is a prompt and the options of `modelmora.runtimes.imageoptions`; the result is
{"images": [{"b64_json", "seed"}], "width", "height", "steps"}, each image a base64 PNG. Image i is
drawn from its own generator seeded with `seed + i`, so the same seed gives the same bytes.
`stream()` reports each denoising step ({"step", "steps"}) through diffusers'
`callback_on_step_end`, then yields the result; a stream closed early interrupts the pipeline.
"""

from __future__ import annotations

import base64
import io
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelmora.errors import ModelmoraError
from modelmora.runtimes import ModelSpec
from modelmora.runtimes.base import model_thread, resolve_device, resolve_dtype
from modelmora.runtimes.imageoptions import SEED, ImageParams

OnStep = Callable[[int, int], None]
WARM_UP_SIZE = "64x64"
FALLBACK_SIDE = 512
"""The size of a pipeline that does not say its own (Stable Diffusion 1.x's)."""


class ImageRuntime:
    """A diffusers pipeline from a snapshot folder (its `model_index.json`)."""

    task = "text-to-image"

    def __init__(self) -> None:
        self.device = "cpu"
        self.pipeline: Any = None
        self.model_thread = model_thread("text-to-image")

    def load(self, spec: ModelSpec) -> None:
        folder = require_pipeline(spec.path)
        try:
            from diffusers import DiffusionPipeline
            from diffusers.utils import logging
        except ImportError:
            raise ModelmoraError(
                "the text-to-image task needs diffusers", hint="pip install 'modelmora[image]'"
            ) from None
        from transformers.utils import logging as transformers_logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        device = resolve_device(spec.device)
        pipeline = DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            folder, local_files_only=True, dtype=resolve_dtype(spec.dtype, device)
        )
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline.to(device)
        self.device = str(self.pipeline.device)

    def warm_up(self) -> None:
        # The first pass pays for lazy initialisation (kernels, allocator); pay it at load.
        self.infer({"prompt": "warm up", "size": WARM_UP_SIZE, "steps": 1})

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        params = ImageParams.from_request(request)
        return self.model_thread.submit(self.generate, params).result()

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield {"step", "steps"} after each denoising step, then the result."""
        params = ImageParams.from_request(request)  # a bad request fails before the thread
        events: queue.SimpleQueue[dict[str, Any] | BaseException | None] = queue.SimpleQueue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                on_step = lambda step, steps: events.put({"step": step, "steps": steps})  # noqa: E731
                events.put(self.generate(params, on_step, cancelled))
            except BaseException as error:  # handed to the consumer, which raises it
                events.put(error)
            finally:
                events.put(None)

        done = self.model_thread.submit(produce)
        try:
            while (event := events.get()) is not None:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            cancelled.set()  # the consumer left early: the pipeline stops at the next step
            done.result()

    def accelerator_memory(self) -> int | None:
        import torch

        if not self.device.startswith("cuda"):
            return None
        return int(torch.cuda.memory_reserved(torch.device(self.device)))

    def generate(
        self,
        params: ImageParams,
        on_step: OnStep | None = None,
        cancelled: threading.Event | None = None,
    ) -> dict[str, Any]:
        import torch

        seed = secrets.randbelow(int(SEED.maximum) + 1) if params.seed is None else params.seed
        seeds = [seed + index for index in range(params.n)]
        generators = [torch.Generator("cpu").manual_seed(each) for each in seeds]
        width, height = params.size or self.default_size()
        with torch.inference_mode():
            output = self.pipeline(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt,
                width=width,
                height=height,
                num_images_per_prompt=params.n,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance,
                generator=generators,
                output_type="pil",
                callback_on_step_end=_step_callback(on_step, cancelled),
            )
        pairs = zip(output.images, seeds, strict=True)
        images = [{"b64_json": png_base64(image), "seed": seed} for image, seed in pairs]
        steps = int(getattr(self.pipeline, "num_timesteps", params.steps))
        return {"images": images, "width": width, "height": height, "steps": steps}

    def default_size(self) -> tuple[int, int]:
        """The size the pipeline was trained at: its latent sample size times the VAE's scale
        (the UNet's `sample_size`, or `default_sample_size` on transformer pipelines)."""
        side = getattr(self.pipeline, "default_sample_size", None)
        unet = getattr(self.pipeline, "unet", None)
        if side is None and unet is not None:
            side = unet.config.sample_size
        if isinstance(side, (list, tuple)):
            side = side[0]
        scale = int(getattr(self.pipeline, "vae_scale_factor", 8))
        if not isinstance(side, int):
            return FALLBACK_SIDE, FALLBACK_SIDE
        return side * scale, side * scale


def _step_callback(
    on_step: OnStep | None, cancelled: threading.Event | None
) -> Callable[..., dict[str, Any]]:
    def after_step(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
        if on_step is not None:
            on_step(step + 1, int(pipeline.num_timesteps))
        if cancelled is not None and cancelled.is_set():
            pipeline._interrupt = True  # diffusers' own stop flag: the remaining steps are skipped
        return kwargs

    return after_step


def png_base64(image: Any) -> str:
    """A PIL image as base64 PNG bytes; no metadata, so the same pixels give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def require_pipeline(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise ModelmoraError(
            f"model folder {folder} does not exist", hint="run `modelmora install` first"
        )
    if not (folder / "model_index.json").is_file():
        raise ModelmoraError(
            f"model folder {folder} has no model_index.json; is it a diffusers pipeline?",
            hint="text-to-image models are diffusers pipelines saved with save_pretrained",
        )
    return folder
