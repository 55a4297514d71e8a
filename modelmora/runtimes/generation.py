"""The `text-generation` task: causal language models, whole answers or streamed token by token.

Generation runs through transformers' `generate()` with one stopping criterion of ours that sees
every new token: it decodes the text so far, cuts it at a stop string, hands out the new text, and
stops generation when asked to (stop string, cancelled stream).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from modelmora.errors import InvalidInputError
from modelmora.runtimes import ModelSpec
from modelmora.runtimes.base import TransformersRuntime, model_thread
from modelmora.runtimes.sampling import SamplingParams

if TYPE_CHECKING:
    import torch


class GenerationRuntime(TransformersRuntime):
    """Request {"prompt"} or {"messages"} plus sampling options; result {"text", ...}."""

    task = "text-generation"
    warm_up_request: Mapping[str, Any] = MappingProxyType(
        {"prompt": "warm up", "max_new_tokens": 1, "temperature": 0.0}
    )

    def __init__(self) -> None:
        super().__init__()
        self.end_token_ids: frozenset[int] = frozenset()
        self.model_thread = model_thread("generate")

    def load(self, spec: ModelSpec) -> None:
        from transformers import AutoModelForCausalLM

        self.load_pretrained(AutoModelForCausalLM, spec)
        self.end_token_ids = frozenset(self._end_token_ids())

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        pieces: list[str] = []
        decoder = self.model_thread.submit(self._generate, request, pieces.append).result()
        return {"text": "".join(pieces), **decoder.summary()}

    def stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield {"text": delta} per piece of text, then the summary with finish_reason."""
        pieces: queue.SimpleQueue[str | BaseException | None] = queue.SimpleQueue()
        cancelled = threading.Event()
        outcome: list[_Decoder] = []

        def produce() -> None:
            try:
                outcome.append(self._generate(request, pieces.put, cancelled))
            except BaseException as error:  # handed to the consumer, which raises it
                pieces.put(error)
            finally:
                pieces.put(None)

        done = self.model_thread.submit(produce)
        try:
            while (piece := pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                yield {"text": piece}
        finally:
            cancelled.set()  # the consumer left early: generation stops at the next token
            done.result()
        yield {"text": "", **outcome[0].summary()}

    def _generate(
        self,
        request: dict[str, Any],
        on_text: Callable[[str], None],
        cancelled: threading.Event | None = None,
    ) -> _Decoder:
        import torch

        params = SamplingParams.from_request(request)
        prompt_ids = self._prompt_ids(request)
        room = self.context_length() - prompt_ids.shape[1]
        if room < 1:
            raise InvalidInputError(
                f"prompt: too long for the model's context (prompt tokens:"
                f" {prompt_ids.shape[1]}, context: {self.context_length()})"
            )
        decoder = _Decoder(self.tokenizer, prompt_ids.shape[1], params.stop, self.end_token_ids)
        decoder.on_text, decoder.cancelled = on_text, cancelled or threading.Event()
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            self.model.generate(
                input_ids=prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=min(params.max_new_tokens, room),
                stopping_criteria=[decoder],
                pad_token_id=self._pad_token_id(),
                **sampling_arguments(params),
            )
        decoder.flush()
        return decoder

    def _prompt_ids(self, request: dict[str, Any]) -> torch.Tensor:
        if ("prompt" in request) == ("messages" in request):
            raise InvalidInputError("prompt: give either a prompt string or a list of messages")
        if "messages" in request:
            text, special = self._chat_text(chat_messages(request["messages"])), False
        elif isinstance(request["prompt"], str):
            text, special = request["prompt"], True
        else:
            raise InvalidInputError("prompt: expected a string")
        ids: torch.Tensor = self.tokenizer(
            text, add_special_tokens=special, return_tensors="pt"
        ).input_ids
        if ids.shape[1] == 0:
            ids = self._start_token_ids(ids)
        return ids.to(self.device)

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            # Base models have no template: a plain transcript is the least surprising fallback.
            lines = [f"{message['role']}: {message['content']}" for message in messages]
            return "\n".join([*lines, "assistant:"])
        text: str = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return text

    def _start_token_ids(self, empty: torch.Tensor) -> torch.Tensor:
        start = self.tokenizer.bos_token_id
        if start is None:
            raise InvalidInputError("prompt: must not be empty for this model")
        ids: torch.Tensor = empty.new_tensor([[start]])
        return ids

    def _end_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(source)
        return ids

    def _pad_token_id(self) -> int | None:
        pad: int | None = self.tokenizer.pad_token_id
        return pad if pad is not None else min(self.end_token_ids, default=None)


class _Decoder:
    """A stopping criterion for `generate()` that turns new tokens into text as they come.

    Text that could be the start of a stop string is held back until it is clearly not one, so a
    stop string never reaches the client, even split over several tokens.
    """

    def __init__(
        self, tokenizer: Any, prompt_length: int, stop: Sequence[str], end_ids: frozenset[int]
    ) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.stop, self.end_ids = tuple(stop), end_ids
        self.on_text: Callable[[str], None] = lambda text: None
        self.cancelled = threading.Event()
        self.text, self.sent = "", 0
        self.completion_tokens = 0
        self.finish_reason = "length"
        self.finished = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        if not self.finished:
            self._take(input_ids[0, self.prompt_length :].tolist())
        done = self.finished or self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def summary(self) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_length,
            "completion_tokens": self.completion_tokens,
        }

    def flush(self) -> None:
        """Hand out what was held back once generation has ended (a cut text has nothing left)."""
        self._send(len(self.text))

    def _take(self, generated: list[int]) -> None:
        self.completion_tokens = len(generated)
        if generated and generated[-1] in self.end_ids:
            self.completion_tokens -= 1
            self.finish_reason, self.finished = "stop", True
            return
        self.text = self.tokenizer.decode(generated, skip_special_tokens=True)
        cut = self._stop_position()
        if cut is not None:
            self.text = self.text[:cut]
            self.finish_reason, self.finished = "stop", True
            self._send(cut)
            return
        self._send(self._safe_end())

    def _stop_position(self) -> int | None:
        # A stop string may end in the newest token but start a little before what was sent.
        start = max(0, self.sent - max((len(stop) for stop in self.stop), default=0))
        found = [at for stop in self.stop if (at := self.text.find(stop, start)) >= 0]
        return min(found, default=None)

    def _safe_end(self) -> int:
        """How much text can go out: not a possible stop-string start, not half a character."""
        end = len(self.text)
        if self.text.endswith("\ufffd"):  # a multi-byte character split over tokens
            end = len(self.text.rstrip("\ufffd"))
        for stop in self.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if self.text[:end].endswith(stop[:size]):
                    end -= size
                    break
        return max(end, self.sent)

    def _send(self, end: int) -> None:
        if end > self.sent:
            self.on_text(self.text[self.sent : end])
            self.sent = end


def sampling_arguments(params: SamplingParams) -> dict[str, Any]:
    if params.is_greedy:
        return {"do_sample": False}
    # top_k=0 turns off the top-k filter many generation configs carry, so only top_p shapes it.
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}


def chat_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInputError("messages: expected a non-empty list of messages")
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidInputError(f"messages[{index}]: expected an object with role and content")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise InvalidInputError(f"messages[{index}].{key}: expected a string")
    return [{"role": message["role"], "content": message["content"]} for message in value]
