"""The worker wire protocol: framing both ways, and every error code back to its exception."""

from __future__ import annotations

import socket

import pytest

from modelmora.errors import SERVE_ERRORS, ServeError, UnknownModelError, serve_error_class
from modelmora.runtimes import ModelSpec
from modelmora.serve.protocol import (
    HEADER,
    Channel,
    ErrorMessage,
    LoadMessage,
    decode_from_worker,
    encode,
    error_message,
    pack,
    raise_for_error,
    unpack_to_template,
)


def test_a_frame_is_its_length_then_the_message_and_the_channel_reads_it_back() -> None:
    load: LoadMessage = {
        "kind": "load",
        "spec": ModelSpec(name="m", task="embedding", path="/models/m"),
        "sys_path": ["/x"],
        "imports": ["torch"],
    }
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(encode(load))
        channel = Channel(theirs)
        assert channel.receive() == load
        channel.send({"kind": "pong", "id": 7, "memory_bytes": None})
        (size,) = HEADER.unpack(ours.recv(HEADER.size))
        assert decode_from_worker(ours.recv(size)) == {
            "kind": "pong",
            "id": 7,
            "memory_bytes": None,
        }
        ours.close()
        assert channel.receive() is None  # the server went away


def test_control_packets_round_trip() -> None:
    packet = pack({"kind": "fork", "token": 3})
    assert unpack_to_template(packet) == {"kind": "fork", "token": 3}


@pytest.mark.parametrize("error_class", SERVE_ERRORS)
def test_every_serve_error_crosses_the_socket_as_itself(error_class: type[ServeError]) -> None:
    reply = error_message(5, error_class("it went wrong", retry_after=2.0))
    with pytest.raises(error_class, match="it went wrong") as raised:
        raise_for_error(reply, "m")
    assert raised.value.retry_after == 2.0
    assert serve_error_class(error_class.code) is error_class


def test_an_unknown_code_is_a_plain_serve_error_naming_the_model() -> None:
    reply: ErrorMessage = {
        "kind": "error",
        "id": 1,
        "code": "internal_error",
        "message": "ValueError: boom",
        "retry_after": None,
    }
    with pytest.raises(ServeError, match="model 'm' failed on this request: ValueError: boom"):
        raise_for_error(reply, "m")
    raise_for_error({"kind": "chunk", "id": 1, "data": {}}, "m")  # not an error: passes
    assert serve_error_class("model_not_found") is UnknownModelError
