"""Frozen features, the best probed layer, or fine-tuning? The three strategies, measured.

On Fashion-MNIST (or scikit-learn's digits when the Debian package is missing), each strategy
ends with the same tuned logistic regression, and is timed from images to a tuned head:

1. frozen: ImageNet MobileNet cut at its default layer (the one feeding the classifier);
2. probed: ``featx.probe_layers`` embeds several depths in one pass and the best is chosen by
   cross-validation (never by the test set);
3. fine-tuned: ``featx.fine_tune`` cuts the network at the best probed layer, trains a new
   classifier there, then the two blocks beneath it (``--top-layers 12``) at a low learning
   rate, into a new .keras backbone; ``ImageEmbedder(file)`` embeds from it.

    python examples/fine_tune.py                       # 300 training images, 1,000 test, 128 px
    python examples/fine_tune.py --n-train 5000        # the large-data row of the guide
    python examples/fine_tune.py --small               # seconds, for CI
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from featx import ImageEmbedder, fine_tune, probe_layers, tune_heads
from featx.data.demo import load_demo_data

PROBED = ["conv_pw_9_relu", "conv_pw_11_relu", "conv_pw_12_relu", None]  # None: the default cut


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="fine-tuning learning rate (default 1e-4)")
    parser.add_argument("--top-layers", type=int, default=12,
                        help="layers unfrozen beneath the cut (default 12: two MobileNet blocks)")
    parser.add_argument("--augment", action="store_true", help="flips and shifts in training")
    parser.add_argument("--validation-split", type=float, default=0.1,
                        help="held out for early stopping (default 0.1)")
    parser.add_argument("--cv", type=int, default=3, help="folds of the heads' grid search")
    parser.add_argument("--out", type=Path,
                        help="where tuned.keras, the cache and results.md go (default: a temp "
                        "folder)")
    parser.add_argument("--small", action="store_true", help="100 + 30 images at 32 px, 1 epoch")
    args = parser.parse_args(argv)
    head_epochs = 100
    if args.small:
        args.n_train, args.n_test, args.input_size, args.epochs = 100, 30, 32, 1
        args.validation_split, head_epochs = 0.2, 20
    out = args.out or Path(tempfile.mkdtemp(prefix="featx-finetune-"))
    out.mkdir(parents=True, exist_ok=True)

    name, x_train, y_train, x_test, y_test, classes = load_demo_data(args.n_train, args.n_test)
    print(f"{name}: {len(x_train)} training and {len(x_test)} test images, {len(classes)} "
          f"classes, embedded at {args.input_size} px")

    def test_score(embedder: ImageEmbedder) -> tuple[float, float]:
        train, test = embedder.fit_transform(x_train), embedder.transform(x_test)
        best = tune_heads(train, y_train, test=(test, y_test), heads=["logreg"], cv=args.cv).best
        return best.cv_mean, float(best.test_score)

    rows: dict[int, tuple[str, str, float, float, float]] = {}

    def done(k: int, row: tuple[str, str, float, float, float]) -> None:
        rows[k] = row
        print(f"  -> {row[0]}: cv {row[2]:.3f}, test {row[3]:.3f}, {row[4]:.0f} s", flush=True)

    # 2. Several depths in one pass; the best by cross-validation, then its test score.
    started = time.perf_counter()
    embedder = ImageEmbedder("mobilenet", input_size=args.input_size, cache=out / "probe.h5")
    probe = probe_layers(x_train, y_train, embedder=embedder, layers=PROBED, heads=["logreg"],
                         cv=args.cv)
    best = probe.best_layer
    print("  " + probe.decision().replace("\n", "\n  "))
    cv, test = test_score(probe.embedder())
    done(2, ("best probed layer", best.name, cv, test, time.perf_counter() - started))

    # 3. Fine-tune the blocks beneath the best cut, then embed from the new file.
    started = time.perf_counter()
    tuned = fine_tune(
        x_train, y_train, out=out / "tuned.keras", embedder=probe.embedder(),  # the best cut
        top_layers=args.top_layers, epochs=args.epochs,
        learning_rate=args.learning_rate, augment=args.augment, head_epochs=head_epochs,
        validation_split=args.validation_split, log=lambda s: print("  " + s, flush=True),
    )
    print(f"  fine-tuning alone: {time.perf_counter() - started:.0f} s", flush=True)
    cv, test = test_score(ImageEmbedder(tuned))
    done(3, (f"fine-tuned top {args.top_layers} layers", f"{best.name}, fine-tuned", cv, test,
             time.perf_counter() - started))

    # 1. The frozen default cut, on its own (no cache shared with the probe).
    started = time.perf_counter()
    cv, test = test_score(ImageEmbedder("mobilenet", input_size=args.input_size))
    done(1, ("frozen default cut", "conv_pw_13_relu", cv, test, time.perf_counter() - started))

    lines = [f"| strategy ({name}, {len(x_train)} training images) | features | cv accuracy "
             "| test accuracy | seconds |", "|---|---|---:|---:|---:|"]
    lines += [f"| {s} | {f} | {c:.3f} | {t:.3f} | {sec:.0f} |"
              for s, f, c, t, sec in (rows[1], rows[2], rows[3])]
    print("\n" + "\n".join(lines))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    gain = rows[3][3] - max(rows[1][3], rows[2][3])
    print(f"\nfine-tuned minus the best frozen strategy (test accuracy): {gain * 100:+.1f} points")
    print(f"wrote {out / 'tuned.keras'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
