"""Embeddings packed as float32 bytes (modelmora.vectors): exact, sliced, joined without copies."""

from __future__ import annotations

import struct

import numpy as np

from modelmora.vectors import Vectors, pack_result, unpack_result


def float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def test_packing_keeps_every_float32_exactly() -> None:
    rows = [[float32(0.1 * i + j) for j in range(5)] for i in range(4)]
    packed = Vectors.pack(rows)

    assert len(packed) == 4 and packed.dimensions == 5 and len(packed.data) == 4 * 5 * 4
    assert packed.tolist() == rows
    array = np.array(rows, dtype=np.float32)
    assert Vectors.pack(array) == packed  # an array is packed as it is, to the same bytes
    assert Vectors.pack(array.astype(np.float64)) == packed


def test_rows_of_one_batch_join_back_into_its_bytes_without_a_copy() -> None:
    batch = Vectors.pack([[float(i), float(i)] for i in range(6)])
    rows = batch.rows()

    whole = Vectors.join(rows)
    middle = Vectors.join(rows[1:4])
    mixed = Vectors.join([rows[4], rows[0], rows[1]])

    assert whole.data is batch.data
    assert middle.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    assert mixed.tolist() == [[4.0, 4.0], [0.0, 0.0], [1.0, 1.0]]
    other = Vectors.pack([[9.0, 9.0]]).rows()
    assert Vectors.join([rows[5], *other]).tolist() == [[5.0, 5.0], [9.0, 9.0]]
    assert len(Vectors.join([])) == 0


def test_results_are_packed_only_when_they_hold_rows_of_numbers() -> None:
    result = {"embeddings": [[1.0, 2.0]], "dimensions": 2}
    packed = pack_result(result)

    assert isinstance(packed["embeddings"], Vectors)
    assert unpack_result(packed) == result
    for left_alone in ({"text": "x"}, {"embeddings": []}, {"embeddings": [[1.0], [1.0, 2.0]]}):
        assert pack_result(left_alone) is left_alone
    assert pack_result({"embeddings": [["a"]]})["embeddings"] == [["a"]]
