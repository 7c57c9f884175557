"""What reduced precision (bfloat16, INT8) costs in accuracy on the demo's heads.

    .venv/bin/python -m benchmarks.precision_accuracy [--train 2000] [--test 1000] [--size 160]
        [--precisions float32,mixed_bfloat16,int8]

The demo's data (Fashion-MNIST, 2,000 training and 1,000 test images), its backbone (ImageNet
MobileNet at 160 px) and its heads and folds, embedded once per precision on the OpenVINO engine
(INT8 calibrated by ``fit`` on the first 300 training images); prints each head's
cross-validated and test accuracy per precision, the difference to float32 in points, and the
mean cosine of each precision's test embeddings to float32's. The table is written to
``benchmarks/results/precision-accuracy.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHORT = {"float32": "float32", "mixed_bfloat16": "bfloat16", "int8": "INT8"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16,int8")
    args = parser.parse_args(argv)

    import numpy as np

    from benchmarks.run import machine
    from featx import ImageEmbedder, tune_heads
    from featx.data.demo import DEMO_HEADS, load_demo_data

    precisions = args.precisions.split(",")
    if precisions[0] != "float32":
        raise SystemExit("--precisions starts with float32, the reference")
    dataset, x_train, y_train, x_test, y_test, classes = load_demo_data(args.train, args.test)
    names = np.asarray(classes)
    boards, tests, lines = {}, {}, []
    for precision in precisions:
        emb = ImageEmbedder("mobilenet", input_size=args.size, engine="openvino",
                            precision=precision)
        t0 = time.perf_counter()
        train, test = emb.fit_transform(x_train), emb.transform(x_test)
        seconds = time.perf_counter() - t0
        note = " (calibration and quantization included)" if precision == "int8" else ""
        lines.append(f"{precision}: embedded {len(train) + len(test)} images in {seconds:.1f} s"
                     f"{note}")
        print(lines[-1], flush=True)
        tests[precision] = test
        boards[precision] = tune_heads(train, names[y_train], test=(test, names[y_test]),
                                       heads=list(DEMO_HEADS), cv=args.cv, random_state=0)
    low = precisions[1:]
    head = ("| head | " + " | ".join(f"{SHORT[p]} CV" for p in precisions) + " | "
            + " | ".join(f"{SHORT[p]} test" for p in precisions) + " | "
            + " | ".join(f"{SHORT[p]} - float32" for p in low) + " |")
    rows = [head, "|---|" + "---:|" * (2 * len(precisions) + len(low))]
    by_head = {p: {r.head: r for r in boards[p].results} for p in precisions}
    for r in boards["float32"].results:
        others = [by_head[p][r.head] for p in precisions]
        rows.append(f"| {r.head} | " + " | ".join(f"{o.cv_mean:.1%}" for o in others) + " | "
                    + " | ".join(f"{o.test_score:.1%}" for o in others) + " | "
                    + " | ".join(f"{(by_head[p][r.head].test_score - r.test_score) * 100:+.1f} "
                                 "points" for p in low) + " |")
    ref = tests["float32"]

    def cosine(a: np.ndarray) -> float:
        num = (a * ref).sum(1)
        return float(np.mean(num / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)))

    best = boards["float32"].best.head
    text = "\n".join([
        f"Machine: {machine()}", "", *lines, "",
        f"{dataset}, {args.train} training and {args.test} test images, MobileNet (ImageNet) at "
        f"{args.size} px, OpenVINO engine, {args.cv}-fold CV", "", *rows, "",
        f"Best head in float32: {best}; its test accuracy per precision: "
        + ", ".join(f"{SHORT[p]} {by_head[p][best].test_score:.1%}" for p in precisions) + ".",
        "Mean cosine of the test embeddings to float32's: "
        + ", ".join(f"{SHORT[p]} {cosine(tests[p]):.4f}" for p in low) + ".", "",
        "Command: `.venv/bin/python -m benchmarks.precision_accuracy "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
    ])
    print("\n" + text)
    out = Path(__file__).parent / "results" / "precision-accuracy.md"
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
