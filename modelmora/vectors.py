"""Embeddings packed as float32 bytes, the form in which they cross from a worker to the server.

A list of Python floats costs an object per number to build, to pickle and to unpickle; 10,000
embeddings of 384 numbers are 3.8 million of them. Packed, they are one 15 MB bytes object: the
worker packs what its runtime returned (`pack_result`), the scheduler slices a batch's rows per
request and joins them back without touching a number, and only an API that answers in JSON
turns them into lists (`unpack_result`); the Open Inference Protocol sends the bytes as they are.
The numbers are the runtime's own float32 values: packing loses nothing.
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
    def pack(cls, rows: Sequence[Sequence[float]]) -> Vectors:
        dimensions = len(rows[0]) if rows else 0
        numbers = array.array("f", itertools.chain.from_iterable(rows))
        if len(numbers) != dimensions * len(rows):
            raise ValueError("the rows of an embedding result differ in length")
        if sys.byteorder == "big":  # pragma: no cover - no such machine here
            numbers.byteswap()
        return cls(numbers.tobytes(), dimensions)

    @classmethod
    def join(cls, parts: Sequence[Vectors]) -> Vectors:
        dimensions = parts[0].dimensions if parts else 0
        return cls(b"".join(part.data for part in parts), dimensions)

    def __len__(self) -> int:
        return len(self.data) // (ITEM * self.dimensions) if self.dimensions else 0

    def rows(self) -> list[Vectors]:
        """One `Vectors` per row (slices of the bytes)."""
        size = ITEM * self.dimensions
        view = memoryview(self.data)
        return [
            Vectors(bytes(view[at : at + size]), self.dimensions)
            for at in range(0, len(self.data), size)
        ]

    def tolist(self) -> list[list[float]]:
        numbers = array.array("f")
        numbers.frombytes(self.data)
        if sys.byteorder == "big":  # pragma: no cover
            numbers.byteswap()
        flat = numbers.tolist()
        step = self.dimensions
        return [flat[at : at + step] for at in range(0, len(flat), step)] if step else []


def pack_result(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """A runtime's result with its embeddings packed, when it has a list of rows of numbers."""
    rows = result.get(FIELD)
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
