"""ServeErrors as gRPC status codes, with the retry advice of refusals: a `retry-after` trailer
(seconds, as HTTP's header) and google.rpc.RetryInfo in `grpc-status-details-bin`, the detail
that Google's and Envoy's clients read. Encoded here by hand: two tiny messages are not worth a
dependency on googleapis-common-protos."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2  # type: ignore[import-untyped]

from modelmora.errors import ServeError

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The gRPC code of each HTTP status a ServeError has (one definition of what each error is)."""
RETRY_AFTER = "retry-after"
DETAILS = "grpc-status-details-bin"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"

Trailers = tuple[tuple[str, str | bytes], ...]


def code_of(error: ServeError) -> grpc.StatusCode:
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def trailers(code: grpc.StatusCode, message: str, retry_after: float | None) -> Trailers:
    """The trailing metadata of a refusal that may succeed later; none for the others."""
    if retry_after is None:
        return ()
    seconds = max(1, math.ceil(retry_after))
    return ((RETRY_AFTER, str(seconds)), (DETAILS, status_details(code, message, seconds)))


def status_details(code: grpc.StatusCode, message: str, seconds: int) -> bytes:
    """google.rpc.Status{code, message, details: [RetryInfo{retry_delay}]}, serialized."""
    delay = duration_pb2.Duration(seconds=seconds).SerializeToString()
    retry = any_pb2.Any(type_url=RETRY_INFO, value=field(1, delay)).SerializeToString()
    number: int = code.value[0]
    return b"\x08" + varint(number) + field(2, message.encode()) + field(3, retry)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field of the protobuf wire format."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
