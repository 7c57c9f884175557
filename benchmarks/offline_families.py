"""The two offline ImageNet families on Fashion-MNIST: MobileNet v1 against EfficientNet-Lite0.

Each backbone embeds the same class-stratified 2,000 training and 1,000 test images (28x28 grey,
upsampled) at each input size; a logistic regression (featx's ``logreg`` preset: standardised
features, C chosen by 5-fold cross-validation on the training images only) is scored on the
test images. Needs ``featx weights install mobilenet`` and ``featx weights install
efficientnet_lite0``.

    python -m benchmarks.offline_families [--sizes 160,224] [--n-train 2000 --n-test 1000]

Prints one row per (backbone, size) and the accuracy ratio against MobileNet at the same size.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BASELINE = "mobilenet"
BACKBONES = (BASELINE, "efficientnet_lite0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="160,224", help="comma-separated input sizes")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    args = parser.parse_args(argv)

    from featx import ImageEmbedder, tune_heads
    from featx.data.datasets import load_fashion_mnist

    x_train, y_train, _ = load_fashion_mnist("train", args.n_train)
    x_test, y_test, _ = load_fashion_mnist("test", args.n_test)
    print(f"Fashion-MNIST: {len(x_train)} training, {len(x_test)} test images; logreg head, "
          "5-fold CV on the training images")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for backbone in args.backbones.split(","):
            embedder = ImageEmbedder(backbone, input_size=size)
            started = time.perf_counter()
            X_train = embedder.fit_transform(x_train)
            X_test = embedder.transform(x_test)
            seconds = time.perf_counter() - started
            board = tune_heads(X_train, y_train, test=(X_test, y_test), heads=["logreg"], cv=5)
            best = board.best
            rows.append((backbone, size, X_train.shape[1], seconds, best.cv_mean, best.test_score))
            print(f"  {backbone} at {size} px: embedded {len(x_train) + len(x_test)} images in "
                  f"{seconds:.1f} s, test accuracy {best.test_score:.3f}", flush=True)

    base = {size: test for backbone, size, *_, test in rows if backbone == BASELINE}
    print(f"\n{'backbone':<20} {'size':>4} {'width':>5} {'embed s':>8} {'img/s':>6} "
          f"{'cv acc':>7} {'test acc':>8} {'vs ' + BASELINE:>13}")
    for backbone, size, width, seconds, cv_mean, test in rows:
        n = args.n_train + args.n_test
        ratio = f"{test / base[size]:.3f}x" if size in base else "-"
        print(f"{backbone:<20} {size:>4} {width:>5} {seconds:>8.1f} {n / seconds:>6.1f} "
              f"{cv_mean:>7.3f} {test:>8.3f} {ratio:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
