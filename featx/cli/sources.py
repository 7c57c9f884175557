"""The images a ``featx`` subcommand reads: a folder, a folder of class folders, a CSV file, a file.

Library code lists folders and CSV files (:func:`featx.load_image_folder`,
:func:`featx.load_image_csv`); these choose between them from what ``SRC`` is and say, in
command-line words, what was expected when it is neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featx.exceptions import FeatxError


def list_source(src: str, path_column: str) -> list[str]:
    """Image paths from a class folder, a flat folder of images, a CSV file or one image file."""
    from featx.embed.images import IMAGE_EXTENSIONS, load_image_csv, load_image_folder

    path = Path(src)
    if path.is_dir():
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return load_image_folder(path)[0]
        files = sorted(
            str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FeatxError(
                f"folder {src!r} has no sub-folders and no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}). Expected a folder of images, one sub-folder "
                "per class, or a CSV file."
            )
        return files
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_image_csv(path, path_column=path_column, label_column=None)[0]
    if path.is_file():
        return [str(path)]
    raise FeatxError(
        f"{src!r} does not exist. Expected a folder of images (or one sub-folder per class) "
        "or a CSV file with a 'path' column."
    )


def labelled_source(src: str, path_column: str, label_column: str) -> tuple[list[str], Any]:
    """Image paths and their class names from a class folder or a CSV file with labels."""
    import numpy as np

    from featx.embed.images import load_image_csv, load_image_folder

    path = Path(src)
    if path.is_dir():
        paths, labels, classes = load_image_folder(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        paths, csv_labels, classes = load_image_csv(
            path, path_column=path_column, label_column=label_column
        )
        assert csv_labels is not None
        labels = csv_labels
    elif path.is_file():
        raise FeatxError(
            f"{src!r} is a file, not labelled images. featx heads takes the images and their "
            "labels (a folder with one sub-folder per class, or a CSV file with path and label "
            "columns) and reads their embeddings through the cache: featx heads photos/ "
            "--backbone NAME --cache emb.h5."
        )
    else:
        raise FeatxError(
            f"{src!r} does not exist. Expected a folder with one sub-folder per class or a CSV "
            "file with path and label columns."
        )
    return paths, np.asarray(classes)[labels]
