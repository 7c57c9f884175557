"""Accuracy-by-depth curves for docs/transfer-guide.md: the layer probe on two offline data sets.

Fashion-MNIST (the Debian package dataset-fashion-mnist) and scikit-learn's digits, both
upsampled to the ImageNet MobileNet (``featx weights install mobilenet``) at 128 px, probed at
``layers="auto"`` with three heads on the same folds; a held-out test split scores each row.
Writes, per data set, the leaderboard CSV and the depth plot into ``--out`` and prints the
tables and the decision.

Run (from the repository root):

    .venv/bin/python -m benchmarks.transfer_curves --out docs/images
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--n", type=int, default=1500, help="images per data set (default 1500)")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--heads", default="logreg,knn,rbf_svm")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--cache", default=None, help="embedding cache (default: in --out)")
    parser.add_argument("--sets", default="fashion_mnist,digits")
    args = parser.parse_args(argv)

    from featx import ImageEmbedder, probe_layers
    from featx.data.datasets import load_digits_images, load_fashion_mnist
    from featx.report.plots import plot_depth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or str(Path(os.environ.get("TMPDIR", "/tmp")) / "featx-transfer-curves.h5")
    loaders = {
        "fashion_mnist": lambda: load_fashion_mnist("train", n=args.n),
        "digits": lambda: load_digits_images(n=min(args.n, 1797)),
    }
    for name in args.sets.split(","):
        images, labels, classes = loaders[name]()
        y = [classes[i] for i in labels]
        started = time.perf_counter()
        probe = probe_layers(
            images, y, embedder=ImageEmbedder("mobilenet", input_size=args.input_size, cache=cache),
            layers="auto", heads=args.heads.split(","), cv=args.cv, test_size=0.25, n_jobs=-1,
            log=print,
        )
        seconds = time.perf_counter() - started
        print(f"\n== {name}: {len(images)} images, {len(classes)} classes, "
              f"MobileNet (ImageNet) at {args.input_size} px; {seconds:.0f} s in all, "
              f"embedding {probe.embed_seconds:.0f} s ({probe.n_embedded} embedded, "
              f"{probe.n_hits} from the cache)")
        print(probe.to_text())
        print(probe.decision())
        probe.to_csv(out / f"probe_{name}.csv")
        plot_depth(probe, out / f"probe_{name}.png",
                   title=f"{name}: MobileNet (ImageNet) layers, {probe.n_train} training images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
