"""Folders and CSV files of images, local or at an fsspec URL: listed lazily or as lists.

:class:`FolderImages` and :class:`CsvImages` are streams (:class:`~featx.embed.stream.ItemStream`):
a folder is walked one folder at a time, a CSV read row by row, so ``featx embed`` of a million
files holds no list of them. :func:`load_image_folder` and :func:`load_image_csv` return lists
(paths, labels, class names), the shape scikit-learn code wants.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from featx.embed.item import Item
from featx.embed.remote import (
    is_dir,
    is_file,
    is_url,
    join,
    list_files,
    local_path,
    open_url,
    parent,
    redact,
    subfolders,
)
from featx.embed.stream import ItemStream
from featx.exceptions import FeatxError

__all__ = ["IMAGE_EXTENSIONS", "FolderImages", "CsvImages", "load_image_folder",
           "load_image_csv", "path_item", "encode_labels"]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def path_item(path: str, label: object = None) -> Item:
    """A path or a URL as an item: a local file (``file://`` too) is read from disk, anything
    else through fsspec."""
    local = local_path(path)
    if local is not None:
        return Item("path", local, path, label)
    return Item("url", path, redact(path), label)


class FolderImages(ItemStream):
    """The images under a folder (or an object-store prefix), walked lazily.

    With ``labelled`` (the default when the folder has sub-folders) each sub-folder is a
    class: its images carry the folder's name as ``label``. With ``ordered`` (the default) each
    folder's names are sorted, which holds one folder's names at a time; ``ordered=False``
    takes them in the file system's order and holds none (``featx embed`` of a flat folder of a
    million files).
    """

    def __init__(self, root: str | os.PathLike[str], *, labelled: bool | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, ordered: bool = True):
        self.root = os.fspath(root)
        self.labelled = labelled
        self.extensions = tuple(e.lower() for e in extensions)
        self.ordered = ordered

    def classes(self) -> list[str]:
        """The class folders' names (empty for a flat folder)."""
        if self.labelled is False:
            return []
        return subfolders(self.root)

    def __iter__(self) -> Iterator[Item]:
        classes = self.classes()
        if not classes:
            for f in list_files(self.root, self.extensions, ordered=self.ordered):
                if _direct_child(self.root, f):
                    yield path_item(f)
            return
        for cls in classes:
            for f in list_files(join(self.root, cls), self.extensions, ordered=self.ordered):
                yield path_item(f, cls)

    def describe(self) -> str:
        return f"folder {redact(self.root)}"


def _direct_child(root: str, f: str) -> bool:
    return parent(f).rstrip("/") == parent(join(root, "x")).rstrip("/")


class CsvImages(ItemStream):
    """Images named in a CSV file's ``path_column`` (paths or URLs; relative ones are taken
    from the CSV's folder), read row by row; ``label_column`` gives each its label."""

    def __init__(self, csv_path: str | os.PathLike[str], *, path_column: str = "path",
                 label_column: str | None = None):
        self.csv_path = os.fspath(csv_path)
        self.path_column = path_column
        self.label_column = label_column

    def check(self) -> None:
        """Refuse a missing file or column before any work."""
        for _ in self._rows(header_only=True):
            pass

    def _rows(self, header_only: bool = False) -> Iterator[dict[str, str]]:
        if not is_file(self.csv_path):
            raise FeatxError(f"CSV file {redact(self.csv_path)!r} does not exist.")
        with open_url(self.csv_path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # -sig: Excel's BOM
            reader = csv.DictReader(text)
            columns = reader.fieldnames or []
            wanted = [self.path_column] + ([self.label_column] if self.label_column else [])
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise FeatxError(
                    f"CSV file {redact(self.csv_path)!r} has no column {missing[0]!r}; its "
                    f"columns are {columns}. Pass path_column=/label_column= to name yours."
                )
            if header_only:
                return
            yield from reader

    def __iter__(self) -> Iterator[Item]:
        base = self.csv_path
        local = local_path(base)
        for row in self._rows():
            value = row[self.path_column]
            if local is not None and not is_url(value) and not os.path.isabs(value):
                path = str((Path(local).parent / value).resolve())
            else:
                path = join(parent(base), value)
            yield path_item(path, row[self.label_column] if self.label_column else None)

    def describe(self) -> str:
        return f"CSV file {redact(self.csv_path)}"


def encode_labels(raw: Sequence[object]) -> tuple[np.ndarray, list[str]]:
    """Labels as indices into their sorted class names (numbers sorted as numbers)."""
    names = sorted({str(v) for v in raw}, key=_class_order)
    index = {c: i for i, c in enumerate(names)}
    return np.asarray([index[str(v)] for v in raw], dtype=np.int64), names


def _class_order(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[list[str], np.ndarray, list[str]]:
    """List a folder laid out with one sub-folder per class (a local folder or a URL prefix,
    such as ``s3://bucket/train``).

    Classes are the sub-folder names in alphanumeric order and labels are their indices, as
    ``keras.utils.image_dataset_from_directory`` reads such a folder. Files are listed in sorted
    order; files whose extension is not an image extension are ignored.

    Parameters
    ----------
    root : path or URL
        The folder, e.g. ``chest_xray/train`` holding ``NORMAL/`` and ``PNEUMONIA/``.
    extensions : sequence of str
        File extensions (lower case, with the dot) counted as images.

    Returns
    -------
    paths : list of str
        Paths, or URLs for a remote folder (``ImageEmbedder`` reads both).
    labels : ndarray of int, shape (n_images,)
    class_names : list of str

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     _ = (root / c / "a.png").write_bytes(b"")
    >>> paths, y, classes = load_image_folder(root)
    >>> classes, y.tolist()
    (['cat', 'dog'], [0, 1])
    """
    base = os.fspath(root)
    if not is_dir(base):
        raise FeatxError(f"image folder {redact(base)!r} does not exist or is not a folder.")
    folder = FolderImages(base, labelled=True, extensions=extensions)
    classes = folder.classes()
    if not classes:
        raise FeatxError(
            f"image folder {redact(base)!r} has no sub-folders; expected one sub-folder per "
            "class (e.g. train/cat/*.jpg, train/dog/*.jpg)."
        )
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for item in folder:
        paths.append(item.value)
        labels.append(index[item.label])
    if not paths:
        raise FeatxError(
            f"image folder {redact(base)!r} has class folders {classes[:5]} but no image files "
            f"with extensions {sorted(folder.extensions)}."
        )
    return paths, np.asarray(labels, dtype=np.int64), classes


def load_image_csv(
    csv_path: str | os.PathLike[str],
    *,
    path_column: str = "path",
    label_column: str | None = "label",
) -> tuple[list[str], np.ndarray | None, list[str]]:
    """Read image paths and labels from a CSV file with a header row (a local file or a URL).

    Relative paths are taken relative to the CSV file's folder. Labels are encoded as indices
    into the sorted class names.

    Returns
    -------
    paths : list of str
    labels : ndarray of int or None
        ``None`` when ``label_column`` is None.
    class_names : list of str

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "list.csv").write_text("path,label\\na.jpg,dog\\nb.jpg,cat\\n")
    >>> paths, y, classes = load_image_csv(d / "list.csv")
    >>> [pathlib.Path(p).name for p in paths], y.tolist(), classes
    (['a.jpg', 'b.jpg'], [1, 0], ['cat', 'dog'])
    """
    rows = CsvImages(csv_path, path_column=path_column, label_column=label_column)
    paths: list[str] = []
    raw: list[object] = []
    for item in rows:
        paths.append(item.value)
        raw.append(item.label)
    if not label_column:
        return paths, None, []
    names = sorted({str(v) for v in raw})
    index = {c: i for i, c in enumerate(names)}
    return paths, np.asarray([index[str(v)] for v in raw], dtype=np.int64), names
