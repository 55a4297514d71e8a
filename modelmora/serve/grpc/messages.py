"""The gRPC messages to and from tensors: inputs from `contents` or `raw_input_contents`, outputs
always as `raw_output_contents` (what tritonclient reads), large outputs in row chunks. Pure."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from modelmora.errors import InvalidInputError
from modelmora.oip import grpc_predict_v2_pb2 as pb
from modelmora.oip.tensors import FORMATS, Tensor, check, decode_binary, encode_binary, invalid

CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The `InferTensorContents` field of each datatype; FP16 comes only as raw contents."""
FINAL = "triton_final_response"
"""Triton's parameter on each response of a stream: true on the request's last one."""
EMPTY_FINAL = "triton_enable_empty_final_response"
CHUNK_ROWS = "chunk_rows"
"""A stream request's parameter: at most this many output rows per response."""
CHUNK_START = "chunk_start"
"""On each chunk: the index of its first row in the whole output."""


def input_tensors(request: pb.ModelInferRequest) -> dict[str, Tensor]:
    """The request's inputs by name, from `raw_input_contents` when it has them."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs",
            "send one raw_input_contents entry per input, or none and each input's contents",
        )
    tensors = [
        decode_binary(given.name, given.datatype, given.shape, raw[i]) if raw else contents(given)
        for i, given in enumerate(request.inputs)
    ]
    return {tensor.name: tensor for tensor in tensors}


def contents(given: pb.ModelInferRequest.InferInputTensor) -> Tensor:
    field = CONTENTS.get(given.datatype)
    if field is None:
        raise invalid(given.name, f"send {given.datatype} data as raw_input_contents")
    values = list(getattr(given.contents, field))
    shape = check(given.name, given.datatype, given.shape, len(values))
    return Tensor(given.name, given.datatype, shape, values)


def parameters(given: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Parameters as Python values: bool, int, str or float."""
    values = {}
    for name, parameter in given.items():
        which = parameter.WhichOneof("parameter_choice")
        if which is not None:
            values[name] = getattr(parameter, which)
    return values


def set_parameter(target: Any, name: str, value: bool | int | str | float) -> None:
    """Set `target.parameters[name]` (an `InferParameter` map) to `value`."""
    parameter = target.parameters[name]
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value


def infer_response(
    request: pb.ModelInferRequest, model: str, version: str, outputs: Sequence[Tensor]
) -> pb.ModelInferResponse:
    """The response with `outputs` (those the request names, if it names any)."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    wanted = {output.name for output in request.outputs}
    for tensor in outputs:
        if wanted and tensor.name not in wanted:
            continue
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(encode_binary(tensor))
    return response


def row_chunks(outputs: Sequence[Tensor], rows: int) -> Iterator[tuple[int, list[Tensor]]]:
    """The outputs split along their first dimension, `rows` at a time: (first row, tensors).
    All outputs of a task have the same number of rows; an output with none comes whole."""
    total = outputs[0].shape[0] if outputs and outputs[0].shape else 0
    if rows <= 0 or total <= rows:
        yield 0, list(outputs)
        return
    for start in range(0, total, rows):
        yield start, [rows_of(tensor, start, min(start + rows, total)) for tensor in outputs]


def rows_of(tensor: Tensor, start: int, end: int) -> Tensor:
    per_row = math.prod(tensor.shape[1:])
    shape = (end - start, *tensor.shape[1:])
    if tensor.raw is not None:  # fixed-size elements: rows are byte ranges
        size = per_row * struct.calcsize("<" + FORMATS[tensor.datatype])
        return Tensor(
            tensor.name, tensor.datatype, shape, [], raw=tensor.raw[start * size : end * size]
        )
    data = tensor.data[start * per_row : end * per_row]
    return Tensor(tensor.name, tensor.datatype, shape, data)
