"""Bulk work from a Ray job, with Ray Data and without gRPC: ingest files, batch search.

Both run on a running nestvec cluster (`nestvec serve` started it; its
namespace names it) and reach its shard actors through a Coordinator, the same
code the gateway uses, so every check and the routing by id are the same.

Inputs (a file, or a directory of them, read in name order):
- Parquet: an id column (unsigned or non-negative ints) and a vector column,
  list<float> or fixed_size_list<float>[dim] (float16/32/64);
- `.npy`: [rows, dim] float arrays; row r of the i-th file (name order) gets id
  `id_offset + rows in the files before it + r`, so a re-run names the same rows
  with the same ids.

Ingest: Ray Data reads the files in parallel; each block of `batch_rows` rows
becomes one `Coordinator.upsert` in a Ray task, which splits it by the id hash
(routing.py) and sends each shard its part: data goes file → task → shard,
never through the driver. Upserts are idempotent (an id is written, or
replaced with the same vector), so re-running after a failure rewrites what
was already written and duplicates nothing.

Batch search: queries are read the same way (the id column, or the `.npy` row
number, becomes `query_id`), searched in batches of `batch_rows` at `dim` or
through a funnel, and written as Parquet: query_id, ids fixed_size_list<uint64>[k],
scores fixed_size_list<float32>[k].

Paths are read and written by Ray tasks on any node: on a real multi-node
cluster use storage every node sees (s3://, gs://, NFS); a local path works
when every node has it.
"""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nestvec.errors import FailedPrecondition, InvalidArgument, NestvecError, NotFound, from_code

_coordinators: dict = {}  # per worker process: namespace -> Coordinator (reused across batches)


@dataclass
class IngestReport:
    files: int
    rows: int                # rows read and upserted by this run
    seconds: float
    collection_vectors: int  # live vectors in the collection afterwards

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (f"ingest done: {self.rows} rows from {self.files} files in {self.seconds:.1f}s "
                f"({rate:,.0f} rows/s); collection now holds {self.collection_vectors} vectors")


@dataclass
class BatchSearchReport:
    queries: int
    seconds: float
    output: str

    def line(self) -> str:
        rate = self.queries / self.seconds if self.seconds else 0.0
        return (f"batch search done: {self.queries} queries in {self.seconds:.1f}s "
                f"({rate:,.0f} queries/s); results in {self.output}")


# ----- inputs -------------------------------------------------------------------
def list_inputs(path: str) -> tuple[str, list[str]]:
    """("parquet" | "npy", files in name order) for a file or a directory of them."""
    if os.path.isdir(path):
        pq = sorted(glob.glob(os.path.join(path, "*.parquet")))
        npy = sorted(glob.glob(os.path.join(path, "*.npy")))
        if pq and npy:
            raise InvalidArgument(f"{path} holds both .parquet and .npy files: keep one kind per directory")
        if not pq and not npy:
            raise InvalidArgument(f"{path} holds no .parquet or .npy files")
        return ("parquet", pq) if pq else ("npy", npy)
    if not os.path.exists(path):
        raise InvalidArgument(f"input {path} does not exist")
    if path.endswith(".parquet"):
        return "parquet", [path]
    if path.endswith(".npy"):
        return "npy", [path]
    raise InvalidArgument(f"input {path} is neither .parquet nor .npy (nor a directory of them)")


def npy_chunks(files: list[str], batch_rows: int, id_offset: int = 0) -> list[dict]:
    """Row ranges of .npy files (read from their headers only) and the id of each range's first row."""
    chunks, base = [], int(id_offset)
    for f in files:
        arr = np.load(f, mmap_mode="r")
        if arr.ndim != 2:
            raise InvalidArgument(f"{f} has shape {arr.shape}: .npy inputs must be [rows, dim]")
        for lo in range(0, arr.shape[0], batch_rows):
            hi = min(arr.shape[0], lo + batch_rows)
            chunks.append({"path": f, "lo": lo, "hi": hi, "first_id": base + lo})
        base += arr.shape[0]
    return chunks


def _npy_rows(chunk) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = int(chunk["lo"]), int(chunk["hi"])
    vectors = np.asarray(np.load(str(chunk["path"]), mmap_mode="r")[lo:hi], dtype=np.float32)
    ids = np.arange(int(chunk["first_id"]), int(chunk["first_id"]) + hi - lo, dtype=np.uint64)
    return ids, vectors


def arrow_vectors(column) -> np.ndarray:
    """A list<float> or fixed_size_list<float> Arrow column as a [rows, dim] float32 matrix."""
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if col.null_count:
        raise InvalidArgument(f"the vector column has {col.null_count} null rows")
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.diff(np.asarray(col.offsets))
        if lengths.size and (lengths != lengths[0]).any():
            raise InvalidArgument("vector rows have different lengths: every vector needs the same dim")
        dim = int(lengths[0]) if lengths.size else 0
    else:
        raise InvalidArgument(f"the vector column has type {col.type}: use list<float> or "
                              "fixed_size_list<float>[dim]")
    values = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(col), dim)


def _dataset(kind: str, files: list[str], batch_rows: int, id_offset: int, columns: list[str],
             task_cpus: float):
    """The input as a Ray Data dataset. The read asks for the same CPUs as the map after
    it, so Ray Data fuses them: each task reads its rows and upserts them itself,
    without passing the blocks through the object store first."""
    try:
        import ray.data
        import pyarrow  # noqa: F401  (Ray Data's reads need it; fail here, clearly)
    except ImportError as err:
        raise FailedPrecondition(f"bulk jobs need Ray Data ({err.name} is missing): "
                                 "pip install 'nestvec[data]'") from None

    if kind == "parquet":
        return ray.data.read_parquet(files, num_cpus=task_cpus).select_columns(columns)
    return ray.data.from_items(npy_chunks(files, batch_rows, id_offset))


def _slices(kind: str, batch, batch_rows: int):
    """A Ray Data block in pieces of at most batch_rows rows (npy: one piece per chunk row)."""
    if kind == "npy":
        for i in range(batch.num_rows):
            yield batch.slice(i, 1)
    else:
        for lo in range(0, batch.num_rows, batch_rows):
            yield batch.slice(lo, batch_rows)


def _rows(kind: str, batch, id_column: str, vector_column: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, [n, dim] vectors) of one Ray Data batch (pyarrow), whatever the input kind."""
    if kind == "npy":
        parts = [_npy_rows(c) for c in batch.to_pylist()]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    for c in (id_column, vector_column):
        if c not in batch.column_names:
            raise InvalidArgument(f"no column {c!r} in the Parquet input (columns: {batch.column_names})")
    ids = batch.column(id_column).to_numpy()
    return ids, arrow_vectors(batch.column(vector_column))


def _coordinator(namespace: str):
    coord = _coordinators.get(namespace)
    if coord is None:
        from nestvec.cluster._distributed.coordinator import Coordinator
        coord = _coordinators[namespace] = Coordinator(namespace=namespace)
    return coord


# ----- ingest -------------------------------------------------------------------
def _upsert_batch(batch, *, kind, namespace, name, id_column, vector_column, batch_rows):
    """A Ray Data block → routed upserts of batch_rows rows each (runs in a Ray task, on any node)."""
    import pyarrow as pa

    rows = written = 0
    try:
        for part in _slices(kind, batch, batch_rows):
            ids, vectors = _rows(kind, part, id_column, vector_column)
            written += _coordinator(namespace).upsert(name, ids, vectors, timeout=600)
            rows += int(ids.size)
    except NestvecError as err:
        # Bad input or shards down: handed to the driver as data, so it can stop the
        # job and raise it with its status code (a raised error reaches the driver
        # wrapped in Ray Data's exceptions).
        return pa.table({"rows": [rows], "written": [written], "error": [f"{err.code}\t{err.message}"]})
    return pa.table({"rows": [rows], "written": [written], "error": [""]})


def input_dim(kind: str, files: list[str], vector_column: str) -> int:
    if kind == "npy":
        return int(np.load(files[0], mmap_mode="r").shape[1])
    import pyarrow.parquet as pq

    table = pq.ParquetFile(files[0]).read_row_group(0, columns=[vector_column])
    return int(arrow_vectors(table.column(vector_column)[:1]).shape[1])


def input_rows(kind: str, files: list[str]) -> int:
    if kind == "npy":
        return int(sum(np.load(f, mmap_mode="r").shape[0] for f in files))
    import pyarrow.parquet as pq

    return int(sum(pq.ParquetFile(f).metadata.num_rows for f in files))


def ingest(name: str, path: str, *, namespace: str, id_column: str = "id",
           vector_column: str = "vector", batch_rows: int = 4096, id_offset: int = 0,
           create_metric: str | None = None, create_shards: int | None = None,
           task_cpus: float = 0.5, progress: Callable[[str], None] = print) -> IngestReport:
    """Upsert every row of `path` into collection `name` (created first if `create_metric`)."""
    from nestvec.cluster._distributed.coordinator import connect

    kind, files = list_inputs(path)
    coord = connect(namespace=namespace)
    total = input_rows(kind, files)
    try:
        coord.describe_collection(name, timeout=60)
    except NotFound:
        if not create_metric:
            raise NotFound(f"collection {name!r} does not exist: create it first, or pass "
                           "--metric (and --shards) to create it from the input's dim") from None
        coord.create_collection(name, input_dim(kind, files, vector_column), create_metric,
                                shards=create_shards, timeout=300)
        progress(f"created collection {name!r}")
    progress(f"ingesting {total} rows from {len(files)} {kind} files into {name!r} "
             f"(batches of {batch_rows} rows)")
    ds = _dataset(kind, files, batch_rows, id_offset, [id_column, vector_column], task_cpus)
    ds = ds.map_batches(_upsert_batch, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus,
                        fn_kwargs=dict(kind=kind, namespace=namespace, name=name,
                                       id_column=id_column, vector_column=vector_column,
                                       batch_rows=batch_rows))
    start, done, shown = time.perf_counter(), 0, 0.0
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        done += int(out["rows"].sum())
        failed = [e for e in out["error"].tolist() if e]
        if failed:  # stop at the first failed block (dropping the iterator cancels the rest)
            code, message = failed[0].split("\t", 1)
            raise from_code(code, f"ingest stopped ({done} rows confirmed written): {message}. Fix "
                                  "the input and run it again: rows already written are rewritten, "
                                  "not duplicated")
        now = time.perf_counter() - start
        if now - shown >= 2.0 or done == total:
            shown = now
            progress(f"  {done}/{total} rows ({100 * done / max(total, 1):.0f}%, "
                     f"{done / max(now, 1e-9):,.0f} rows/s)")
    seconds = time.perf_counter() - start
    _, stats = coord.describe_collection(name, timeout=60)
    return IngestReport(len(files), done, seconds, int(sum(s.get("vectors", 0) for s in stats)))


# ----- batch search ---------------------------------------------------------------
def _search_batch(batch, *, kind, namespace, name, id_column, vector_column, k, dim, funnel,
                  batch_rows):
    """A Ray Data block of queries → searches of batch_rows queries → a results table."""
    import pyarrow as pa

    tables = []
    for part in _slices(kind, batch, batch_rows):
        qids, queries = _rows(kind, part, id_column, vector_column)
        res = _coordinator(namespace).search(name, queries, k=k, dim=dim, funnel=funnel, timeout=600)
        kk = res.ids.shape[1]
        tables.append(pa.table({
            "query_id": pa.array(np.asarray(qids, dtype=np.uint64)),
            "ids": pa.FixedSizeListArray.from_arrays(pa.array(res.ids.reshape(-1)), kk),
            "scores": pa.FixedSizeListArray.from_arrays(
                pa.array(res.scores.reshape(-1).astype(np.float32)), kk),
        }))
    return pa.concat_tables(tables)


def batch_search(name: str, queries_path: str, output: str, *, namespace: str, k: int = 10,
                 dim: int | None = None, funnel=None, id_column: str = "id",
                 vector_column: str = "vector", batch_rows: int = 256, task_cpus: float = 0.5,
                 progress: Callable[[str], None] = print) -> BatchSearchReport:
    """Search every query row of `queries_path`; write (query_id, ids, scores) Parquet to `output`."""
    import pyarrow.parquet as pq

    from nestvec.cluster._distributed.coordinator import connect

    kind, files = list_inputs(queries_path)
    coord = connect(namespace=namespace)
    coord.describe_collection(name, timeout=60)  # NOT_FOUND before any work starts
    total = input_rows(kind, files)
    if os.path.isdir(output) and os.listdir(output):
        raise InvalidArgument(f"output directory {output} is not empty: pick a new one")
    progress(f"searching {total} queries from {len(files)} {kind} files in {name!r} "
             f"(k={k}, dim={dim or 'full'}, funnel={funnel or 'none'}, batches of {batch_rows})")
    start = time.perf_counter()
    ds = _dataset(kind, files, batch_rows, 0, [id_column, vector_column], task_cpus)
    ds = ds.map_batches(_search_batch, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus,
                        fn_kwargs=dict(kind=kind, namespace=namespace, name=name,
                                       id_column=id_column, vector_column=vector_column, k=k,
                                       dim=dim, funnel=funnel, batch_rows=batch_rows))
    ds.write_parquet(output)
    written = sum(pq.ParquetFile(f).metadata.num_rows
                  for f in glob.glob(os.path.join(output, "*.parquet")))
    return BatchSearchReport(int(written), time.perf_counter() - start, output)


def read_results(output: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query_ids, ids [Q, k], scores [Q, k]) from a batch search's output, by query_id."""
    import pyarrow.parquet as pq

    table = pq.read_table(output)
    qid = table.column("query_id").to_numpy()
    order = np.argsort(qid, kind="stable")
    ids = np.asarray(table.column("ids").combine_chunks().flatten().to_numpy(), dtype=np.uint64)
    scores = table.column("scores").combine_chunks().flatten().to_numpy()
    k = table.schema.field("ids").type.list_size
    return qid[order], ids.reshape(-1, k)[order], scores.reshape(-1, k)[order]
