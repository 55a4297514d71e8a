"""The `text-classification` task: labels and scores for each input text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelmora.runtimes import ModelSpec
from modelmora.runtimes.base import TransformersRuntime, int_field, text_list, token_counts

if TYPE_CHECKING:
    import torch


class ClassificationRuntime(TransformersRuntime):
    """Request {"inputs": [str], "top_k": int | None}; result {"predictions", "prompt_tokens"}.

    Also "input_tokens", one count per input, so that the server can split a batch's usage.
    """

    task = "text-classification"

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[str] = []
        self.multi_label = False

    def load(self, spec: ModelSpec) -> None:
        from transformers import AutoModelForSequenceClassification

        self.load_pretrained(AutoModelForSequenceClassification, spec)
        self.read_labels(self.config)

    def read_labels(self, config: Any) -> None:
        self.labels = [str(config.id2label[index]) for index in range(config.num_labels)]
        # Multi-label models score each label on its own (sigmoid); the others share one softmax.
        self.multi_label = config.problem_type == "multi_label_classification"

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        import torch

        texts = text_list(request)
        top_k = int_field(request, "top_k", 1, minimum=1)
        batch = self.tokenize(texts)
        with torch.inference_mode():
            logits = self.logits(batch).float()
        scores = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        return {
            "predictions": [self._ranked(row, top_k) for row in scores.cpu().tolist()],
            **token_counts(batch["attention_mask"]),
        }

    def logits(self, batch: Any) -> torch.Tensor:
        """One row of label scores per input, before softmax or sigmoid."""
        logits: torch.Tensor = self.model(**batch).logits
        return logits

    def _ranked(self, scores: list[float], top_k: int | None) -> list[dict[str, Any]]:
        ranked = sorted(
            zip(self.labels, scores, strict=True), key=lambda pair: pair[1], reverse=True
        )
        return [{"label": label, "score": score} for label, score in ranked[:top_k]]
