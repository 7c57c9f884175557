"""The fast JPEG path: libjpeg-turbo's scaled decode, then an antialiased SIMD resize.

:func:`decode_fast` turns an opened (header-only) Pillow JPEG and its bytes into the resized
pixels, or returns ``None`` when it will not: not a plain RGB or greyscale JPEG (CMYK and others
keep Pillow's conversions), or libjpeg-turbo warns about the data (a truncated or damaged file).
The caller then decodes with Pillow as before, so no image that Pillow reads is ever dropped.

How, and why (numbers in docs/architecture.md, "Decisions and why"):

- ``simplejpeg`` decodes at the largest power-of-two DCT reduction (1/2, 1/4, 1/8) that keeps
  the image at least the target size, as Pillow's draft mode chooses, straight to RGB, without
  the GIL, and refuses damaged data (``strict``). The 3/8-7/8 reductions were measured further
  from a Lanczos reference and no cheaper.
- The remaining downscale (a factor ``s`` under 2 for most photos) is antialiased, as Pillow's
  BILINEAR is by a triangle filter whose support grows with ``s``: OpenCV's SIMD Gaussian blur
  (sigma ``sqrt(s**2 - 1) / 2`` source pixels) then its bilinear resize, in a fraction of
  Pillow's time. That sigma was tuned on the benchmark photos and on one-pixel stripes: it keeps
  the result within 0.5 of 255 per pixel of Pillow's and flattens stripes shrunk 1.75x as
  Pillow does (the variance-matching sigma, ``sqrt((s**2 - 1) / 6)``, let them beat).
- The EXIF orientation is applied to the small decoded array (a view, then one copy).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import numpy as np

__all__ = ["decode_fast", "dct_reduction", "fast_available", "antialiased_resize"]

#: Pillow's JPEG modes the fast path reads as they are; others (CMYK, ...) go through Pillow.
_PLAIN_MODES = ("RGB", "L")


@functools.cache
def fast_available() -> bool:
    """Whether simplejpeg and OpenCV are installed (found without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("simplejpeg", "cv2"))


def dct_reduction(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 that keeps ``width x height`` at least ``target`` (w, h).

    The rule Pillow's ``Image.draft`` follows for JPEGs.

    Examples
    --------
    >>> dct_reduction(800, 600, (224, 224)), dct_reduction(447, 300, (224, 224))
    (2, 1)
    """
    scale = min(width // max(1, target[0]), height // max(1, target[1]))
    return next(r for r in (8, 4, 2, 1) if r <= max(1, scale))


#: Whether photos with an EXIF orientation other than 1 take the fast path (the orientation
#: applied to the decoded array). Off: they go through Pillow, so that a turned file embeds
#: exactly like its upright pixels given as an array (which Pillow resizes), as featx promised
#: before the fast decoder; ``tests/test_embed_jpeg.py`` checks the fast path for all eight.
_ORIENT_FAST = False


def decode_fast(opened: Any, data: bytes, size: tuple[int, int], resize: str) -> np.ndarray | None:
    """Decode the JPEG ``data`` (``opened`` is its Pillow header) to ``size`` = (height, width).

    Returns an ``(height, width, 3)`` uint8 array, or ``None`` when Pillow should decode it.
    """
    if opened.mode not in _PLAIN_MODES:
        return None
    import simplejpeg

    orientation = opened.getexif().get(0x0112, 1) or 1
    if orientation != 1 and not _ORIENT_FAST:
        return None  # a turned photo embeds exactly like its upright pixels through Pillow
    turned = orientation in (5, 6, 7, 8)
    stored_w, stored_h = opened.size
    upright_w, upright_h = (stored_h, stored_w) if turned else (stored_w, stored_h)
    crop_w, crop_h = (_crop_size(upright_w, upright_h, size) if resize == "center_crop"
                      else (upright_w, upright_h))
    r = dct_reduction(crop_w, crop_h, (size[1], size[0]))
    want = (-(-stored_h // r), -(-stored_w // r))
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=want[0],
                                        min_width=want[1], strict=True)
    except ValueError:  # libjpeg-turbo's errors and warnings: Pillow decides
        return None
    if pixels.shape[:2] != want:
        return None
    pixels = _orient(pixels, orientation)
    if resize == "center_crop":
        h, w = pixels.shape[:2]
        cw, ch = _crop_size(w, h, size)
        left, top = (w - cw) // 2, (h - ch) // 2
        pixels = pixels[top:top + ch, left:left + cw]
    return antialiased_resize(pixels, size)


def _crop_size(w: int, h: int, size: tuple[int, int]) -> tuple[int, int]:
    """The centre crop ``images._center_crop`` takes of a ``w x h`` image (same rounding)."""
    target = size[1] / size[0]
    if w / h > target:
        return max(1, round(h * target)), h
    return w, max(1, round(w / target))


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF orientation applied as ``ImageOps.exif_transpose`` does (a view)."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


def antialiased_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``(h, w, c)`` array to ``size`` = (height, width), antialiased.

    Each axis shrunk by a factor ``s > 1`` is first blurred with a Gaussian of sigma
    ``sqrt(s**2 - 1) / 2`` (with the bilinear tap, close to Pillow's BILINEAR triangle of
    support ``s``); enlarged axes are plain bilinear, as in Pillow.

    Examples
    --------
    >>> import numpy as np
    >>> antialiased_resize(np.zeros((300, 400, 3), np.uint8), (224, 224)).shape
    (224, 224, 3)
    """
    import cv2

    h, w = pixels.shape[:2]
    if (h, w) == tuple(size):
        return np.ascontiguousarray(pixels)
    pixels = np.ascontiguousarray(pixels)
    sigma_x = math.sqrt((w / size[1]) ** 2 - 1) / 2 if w > size[1] else 0.0
    sigma_y = math.sqrt((h / size[0]) ** 2 - 1) / 2 if h > size[0] else 0.0
    if sigma_x > 0 or sigma_y > 0:
        # Kernels cut at 2 sigma (5-7 taps) and filtered in floats: half the time of
        # cv2.GaussianBlur's bit-exact 3-sigma kernels, within 2 of 255 of them.
        pixels = cv2.sepFilter2D(pixels, -1, _gaussian(sigma_x), _gaussian(sigma_y),
                                 borderType=cv2.BORDER_REFLECT)
    out = cv2.resize(pixels, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return out[..., None] if out.ndim == 2 else out


@functools.lru_cache(maxsize=256)
def _gaussian_cached(sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.ones((1, 1), np.float32)
    x = np.arange(-math.ceil(2 * sigma), math.ceil(2 * sigma) + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32).reshape(-1, 1)


def _gaussian(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian kernel cut at 2 sigma (sigmas rounded to 1/64: few kernels)."""
    return _gaussian_cached(round(sigma * 64) / 64)
