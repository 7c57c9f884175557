"""What bfloat16 inference costs in accuracy on the demo's heads.

    .venv/bin/python -m benchmarks.bf16_accuracy [--train 2000] [--test 1000] [--size 160]

The demo's data (Fashion-MNIST, 2,000 training and 1,000 test images), its backbone (ImageNet
MobileNet at 160 px) and its heads and folds, embedded once in float32 and once in bfloat16 on
the OpenVINO engine; prints each head's cross-validated and test accuracy for both, and the
difference in points.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np

    from featx import ImageEmbedder, tune_heads
    from featx.data.demo import DEMO_HEADS, load_demo_data

    dataset, x_train, y_train, x_test, y_test, classes = load_demo_data(args.train, args.test)
    names = np.asarray(classes)
    boards = {}
    for precision in ("float32", "mixed_bfloat16"):
        emb = ImageEmbedder("mobilenet", input_size=args.size, engine="openvino",
                            precision=precision)
        t0 = time.perf_counter()
        train, test = emb.fit_transform(x_train), emb.transform(x_test)
        seconds = time.perf_counter() - t0
        print(f"{precision}: embedded {len(train) + len(test)} images in {seconds:.1f} s")
        boards[precision] = tune_heads(train, names[y_train], test=(test, names[y_test]),
                                       heads=list(DEMO_HEADS), cv=args.cv, random_state=0)
    print(f"\n{dataset}, MobileNet (ImageNet) at {args.size} px, OpenVINO engine\n")
    print("| head | float32 CV | bfloat16 CV | float32 test | bfloat16 test | difference |")
    print("|---|---:|---:|---:|---:|---:|")
    low = {r.head: r for r in boards["mixed_bfloat16"].results}
    for r in boards["float32"].results:
        b = low[r.head]
        print(f"| {r.head} | {r.cv_mean:.1%} | {b.cv_mean:.1%} | {r.test_score:.1%} | "
              f"{b.test_score:.1%} | {(b.test_score - r.test_score) * 100:+.1f} points |")
    best = boards["float32"].best.head
    print(f"\nbest head in float32: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
