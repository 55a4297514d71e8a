"""The wire protocol between the server and its worker processes: every message declared once.

    server (launcher) ──control socket──► template ──forks──► worker
            └───────────────data socket (one per worker)──────────┘

Both sockets carry frames: a 4-byte big-endian length, then a pickled dict (on the control
socket, a SOCK_SEQPACKET, one message is one packet and needs no length). Pickle is safe here:
both ends are our own processes. Each message kind is a TypedDict whose `kind` is a Literal, so
mypy checks every key on both ends and narrows a union by `message["kind"]`.

Errors cross as `ErrorMessage` with the `code` of a ServeError subclass; `raise_for_error` turns
one back into that exception (the table is `modelmora.errors.serve_error_class`).
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Any, Literal, TypedDict, cast

from modelmora.errors import ServeError, serve_error_class
from modelmora.runtimes import ModelSpec

HEADER = struct.Struct("!I")
EXIT_LOAD_FAILED = 3
"""A worker's exit code when its model failed to load (it said why in a LoadFailedMessage)."""


# --- server to worker ---------------------------------------------------------------------------


class LoadMessage(TypedDict):
    kind: Literal["load"]
    spec: ModelSpec
    sys_path: list[str]
    imports: list[str]


class InferItem(TypedDict):
    id: int
    request: dict[str, Any]
    stream: bool


class InferMessage(TypedDict):
    kind: Literal["infer"]
    batch: list[InferItem]


class CancelMessage(TypedDict):
    kind: Literal["cancel"]
    id: int


class PingMessage(TypedDict):
    kind: Literal["ping"]
    id: int


ToWorker = LoadMessage | InferMessage | CancelMessage | PingMessage


# --- worker to server ---------------------------------------------------------------------------


class ReadyMessage(TypedDict):
    kind: Literal["ready"]
    device: str
    memory_bytes: int | None
    import_ms: float
    load_ms: float
    warmup_ms: float


class LoadFailedMessage(TypedDict):
    kind: Literal["load_failed"]
    message: str


class ResultMessage(TypedDict):
    kind: Literal["result"]
    id: int
    result: dict[str, Any]
    wait_ms: float
    compute_ms: float


class ChunkMessage(TypedDict):
    kind: Literal["chunk"]
    id: int
    data: dict[str, Any]


class EndMessage(TypedDict):
    kind: Literal["end"]
    id: int
    wait_ms: float
    compute_ms: float


class ErrorMessage(TypedDict):
    kind: Literal["error"]
    id: int
    code: str
    message: str
    retry_after: float | None


class PongMessage(TypedDict):
    kind: Literal["pong"]
    id: int
    memory_bytes: int | None


LoadReply = ReadyMessage | LoadFailedMessage
CallReply = ResultMessage | ChunkMessage | EndMessage | ErrorMessage | PongMessage
FromWorker = LoadReply | CallReply


# --- the template's control socket --------------------------------------------------------------


class PrepareMessage(TypedDict):
    kind: Literal["prepare"]
    sys_path: list[str]
    imports: list[str]


class ForkMessage(TypedDict):
    kind: Literal["fork"]
    token: int


class TemplateReadyMessage(TypedDict):
    kind: Literal["ready"]
    import_ms: float
    failed_imports: list[str]
    cuda_initialized: bool


class ForkedMessage(TypedDict):
    kind: Literal["forked"]
    token: int
    pid: int


class ExitedMessage(TypedDict):
    kind: Literal["exited"]
    pid: int
    returncode: int


ToTemplate = PrepareMessage | ForkMessage
FromTemplate = TemplateReadyMessage | ForkedMessage | ExitedMessage


# --- framing ------------------------------------------------------------------------------------


def encode(message: ToWorker | FromWorker) -> bytes:
    """One frame of the data socket: length, then the pickled message."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode_from_worker(body: bytes) -> FromWorker:
    return cast("FromWorker", pickle.loads(body))


def decode_to_worker(body: bytes) -> ToWorker:
    return cast("ToWorker", pickle.loads(body))


def pack(message: ToTemplate | FromTemplate) -> bytes:
    """One packet of the control socket (SOCK_SEQPACKET keeps message boundaries)."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_to_template(packet: bytes) -> ToTemplate:
    return cast("ToTemplate", pickle.loads(packet))


def unpack_from_template(packet: bytes) -> FromTemplate:
    return cast("FromTemplate", pickle.loads(packet))


class Channel:
    """The worker's end of its data socket: blocking reads, writes safe from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._write_lock = threading.Lock()

    def send(self, message: FromWorker) -> None:
        data = encode(message)
        with self._write_lock:
            self._sock.sendall(data)

    def receive(self) -> ToWorker | None:
        """The next message, or None once the server has closed the socket or died."""
        header = self._reader.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        (size,) = HEADER.unpack(header)
        body = self._reader.read(size)
        return decode_to_worker(body) if len(body) == size else None


# --- errors -------------------------------------------------------------------------------------


def error_message(call_id: int, error: ServeError) -> ErrorMessage:
    """A ServeError as the reply to call `call_id`."""
    return {
        "kind": "error",
        "id": call_id,
        "code": error.code,
        "message": str(error),
        "retry_after": error.retry_after,
    }


def raise_for_error(reply: FromWorker, model: str) -> None:
    """Raise the ServeError an ErrorMessage carries; any other reply passes."""
    if reply["kind"] != "error":
        return
    error_class = serve_error_class(reply["code"])
    if error_class is ServeError:
        raise ServeError(f"model '{model}' failed on this request: {reply['message']}")
    raise error_class(reply["message"], retry_after=reply["retry_after"])
