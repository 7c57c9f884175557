"""A realistic folder of JPEG photos for benchmarks, made from the sample photos that
scikit-image and scikit-learn ship (crops, scales, flips and re-encoding), deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def _sources() -> list[np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    photos += list(load_sample_images().images)
    return [np.asarray(p) for p in photos]


def make_photo_folder(root: str | Path, n: int, *, seed: int = 0) -> list[str]:
    """Write ``n`` JPEGs of 300 to 800 pixels on the long side into ``root``; return their paths.

    Files already there (from an earlier run with the same ``n`` and ``seed``) are reused.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"photo_{i:05d}.jpg" for i in range(n)]
    if all(p.is_file() for p in paths):
        return [str(p) for p in paths]
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(p) for p in _sources()]
    for i, path in enumerate(paths):
        img = sources[i % len(sources)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        photo = img.crop((left, top, left + cw, top + ch))
        long_side = int(rng.integers(300, 801))
        scale = long_side / max(photo.size)
        new_size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        photo = photo.resize(new_size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            photo = ImageOps.mirror(photo)
        photo.save(path, quality=int(rng.integers(70, 96)))
    return [str(p) for p in paths]
