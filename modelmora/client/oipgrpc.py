"""`GrpcClient`: the Open Inference Protocol over gRPC (`modelmora serve --grpc-port`), with the
same retries and circuit breaker as `Client`.

grpcio and protobuf (`pip install 'modelmora[client,grpc]'`) are imported when a GrpcClient is
made, not with `modelmora.client`. A gRPC status maps to the HTTP status the server would have
answered (UNAVAILABLE 503, RESOURCE_EXHAUSTED 429, DEADLINE_EXCEEDED 504, ...), so that one
`RetryPolicy` says what is retried; the server's `retry-after` trailer is honoured like the header.
Every call here only reads or computes: all are retried.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

from modelmora.client.calls import ROUTE_KEY_HEADER
from modelmora.client.errors import ServerUnreachableError
from modelmora.client.resilience import Attempts, CircuitBreaker, RetryCounters, RetryPolicy
from modelmora.client.results import Embeddings, Generation, Prediction, Predictions
from modelmora.errors import (
    ConflictError,
    DeadlineExceededError,
    ForbiddenError,
    InvalidInputError,
    OverloadedError,
    ServeError,
    UnavailableError,
    UnknownModelError,
)

DEFAULT_TARGET = "127.0.0.1:8001"
STATUSES = {
    "INVALID_ARGUMENT": 422,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""The HTTP status of each gRPC code the server sends (the others: 500)."""
ERRORS: dict[int, type[ServeError]] = {
    422: InvalidInputError,
    403: ForbiddenError,
    404: UnknownModelError,
    409: ConflictError,
    429: OverloadedError,
    503: UnavailableError,
    504: DeadlineExceededError,
}


class GrpcClient:
    """One gRPC server at `target` (`host:port`): embed, classify, generate, readiness."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        route_key: str | None = None,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        import grpc

        from modelmora.oip import grpc_predict_v2_pb2 as pb
        from modelmora.oip import grpc_predict_v2_pb2_grpc as services

        self.target, self.timeout, self.pb = target, timeout, pb
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.counters = RetryCounters()
        self.metadata = _metadata(api_key, route_key)
        self._channel = grpc.insecure_channel(target)
        self._stub = services.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._rpc_error: type[Exception] = grpc.RpcError

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def is_ready(self, model: str | None = None) -> bool:
        """The server's readiness, or a model's."""
        if model is None:
            return bool(self.call("ServerReady", self.pb.ServerReadyRequest()).ready)
        request = self.pb.ModelReadyRequest(name=model)
        return bool(self.call("ModelReady", request).ready)

    def embed(
        self, model: str, texts: Sequence[str], *, normalize: bool | None = None
    ) -> Embeddings:
        parameters = {} if normalize is None else {"normalize": normalize}
        response = self.call("ModelInfer", self._request(model, texts, parameters))
        [(shape, values)] = _outputs(response, "EMBEDDING")
        return Embeddings(_rows(values, shape), response.model_name, _version(response), 0)

    def classify(self, model: str, text: str, *, top_k: int | None = None) -> Predictions:
        parameters = {} if top_k is None else {"top_k": top_k}
        response = self.call("ModelInfer", self._request(model, [text], parameters))
        (_, labels), (_, scores) = _outputs(response, "LABEL", "SCORE")
        best = [
            Prediction(label.decode(), score) for label, score in zip(labels, scores, strict=True)
        ]
        return Predictions(best, response.model_name, _version(response), 0)

    def generate(self, model: str, prompt: str, **sampling: Any) -> Generation:
        """Sampling options by their native names (`max_new_tokens`, `temperature`, ...)."""
        response = self.call("ModelInfer", self._request(model, [prompt], sampling))
        (_, [text]), (_, [finish]) = _outputs(response, "TEXT", "FINISH_REASON")
        return Generation(
            text.decode(), response.model_name, _version(response), 0, 0, finish.decode() or None
        )

    def call(self, method: str, request: Any) -> Any:
        """One RPC through the breaker and the retries."""
        attempts = Attempts(self.target, "RPC", method, True, self.retry, self.breaker,
                            self.counters, self.timeout)  # fmt: skip
        rpc = getattr(self._stub, method)
        while True:
            timeout = attempts.begin()
            try:
                answer = rpc(request, timeout=timeout, metadata=self.metadata)
            except self._rpc_error as error:
                status, retry_after = _status(error)
                delay = attempts.after_status(status, retry_after)
                if delay is None:
                    raise _error(self.target, error, status, retry_after) from None
                time.sleep(delay)
                continue
            except BaseException:
                attempts.abandon()
                raise
            attempts.after_status(200, None)
            return answer

    def _request(self, model: str, texts: Sequence[str], parameters: dict[str, Any]) -> Any:
        name, _, version = model.partition("@")
        request = self.pb.ModelInferRequest(model_name=name, model_version=version)
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
        request.raw_input_contents.append(_bytes_tensor(texts))
        for key, value in parameters.items():
            _set_parameter(request.parameters[key], value)
        return request


def _metadata(api_key: str | None, route_key: str | None) -> tuple[tuple[str, str], ...]:
    pairs = [("authorization", f"Bearer {api_key}")] if api_key else []
    if route_key:
        pairs.append((ROUTE_KEY_HEADER.lower(), route_key))
    return tuple(pairs)


def _set_parameter(parameter: Any, value: bool | int | float | str) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def _bytes_tensor(texts: Sequence[str]) -> bytes:
    """BYTES elements as the binary form has them: a 4-byte little-endian length, then the bytes."""
    encoded = [text.encode() for text in texts]
    return b"".join(struct.pack("<I", len(item)) + item for item in encoded)


def _outputs(response: Any, *names: str) -> list[tuple[list[int], list[Any]]]:
    """The named output tensors: (shape, flat values), from `raw_output_contents`."""
    from modelmora.oip.tensors import decode_binary

    found = {}
    for index, output in enumerate(response.outputs):
        raw = response.raw_output_contents[index]
        tensor = decode_binary(output.name, output.datatype, list(output.shape), raw)
        found[output.name] = (list(tensor.shape), tensor.data)
    return [found[name] for name in names]


def _rows(values: list[float], shape: list[int]) -> list[list[float]]:
    rows, width = shape
    return [values[row * width : (row + 1) * width] for row in range(rows)]


def _version(response: Any) -> str | None:
    return response.model_version or None


def _status(error: Any) -> tuple[int, float | None]:
    """The HTTP status an RpcError stands for, and its `retry-after` trailer."""
    status = STATUSES.get(error.code().name, 500)
    trailers = dict(error.trailing_metadata() or ())
    try:
        return status, float(trailers["retry-after"])
    except (KeyError, ValueError):
        return status, None


def _error(target: str, error: Any, status: int, retry_after: float | None) -> ServeError:
    message = error.details() or error.code().name
    if status == 503 and retry_after is None and "connect" in message.lower():
        return ServerUnreachableError(
            f"no gRPC server answers at {target} ({message})",
            hint="start one with `modelmora serve --grpc-port PORT`",
        )
    if status == 401:
        return ServeError(message, hint="pass the server's API key (api_key=)")
    return ERRORS.get(status, ServeError)(message, retry_after=retry_after)
