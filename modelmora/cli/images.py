"""`modelmora run` for a text-to-image model: the images written as PNG files, the denoising steps
shown as a progress bar on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from modelmora.cli.app import console, options

if TYPE_CHECKING:
    from modelmora.client.images import Images, ProgressHook


def image_paths(output: Path | None, seeds: list[int]) -> list[Path]:
    """`-o cat.png` for one image, `cat-1.png`, `cat-2.png`... for more; else `image-SEED.png`."""
    if output is None:
        return [Path(f"image-{seed}.png") for seed in seeds]
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(1, len(seeds) + 1)]


def save_images(generated: Images, output: Path | None) -> list[Path]:
    """Write each image (a temp file renamed into place); the paths written, in order."""
    paths = image_paths(output, [image.seed for image in generated.images])
    for image, path in zip(generated.images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.part")
        temporary.write_bytes(image.png)
        temporary.replace(path)
    return paths


@contextmanager
def step_progress() -> Iterator[ProgressHook | None]:
    """A progress bar of the denoising steps on a terminal; None (no streaming) otherwise."""
    if options.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task("steps", total=None)
        yield lambda step, steps: bar.update(task, completed=step, total=steps)
