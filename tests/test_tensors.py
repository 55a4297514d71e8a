"""modelmora.oip.tensors: binary round trips per datatype, BYTES framing, shapes, task bodies."""

from __future__ import annotations

import struct

import pytest

from modelmora.errors import InvalidInputError
from modelmora.oip.tensors import (
    FORMATS,
    TASKS,
    Spec,
    Tensor,
    conform,
    decode_binary,
    encode_binary,
    from_json,
    to_json,
)

VALUES = {
    "BOOL": [True, False], "UINT8": [0, 255], "UINT16": [0, 65535], "UINT32": [0, 2**32 - 1],
    "UINT64": [0, 2**64 - 1], "INT8": [-128, 127], "INT16": [-32768, 32767],
    "INT32": [-(2**31), 2**31 - 1], "INT64": [-(2**63), 2**63 - 1], "FP16": [0.5, -2.0],
    "FP32": [1.5, -0.25], "FP64": [1e300, -1e-300], "BYTES": [b"", b"caf\xc3\xa9"],
}  # fmt: skip


@pytest.mark.parametrize("datatype", list(VALUES))
def test_binary_round_trip(datatype: str) -> None:
    tensor = Tensor("X", datatype, (2,), VALUES[datatype])
    raw = encode_binary(tensor)
    if datatype != "BYTES":
        assert len(raw) == 2 * struct.calcsize("<" + FORMATS[datatype])
    assert decode_binary("X", datatype, [2], raw).data == VALUES[datatype]


def test_bytes_framing() -> None:
    assert encode_binary(Tensor("X", "BYTES", (1,), [b"ab"])) == b"\x02\x00\x00\x00ab"
    with pytest.raises(InvalidInputError, match="ends inside an element's 4-byte length"):
        decode_binary("X", "BYTES", [1], b"\x02\x00")
    with pytest.raises(InvalidInputError, match="says 5 bytes, but the data ends first"):
        decode_binary("X", "BYTES", [1], b"\x05\x00\x00\x00ab")


def test_shapes_and_types() -> None:
    with pytest.raises(InvalidInputError, match="holds 4 elements, not 3"):
        from_json("X", "INT32", [2, 2], [1, 2, 3])
    with pytest.raises(InvalidInputError, match="not a whole number of FP32"):
        decode_binary("X", "FP32", [1], b"\x00\x00\x00")
    with pytest.raises(InvalidInputError, match="unknown datatype"):
        from_json("X", "FP8", [1], [1])
    with pytest.raises(InvalidInputError, match="a BOOL element is true or false"):
        from_json("X", "BOOL", [1], [1])
    assert from_json("X", "FP32", [2, 1], [[1], [2]]).data == [1.0, 2.0]
    assert to_json(from_json("X", "BYTES", [1], ["é"])) == ["é"]


def test_conform() -> None:
    conform(Spec("TEXT", "BYTES", (-1,)), "BYTES", [3])
    with pytest.raises(InvalidInputError, match=r"shape \[2\] is not \[1\]"):
        conform(Spec("TEXT", "BYTES", (1,)), "BYTES", [2])
    with pytest.raises(InvalidInputError, match="datatype is FP32; send BYTES"):
        conform(Spec("TEXT", "BYTES", (-1,)), "FP32", [1])


def test_task_bodies() -> None:
    text = {"TEXT": Tensor("TEXT", "BYTES", (1,), [b"hi"])}
    assert TASKS["embedding"].body(text, {"normalize": False}) == {
        "inputs": ["hi"], "normalize": False,
    }  # fmt: skip
    generation = TASKS["text-generation"].body(text, {"max_tokens": 3, "seed": 1})
    assert generation == {"inputs": "hi", "max_new_tokens": 3, "seed": 1}
    [scores] = TASKS["embedding"].outputs_of({"embeddings": [[1.0, 2.0]]})
    assert scores.shape == (1, 2) and scores.datatype == "FP32"
