"""A cache group written out as shards that faiss tooling reads: :func:`export_group`.

Two layouts, both read by `embedding-reader <https://github.com/rom1504/embedding-reader>`_ (and
so by autofaiss and clip-retrieval's index builder):

``format="npy"`` (clip-retrieval's inference output, embedding-reader's ``parquet_npy``)::

    DIR/img_emb/img_emb_{i}.npy          float32 (rows, width), little-endian
    DIR/metadata/metadata_{i}.parquet    key (sha256 hex), image_path (the row's stored source)
    DIR/featx_export.json                what was exported: cache, group, rows, width, shards

``format="parquet"`` (embedding-reader's ``parquet``, ``embedding_column="embedding"``)::

    DIR/img_emb/img_emb_{i}.parquet      embedding (list<float32>), key, image_path
    DIR/featx_export.json

Shard ``i`` holds rows ``[i * shard_rows, (i + 1) * shard_rows)`` in the cache's stored order;
``i`` is zero-padded to the number of shards' digits, as clip-retrieval names them, so that the
name order embedding-reader sorts by is the row order. ``image_path`` is clip-retrieval's name for
the column; it holds whatever source the row was stored with (a path, ``shard.tar:member``, a
URL, ``array[3]``).

The rows are read by blocks (:meth:`featx.cache.store.EmbeddingCache.blocks`) and each block is
appended to the open shards (``.npy`` data after a header, Parquet row groups): memory is one
block, whatever the group's size. Everything is written into a temporary folder beside ``DIR``,
renamed to ``DIR`` at the end: a failure (a damaged cache file, a full disk) leaves nothing.
PyArrow is imported when used: ``pip install 'featx[parquet]'``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache.blocks import Block
from featx.cache.groups import choose_group
from featx.cache.store import EmbeddingCache, GroupInfo
from featx.exceptions import CacheError, FeatxError

__all__ = ["EXPORT_FORMATS", "ExportResult", "export_group", "MANIFEST"]

#: The layouts :func:`export_group` writes.
EXPORT_FORMATS = ("npy", "parquet")

#: The file naming what an export folder holds (and marking it as one: ``overwrite`` replaces
#: only folders that have it).
MANIFEST = "featx_export.json"

#: Rows per shard unless told: clip-retrieval's default (4 GB of ``.npy`` at width 1,024).
SHARD_ROWS = 1_000_000

#: Rows read and written at a time (64 MB at width 1,024).
BLOCK_ROWS = 16_384


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_group` wrote.

    Attributes
    ----------
    out : Path
        The folder.
    format : str
        ``"npy"`` or ``"parquet"``.
    fingerprint : str
        The exported group.
    rows, width : int
        Rows written and their width.
    shards : list of str
        The embedding files, relative to ``out``, in row order.
    seconds : float
        Wall time of the export.
    """

    out: Path
    format: str
    fingerprint: str
    rows: int
    width: int
    shards: list[str]
    seconds: float

    def summary(self) -> str:
        """One line: rows, group, shards and rate."""
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (f"exported {self.rows} rows of width {self.width} (group {self.fingerprint}) "
                f"as {len(self.shards)} {self.format} shard{'' if len(self.shards) == 1 else 's'}"
                f" to {self.out} in {self.seconds:.1f} s ({rate:,.0f} rows/s)")


def export_group(
    cache: str | os.PathLike[str] | EmbeddingCache,
    group: str | None,
    out: str | os.PathLike[str],
    *,
    format: str = "npy",
    shard_rows: int = SHARD_ROWS,
    block_rows: int = BLOCK_ROWS,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write one cache group's rows into ``out`` as shards (see the module docstring).

    Parameters
    ----------
    cache : path or EmbeddingCache
        The embedding cache.
    group : str or None
        A fingerprint or a unique prefix of one (``featx info FILE`` lists them); ``None`` when
        the cache holds one group.
    out : path
        The folder to create. It must not exist or be empty, unless ``overwrite``.
    format : {"npy", "parquet"}, default="npy"
        ``.npy`` embeddings with ``.parquet`` metadata beside them, or Parquet files holding
        both.
    shard_rows : int, default=1_000_000
        Rows per shard (the last one holds the rest).
    block_rows : int, default=16_384
        Rows read from the cache and written at a time: the memory the export holds.
    overwrite : bool, default=False
        Replace ``out`` when it holds an earlier export (its ``featx_export.json``); a
        non-empty folder that is not one is never replaced.
    progress : callable, optional
        ``progress(rows, total)`` after each block is written: the rows of that block and the
        group's rows.

    Returns
    -------
    ExportResult

    Raises
    ------
    CacheGroupError
        When the cache is missing or empty, or ``group`` matches no group or several.
    CacheError
        When a cache file cannot be read (nothing is left in ``out``).
    FeatxError
        When ``out`` holds files already, an argument is not valid, or PyArrow is missing.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from featx.cache.store import EmbeddingCache
    >>> where = tempfile.mkdtemp()
    >>> cache = EmbeddingCache(os.path.join(where, "emb.h5"))
    >>> keys = [f"{i:064x}" for i in range(5)]
    >>> cache.append("fp0", keys, np.eye(5, dtype=np.float32), [f"{i}.png" for i in range(5)])
    5
    >>> done = export_group(cache, None, os.path.join(where, "out"), shard_rows=2)
    >>> done.rows, done.shards
    (5, ['img_emb/img_emb_0.npy', 'img_emb/img_emb_1.npy', 'img_emb/img_emb_2.npy'])
    >>> np.load(os.path.join(where, "out", "img_emb", "img_emb_1.npy"))[:, :4].tolist()
    [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    """
    started = time.perf_counter()
    if format not in EXPORT_FORMATS:
        raise FeatxError(f"format {format!r} is not known; expected one of {EXPORT_FORMATS}.")
    for name, value in (("shard_rows", shard_rows), ("block_rows", block_rows)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise FeatxError(f"{name}={value!r} is not valid; expected a positive integer.")
    pa, pq = _import_pyarrow()
    target = Path(out)
    _check_target(target, overwrite)
    store = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    with _damaged_segments_refused():
        info = choose_group(store, group, offer_backbone=False)
        blocks = store.blocks(info.fingerprint, block_rows=min(block_rows, shard_rows),
                              sources=True)
    n_shards = max(1, math.ceil(info.rows / shard_rows))
    digits = len(str(n_shards - 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # with the umask's permissions, as the folder it becomes
    try:
        writer = _ShardWriter(tmp, format, info.width, digits, pa, pq)
        with _damaged_segments_refused(), contextlib.closing(writer):
            rows = 0
            for block in blocks:
                for part in _cut(block, rows, shard_rows):
                    writer.write(rows // shard_rows, part)
                    rows += len(part)
                if progress is not None:
                    progress(len(block), info.rows)
        if rows == 0:
            writer.write(0, Block(np.zeros(0, "S64"), np.zeros((0, info.width), np.float32),
                                  np.zeros(0, object)))
            writer.close()
        result = ExportResult(target, format, info.fingerprint, rows, info.width,
                              writer.shards, time.perf_counter() - started)
        _write_manifest(tmp, store, info, result, shard_rows)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


# ---- the steps ---------------------------------------------------------------------------------


def _import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise FeatxError(
            f"featx export writes Parquet files and needs pyarrow ({exc}); "
            "pip install 'featx[parquet]'."
        ) from None
    return pa, pq


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds files, unless it is an earlier export and ``overwrite``."""
    if target.exists() and not target.is_dir():
        raise FeatxError(f"--out {str(target)!r} is a file; name a folder to create.")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise FeatxError(
            f"--out {str(target)!r} is not empty; name a new folder, or pass --overwrite "
            "(overwrite=True) to replace an earlier export there."
        )
    if not (target / MANIFEST).is_file():
        raise FeatxError(
            f"--out {str(target)!r} holds files and is not a featx export (no {MANIFEST}); "
            "featx export replaces only its own folders. Name a new folder."
        )


@contextlib.contextmanager
def _damaged_segments_refused() -> Iterator[None]:
    """A damaged segment is an error here, not a warning: an export must hold every row."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="featx cache: ignoring the damaged segment",
                                category=RuntimeWarning)
        try:
            yield
        except RuntimeWarning as exc:
            what = str(exc).removeprefix("featx cache: ignoring the ").split("; its rows")[0]
            raise CacheError(
                f"{what}; an export would miss its rows. Move it aside (featx embed embeds its "
                "rows again) and export again."
            ) from None


def _cut(block: Block, start: int, shard_rows: int) -> Iterator[Block]:
    """``block`` (rows ``start ...``) split where a shard ends."""
    at = 0
    while at < len(block):
        room = shard_rows - (start + at) % shard_rows
        rows = slice(at, at + room)
        assert block.sources is not None
        yield Block(block.keys[rows], block.vectors[rows], block.sources[rows])
        at += room


class _ShardWriter:
    """The open shard's files: ``.npy`` data appended after its header, Parquet row groups."""

    def __init__(self, root: Path, format: str, width: int, digits: int, pa: Any, pq: Any):
        self.root = root
        self.format = format
        self.width = width
        self.digits = digits
        self.pa = pa
        self.pq = pq
        self.shards: list[str] = []
        self.current = -1
        self.rows = 0
        self.npy: Any = None
        self.table: Any = None
        (root / "img_emb").mkdir()
        if format == "npy":
            (root / "metadata").mkdir()

    def write(self, shard: int, block: Block) -> None:
        if shard != self.current:
            self.close()
            self._open(shard)
        pa = self.pa
        n = len(block)
        keys = pa.StringArray.from_buffers(
            n, pa.py_buffer(np.arange(0, 64 * (n + 1), 64, dtype=np.int32)),
            pa.py_buffer(np.ascontiguousarray(block.keys)))
        columns = {"key": keys, "image_path": pa.array(block.sources, pa.string())}
        vectors = np.ascontiguousarray(block.vectors, "<f4")
        if self.format == "npy":
            self.npy.write(vectors.data)
        else:
            offsets = np.arange(0, self.width * (n + 1), self.width, dtype=np.int32)
            columns = {"embedding": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(vectors.reshape(-1))), **columns}
        self.table.write_table(pa.table(columns, schema=self.schema))
        self.rows += n

    def _open(self, shard: int) -> None:
        pa = self.pa
        self.current, self.rows = shard, 0
        name = str(shard).zfill(self.digits)
        fields = [pa.field("key", pa.string()), pa.field("image_path", pa.string())]
        if self.format == "npy":
            self.shards.append(f"img_emb/img_emb_{name}.npy")
            self.npy = open(self.root / self.shards[-1], "wb")  # noqa: SIM115 - closed in close()
            _npy_header(self.npy, 0, self.width)
            meta = self.root / "metadata" / f"metadata_{name}.parquet"
        else:
            self.shards.append(f"img_emb/img_emb_{name}.parquet")
            fields.insert(0, pa.field("embedding", pa.list_(pa.float32())))
            meta = self.root / self.shards[-1]
        self.schema = pa.schema(fields)
        self.table = self.pq.ParquetWriter(
            meta, self.schema, use_dictionary=False,
            compression={"embedding": "NONE", "key": "SNAPPY", "image_path": "SNAPPY"},
        )

    def close(self) -> None:
        if self.npy is not None:
            _npy_header(self.npy, self.rows, self.width)  # the same length: numpy pads for it
            self.npy.close()
            self.npy = None
        if self.table is not None:
            self.table.close()
            self.table = None


def _npy_header(f: Any, rows: int, width: int) -> None:
    """Write (or rewrite, in place) a ``.npy`` header for ``(rows, width)`` little-endian float32.

    numpy pads the header so that the row count can grow to 21 digits at the same length."""
    at = f.tell()
    f.seek(0)
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": False, "shape": (rows, width)})
    if at:
        f.seek(at)


def _write_manifest(tmp: Path, store: EmbeddingCache, info: GroupInfo, result: ExportResult,
                    shard_rows: int) -> None:
    manifest = {
        "featx_export": 1,
        "cache": str(store.path),
        "fingerprint": info.fingerprint,
        "label": info.label,
        "fields": info.fields,
        "format": result.format,
        "rows": result.rows,
        "width": result.width,
        "shard_rows": shard_rows,
        "shards": result.shards,
        "columns": {"key": "sha256 of the item's content (the cache's key), hex",
                    "image_path": "the source the row was stored with"},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """``tmp`` renamed to ``target``; an earlier export there (``overwrite``) removed after."""
    old = None
    if target.is_dir() and any(target.iterdir()):
        _check_target(target, overwrite)  # it may have been filled meanwhile
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.replace(tmp, target)  # over an empty folder too
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
