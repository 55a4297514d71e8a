"""The Open Inference Protocol's bodies (KServe v2, Triton's REST API), as pydantic models.

Shared by the server and `modelmora.client`: it imports nothing of `modelmora.serve`. Requests
refuse unknown fields; responses leave out what is None (`model_version` of a model without
versions, an output's `parameters`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool

Parameters = dict[str, Any]
"""A protocol `parameters` object: names to booleans, numbers or strings."""


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerMetadata(BaseModel):
    """`GET /v2`."""

    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    """`GET /v2/health/live`: the status code says it; the body repeats it."""

    live: bool


class ServerReady(BaseModel):
    """`GET /v2/health/ready`."""

    ready: bool


class ModelReady(BaseModel):
    """`GET /v2/models/{name}/ready`."""

    name: str
    ready: bool


class TensorMetadata(BaseModel):
    """One tensor a model takes or gives; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """`GET /v2/models/{name}[/versions/{version}]`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InputTensor(Request):
    """One input: `data` (flat or nested, row-major), or `parameters.binary_data_size` bytes of the
    binary part of the body."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestedOutput(Request):
    """An output the client wants; `parameters.binary_data` asks for its bytes."""

    name: str
    parameters: Parameters | None = None


class InferRequest(Request):
    """`POST /v2/models/{name}[/versions/{version}]/infer`, or its JSON part."""

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The answer, or its JSON part when outputs are binary."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[OutputTensor]


class RepositoryIndexRequest(Request):
    """`POST /v2/repository/index`; the body may be empty."""

    ready: StrictBool = False


class RepositoryModel(BaseModel):
    """One served model or version, with Triton's states: READY, LOADING, UNAVAILABLE."""

    name: str
    version: str | None = None
    state: str
    reason: str = ""


class RepositoryIndex(RootModel[list[RepositoryModel]]):
    pass


class NoParameters(Request):
    """An empty `parameters` object: what the request takes has no parameters."""


class LoadRequest(Request):
    """`POST /v2/repository/models/{name}/load`; the body may be empty. ModelMora loads what
    the lock holds: Triton's `config` or files in `parameters` are refused."""

    parameters: NoParameters | None = None


class UnloadParameters(Request):
    unload_dependents: StrictBool = False
    """Triton's ensembles; a ModelMora model has no dependents, so it changes nothing."""


class UnloadRequest(Request):
    """`POST /v2/repository/models/{name}/unload`; the body may be empty."""

    parameters: UnloadParameters | None = None


class ErrorBody(BaseModel):
    """Every error under `/v2`, as Triton answers it."""

    error: str
