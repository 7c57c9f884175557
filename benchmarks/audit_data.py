"""The audit benchmark's labelled image set: Fashion-MNIST with known, injected problems.

Written once into a folder (``python -m benchmarks.audit`` calls :func:`build_set`):

    <dir>/train/<k>_<class>/<name>.png|jpg    training images, one folder per (given) label
    <dir>/test/<k>_<class>/<name>.png|jpg     test images
    <dir>/truth.json                          what was injected (see :func:`build_set`)

Injected, each from a seeded draw:

- near-duplicates inside training: a training image's copy, one transform each, cycled over
  ``shift`` (1 pixel, a random direction), ``crop`` (2 to 3 pixels off each side, resized back
  to 28 px, bilinear), ``brightness`` (x 1.2 or x 0.8, clipped) and ``jpeg`` (re-encoded at
  quality 75, written as ``.jpg``);
- leaks: test images that are such copies of training images;
- byte-identical copies: a training file copied under another name inside training, and into
  test;
- flipped labels: 3% of the training originals filed under another class (drawn uniformly).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

TRANSFORMS = ("shift", "crop", "brightness", "jpeg")


def transformed(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One transformed copy of a 28x28 uint8 image: the file's bytes and suffix."""
    from PIL import Image

    img = image
    if kind == "shift":
        axis, step = int(rng.integers(2)), int(rng.choice([-1, 1]))
        img = np.roll(image, step, axis=axis)
        edge = (slice(None), 0 if step == 1 else -1) if axis == 1 else (0 if step == 1 else -1,)
        img[edge] = 0
    elif kind == "crop":
        t, b, left, r = (int(v) for v in rng.integers(2, 4, size=4))
        crop = Image.fromarray(image[t:28 - b, left:28 - r])
        img = np.asarray(crop.resize((28, 28), Image.BILINEAR))
    elif kind == "brightness":
        factor = float(rng.choice([0.8, 1.2]))
        img = np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    if kind == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=75)
        return buf.getvalue(), ".jpg"
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    return buf.getvalue(), ".png"


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def build_set(folder: Path, *, n_train: int = 6000, n_test: int = 1000, near: int = 300,
              leaks: int = 150, exact_train: int = 60, exact_test: int = 30,
              flip: float = 0.03, seed: int = 0) -> dict[str, Any]:
    """Write the set (once; a complete one is reused) and return its truth.

    Returns
    -------
    dict
        ``train``/``test``: lists of relative paths in order; ``y_train``/``y_test``: the
        labels as filed (flipped ones included); ``y_train_true``; ``flipped``: training rows
        whose label was flipped; ``near_pairs``: [copy row, original row] inside training with
        the transform; ``leak_pairs``: [test row, training row, transform]; ``exact_pairs``:
        [copy row, original row] inside training; ``exact_leaks``: [test row, training row];
        ``classes``.
    """
    truth_path = folder / "truth.json"
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    from featx.data.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    X_tr, y_tr, _ = load_fashion_mnist("train", n_train)
    X_te, y_te, _ = load_fashion_mnist("test", n_test)
    classes = [f"{k}_{name.replace('/', '_')}" for k, name in enumerate(FASHION_MNIST_CLASSES)]
    files: dict[str, list[str]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    true_train: list[int] = []

    def write(split: str, name: str, data: bytes, label: int, true: int) -> int:
        rel = f"{split}/{classes[label]}/{name}"
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[split].append(rel)
        labels[split].append(int(label))
        if split == "train":
            true_train.append(int(true))
        return len(files[split]) - 1

    n_flip = int(round(flip * len(X_tr)))
    flipped = set(rng.choice(len(X_tr), n_flip, replace=False).tolist())
    given = y_tr.copy()
    for i in flipped:
        given[i] = (y_tr[i] + rng.integers(1, 10)) % 10
    for i in range(len(X_tr)):
        write("train", f"tr{i:05d}.png", png_bytes(X_tr[i]), given[i], y_tr[i])
    for i in range(len(X_te)):
        write("test", f"te{i:05d}.png", png_bytes(X_te[i]), y_te[i], y_te[i])
    # Originals of injected copies: never a flipped row (their labels stay clean).
    pool = np.array([i for i in range(len(X_tr)) if i not in flipped])
    sources = rng.choice(pool, near + leaks + exact_train + exact_test, replace=False)
    near_src, rest = sources[:near], sources[near:]
    leak_src, rest = rest[:leaks], rest[leaks:]
    ex_tr_src, ex_te_src = rest[:exact_train], rest[exact_train:]
    near_pairs, leak_pairs, exact_pairs, exact_leaks = [], [], [], []
    for n, i in enumerate(near_src.tolist()):
        kind = TRANSFORMS[n % len(TRANSFORMS)]
        data, suffix = transformed(X_tr[i], kind, rng)
        row = write("train", f"near{n:04d}{suffix}", data, y_tr[i], y_tr[i])
        near_pairs.append([row, i, kind])
    for n, i in enumerate(leak_src.tolist()):
        kind = TRANSFORMS[n % len(TRANSFORMS)]
        data, suffix = transformed(X_tr[i], kind, rng)
        row = write("test", f"leak{n:04d}{suffix}", data, y_tr[i], y_tr[i])
        leak_pairs.append([row, i, kind])
    for n, i in enumerate(ex_tr_src.tolist()):
        data = (folder / files["train"][i]).read_bytes()
        row = write("train", f"copy{n:04d}.png", data, given[i], y_tr[i])
        exact_pairs.append([row, i])
    for n, i in enumerate(ex_te_src.tolist()):
        data = (folder / files["train"][i]).read_bytes()
        row = write("test", f"copy{n:04d}.png", data, y_tr[i], y_tr[i])
        exact_leaks.append([row, i])
    truth = {
        "train": files["train"], "test": files["test"],
        "y_train": labels["train"], "y_test": labels["test"], "y_train_true": true_train,
        "flipped": sorted(flipped), "near_pairs": near_pairs, "leak_pairs": leak_pairs,
        "exact_pairs": exact_pairs, "exact_leaks": exact_leaks, "classes": classes,
        "pixel_hash_train": [_pixel_hash(folder / p) for p in files["train"]],
        "pixel_hash_test": [_pixel_hash(folder / p) for p in files["test"]],
    }
    tmp = truth_path.with_name(".truth.json")
    tmp.write_text(json.dumps(truth))
    tmp.rename(truth_path)
    return truth


def _pixel_hash(path: Path) -> str:
    import hashlib

    from PIL import Image

    with Image.open(path) as img:
        return hashlib.sha256(np.asarray(img.convert("L")).tobytes()).hexdigest()[:16]
