"""Image sources: turning inputs into items; decoding and resizing them.

An input ``X`` (paths, URLs, bytes, PIL images, arrays, a pandas column, a stream of tar
shards or Parquet rows, a ``pyarrow.Table``) becomes :class:`Item` objects with
:func:`as_items`. Each item can say what it is (``name``), give the bytes its cache key is made
of (:meth:`Item.key`), and decode itself into a resized pixel array (:func:`load_pixels`).
Errors on one item are raised as :class:`~featx.exceptions.ImageLoadError` naming the item, so
that the caller can apply its ``on_error`` policy item by item. Where sources live and how
they are listed: :mod:`featx.embed.listing` (folders, CSV files), :mod:`featx.embed.shards`
(tar shards), :mod:`featx.embed.tables` (Parquet and Arrow), :mod:`featx.embed.remote` (URLs).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, overload

import numpy as np
from PIL import Image, ImageOps

from featx._faults import fault_point
from featx.embed.item import Item
from featx.embed.item import os_reason as _os_reason
from featx.embed.jpeg import decode_fast, fast_available
from featx.embed.listing import (
    IMAGE_EXTENSIONS,
    load_image_csv,
    load_image_folder,
    path_item,
)
from featx.embed.stream import ItemStream
from featx.exceptions import ImageLoadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Item",
    "ItemStream",
    "as_items",
    "iter_items",
    "load_pixels",
    "load_image_folder",
    "load_image_csv",
    "batched",
]


def iter_items(X: Any) -> tuple[Iterable[Item], str]:
    """:func:`as_items`, except that a stream (tar shards, Parquet rows, a ``pyarrow.Table``,
    a folder listed lazily: an :class:`~featx.embed.stream.ItemStream`) or an iterator (a
    generator of paths, bytes, ...) stays one, read a chunk at a time. What the embedder
    and the engine take."""
    if isinstance(X, ItemStream):
        return X, "images"
    if type(X).__module__.startswith("pyarrow") and type(X).__name__ == "Table":
        from featx.embed.tables import ParquetImages

        return ParquetImages(X, label_column=None), "images"
    if isinstance(X, Iterator):  # a generator: its items are made as it is read
        return (_one_item(i, x) for i, x in enumerate(X)), "images"
    return as_items(X)


def as_items(X: Any) -> tuple[Sequence[Item], str]:
    """Split an input into items and say what kind of input it was.

    Returns
    -------
    items : list of Item
        A stream (:func:`iter_items`) is read into a list: for bounded memory, iterate it.
    kind : {"images", "vectors"}
        ``"vectors"`` for a 2-D numeric array (samples x features, for non-image models).

    Examples
    --------
    >>> import numpy as np
    >>> items, kind = as_items(np.zeros((2, 8, 8), np.uint8))
    >>> len(items), kind, items[0].name
    (2, 'images', 'array[0]')
    """
    if isinstance(X, ItemStream) or (type(X).__module__.startswith("pyarrow")
                                      and type(X).__name__ == "Table"):
        return list(iter_items(X)[0]), "images"
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError(
            f"expected a collection of images (a list of paths, an array, ...); got a single "
            f"{type(X).__name__}. Wrap it in a list: [{X!r}]."
        )
    if hasattr(X, "iloc") and hasattr(X, "columns"):  # DataFrame
        if X.shape[1] != 1:
            raise ValueError(
                f"expected a one-column DataFrame of image paths; got {X.shape[1]} columns "
                f"({list(X.columns)[:5]}). Select the column: X[['path']]."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "iloc"):  # Series
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OUS":
        return _array_items(X)
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 1:
        X = X[:, 0]
    if isinstance(X, Image.Image):
        raise TypeError("expected a collection of images; got one PIL image. Pass [image].")
    if not isinstance(X, (Sequence, np.ndarray)) and not hasattr(X, "__iter__"):
        raise TypeError(
            f"expected images as paths, bytes, PIL images or an array; got {type(X).__name__}."
        )
    items = [_one_item(i, x) for i, x in enumerate(X)]
    return items, "images"


class ArrayItems(Sequence[Item]):
    """The rows of an array as items, made when asked for (a slice makes a list): a million
    rows cost nothing until a chunk of them is embedded."""

    def __init__(self, X: np.ndarray, label: str):
        self._X = X
        self._label = label

    def __len__(self) -> int:
        return len(self._X)

    @overload
    def __getitem__(self, i: int) -> Item: ...

    @overload
    def __getitem__(self, i: slice) -> list[Item]: ...

    def __getitem__(self, i: int | slice) -> Item | list[Item]:
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self._X)))]
        if i < 0:
            i += len(self._X)
        if not 0 <= i < len(self._X):
            raise IndexError(i)
        return self._item(i)

    def _item(self, i: int) -> Item:
        return Item("array", self._X[i], f"{self._label}[{i}]")


def _array_items(X: np.ndarray) -> tuple[Sequence[Item], str]:
    if X.dtype.kind == "c":
        raise ValueError(f"complex data is not supported; got an array of dtype {X.dtype}.")
    if X.dtype.kind not in "uifb":
        raise ValueError(f"expected a numeric array; got dtype {X.dtype}.")
    if X.ndim == 2:
        return ArrayItems(X, "row"), "vectors"
    if X.ndim < 2:
        raise ValueError(
            f"expected a 2-D array of samples or an array of images; got a {X.ndim}-D array of "
            f"shape {X.shape}. Reshape your data: X.reshape(1, -1) for one sample of features, "
            "or X.reshape(-1, 1) for one feature."
        )
    if X.ndim == 3 or (X.ndim == 4 and X.shape[-1] in (1, 3, 4)):
        return ArrayItems(X, "array"), "images"
    raise ValueError(
        f"expected an image array of shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), or a 2-D "
        f"array (N, features) for a non-image model; got shape {X.shape}."
    )


def _one_item(i: int, x: Any) -> Item:
    if isinstance(x, Item):
        return x
    if isinstance(x, (str, os.PathLike)):
        return path_item(os.fspath(x))
    if isinstance(x, (bytes, bytearray, memoryview)):
        return Item("bytes", bytes(x), f"bytes[{i}]")
    if isinstance(x, Image.Image):
        return Item("pil", x, f"pil[{i}]")
    if isinstance(x, np.ndarray) and x.dtype.kind in "uif":
        return Item("array", x, f"array[{i}]")
    raise TypeError(
        f"item {i} is a {type(x).__name__}; expected a path or URL (str or pathlib.Path), encoded "
        "image bytes, a PIL image or a numeric array."
    )


def load_pixels(
    item: Item,
    size: tuple[int, int],
    *,
    channels: int = 3,
    resize: str = "resize",
    max_pixels: int | None = None,
    decoder: str = "auto",
) -> np.ndarray:
    """Decode ``item`` and resize it to ``size`` = (height, width).

    Returns an array of shape ``(height, width, channels)`` on the 0-255 scale: uint8 for
    decoded images and uint8 arrays, float32 for float arrays (their values are kept). Raises
    :class:`ImageLoadError` naming the item when it cannot be read or decoded, and, with
    ``max_pixels``, when an encoded image has more pixels than that (a decompression bomb: a small
    file that decodes to gigabytes); the size is read from the header, before any decoding.
    ``decoder="fast"`` decodes plain RGB and greyscale JPEGs (three channels) with
    :func:`featx.embed.jpeg.decode_fast`; everything else, and every JPEG it refuses, goes
    through Pillow as with ``decoder="pillow"``. ``"auto"`` is ``"fast"`` when simplejpeg and
    OpenCV are installed (what ``ImageEmbedder(decoder="auto")`` embeds with).

    Examples
    --------
    >>> import numpy as np
    >>> item = Item("array", np.full((10, 20), 255, np.uint8), "grey")
    >>> load_pixels(item, (4, 4)).shape
    (4, 4, 3)
    """
    fault_point("images.decode")
    if item.kind == "array":
        return _array_pixels(item, size, channels, resize)
    if item.kind == "failed":
        raise ImageLoadError(item.name, str(item.value))
    if item.kind == "key":
        raise ImageLoadError(item.name, "only its content key was kept; read it from its source")
    try:
        if item.kind == "pil":
            return _pil_pixels(_upright(item.value), size, channels, resize)
        if decoder == "auto":
            decoder = "fast" if fast_available() else "pillow"
        data = item.value if item.kind == "bytes" else item.fetch() if item.kind == "url" else None
        item.release()
        if decoder == "fast" and channels == 3 and data is None:
            with open(item.value, "rb") as f:  # a JPEG is read once, for Pillow and simplejpeg
                head = f.read(3)
                data = head + f.read() if head == b"\xff\xd8\xff" else None
        src = item.value if data is None else io.BytesIO(data)
        with Image.open(src) as opened:  # closed on errors too
            if max_pixels is not None and opened.width * opened.height > max_pixels:
                raise ImageLoadError(item.name, _too_large(
                    f"image is {opened.width}x{opened.height} pixels", max_pixels
                ))
            if opened.format == "JPEG" and decoder == "fast" and channels == 3 and data:
                pixels = decode_fast(opened, data, size, resize)
                if pixels is not None:
                    return pixels
            if opened.format == "JPEG":
                # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale: cheap big photos.
                opened.draft("RGB", (size[1], size[0]))
            return _pil_pixels(_upright(opened), size, channels, resize)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(item.name, "file not found") from None
    except OSError as exc:
        reason = _os_reason(exc) if exc.errno is not None else str(exc) or type(exc).__name__
        if "cannot identify image file" in reason:
            reason = "not an image file Pillow can read (unknown or damaged format)"
        raise ImageLoadError(item.name, reason) from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses images over twice its MAX_IMAGE_PIXELS as it opens them.
        pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = max_pixels if max_pixels is not None and max_pixels <= pillow else pillow
        count = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"image has {count.group(1)} pixels" if count else f"image is too large ({exc})"
        raise ImageLoadError(item.name, _too_large(what, limit)) from None
    except ValueError as exc:
        raise ImageLoadError(item.name, str(exc)) from None


def _too_large(what: str, limit: int | float) -> str:
    return (f"{what}, over the limit of {limit} pixels (a guard against decompression bombs; "
            "see docs/robustness.md)")


def _upright(img: Image.Image) -> Image.Image:
    """Honour the EXIF orientation tag; copies the image only when it has to turn it."""
    if img.getexif().get(0x0112, 1) in (1, None):
        return img
    return ImageOps.exif_transpose(img)


def _pil_pixels(img: Image.Image, size: tuple[int, int], channels: int, resize: str) -> np.ndarray:
    mode = "L" if channels == 1 else "RGB"
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels onto white rather than whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode != mode:
        img = img.convert(mode)
    if resize == "center_crop":
        img = _center_crop(img, size)
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr


def _center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    target = size[1] / size[0]  # width / height
    w, h = img.size
    if w / h > target:
        new_w = max(1, round(h * target))
        left = (w - new_w) // 2
        return img.crop((left, 0, left + new_w, h))
    new_h = max(1, round(w / target))
    top = (h - new_h) // 2
    return img.crop((0, top, w, top + new_h))


def _array_pixels(item: Item, size: tuple[int, int], channels: int, resize: str) -> np.ndarray:
    arr = np.asarray(item.value)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)):
        raise ImageLoadError(
            item.name, f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3); got {arr.shape}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageLoadError(item.name, "the array holds NaN or infinite values")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        img = Image.fromarray(arr)
        return _pil_pixels(img, size, channels, resize)
    # Other dtypes keep their values (0-255 scale): resize each channel as a float image.
    arr = arr.astype(np.float32)
    planes = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[-1])]
    out = []
    for plane in planes:
        img = Image.fromarray(plane, mode="F")
        if resize == "center_crop":
            img = _center_crop(img, size)
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out.append(np.asarray(img, dtype=np.float32))
    pixels = np.stack(out, axis=-1)
    if channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    elif channels == 1 and pixels.shape[-1] == 3:
        pixels = (pixels @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return pixels


def warn_if_unit_scale(X: Any) -> None:
    """Warn when a float image array looks like it holds [0, 1] values (featx expects 0-255)."""
    if isinstance(X, np.ndarray) and X.dtype.kind == "f" and X.ndim >= 3 and X.size:
        finite = X[np.isfinite(X)]
        if finite.size and finite.max() <= 1.0 and finite.min() >= 0.0:
            warnings.warn(
                "the float image array holds values in [0, 1]; featx reads float images on the "
                "0-255 scale (as keras.applications preprocess_input does). Multiply by 255 if "
                "these are normalised pixels.",
                UserWarning,
                stacklevel=3,
            )


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of at most ``size`` items, taken from ``items`` as they come (a
    stream is read a chunk at a time; a sequence is sliced)."""
    if isinstance(items, Sequence):
        for start in range(0, len(items), size):
            yield list(items[start : start + size])
        return
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def batched(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of ``seq`` of at most ``size`` items; they concatenate to ``seq``.

    Examples
    --------
    >>> [list(b) for b in batched(range(5), 2)]
    [[0, 1], [2, 3], [4]]
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1; got {size}.")
    for start in range(0, len(seq), size):
        yield seq[start : start + size]
