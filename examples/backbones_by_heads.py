"""Several backbones x several heads in one table, to pick the pair.

Each backbone embeds the images once, through one shared cache file (a group per backbone
configuration); every head is then tuned on every backbone's embeddings with the same folds,
and one table ranks the pairs by cross-validated accuracy. Offline, the two families featx
installs have ImageNet weights: MobileNet v1 (`featx weights install mobilenet`) and
EfficientNet-Lite0 (`featx weights install efficientnet_lite0`; skipped when not installed);
MobileNetV2 and ResNet50 run with random weights (weights=None) as a contrast that shows what
pretraining is worth. With a network, pass --imagenet-all to give every backbone its ImageNet
weights.

    python examples/backbones_by_heads.py              # 600 + 300 images, 4 backbones x 3 heads
    python examples/backbones_by_heads.py --small      # 3 backbones x 2 heads, for CI
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featx import ImageEmbedder, tune_heads
from featx.data.demo import load_demo_data
from featx.nets.efficientnet_lite import weight_filename
from featx.weights import keras_models_dir

#: The backbones whose ImageNet weights featx installs offline.
OFFLINE_IMAGENET = ("mobilenet", "efficientnet_lite0")


def _installed(backbone: str) -> bool:
    if backbone != "efficientnet_lite0":
        return True  # MobileNet: a missing install fails loudly, naming the command
    return (keras_models_dir() / weight_filename(backbone, include_top=False)).is_file()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="mobilenet,efficientnet_lite0,mobilenet_v2,resnet50",
                        help="comma-separated registry names")
    parser.add_argument("--heads", default="logreg,rbf_svm,knn", help="comma-separated heads")
    parser.add_argument("--imagenet-all", action="store_true",
                        help="ImageNet weights for every backbone (needs them installed or a "
                        "network); default: only mobilenet and efficientnet_lite0")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--out", type=Path, help="where the cache goes (default: a temp folder)")
    parser.add_argument("--small", action="store_true",
                        help="mobilenet, efficientnet_lite0 and mobilenet_v2, logreg and knn, "
                        "60 + 40 images")
    args = parser.parse_args(argv)
    if args.small:
        args.backbones, args.heads = "mobilenet,efficientnet_lite0,mobilenet_v2", "logreg,knn"
        args.n_train, args.n_test = 60, 40
    out = args.out or Path(tempfile.mkdtemp(prefix="featx-grid-"))
    cache = out / "embeddings.h5"
    heads = args.heads.split(",")
    cv = 3 if args.small else 5

    name, x_train, y_train, x_test, y_test, classes = load_demo_data(args.n_train, args.n_test)
    names = np.asarray(classes)
    print(f"{name}: {len(x_train)} training and {len(x_test)} test images at "
          f"{args.input_size} px; heads: {', '.join(heads)}; {cv}-fold cross-validation")
    rows = []
    for backbone in args.backbones.split(","):
        weights = "imagenet" if backbone in OFFLINE_IMAGENET or args.imagenet_all else None
        if weights and not args.imagenet_all and not _installed(backbone):
            print(f"  {backbone}: skipped, its ImageNet weights are not installed "
                  f"(featx weights install {backbone})")
            continue
        embedder = ImageEmbedder(backbone, weights=weights, input_size=args.input_size,
                                 cache=cache)
        started = time.perf_counter()
        X_train, X_test = embedder.fit_transform(x_train), embedder.transform(x_test)
        seconds = time.perf_counter() - started
        label = f"{backbone} ({'ImageNet' if weights else 'random'})"
        print(f"  {label}: {X_train.shape[1]} features, embedded in {seconds:.1f} s")
        board = tune_heads(X_train, names[y_train], test=(X_test, names[y_test]), heads=heads,
                           cv=cv)
        rows += [(label, r.head, r.cv_mean, r.cv_std, r.test_score) for r in board]

    rows.sort(key=lambda r: -r[2])
    width = max(len(r[0]) for r in rows)
    print(f"\n{'#':>2}  {'backbone':<{width}}  {'head':<8} {'cv accuracy':>13} {'test':>6}")
    for i, (label, head, mean, std, test) in enumerate(rows, 1):
        print(f"{i:>2}  {label:<{width}}  {head:<8} {mean:>6.3f} ± {std:.3f} {test:>6.3f}")
    best = rows[0]
    print(f"\npick: {best[0]} + {best[1]} (best cross-validated accuracy {best[2]:.3f}; its test "
          f"accuracy {best[4]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
