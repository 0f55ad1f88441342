"""numpy <-> wire messages: the packed Matrix and packed result arrays.

Shared by the gateway and the SDK so both sides agree byte for byte. Decoding
checks that the bytes match rows x dim x dtype and raises InvalidArgument.
"""
from __future__ import annotations

import numpy as np

from nestvec.errors import InvalidArgument
from nestvec.v1 import nestvec_pb2 as pb

_DTYPES = {pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2")}
METRIC_TO_WIRE = {"cosine": pb.COSINE, "dot": pb.DOT, "l2": pb.L2}
METRIC_FROM_WIRE = {v: k for k, v in METRIC_TO_WIRE.items()}
PRECISION_TO_WIRE = {"float32": pb.PRECISION_FLOAT32, "float16": pb.PRECISION_FLOAT16,
                     "int8": pb.PRECISION_INT8}
PRECISION_FROM_WIRE = {v: k for k, v in PRECISION_TO_WIRE.items()}
# ShardInfo's ANN index fields (fields 40-50), named alike in the shard's stats and the SDK
SHARD_INDEX_FIELDS = ("index_state", "index_progress", "index_dim", "index_bytes",
                      "index_build_seconds", "index_vectors", "index_deleted", "index_builds",
                      "index_loaded", "index_reason", "index_fallback_queries")


def encode_matrix(values, dtype: str = "float32") -> pb.Matrix:
    """A 2-D array (1-D is one row) as a packed Matrix; float16 halves the bytes."""
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"expected a 2-D [rows, dim] array, got shape {arr.shape}")
    wire = pb.FLOAT16 if dtype == "float16" else pb.FLOAT32
    arr = np.ascontiguousarray(arr, dtype=_DTYPES[wire])
    return pb.Matrix(rows=arr.shape[0], dim=arr.shape[1], dtype=wire, data=arr.tobytes())


def decode_matrix(m: pb.Matrix, what: str = "matrix") -> np.ndarray:
    """A packed Matrix as a float32 [rows, dim] array."""
    dtype = _DTYPES.get(m.dtype)
    if dtype is None:
        raise InvalidArgument(f"{what}.dtype {m.dtype} is unknown: use FLOAT32 or FLOAT16")
    expected = m.rows * m.dim * dtype.itemsize
    if len(m.data) != expected:
        raise InvalidArgument(
            f"{what} has {len(m.data)} bytes but rows={m.rows} x dim={m.dim} x "
            f"{dtype.itemsize} bytes ({dtype.name}) = {expected}: the shape or dtype is wrong")
    arr = np.frombuffer(m.data, dtype=dtype).reshape(m.rows, m.dim)
    return arr.astype(np.float32)  # a writable native copy (float16 widened)


def encode_ids(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, dtype="<u8").tobytes()


def decode_ids(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, dtype="<u8").astype(np.uint64).reshape(shape)


def encode_scores(scores: np.ndarray) -> bytes:
    return np.ascontiguousarray(scores, dtype="<f4").tobytes()


def decode_scores(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
