"""What the built-in runtimes share: loading a transformers model and checking request fields.

torch and transformers are imported inside functions: this module runs in the worker only, but
importing it must stay cheap (the template process imports it before forking workers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from modelmora.errors import InvalidInputError, ModelmoraError
from modelmora.runtimes import ModelSpec

if TYPE_CHECKING:
    import torch

TORCH_DTYPES = ("float32", "float16", "bfloat16")


class TransformersRuntime:
    """A model and its tokenizer from a snapshot folder; subclasses pick the model class."""

    task = "base"
    # Two texts of different lengths, so that the padded batch path is warmed up too.
    warm_up_request: Mapping[str, Any] = MappingProxyType(
        {"inputs": ["warm up", "a longer sentence, so that the batch needs padding"]}
    )

    def __init__(self) -> None:
        self.device = "cpu"
        self.model: Any = None
        self.tokenizer: Any = None
        self.config: Any = None

    def load(self, spec: ModelSpec) -> None:
        raise NotImplementedError

    def warm_up(self) -> None:
        # The first forward pass pays for lazy initialisation (kernels, allocator); pay it at load.
        self.infer(dict(self.warm_up_request))

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        raise InvalidInputError(f"stream: the '{self.task}' task does not stream its results")

    def accelerator_memory(self) -> int | None:
        import torch

        if not self.device.startswith("cuda"):
            return None
        return int(torch.cuda.memory_reserved(torch.device(self.device)))

    def load_pretrained(self, model_class: Any, spec: ModelSpec) -> None:
        """Load tokenizer and weights from the local snapshot only, safetensors first."""
        from transformers import AutoTokenizer
        from transformers.utils import logging

        folder = require_snapshot(spec.path)
        logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        device = resolve_device(spec.device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = load_weights(model_class, folder, resolve_dtype(spec.dtype, device))
        self.model = model.to(device).eval()
        self.config = self.model.config
        self.device = str(next(self.model.parameters()).device)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> Any:
        return self.encode(texts, max_length).to(self.device)

    def encode(self, texts: list[str], max_length: int | None = None) -> Any:
        """The padded batch as CPU tensors, truncated to the model's context."""
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length or self.context_length(),
            return_tensors="pt",
        )

    def context_length(self) -> int:
        """The longest input the model takes, from the tokenizer or else the model's config."""
        config = self.config
        limits = [
            getattr(config, "max_position_embeddings", None),
            getattr(config, "n_positions", None),
            self.tokenizer.model_max_length,
        ]
        # Tokenizers without a limit report a huge sentinel (1e30); configs may miss the field.
        known = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
        return min(known) if known else 512


def load_weights(model_class: Any, folder: Path, dtype: torch.dtype, **options: Any) -> Any:
    """A transformers model from a local folder only, safetensors first."""
    return model_class.from_pretrained(
        folder,
        local_files_only=True,
        dtype=dtype,
        use_safetensors=True if any(folder.glob("*.safetensors")) else None,
        **options,
    )


def token_counts(attention_mask: torch.Tensor) -> dict[str, Any]:
    """Tokens per input and in all: the server splits a batch's usage back to its requests."""
    per_input = [int(count) for count in attention_mask.sum(dim=1).tolist()]
    return {"prompt_tokens": sum(per_input), "input_tokens": per_input}


def require_snapshot(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise ModelmoraError(
            f"model folder {folder} does not exist", hint="run `modelmora install` first"
        )
    if not (folder / "config.json").is_file():
        raise ModelmoraError(
            f"model folder {folder} has no config.json; is it a transformers model?"
        )
    return folder


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelmoraError(
            f"device '{device}' asked for, but CUDA is not available to torch",
            hint="set device = 'cpu' or 'auto', or install a CUDA build of torch",
        )
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return _default_dtype(device)
    if dtype not in TORCH_DTYPES:
        raise ModelmoraError(f"dtype '{dtype}' is not one of auto, {', '.join(TORCH_DTYPES)}")
    resolved: torch.dtype = getattr(torch, dtype)
    return resolved


def _default_dtype(device: str) -> torch.dtype:
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def text_list(request: Mapping[str, Any], name: str = "inputs") -> list[str]:
    """A non-empty list of strings (a lone string counts as a list of one)."""
    value = request.get(name)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidInputError(f"{name}: expected a non-empty list of strings")
    if not all(isinstance(item, str) for item in value):
        raise InvalidInputError(f"{name}: every item must be a string")
    return value


def bool_field(request: Mapping[str, Any], name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}: expected true or false, got {value!r}")
    return value


def int_field(
    request: Mapping[str, Any], name: str, default: int | None, minimum: int = 0
) -> int | None:
    value = request.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{name}: must be at least {minimum}, got {value}")
    return value


def float_field(
    request: Mapping[str, Any], name: str, default: float, minimum: float, maximum: float
) -> float:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name}: expected a number, got {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidInputError(f"{name}: must be between {minimum} and {maximum}, got {value}")
    return float(value)


def model_thread(name: str) -> ThreadPoolExecutor:
    """The one thread a streaming runtime runs its model on: infer, stream and warm-up alike.

    A stream needs a thread besides the worker's, to yield from the model's callbacks; and torch's
    OpenMP threads are a team per calling thread, so a new thread per stream made each step slower
    in a worker (docs/benchmarks.md: a 64x64 image in 4 steps took 92 ms streamed, 47 ms plain;
    100 tokens of the tests' tiny GPT 103 ms streamed, 56 ms plain; now 44, 85).
    """
    return ThreadPoolExecutor(1, thread_name_prefix=name)
