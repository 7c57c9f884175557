"""Real, labelled image data sets that need no network, and writing them out as image folders.

* :func:`load_fashion_mnist` reads Fashion-MNIST (70,000 labelled 28x28 grey images, 10 classes,
  MIT licence) from the files of the Debian package ``dataset-fashion-mnist``.
* :func:`load_digits_images` turns scikit-learn's bundled ``load_digits()`` (1,797 8x8 digits) into
  the same form; it is the fallback when Fashion-MNIST is not installed.
* :func:`write_image_folder` writes images as PNG files, one sub-folder per class, so that the
  file route (:func:`featx.load_image_folder`, ``featx embed``) can be exercised on real data.

Every loader returns ``(images, labels, class_names)``: ``images`` uint8 of shape (N, H, W),
``labels`` int64 of shape (N,) indexing ``class_names``.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featx.exceptions import FeatxError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "load_fashion_mnist",
    "load_digits_images",
    "stratified_subset",
    "write_image_folder",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: Fashion-MNIST's class names, in label order.
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}


def load_fashion_mnist(
    split: str = "train",
    n: int | None = None,
    *,
    root: str | os.PathLike[str] = FASHION_MNIST_ROOT,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read Fashion-MNIST from the files of the Debian package ``dataset-fashion-mnist``.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        The 60,000 training images or the 10,000 test images.
    n : int or None, default=None
        Return a class-stratified subset of ``n`` images (see :func:`stratified_subset`): the
        first images of each class in file order, so the subset is the same on every call.
    root : path, default="/usr/share/datasets/fashion-mnist"
        The folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Returns
    -------
    images : ndarray of uint8, shape (N, 28, 28)
    labels : ndarray of int64, shape (N,)
    class_names : list of str
        ``["T-shirt/top", "Trouser", ..., "Ankle boot"]``.

    Raises
    ------
    FeatxError
        If the files are missing (``apt-get install dataset-fashion-mnist`` installs them) or are
        not IDX files of the expected shape.

    Examples
    --------
    >>> images, labels, classes = load_fashion_mnist("test", n=20)
    >>> images.shape, images.dtype, labels.dtype, len(classes)
    ((20, 28, 28), dtype('uint8'), dtype('int64'), 10)
    >>> np.bincount(labels).tolist()
    [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split={split!r} is not valid. Expected 'train' or 'test'.")
    base = Path(root)
    prefix = _SPLIT_PREFIX[split]
    image_file = base / f"{prefix}-images-idx3-ubyte.gz"
    label_file = base / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise FeatxError(
            f"Fashion-MNIST file {missing[0]!r} does not exist. On Debian or Ubuntu, "
            "`apt-get install dataset-fashion-mnist` installs the data set into "
            f"{FASHION_MNIST_ROOT}; or pass root= to the folder holding the "
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz files."
        )
    images = _read_idx(image_file, _IDX_IMAGES_MAGIC, ndim=3)
    labels = _read_idx(label_file, _IDX_LABELS_MAGIC, ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise FeatxError(
            f"{str(image_file)!r} holds {len(images)} images but {str(label_file)!r} holds "
            f"{len(labels)} labels; expected as many of each. Reinstall dataset-fashion-mnist."
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise FeatxError(
            f"{str(label_file)!r} holds label {int(labels.max())}; Fashion-MNIST has labels 0-9."
        )
    if n is not None:
        keep = stratified_subset(labels, n)
        images, labels = images[keep], labels[keep]
    return images, labels, list(FASHION_MNIST_CLASSES)


def _read_idx(path: Path, magic: int, *, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes: a big-endian header, then the data."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise FeatxError(f"{str(path)!r} cannot be read as a gzip file ({exc}).") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FeatxError(f"{str(path)!r} is too short ({len(data)} bytes) to be an IDX file.")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise FeatxError(
            f"{str(path)!r} starts with magic number {found:#010x}; expected {magic:#010x} "
            f"(an IDX file of unsigned bytes with {ndim} dimension(s))."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise FeatxError(
            f"{str(path)!r} declares shape {shape} ({size} bytes of data) but holds "
            f"{len(data) - header} bytes after its header. The file is damaged; reinstall it."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_digits_images(n: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 hand-written digits as uint8 images (values 0-16 scaled to 0-255).

    Parameters
    ----------
    n : int or None, default=None
        Return a class-stratified subset of ``n`` of the 1,797 images (see
        :func:`stratified_subset`).

    Returns
    -------
    images : ndarray of uint8, shape (N, 8, 8)
    labels : ndarray of int64, shape (N,)
    class_names : list of str
        ``["0", "1", ..., "9"]``.

    Examples
    --------
    >>> images, labels, classes = load_digits_images(n=30)
    >>> images.shape, int(images.max()), classes[:3]
    ((30, 8, 8), 255, ['0', '1', '2'])
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    if n is not None:
        keep = stratified_subset(labels, n)
        images, labels = images[keep], labels[keep]
    return images, labels, [str(c) for c in digits.target_names]


def stratified_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of a deterministic, class-stratified subset of ``n`` items, in input order.

    Each class gets a share of ``n`` proportional to its frequency (largest remainders break
    ties, lower class first), filled with that class's first items.

    Parameters
    ----------
    labels : array of int, shape (N,)
    n : int
        Size of the subset, 0 <= n <= N.

    Returns
    -------
    indices : ndarray of int64, shape (n,), increasing

    Examples
    --------
    >>> stratified_subset(np.array([0, 1, 0, 1, 0, 1]), 4).tolist()
    [0, 1, 2, 3]
    >>> stratified_subset(np.array([0, 0, 0, 1]), 2).tolist()
    [0, 1]
    """
    labels = np.asarray(labels)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= len(labels):
        raise ValueError(
            f"n={n!r} is not valid; expected an integer from 0 to the {len(labels)} items "
            "available."
        )
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (int(n) / max(len(labels), 1))
    quota = np.floor(exact).astype(np.int64)
    short = int(n) - int(quota.sum())
    if short:
        # Largest remainders first; np.argsort is stable, so lower classes win ties.
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:short]] += 1
    keep = [np.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def _folder_name(index: int, name: str, digits: int) -> str:
    """A class folder name that sorts in label order and is safe on every file system."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
    return f"{index:0{digits}d}_{safe}"


def write_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    root: str | os.PathLike[str],
) -> Path:
    """Write images as PNG files, one sub-folder per class, readable by ``load_image_folder``.

    Class ``k`` goes to the folder ``f"{k}_{name}"`` (the index zero-padded to the width of the
    largest one, the name with characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by ``_``: ``"T-shirt/top"`` becomes ``0_T-shirt_top``), so that the folders sort in
    label order and :func:`featx.load_image_folder` gives back the same labels. Image ``i`` is
    written as ``<class folder>/<i zero-padded>.png``, so within a class the files list in input
    order; when ``labels`` is sorted, the listing is exactly the input order.

    Writing the same images again into the same folder rewrites identical files (and the
    embedding cache, which keys on the files' bytes, recognises them); a folder holding other
    files is refused, since they would be read back as extra images.

    Parameters
    ----------
    images : ndarray of uint8, shape (N, H, W) or (N, H, W, 3)
    labels : array of int, shape (N,)
        Indices into ``class_names``.
    class_names : sequence of str
    root : path
        The folder to write into; created when missing.

    Returns
    -------
    root : Path

    Raises
    ------
    FeatxError
        If ``root`` already holds files other than the ones this call writes.

    Examples
    --------
    >>> import tempfile
    >>> from featx import load_image_folder
    >>> images, labels, classes = load_digits_images(n=20)
    >>> root = write_image_folder(images, labels, classes, tempfile.mkdtemp())
    >>> paths, y, folders = load_image_folder(root)
    >>> folders[:2], len(paths)
    (['0_0', '1_1'], 20)
    >>> bool((y == np.sort(labels)).all())
    True
    """
    from PIL import Image

    images = np.asarray(images)
    labels = np.asarray(labels)
    names = list(class_names)
    if images.dtype != np.uint8 or not (
        images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
    ):
        raise ValueError(
            f"expected uint8 images of shape (N, H, W) or (N, H, W, 3); got {images.dtype} "
            f"of shape {images.shape}."
        )
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"expected one integer label per image, shape ({len(images)},); got {labels.dtype} "
            f"of shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"labels run from {int(labels.min())} to {int(labels.max())}; expected indices into "
            f"the {len(names)} class names."
        )
    base = Path(root)
    digits = len(str(max(len(names) - 1, 0)))
    folders = [_folder_name(k, name, digits) for k, name in enumerate(names)]
    if len(set(folders)) != len(folders):  # pragma: no cover - the index prefix makes them unique
        raise ValueError(f"class names {names} give clashing folder names {folders}.")
    width = len(str(max(len(images) - 1, 0)))
    planned = {
        base / folders[int(label)] / f"{i:0{width}d}.png" for i, label in enumerate(labels)
    }
    if base.exists():
        wanted_dirs = {base / f for f in folders}
        for entry in sorted(base.rglob("*")):
            if entry not in planned and entry not in wanted_dirs:
                raise FeatxError(
                    f"folder {str(base)!r} already holds {str(entry)!r}, which this call would "
                    "not write; it would be read back as an extra image or class. Pass an empty "
                    "or new folder."
                )
    for folder in folders:
        (base / folder).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = base / folders[int(label)] / f"{i:0{width}d}.png"
        Image.fromarray(image).save(path, format="PNG")
    return base
