"""Embeddings packed as float32 bytes, the form in which they cross from a worker to the server.

A list of Python floats costs an object per number to build, to pickle and to unpickle; 10,000
embeddings of 384 numbers are 3.8 million of them. Packed, they are one 15 MB bytes object: the
worker packs what its runtime returned (`pack_result`), the scheduler slices a batch's rows per
request and joins them back without touching a number, and only an API that answers in JSON
turns them into lists (`unpack_result`); the Open Inference Protocol sends the bytes as they are.
The numbers are the runtime's own float32 values: packing loses nothing. A runtime may return its
embeddings as a list of rows or as a 2-D float32 array (numpy's): the array is packed as it is.
"""

from __future__ import annotations

import array
import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FIELD = "embeddings"
ITEM = 4  # bytes in a float32


@dataclass(frozen=True)
class Vectors:
    """Rows of `dimensions` float32 numbers, little-endian, row-major, in one bytes object."""

    data: bytes
    dimensions: int

    @classmethod
    def pack(cls, rows: Any) -> Vectors:
        """From a list of rows of numbers, or from a 2-D array (numpy's, or any object with
        `shape` and `tobytes`, as a runtime that keeps its tensor may return): then no number
        is touched at all."""
        if hasattr(rows, "tobytes") and len(getattr(rows, "shape", ())) == 2:
            return cls._from_array(rows)
        dimensions = len(rows[0]) if rows else 0
        numbers = array.array("f", itertools.chain.from_iterable(rows))
        if len(numbers) != dimensions * len(rows):
            raise ValueError("the rows of an embedding result differ in length")
        if sys.byteorder == "big":  # pragma: no cover - no such machine here
            numbers.byteswap()
        return cls(numbers.tobytes(), dimensions)

    @classmethod
    def _from_array(cls, array_2d: Any) -> Vectors:
        if str(getattr(array_2d, "dtype", "")) != "float32":
            array_2d = array_2d.astype("float32")
        if getattr(array_2d.dtype, "byteorder", "=") == ">":  # pragma: no cover
            array_2d = array_2d.byteswap()
        return cls(array_2d.tobytes(order="C"), int(array_2d.shape[1]))

    @classmethod
    def join(cls, parts: Sequence[Row]) -> Vectors:
        """The rows together again; runs of consecutive rows of one batch are one slice each, so
        a request that had a batch to itself gets that batch's bytes without a copy per row."""
        if not parts:
            return cls(b"", 0)
        pieces: list[bytes] = []
        start = 0
        for at in range(1, len(parts) + 1):
            ends = at == len(parts) or not parts[at].follows(parts[at - 1])
            if ends:
                pieces.append(
                    parts[start].source.slice(parts[start].index, parts[at - 1].index + 1)
                )
                start = at
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return cls(data, parts[0].source.dimensions)

    def slice(self, first: int, end: int) -> bytes:
        size = ITEM * self.dimensions
        if first == 0 and end * size == len(self.data):
            return self.data
        return self.data[first * size : end * size]

    def __len__(self) -> int:
        return len(self.data) // (ITEM * self.dimensions) if self.dimensions else 0

    def rows(self) -> list[Row]:
        """One reference per row; no bytes are copied until the rows are joined."""
        return [Row(self, index) for index in range(len(self))]

    def tolist(self) -> list[list[float]]:
        numbers = array.array("f")
        numbers.frombytes(self.data)
        if sys.byteorder == "big":  # pragma: no cover
            numbers.byteswap()
        flat = numbers.tolist()
        step = self.dimensions
        return [flat[at : at + step] for at in range(0, len(flat), step)] if step else []


@dataclass(frozen=True, slots=True)
class Row:
    """Row `index` of `source`: what the scheduler hands each input of a batch."""

    source: Vectors
    index: int

    def follows(self, previous: Row) -> bool:
        return self.source is previous.source and self.index == previous.index + 1


def pack_result(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """A runtime's result with its embeddings packed, when it has a list of rows of numbers."""
    rows = result.get(FIELD)
    if hasattr(rows, "tobytes") and len(getattr(rows, "shape", ())) == 2:
        return {**result, FIELD: Vectors.pack(rows)}
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
        return result
    try:
        return {**result, FIELD: Vectors.pack(rows)}
    except (TypeError, ValueError):  # not numbers, or ragged: leave it to whoever reads it
        return result


def unpack_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result with its embeddings as lists of floats again, for an answer in JSON."""
    vectors = result.get(FIELD)
    if isinstance(vectors, Vectors):
        return {**result, FIELD: vectors.tolist()}
    return dict(result)
