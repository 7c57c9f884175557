"""A tiny labelled image set with known problems, its rows written straight into a cache.

The images are 8x8 PNG files (their bytes give the content keys); their embeddings are
synthetic (three tight clusters in 16 dimensions) and appended to a cache group under those
keys, so the audit reads real rows from a real cache without a network. Known problems:

- ``dup``: ``a/copy_of_a0.png`` is a byte copy of ``a/a0.png`` (exact, the same key);
- ``near``: ``a/a1.png`` and ``a/a2.png`` have almost the same row (near);
- ``flipped``: ``b/b7.png`` has class ``a``'s row (a wrong label);
- ``outlier``: ``c/c0.png``'s row is far from every cluster;
- test: ``a/t_a0.png``'s row is almost ``b/b3.png``'s (a leak), the others fresh.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FINGERPRINT = "fpaudit0123"
WIDTH = 16


@dataclass
class AuditSet:
    train: Path
    test: Path
    cache: Path
    paths: list[str]
    y: np.ndarray
    X: np.ndarray
    test_paths: list[str]
    y_test: np.ndarray
    X_test: np.ndarray


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def make_audit_set(base: Path, *, per_class: int = 8) -> AuditSet:
    """Write the images and their cache into ``base``; return what was written."""
    from featx.cache.store import EmbeddingCache
    from featx.embed.lookup import image_keys

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(3, WIDTH)) * 4
    train, test = base / "train", base / "test"
    paths, labels, rows = [], [], []
    seed = 0
    for c, name in enumerate("abc"):
        for i in range(per_class):
            path = train / name / f"{name}{i}.png"
            _png(path, seed := seed + 1)
            paths.append(str(path))
            labels.append(name)
            rows.append(centres[c] + rng.normal(size=WIDTH) * 1.5)
    where = {Path(p).name: i for i, p in enumerate(paths)}
    rows[where["a2.png"]] = rows[where["a1.png"]] + rng.normal(size=WIDTH) * 0.005
    rows[where["b7.png"]] = centres[0] + rng.normal(size=WIDTH) * 1.5
    rows[where["c0.png"]] = -3 * centres.sum(axis=0)
    copy = train / "a" / "copy_of_a0.png"
    shutil.copy(paths[where["a0.png"]], copy)
    paths.append(str(copy))
    labels.append("a")
    rows.append(rows[where["a0.png"]])
    test_paths, test_labels, test_rows = [], [], []
    for c, name in enumerate("abc"):
        for i in range(2):
            path = test / name / f"t_{name}{i}.png"
            _png(path, seed := seed + 1)
            test_paths.append(str(path))
            test_labels.append(name)
            test_rows.append(centres[c] + rng.normal(size=WIDTH) * 1.5)
    test_rows[0] = rows[where["b3.png"]] + rng.normal(size=WIDTH) * 0.005
    X = np.asarray(rows, np.float32)
    X_test = np.asarray(test_rows, np.float32)
    cache = EmbeddingCache(base / "emb.h5")
    keys = image_keys(paths)
    first = np.unique(keys, return_index=True)[1]
    cache.append(FINGERPRINT, [keys[i].decode() for i in sorted(first)], X[sorted(first)],
                 [paths[i] for i in sorted(first)])
    cache.append(FINGERPRINT, [k.decode() for k in image_keys(test_paths)], X_test, test_paths)
    return AuditSet(train, test, base / "emb.h5", paths, np.asarray(labels), X, test_paths,
                    np.asarray(test_labels), X_test)
