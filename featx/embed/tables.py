"""Parquet and Arrow tables of images (the Hugging Face datasets layout), read by record batches.

A table holds its images in one column: encoded bytes, the Hugging Face ``{bytes, path}``
struct, or paths/URLs as text; optionally a label column and an id column. The defaults are
Hugging Face's names, ``image`` and ``label``. Each row is an item named ``<file>:row 17`` (or
``<file>:<id>`` with an id column); files are read a record batch at a time, so memory holds one
batch whatever the table's size. A row whose image is null, a file pyarrow cannot read and a
file that breaks off become failed items (``kind="failed"``) named where they stopped.

Needs the ``parquet`` extra (pyarrow).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from featx.embed.item import Item
from featx.embed.listing import encode_labels, path_item
from featx.embed.remote import (
    glob_urls,
    io_reason,
    is_dir,
    is_url,
    join,
    list_files,
    local_path,
    open_url,
    parent,
    redact,
)
from featx.embed.stream import ItemStream
from featx.exceptions import FeatxError

__all__ = ["TABLE_EXTENSIONS", "ParquetImages", "load_parquet", "table_urls", "is_arrow_table"]

TABLE_EXTENSIONS = (".parquet", ".arrow")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise FeatxError(
            "reading Parquet and Arrow tables needs pyarrow, which is not installed: "
            "pip install 'featx[parquet]'."
        ) from None
    return pyarrow


def is_arrow_table(X: Any) -> bool:
    """True for a ``pyarrow.Table`` (checked without importing pyarrow)."""
    return type(X).__module__.startswith("pyarrow") and type(X).__name__ == "Table"


def table_urls(source: Any) -> list[str]:
    """The table files ``source`` names: a file, a folder or prefix of parts, a glob, or a list."""
    if isinstance(source, (list, tuple)):
        return [u for s in source for u in table_urls(s)]
    text = os.fspath(source)
    if any(c in text for c in "*?["):
        return glob_urls(text)
    if not text.lower().endswith(TABLE_EXTENSIONS) and is_dir(text):
        return list(list_files(text, TABLE_EXTENSIONS))
    return [text]


class ParquetImages(ItemStream):
    """The rows of Parquet or Arrow tables as items, a record batch at a time.

    Parameters
    ----------
    source : path, URL, glob, list of them, or pyarrow.Table
        A ``.parquet`` or ``.arrow`` file (Arrow IPC, as ``datasets.save_to_disk`` writes), a
        folder or object-store prefix of parts, a glob, or a table in memory.
    image_column : str, default="image"
        Encoded image bytes, the Hugging Face ``{bytes, path}`` struct, or paths/URLs.
    label_column, id_column : str or None
        A column giving each row's label; one naming it in reports (instead of its row number).
    batch_rows : int, default=256
        Rows read at a time.
    """

    def __init__(self, source: Any, *, image_column: str = "image",
                 label_column: str | None = None, id_column: str | None = None,
                 batch_rows: int = 256):
        self.source = source
        self.image_column = image_column
        self.label_column = label_column
        self.id_column = id_column
        self.batch_rows = batch_rows
        self._urls: list[str] | None = None
        self._count: int | None = None

    @property
    def count(self) -> int | None:
        """The rows: a table's, or local files' footers (remote parts are not opened for it)."""
        if self._count is None:
            if is_arrow_table(self.source):
                self._count = int(self.source.num_rows)
            elif all(local_path(u) is not None and u.lower().endswith(".parquet")
                      for u in self.urls()):
                pa = _pyarrow()
                try:
                    self._count = sum(pa.parquet.ParquetFile(local_path(u)).metadata.num_rows
                                      for u in self.urls())
                except Exception:  # noqa: BLE001 - a damaged part: its rows are not known
                    return None
        return self._count

    def urls(self) -> list[str]:
        """The table files (none for a table in memory)."""
        if is_arrow_table(self.source):
            return []
        if self._urls is None:
            self._urls = table_urls(self.source)
        return self._urls

    def columns(self) -> list[str]:
        """The columns read."""
        return [c for c in (self.image_column, self.label_column, self.id_column) if c]

    def check(self) -> None:
        """Refuse a missing extra, no files, or a missing column, before any work (the
        first file's schema is read)."""
        pa = _pyarrow()
        if is_arrow_table(self.source):
            _check_columns(list(self.source.column_names), self.columns(), "the table")
            return
        urls = self.urls()
        if not urls:
            raise FeatxError(f"no Parquet or Arrow files at {redact(os.fspath(self.source))!r}.")
        with open_url(urls[0]) as f:
            names = _schema(pa, f, urls[0]).names
        _check_columns(list(names), self.columns(), redact(urls[0]))

    def parts(self) -> Iterator[ItemStream]:
        if is_arrow_table(self.source):
            yield self
            return
        for url in self.urls():
            part = ParquetImages([url], image_column=self.image_column,
                                 label_column=self.label_column, id_column=self.id_column,
                                 batch_rows=self.batch_rows)
            part._urls = [url]
            yield part

    def __iter__(self) -> Iterator[Item]:
        if is_arrow_table(self.source):
            _check_columns(list(self.source.column_names), self.columns(), "the table")
            yield from self._rows(self.source.to_batches(max_chunksize=self.batch_rows),
                                  "table", None)
            return
        for url in self.urls():
            yield from self.read_file(url)

    def read_file(self, url: str, *, images: bool = True) -> Iterator[Item]:
        """One file's rows (``images=False``: the image column is not read)."""
        pa = _pyarrow()
        name = redact(url)
        try:
            f = open_url(url)
        except FeatxError:
            raise
        except Exception as exc:  # noqa: BLE001 - a 404, a refused connection
            yield Item("failed", io_reason(exc), name)
            return
        with f:
            try:
                schema = _schema(pa, f, url)
            except Exception as exc:  # noqa: BLE001 - not a table file pyarrow reads
                yield Item("failed", f"not a Parquet or Arrow file pyarrow can read ({exc})",
                           name)
                return
            _check_columns(list(schema.names), self.columns(), name)
            columns = self.columns() if images else [c for c in self.columns()
                                                     if c != self.image_column]
            done = [0]
            try:
                yield from self._rows(_batches(pa, f, url, columns, self.batch_rows), name, url,
                                      done)
            except Exception as exc:  # noqa: BLE001 - a file that breaks off
                yield Item("failed", f"damaged table file ({exc}); the rest of the file was not "
                           "read", f"{name}:row {done[0]}")

    def _rows(self, batches: Any, name: str, url: str | None,
              done: list[int] | None = None) -> Iterator[Item]:
        row = 0
        for batch in batches:
            names = batch.schema.names
            images = (batch.column(names.index(self.image_column)).to_pylist()
                      if self.image_column in names else [b""] * batch.num_rows)
            labels = (batch.column(names.index(self.label_column)).to_pylist()
                      if self.label_column else [None] * batch.num_rows)
            ids = (batch.column(names.index(self.id_column)).to_pylist()
                   if self.id_column else None)
            for j, value in enumerate(images):
                where = f"{name}:{ids[j]}" if ids is not None else f"{name}:row {row + j}"
                yield _item(value, where, labels[j], url)
            row += batch.num_rows
            if done is not None:
                done[0] = row

    def describe(self) -> str:
        if is_arrow_table(self.source):
            return f"a table of {self.source.num_rows} rows"
        src = self.source
        first = os.fspath(src[0] if isinstance(src, (list, tuple)) else src)
        return f"table {redact(first)}"


def _item(value: Any, where: str, label: Any, url: str | None) -> Item:
    if isinstance(value, dict):  # Hugging Face's Image feature: {bytes, path}
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return Item("bytes", data, where, label)
        value = path
    if isinstance(value, (bytes, bytearray)):
        return Item("bytes", bytes(value), where, label)
    if isinstance(value, str) and value:
        full = value if url is None or is_url(value) or os.path.isabs(value) else join(
            parent(url), value)
        item = path_item(full, label)
        item.name = f"{where} ({redact(full)})"
        return item
    return Item("failed", "no image in this row (null or empty)", where, label)


def _check_columns(found: list[str], wanted: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise FeatxError(
            f"{where} has no column {missing[0]!r}; its columns are {found}. Name yours with "
            "image_column=/label_column=/id_column= (--image-column, --label-column, "
            "--id-column)."
        )


def _is_arrow(url: str) -> bool:
    return url.lower().endswith(".arrow")


def _schema(pa: Any, f: Any, url: str) -> Any:
    if _is_arrow(url):
        schema = _arrow_reader(pa, f).schema
        f.seek(0)
        return schema
    return pa.parquet.ParquetFile(f).schema_arrow


def _arrow_reader(pa: Any, f: Any) -> Any:
    try:
        return pa.ipc.open_stream(f)  # what datasets.save_to_disk writes
    except Exception:  # noqa: BLE001 - then the random-access file format
        f.seek(0)
        return pa.ipc.open_file(f)


def _batches(pa: Any, f: Any, url: str, columns: list[str], rows: int) -> Iterator[Any]:
    if not _is_arrow(url):
        yield from pa.parquet.ParquetFile(f).iter_batches(batch_size=rows, columns=columns)
        return
    reader = _arrow_reader(pa, f)
    if hasattr(reader, "num_record_batches"):
        batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    for batch in batches:
        yield batch.select(columns)


def _class_names(pa: Any, url: str, label_column: str) -> list[str] | None:
    """A Hugging Face ``ClassLabel``'s names from a file's schema metadata, if it has them."""
    try:
        with open_url(url) as f:
            meta = _schema(pa, f, url).metadata or {}
        info = json.loads(meta.get(b"huggingface", b"{}"))
        feature = info.get("info", {}).get("features", {}).get(label_column, {})
        names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
        return [str(n) for n in names] if names else None
    except Exception:  # noqa: BLE001 - no names: labels are encoded from their values
        return None


def load_parquet(
    source: Any,
    *,
    image_column: str = "image",
    label_column: str | None = "label",
    id_column: str | None = None,
) -> tuple[ParquetImages, np.ndarray | None, list[str]]:
    """Parquet or Arrow tables as images for :class:`featx.ImageEmbedder`, with their labels.

    Parameters
    ----------
    source : path, URL, glob, list of them, or pyarrow.Table
        ``data/train-*.parquet``, ``s3://bucket/table/``, a ``.parquet`` file, a table, ...
    image_column, label_column, id_column : str
        As in :class:`ParquetImages`; ``label_column=None`` for unlabelled rows.

    Returns
    -------
    images : ParquetImages
        A stream :class:`featx.ImageEmbedder` takes as ``X`` (each pass reads the files by
        record batches).
    labels : ndarray of int or None
        Indices into ``class_names`` (read from the label column alone); -1 for a null label or
        a row its file could not deliver.
    class_names : list of str
        A Hugging Face ``ClassLabel``'s names when the files carry them (the labels are then
        their indices), else the sorted values (numbers as numbers).

    Raises
    ------
    FeatxError
        When pyarrow is missing (naming the extra), no file is found, or a column is missing
        (naming the columns found).
    """
    images = ParquetImages(source, image_column=image_column, label_column=label_column,
                           id_column=id_column)
    images.check()
    if label_column is None:
        return images, None, []
    pa = _pyarrow()
    if is_arrow_table(source):
        raw = source.column(label_column).to_pylist()
        names = None
    else:
        raw = [item.label if item.kind != "failed" else None
               for url in images.urls() for item in images.read_file(url, images=False)]
        names = _class_names(pa, images.urls()[0], label_column)
    y = np.full(len(raw), -1, dtype=np.int64)
    present = [i for i, v in enumerate(raw) if v is not None]
    if names is not None and all(isinstance(raw[i], int) for i in present):
        y[present] = [raw[i] for i in present]
        y[y >= len(names)] = -1
        return images, y, names
    codes, classes = encode_labels([raw[i] for i in present])
    y[present] = codes
    return images, y, classes
