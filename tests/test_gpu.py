"""On a CUDA machine: a model loads on the GPU in a forked worker, answers, and unloading gives the
GPU memory back. Skipped where torch sees no CUDA device (CI has none); run it where one is lent:
`pytest -m gpu tests/test_gpu.py`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def gpu_memory_used_mib() -> int:
    """What nvidia-smi sees in use on device 0: a process-independent view."""
    assert shutil.which("nvidia-smi"), "nvidia-smi is needed to see the worker's GPU memory"
    out = subprocess.run(
        ["nvidia-smi", "--id=0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.split()[0])


def test_a_model_on_cuda_answers_and_gives_its_memory_back(tmp_path: Path) -> None:
    from modelfactory import build_embedding_model

    from modelmora.serve.config import SupervisorSettings
    from modelmora.serve.supervisor import ServedModel, Supervisor

    folder = build_embedding_model(tmp_path / "bert")

    async def scenario() -> tuple[int, int, int, str | None, int]:
        model = ServedModel("bert", "embedding", folder, device="cuda")
        supervisor = Supervisor([model], SupervisorSettings(stop_timeout=5))
        await supervisor.start()
        try:
            before = gpu_memory_used_mib()
            result = await supervisor.infer("bert", {"inputs": ["hello world"]})
            loaded = gpu_memory_used_mib()
            device = supervisor.status("bert").device
            await supervisor.unload("bert")
            after = gpu_memory_used_mib()
        finally:
            await supervisor.stop()
        return before, loaded, after, device, len(result.result["embeddings"][0])

    before, loaded, after, device, dimensions = asyncio.run(scenario())
    assert device is not None and device.startswith("cuda")
    assert dimensions == 32
    assert loaded > before  # the worker's CUDA context and weights
    assert after <= before + 16  # all of it back once the process is gone (MiB, driver noise)
