"""The images a ``featx`` subcommand reads: folders, CSV files, tar shards, Parquet/Arrow tables,
one image, each a local path or an fsspec URL (``s3://``, ``gs://``, ``https://``).

Library code reads each kind (:mod:`featx.embed.listing`, :mod:`featx.embed.shards`,
:mod:`featx.embed.tables`); these choose between them from what ``SRC`` is and say, in
command-line words, what was expected when it is none of them.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from featx.exceptions import FeatxError

_SHARDS = (".tar", ".tar.gz", ".tgz")
_TABLES = (".parquet", ".arrow")
_EXPECTED = ("Expected a folder of images (or one sub-folder per class), a CSV file with a "
             "'path' column, tar shards (a .tar file, a folder or a glob of them), Parquet or "
             "Arrow files (a file, a folder of parts or a glob), or an image; each a path or "
             "a URL (s3://, gs://, https://).")


def add_source_flags(parser: Any) -> None:
    """``--image-column``, ``--id-column`` (tables) and ``--shard-label`` (tar shards)."""
    group = parser.add_argument_group("tar shards and Parquet/Arrow tables")
    group.add_argument("--image-column", default="image", metavar="NAME",
                       help="the table column holding images: encoded bytes, Hugging Face's "
                       "{bytes, path} struct, or paths (default 'image')")
    group.add_argument("--id-column", default=None, metavar="NAME",
                       help="a table column naming each row in reports (default: row numbers)")
    group.add_argument("--shard-label", default="cls", metavar="EXT",
                       help="where a tar sample's label is: the extension of a member holding "
                       "it as text, or json:FIELD for a field of its .json member "
                       "(default 'cls')")


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options :func:`open_source` and :func:`labelled_source` take, from ``args``."""
    return {"image_column": getattr(args, "image_column", "image"),
            "id_column": getattr(args, "id_column", None),
            "shard_label": getattr(args, "shard_label", "cls")}


def source_kind(src: str) -> str:
    """What ``SRC`` is: ``"shards"``, ``"table"``, ``"csv"``, ``"folder"`` or ``"image"``;
    a folder holding tar or table files is ``"shards"`` or ``"table"``. Looks at a folder's
    entries only until they decide."""
    from featx.embed.remote import is_dir, is_file, is_url, local_path, url_fs

    lower = src.lower().rstrip("/")
    if any(c in src for c in "*?["):
        if lower.endswith(_SHARDS):
            return "shards"
        if lower.endswith(_TABLES):
            return "table"
        raise FeatxError(f"the glob {src!r} should end in .tar or .parquet/.arrow (shards or "
                         "table parts).")
    if is_dir(src):
        local = local_path(src)
        if local is not None:
            with os.scandir(local) as entries:
                for e in entries:
                    name = e.name.lower()
                    if name.endswith(_SHARDS):
                        return "shards"
                    if name.endswith(_TABLES):
                        return "table"
            return "folder"
        fs, path = url_fs(src)
        names = [str(n).lower() for n in fs.ls(path, detail=False)]
        if any(n.endswith(_SHARDS) for n in names):
            return "shards"
        if any(n.endswith(_TABLES) for n in names):
            return "table"
        return "folder"
    if lower.endswith(_SHARDS):
        return "shards"
    if lower.endswith(_TABLES):
        return "table"
    if lower.endswith(".csv"):
        return "csv"
    if is_file(src) or (is_url(src) and local_path(src) is None):
        return "image"
    raise FeatxError(f"{src!r} does not exist. {_EXPECTED}")


def open_source(src: str, path_column: str = "path", *, image_column: str = "image",
                id_column: str | None = None, shard_label: str | None = "cls") -> Any:
    """``SRC`` as a stream of items, listed lazily (no list of every path or member)."""
    from featx.embed.listing import CsvImages, FolderImages, path_item
    from featx.embed.shards import TarShards
    from featx.embed.stream import ItemList
    from featx.embed.tables import ParquetImages

    kind = source_kind(src)
    if kind == "shards":
        shards = TarShards(src, label=None)
        if not shards.urls():
            raise FeatxError(f"no tar shards at {src!r}. {_EXPECTED}")
        return shards
    if kind == "table":
        table = ParquetImages(src, image_column=image_column, id_column=id_column)
        table.check()
        return table
    if kind == "csv":
        rows = CsvImages(src, path_column=path_column)
        rows.check()
        return rows
    if kind == "folder":
        folder = FolderImages(src, ordered=False)  # nothing held, however many files
        if next(iter(folder), None) is None:
            raise FeatxError(f"folder {src!r} has no image files. {_EXPECTED}")
        return folder
    return ItemList([path_item(src)], src)


def list_source(src: str, path_column: str) -> list[str]:
    """Image paths from a class folder, a flat folder of images, a CSV file or one image file
    (for options that take a few images, such as ``--calibration``)."""
    from featx.embed.listing import IMAGE_EXTENSIONS, load_image_csv, load_image_folder
    from featx.embed.remote import is_dir

    kind = source_kind(src)
    if kind == "folder" and is_dir(src):
        from featx.embed.listing import FolderImages

        folder = FolderImages(src)
        if folder.classes():
            return load_image_folder(src)[0]
        files = [item.value for item in folder]
        if not files:
            raise FeatxError(
                f"folder {src!r} has no sub-folders and no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}). Expected a folder of images, one sub-folder "
                "per class, or a CSV file."
            )
        return files
    if kind == "csv":
        return load_image_csv(src, path_column=path_column, label_column=None)[0]
    if kind == "image":
        return [src]
    raise FeatxError(f"{src!r} holds {'tar shards' if kind == 'shards' else 'a table'}; this "
                     "option takes image files (a folder, a CSV file or an image).")


def labelled_source(src: str, path_column: str, label_column: str, *,
                    image_column: str = "image", id_column: str | None = None,
                    shard_label: str | None = "cls") -> tuple[Any, Any]:
    """Images and their class names from a class folder, a CSV file with labels, tar shards
    with a label member, or a table with a label column. Folders and CSV files give a list of
    paths; shards and tables a stream (read again on each pass)."""
    import numpy as np

    from featx.embed.listing import load_image_csv, load_image_folder

    try:
        kind = source_kind(src)
    except FeatxError:
        raise FeatxError(
            f"{src!r} does not exist. Expected a folder with one sub-folder per class, a CSV "
            "file with path and label columns, labelled tar shards or a table with a label "
            "column."
        ) from None
    if kind == "folder":
        paths, labels, classes = load_image_folder(src)
    elif kind == "csv":
        paths, csv_labels, classes = load_image_csv(
            src, path_column=path_column, label_column=label_column
        )
        assert csv_labels is not None
        labels = csv_labels
    elif kind in ("shards", "table"):
        from featx.embed.shards import load_shards
        from featx.embed.tables import load_parquet

        images: Any
        if kind == "shards":
            images, codes, classes = load_shards(src, label=shard_label or "cls")
        else:
            images, codes, classes = load_parquet(src, image_column=image_column,
                                                  label_column=label_column,
                                                  id_column=id_column)
        assert codes is not None
        names = np.asarray([*classes, ""], dtype=object)  # -1: an item that failed to read
        return images, names[codes]
    else:
        raise FeatxError(
            f"{src!r} is a file, not labelled images. featx heads takes the images and their "
            "labels (a folder with one sub-folder per class, a CSV file with path and label "
            "columns, labelled tar shards or a table) and reads their embeddings through the "
            "cache: featx heads photos/ --backbone NAME --cache emb.h5."
        )
    return paths, np.asarray(classes)[labels]


def source_names(images: Any) -> list[str]:
    """The names reports give ``images``: paths as they are, a stream's item names (read
    again)."""
    from featx.embed.stream import ItemStream

    if isinstance(images, ItemStream):
        return [item.name for item in images]
    return [str(p) for p in images]
