"""The onnx backend: `embedding` and `text-classification` through ONNX Runtime.

The model file is the snapshot's own `onnx/model.onnx` when the repository ships one, else an
export of the torch weights (torch's dynamo exporter), made once and kept in the cache under
`derived/onnx/KEY/`, KEY being the sha256 of the weights, the config and the exporter's versions.
Tokenizing, pooling, normalizing and the result's keys are the torch runtimes' own: only the
forward pass changes. onnxruntime and torch are imported inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmora.errors import ModelmoraError
from modelmora.files import sha256_file
from modelmora.runtimes import ModelSpec
from modelmora.runtimes.base import TransformersRuntime, load_weights, require_snapshot
from modelmora.runtimes.classification import ClassificationRuntime
from modelmora.runtimes.embedding import EmbeddingRuntime

if TYPE_CHECKING:
    import torch

SNAPSHOT_MODEL = Path("onnx") / "model.onnx"
MODEL_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # in `forward`'s order
# Raise when the export below changes what it writes, so that older exports are not reused.
EXPORT_FORMAT = "1"
EXPORT_PACKAGES = ("torch", "transformers", "onnxscript", "onnx")
KEYED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INSTALL_HINT = "backend 'onnx' needs onnxruntime: pip install 'modelmora[onnx]'"
# Two texts of different lengths: the traced graph sees a padded batch (a dim of 1 would be fixed).
SAMPLE_TEXTS = ["warm up", "a longer sentence, so that the batch needs padding"]


class OnnxBackend(TransformersRuntime):
    """What both ONNX runtimes add to their torch twin: the session, and tokens kept on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        self.output = ""

    def load_onnx(self, spec: ModelSpec, model_class: Any, output: str) -> None:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        ort = import_onnxruntime()
        folder = require_snapshot(spec.path)
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model_file = onnx_model_file(folder, model_class, output, self.tokenizer)
        self.session, self.device = open_session(ort, model_file, spec)
        names = [o.name for o in self.session.get_outputs()]
        self.output = output if output in names else names[0]

    def tokenize(self, texts: list[str], max_length: int | None = None) -> Any:
        # ONNX Runtime takes numpy arrays and copies them to its device itself.
        return self.encode(texts, max_length)

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        import torch

        feeds = {item.name: feed(batch, item.name) for item in self.session.get_inputs()}
        (result,) = self.session.run([self.output], feeds)
        return torch.from_numpy(result)

    def accelerator_memory(self) -> int | None:
        return None  # ONNX Runtime's CUDA arena is not torch's: torch cannot measure it


class OnnxEmbeddingRuntime(OnnxBackend, EmbeddingRuntime):
    """The embedding task's requests and results, the forward pass in ONNX Runtime."""

    def load(self, spec: ModelSpec) -> None:
        from transformers import AutoModel

        self.load_onnx(spec, AutoModel, "last_hidden_state")
        self.configure(spec)

    def hidden_states(self, batch: Any) -> torch.Tensor:
        return self.run(batch)


class OnnxClassificationRuntime(OnnxBackend, ClassificationRuntime):
    """The text-classification task's requests and results, the forward pass in ONNX Runtime."""

    def load(self, spec: ModelSpec) -> None:
        from transformers import AutoModelForSequenceClassification

        self.load_onnx(spec, AutoModelForSequenceClassification, "logits")
        self.read_labels(self.config)

    def logits(self, batch: Any) -> torch.Tensor:
        return self.run(batch)


def feed(batch: Mapping[str, torch.Tensor], name: str) -> Any:
    """One input of the session as numpy; token types default to zeros, as in transformers."""
    import torch

    if name in batch:
        return batch[name].numpy()
    if name == "token_type_ids":
        return torch.zeros_like(batch["input_ids"]).numpy()
    raise ModelmoraError(f"the ONNX model wants an input '{name}' that the tokenizer does not give")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelmoraError(INSTALL_HINT) from None
    return onnxruntime


def open_session(ort: Any, model_file: Path, spec: ModelSpec) -> tuple[Any, str]:
    """An inference session on the spec's device and threads; returns it and its device."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimizer's notes are not the user's
    providers = execution_providers(spec.device, ort.get_available_providers())
    session = ort.InferenceSession(str(model_file), options, providers=providers)
    on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    return session, f"cuda:{cuda_index(spec.device)}" if on_cuda else "cpu"


def execution_providers(device: str, available: Sequence[str]) -> list[Any]:
    """CUDA first when the device asks for it (or `auto` finds it), the CPU always."""
    cpu: list[Any] = ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if device.startswith("cuda") and not has_cuda:
        raise ModelmoraError(
            f"device '{device}' asked for, but onnxruntime has no CUDAExecutionProvider",
            hint="install onnxruntime-gpu, or set device = 'cpu' or 'auto'",
        )
    if device.startswith("cuda") or (device == "auto" and has_cuda and cuda_is_available()):
        return [("CUDAExecutionProvider", {"device_id": cuda_index(device)}), *cpu]
    return cpu


def cuda_is_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


# --- the model file: the snapshot's own, or an export kept by content --------------------------


def onnx_model_file(folder: Path, model_class: Any, output: str, tokenizer: Any) -> Path:
    """The snapshot's `onnx/model.onnx`, else the cached export, made now if missing."""
    if (folder / SNAPSHOT_MODEL).is_file():
        return folder / SNAPSHOT_MODEL
    inputs = [name for name in INPUT_NAMES if name in tokenizer.model_input_names]
    target = exports_root() / export_key(folder, model_class, output, inputs)
    if not (target / MODEL_FILE).is_file():
        export_once(
            target, lambda path: export_onnx(folder, model_class, output, inputs, tokenizer, path)
        )
    return target / MODEL_FILE


def exports_root() -> Path:
    from modelmora.cache import default_root

    return default_root() / "derived" / "onnx"


def export_key(folder: Path, model_class: Any, output: str, inputs: Sequence[str]) -> str:
    """The sha256 of what decides the export: weights, config, outputs, exporter versions."""
    digest = hashlib.sha256()
    parts = [EXPORT_FORMAT, getattr(model_class, "__name__", str(model_class)), output, *inputs]
    parts += [f"{name}={package_version(name)}" for name in EXPORT_PACKAGES]
    files = sorted(
        path
        for path in folder.iterdir()
        if path.name == "config.json" or path.name.endswith(KEYED_SUFFIXES)
    )
    parts += [f"{path.name}={sha256_file(path)}" for path in files]
    digest.update("\n".join(parts).encode())
    return digest.hexdigest()


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def export_once(target: Path, write: Callable[[Path], None]) -> None:
    """Export into a unique temp folder, then rename it to `target`: never a half-written model.
    One process exports at a time (a file lock); the others wait, then find its file."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock")):
        if (target / MODEL_FILE).is_file():
            return
        shutil.rmtree(target, ignore_errors=True)  # a folder someone emptied by hand
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        temp.mkdir()
        try:
            write(temp / MODEL_FILE)
            for path in temp.iterdir():  # model.onnx and its external weights, if any
                fsync_file(path)
            os.rename(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_onnx(
    folder: Path, model_class: Any, output: str, inputs: Sequence[str], tokenizer: Any, path: Path
) -> None:
    """Export the torch model's `output` with batch and length dynamic (torch's dynamo exporter:
    the older TorchScript one gives wrong states where the attention mask hides padding)."""
    import torch

    model = load_weights(model_class, folder, torch.float32, attn_implementation="eager").eval()
    sample = tokenizer(SAMPLE_TEXTS, padding=True, return_tensors="pt")
    dynamic = tuple({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for _ in inputs)
    with quiet_exporter():
        torch.onnx.export(
            output_module(model, output),
            tuple(sample[name] for name in inputs),
            str(path),
            dynamo=True,
            input_names=list(inputs),
            output_names=[output],
            dynamic_shapes=dynamic,
            verbose=False,
        )


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's own deprecation notes and torchvision warnings are not the user's concern."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


def output_module(model: Any, output: str) -> torch.nn.Module:
    """The model as a module that takes the tokenizer's tensors and returns one output tensor."""
    import torch

    class OutputOf(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **types)
            result: torch.Tensor = getattr(outputs, output)
            return result

    return OutputOf().eval()
