"""A folder of two classes (the chest X-ray layout), ROC AUC, a saved model that predicts files.

The Kaggle chest X-ray set is laid out as ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``.
This example builds a folder with that layout offline, from synthetic radiograph-like images
(a chest, two darker lung fields, ribs; "pneumonia" adds one to three soft bright opacities in a
lung), embeds it with frozen ImageNet MobileNet through a cache, tunes two heads, reports ROC AUC
on the test folder, and saves the best as a model that predicts straight from file paths.
Point --data at a real chest_xray folder to run it on the real thing.

    python examples/two_class_folder.py                # 300 + 100 images
    python examples/two_class_folder.py --small        # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from featx import ImageEmbedder, load_image_folder, load_model, tune_heads
from featx.model import FeatxModel

CLASSES = ("NORMAL", "PNEUMONIA")


def radiograph(rng: np.random.Generator, sick: bool, size: int = 128) -> np.ndarray:
    """A grey chest-like image: body, two lung fields, ribs, noise; opacities when sick."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.25 + 0.45 * np.exp(-(((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.5) ** 2) ** 2)
    lungs = []
    for side in (-1, 1):
        cx, cy = 0.5 + side * rng.uniform(0.17, 0.21), rng.uniform(0.45, 0.52)
        rx, ry = rng.uniform(0.12, 0.15), rng.uniform(0.25, 0.3)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img -= 0.28 * inside
        lungs.append((cx, cy, rx, ry))
    img += 0.06 * (np.sin(yy * rng.uniform(55, 65) + rng.uniform(0, 6)) > 0.6)  # ribs
    if sick:
        for _ in range(rng.integers(1, 4)):
            cx, cy, rx, ry = lungs[rng.integers(2)]
            px, py = cx + rng.uniform(-0.5, 0.5) * rx, cy + rng.uniform(-0.5, 0.6) * ry
            r = rng.uniform(0.04, 0.09)
            img += rng.uniform(0.12, 0.22) * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / r**2)
    img += rng.normal(0, 0.05, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write ``root/{train,test}/{NORMAL,PNEUMONIA}/*.png`` (n per class and split)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = int(rng.integers(112, 160))  # real sets mix sizes
                Image.fromarray(radiograph(rng, bool(label), size)).save(folder / f"{i:04d}.png")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path,
                        help="a chest_xray-style folder with train/ and test/ (default: build a "
                        "synthetic one in --out)")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--n-train", type=int, default=150, help="per class (synthetic data)")
    parser.add_argument("--n-test", type=int, default=50, help="per class (synthetic data)")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    parser.add_argument("--small", action="store_true", help="12 + 6 images per class at 96 px")
    args = parser.parse_args(argv)
    if args.small:
        args.n_train, args.n_test, args.input_size = 12, 6, 96
    weights = None if args.weights == "none" else args.weights
    out = args.out or Path(tempfile.mkdtemp(prefix="featx-chest-"))
    data = args.data or make_folder(out / "chest_xray", args.n_train, args.n_test)

    train_paths, y_train, classes = load_image_folder(data / "train")
    test_paths, y_test, _ = load_image_folder(data / "test")
    names = np.asarray(classes)
    print(f"{data}: {len(train_paths)} training and {len(test_paths)} test images, classes "
          f"{classes} ({np.bincount(y_train).tolist()} in train)")

    embedder = ImageEmbedder("mobilenet", weights=weights, input_size=args.input_size,
                             cache=out / "embeddings.h5")
    X_train = embedder.fit_transform(train_paths)
    X_test = embedder.transform(test_paths)
    board = tune_heads(X_train, names[y_train], test=(X_test, names[y_test]),
                       heads=["logreg", "rbf_svm"], cv=3 if args.small else 5)
    print(board.to_text())
    best = board.best
    print(f"best head {best.head}: ROC AUC {best.roc_auc:.3f}, accuracy {best.accuracy:.3f} "
          f"on the {len(test_paths)} test images")

    # The tuned head and the embedder's configuration in one file; it predicts from paths.
    path = FeatxModel.portable(embedder, best.estimator).save(out / "model.featx")
    model = load_model(path, cache=out / "embeddings.h5")  # the cache: nothing is re-embedded
    sample = [test_paths[0], test_paths[-1]]
    proba = model.predict_proba(sample)
    for p, label, row in zip(sample, model.predict(sample), proba, strict=True):
        print(f"{Path(p).parent.name}/{Path(p).name}: predicted {label} "
              f"(P(PNEUMONIA) = {row[list(model.classes_).index('PNEUMONIA')]:.2f})"
              if model.has_proba else f"{p}: predicted {label}")
    print(f"model saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
