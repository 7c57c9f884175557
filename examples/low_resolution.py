"""Small, low-resolution images upsampled to a pretrained network's input; features vs pixels.

The CIFAR-10 recipe, offline: 28x28 Fashion-MNIST images (or scikit-learn's 8x8 digits when the
Debian package is missing) are resized to the backbone's input size by the embedder, run
through frozen ImageNet MobileNet, and a tuned logistic regression is fitted on the features
and, for comparison, on the raw pixels.

    python examples/low_resolution.py                  # 1,000 + 500 images at 128 px
    python examples/low_resolution.py --small          # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from featx import ImageEmbedder, tune_heads
from featx.data.demo import load_demo_data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--input-size", type=int, default=128,
                        help="the size the small images are upsampled to (default 128)")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    parser.add_argument("--out", type=Path, help="write the two leaderboards as CSV here")
    parser.add_argument("--small", action="store_true", help="100 + 50 images at 96 px")
    args = parser.parse_args(argv)
    if args.small:
        args.n_train, args.n_test, args.input_size = 100, 50, 96
    weights = None if args.weights == "none" else args.weights

    name, x_train, y_train, x_test, y_test, classes = load_demo_data(args.n_train, args.n_test)
    print(f"{name}: {len(x_train)} training and {len(x_test)} test images of "
          f"{x_train.shape[1]}x{x_train.shape[2]} pixels, {len(classes)} classes")

    # The arrays go straight in: the embedder resizes each image to input_size x input_size,
    # makes it RGB and applies MobileNet's own preprocessing.
    embedder = ImageEmbedder("mobilenet", weights=weights, input_size=args.input_size)
    started = time.perf_counter()
    features = {"train": embedder.fit_transform(x_train), "test": embedder.transform(x_test)}
    print(f"embedded at {args.input_size}x{args.input_size} in "
          f"{time.perf_counter() - started:.1f} s: {features['train'].shape[1]} features each")
    pixels = {"train": x_train.reshape(len(x_train), -1) / 255.0,
              "test": x_test.reshape(len(x_test), -1) / 255.0}

    cv = 3 if args.small else 5
    rows = []
    for label, X in (("MobileNet features", features), ("raw pixels", pixels)):
        board = tune_heads(X["train"], y_train, test=(X["test"], y_test), heads=["logreg"],
                           cv=cv)
        r = board.best
        rows.append((label, X["train"].shape[1], r.cv_mean, r.test_score, r.best_params))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            board.to_csv(args.out / f"{label.split()[-1]}.csv")
    print(f"\n{'features':<20} {'width':>6} {'cv acc':>7} {'test acc':>9}  best C")
    for label, width, cv_score, test, params in rows:
        print(f"{label:<20} {width:>6} {cv_score:>7.3f} {test:>9.3f}  {params['clf__C']}")
    gain = rows[0][3] - rows[1][3]
    print(f"\ntest accuracy, MobileNet features minus raw pixels: {gain * 100:+.1f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
