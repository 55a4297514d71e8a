"""Tensors of the Open Inference Protocol (KServe v2, Triton): decoding, encoding, and what each
task takes and gives. Pure: shared by the server (REST and gRPC) and `modelmora.client`.

    Tensor(name, datatype, shape, data)      data: a flat, row-major list of Python values
    decode_binary / encode_binary            the binary tensor data extension's bytes
    TASKS[task].body(inputs, parameters)     -> the body of POST /infer/{name} for the same call
    TASKS[task].outputs(result)              -> the output tensors of a runtime result

text-to-image's IMAGE holds PNG bytes: raw in the binary extension and gRPC, base64 text in JSON.

Binary data is little-endian, row-major, without padding; a BYTES element is a 4-byte
little-endian length and its bytes. No numpy: the server process stays light.
"""

from __future__ import annotations

import base64
import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelmora.errors import InvalidInputError
from modelmora.vectors import Vectors

Value = Any
"""A tensor element: float, int, bool or bytes (BYTES)."""

FORMATS = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
"""struct formats of the fixed-size datatypes; BYTES is variable."""
DATATYPES = (*FORMATS, "BYTES")


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Value]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    """The binary form already (little-endian, row-major), and then `data` is left empty: an
    output that came packed from the worker is sent as is (`modelmora.vectors`)."""
    json_data: list[Any] | None = None
    """The JSON form's elements when they are not `data`'s own: PNG bytes are no UTF-8 text, so
    text-to-image's IMAGE goes in JSON as base64 strings (in binary data and gRPC, raw bytes)."""

    @property
    def values(self) -> list[Value]:
        """The elements, from `raw` when the tensor has only that."""
        if self.raw is None:
            return self.data
        return decode_binary(self.name, self.datatype, self.shape, self.raw).data

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def check(name: str, datatype: str, shape: Sequence[int], count: int) -> tuple[int, ...]:
    """The shape, once the datatype is known and the shape holds `count` elements (422 if not)."""
    if datatype not in DATATYPES:
        raise invalid(name, f"unknown datatype '{datatype}'; use one of {', '.join(DATATYPES)}")
    if any(not isinstance(dim, int) or isinstance(dim, bool) or dim < 0 for dim in shape):
        raise invalid(name, f"shape {list(shape)} has a dimension that is not a whole number >= 0")
    if math.prod(shape) != count:
        raise invalid(name, f"shape {list(shape)} holds {math.prod(shape)} elements, not {count}")
    return tuple(shape)


def invalid(name: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"tensor '{name}': {message}")


# --- JSON and binary data -----------------------------------------------------------------------


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> Tensor:
    """A tensor from the JSON form: `data` nested or flat, BYTES as strings."""
    flat = flatten(data)
    checked = check(name, datatype, shape, len(flat))
    if datatype == "BYTES":
        values: list[Value] = [as_bytes(name, item) for item in flat]
    else:
        values = [as_number(name, datatype, item) for item in flat]
    return Tensor(name, datatype, checked, values)


def flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(flatten(item) if isinstance(item, list) else [item])
    return flat


def as_bytes(name: str, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    raise invalid(name, f"a BYTES element is a string, not {type(item).__name__}")


def as_number(name: str, datatype: str, item: Any) -> Value:
    if datatype == "BOOL":
        if not isinstance(item, bool):
            raise invalid(name, f"a BOOL element is true or false, not {item!r}")
        return item
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise invalid(name, f"a {datatype} element is a number, not {item!r}")
    if datatype.startswith(("INT", "UINT")):
        if isinstance(item, float) and not item.is_integer():
            raise invalid(name, f"a {datatype} element is a whole number, not {item!r}")
        return int(item)
    return float(item)


def to_json(tensor: Tensor) -> list[Value]:
    """The flat JSON data of a tensor: BYTES as UTF-8 text (undecodable bytes replaced), or the
    tensor's own `json_data` (base64 PNGs)."""
    if tensor.json_data is not None:
        return list(tensor.json_data)
    if tensor.datatype == "BYTES":
        return [value.decode(errors="replace") for value in tensor.values]
    return list(tensor.values)


def decode_binary(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A tensor from the binary extension's bytes."""
    if datatype == "BYTES":
        values: list[Value] = split_bytes(name, raw)
    elif datatype in FORMATS:
        size = struct.calcsize("<" + FORMATS[datatype])
        if len(raw) % size:
            raise invalid(name, f"{len(raw)} bytes is not a whole number of {datatype} elements")
        values = list(struct.unpack(f"<{len(raw) // size}{FORMATS[datatype]}", raw))
    else:
        raise invalid(name, f"unknown datatype '{datatype}'")
    return Tensor(name, datatype, check(name, datatype, shape, len(values)), values)


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    values, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise invalid(name, "BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise invalid(name, f"a BYTES element says {length} bytes, but the data ends first")
        values.append(raw[at : at + length])
        at += length
    return values


def encode_binary(tensor: Tensor) -> bytes:
    """A tensor's bytes for the binary extension (and gRPC's `raw_output_contents`)."""
    if tensor.raw is not None:
        return tensor.raw
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(value)) + value for value in tensor.data)
    fmt = FORMATS[tensor.datatype]
    if fmt == "f" and sys.byteorder == "little":
        import array

        return array.array("f", tensor.data).tobytes()  # 10x struct.pack for large outputs
    return struct.pack(f"<{len(tensor.data)}{fmt}", *tensor.data)


# --- what each task takes and gives -------------------------------------------------------------

Parameters = Mapping[str, Any]


@dataclass(frozen=True)
class Spec:
    """One tensor a task declares in its model metadata (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TaskTensors:
    inputs: tuple[Spec, ...]
    outputs: tuple[Spec, ...]
    body: Callable[[Mapping[str, Tensor], Parameters], dict[str, Any]]
    """The native `POST /infer/{name}` body for the input tensors and parameters: validated by the
    task's request schema (`api.schemas.request_schema`), so that every bound is the same."""
    outputs_of: Callable[[Mapping[str, Any]], list[Tensor]]
    """The output tensors of a runtime result."""


def conform(spec: Spec, datatype: str, shape: Sequence[int]) -> None:
    """Refuse an input whose datatype or shape is not what the model declares (-1: any size)."""
    if datatype != spec.datatype:
        raise invalid(spec.name, f"datatype is {datatype}; send {spec.datatype}")
    fits = len(shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise invalid(spec.name, f"shape {list(shape)} is not {list(spec.shape)} (-1: any size)")


TEXT = "TEXT"


def texts(inputs: Mapping[str, Tensor], name: str = TEXT) -> list[str]:
    """The input `name` (TEXT) as strings (any shape: its elements in row-major order)."""
    tensor = inputs.get(name)
    if tensor is None:
        raise InvalidInputError(f"the input tensor '{name}' is missing", f"send {name} as BYTES")
    if tensor.datatype != "BYTES":
        raise invalid(name, f"datatype is {tensor.datatype}; send BYTES")
    try:
        return [value.decode() for value in tensor.data]
    except UnicodeDecodeError:
        raise invalid(name, "an element is not UTF-8 text") from None


def options(parameters: Parameters, names: Sequence[str]) -> dict[str, Any]:
    """The request parameters that are options of the native body, by their native names."""
    return {name: parameters[name] for name in names if name in parameters}


def embedding_body(inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Any]:
    return {"inputs": texts(inputs), **options(parameters, ("normalize",))}


def embedding_outputs(result: Mapping[str, Any]) -> list[Tensor]:
    if isinstance(result["embeddings"], Vectors):  # packed by the worker: sent as they are
        packed: Vectors = result["embeddings"]
        shape = (len(packed), packed.dimensions)
        return [Tensor("EMBEDDING", "FP32", shape, [], raw=packed.data)]
    vectors: list[list[float]] = result["embeddings"]
    dimensions = len(vectors[0]) if vectors else int(result.get("dimensions", 0))
    flat = [value for vector in vectors for value in vector]
    return [Tensor("EMBEDDING", "FP32", (len(vectors), dimensions), flat)]


def classification_body(inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Any]:
    return {"inputs": texts(inputs), **options(parameters, ("top_k",))}


def classification_outputs(result: Mapping[str, Any]) -> list[Tensor]:
    predictions: list[list[Mapping[str, Any]]] = result["predictions"]
    k = len(predictions[0]) if predictions else 0
    labels = [str(p["label"]).encode() for row in predictions for p in row]
    scores = [float(p["score"]) for row in predictions for p in row]
    shape = (len(predictions), k)
    return [Tensor("LABEL", "BYTES", shape, labels), Tensor("SCORE", "FP32", shape, scores)]


SAMPLING = ("max_new_tokens", "temperature", "top_p", "seed", "stop")


def generation_body(inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Any]:
    """One prompt; `max_tokens` (OpenAI's and Triton's name) is also `max_new_tokens`."""
    prompts = texts(inputs)
    if len(prompts) != 1:
        raise invalid(TEXT, f"a generation request has one prompt, not {len(prompts)}")
    named = {"max_new_tokens": parameters["max_tokens"]} if "max_tokens" in parameters else {}
    return {"inputs": prompts[0], **named, **options(parameters, SAMPLING)}


def generation_outputs(result: Mapping[str, Any]) -> list[Tensor]:
    text = str(result.get("text", "")).encode()
    finish = str(result.get("finish_reason") or "").encode()
    return [Tensor(TEXT, "BYTES", (1,), [text]), Tensor("FINISH_REASON", "BYTES", (1,), [finish])]


IMAGE_OPTIONS = ("size", "n", "steps", "guidance", "seed")
"""text-to-image's request parameters: the native options (`runtimes.imageoptions` bounds them)."""
NEGATIVE_PROMPT = "NEGATIVE_PROMPT"


def one_text(inputs: Mapping[str, Tensor], name: str) -> str:
    values = texts(inputs, name)
    if len(values) != 1:
        raise invalid(name, f"a text-to-image request has one, not {len(values)}")
    return values[0]


def image_body(inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Any]:
    """One prompt, maybe one negative prompt; the options as parameters."""
    negative = one_text(inputs, NEGATIVE_PROMPT) if NEGATIVE_PROMPT in inputs else None
    named = {} if negative is None else {"negative_prompt": negative}
    return {"inputs": one_text(inputs, TEXT), **named, **options(parameters, IMAGE_OPTIONS)}


def image_outputs(result: Mapping[str, Any]) -> list[Tensor]:
    """IMAGE: each image's PNG bytes (base64 text in JSON); SEED: the seed it was drawn from."""
    images: list[Mapping[str, Any]] = result["images"]
    encoded = [str(image["b64_json"]) for image in images]
    pngs = [base64.b64decode(text) for text in encoded]
    seeds = [int(image["seed"]) for image in images]
    shape = (len(images),)
    return [
        Tensor("IMAGE", "BYTES", shape, pngs, json_data=encoded),
        Tensor("SEED", "INT64", shape, seeds),
    ]


TASKS: dict[str, TaskTensors] = {
    "embedding": TaskTensors(
        (Spec(TEXT, "BYTES", (-1,)),),
        (Spec("EMBEDDING", "FP32", (-1, -1)),),
        embedding_body,
        embedding_outputs,
    ),
    "text-classification": TaskTensors(
        (Spec(TEXT, "BYTES", (-1,)),),
        (Spec("LABEL", "BYTES", (-1, -1)), Spec("SCORE", "FP32", (-1, -1))),
        classification_body,
        classification_outputs,
    ),
    "text-generation": TaskTensors(
        (Spec(TEXT, "BYTES", (1,)),),
        (Spec(TEXT, "BYTES", (1,)), Spec("FINISH_REASON", "BYTES", (1,))),
        generation_body,
        generation_outputs,
    ),
    "text-to-image": TaskTensors(
        (Spec(TEXT, "BYTES", (1,)), Spec(NEGATIVE_PROMPT, "BYTES", (1,))),
        (Spec("IMAGE", "BYTES", (-1,)), Spec("SEED", "INT64", (-1,))),
        image_body,
        image_outputs,
    ),
}


def task_tensors(task: str) -> TaskTensors:
    try:
        return TASKS[task]
    except KeyError:
        raise InvalidInputError(
            f"the Open Inference Protocol serves {', '.join(TASKS)} models, not '{task}' ones",
            "call this model through POST /infer/{name}",
        ) from None
