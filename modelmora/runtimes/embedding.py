"""The `embedding` task: sentence embeddings from an encoder, pooled like sentence-transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmora.errors import ModelmoraError
from modelmora.runtimes import ModelSpec
from modelmora.runtimes.base import TransformersRuntime, bool_field, text_list, token_counts

if TYPE_CHECKING:
    import torch

POOLING_MODES = ("mean", "cls", "last")


class EmbeddingRuntime(TransformersRuntime):
    """Request {"inputs": [str], "normalize": bool}; result {"embeddings", "dimensions", ...}.

    "input_tokens" has one count per input, so that the server can split a batch's usage.
    """

    task = "embedding"

    def __init__(self) -> None:
        super().__init__()
        self.pooling = "mean"
        self.max_length: int | None = None

    def load(self, spec: ModelSpec) -> None:
        from transformers import AutoModel

        self.load_pretrained(AutoModel, spec)
        self.configure(spec)

    def configure(self, spec: ModelSpec) -> None:
        """Pooling and the input limit, from the options or the model's files."""
        self.pooling = str(spec.options.get("pooling") or pooling_of(Path(spec.path)))
        if self.pooling not in POOLING_MODES:
            raise ModelmoraError(f"pooling '{self.pooling}' is not one of {POOLING_MODES}")
        self.max_length = spec.options.get("max_length")

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        import torch

        texts = text_list(request)
        normalize = bool_field(request, "normalize", True)
        batch = self.tokenize(texts, self.max_length)
        with torch.inference_mode():
            hidden = self.hidden_states(batch)
            vectors = pool(hidden, batch["attention_mask"], self.pooling)
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return {
            "embeddings": vectors.float().cpu().tolist(),
            "dimensions": int(vectors.shape[1]),
            **token_counts(batch["attention_mask"]),
        }

    def hidden_states(self, batch: Any) -> torch.Tensor:
        """The last layer's states, one row per token: (batch, tokens, hidden)."""
        hidden: torch.Tensor = self.model(**batch).last_hidden_state
        return hidden


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text; padding never counts."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        # Right padding: the last real token of row i sits at (number of real tokens - 1).
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def pooling_of(folder: Path) -> str:
    """The pooling a sentence-transformers export asks for (its Pooling module), else mean."""
    config = _pooling_config(folder)
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "last"
    return "mean"


def _pooling_config(folder: Path) -> dict[str, Any]:
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    for module in json.loads(modules_file.read_text()):
        if str(module.get("type", "")).endswith("Pooling"):
            config_file = folder / module.get("path", "") / "config.json"
            if config_file.is_file():
                config: dict[str, Any] = json.loads(config_file.read_text())
                return config
    return {}
