"""``featx probe``: which layer of a backbone transfers best, from the command line.

A thin layer over :func:`featx.probe_layers`: it lists the labelled images, probes the layers,
prints the layers x heads table and the decision, and writes to ``--out`` the CSV
(``probe.csv``), the score-by-depth plot (``depth.png``), the best (layer, head) as
``model.featx`` for ``featx predict``, and ``report.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from featx.cli.args import (
    add_command,
    add_heads_flags,
    add_label_column,
    add_labelled_source,
    add_path_column,
    add_search_flags,
    add_test_flags,
    input_size,
    positive_int,
    progress,
    reason,
    say_for,
    test_size_of,
    weights,
)
from featx.cli.heads import held_out
from featx.cli.sources import labelled_source
from featx.exceptions import FeatxError


def _layers(text: str) -> Any:
    """``auto`` or comma-separated layer names or indices (``default``: the default cut)."""
    if text.strip() == "auto":
        return "auto"
    out: list[str | int | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise argparse.ArgumentTypeError(
                f"expected 'auto' or comma-separated layer names; got {text!r}")
        if part == "default":
            out.append(None)
            continue
        try:
            out.append(int(part))
        except ValueError:
            out.append(part)
    return out


def add_probe_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx probe`` to the ``featx`` sub-commands."""
    from featx.nets.backbones import ENGINES, POOLINGS, PRECISIONS
    from featx.transfer.probe import MAX_FLATTEN_WIDTH

    probe = add_command(
        commands, "probe", run_probe, [flags],
        help="which layer transfers best: tune heads on several depths of one backbone",
        description="Embed labelled images once through a network that returns several cut "
        "layers (each cached where `featx embed --layer L` would put it), tune the heads on every "
        "layer with the same folds and test split, and rank the (layer, head) pairs. Prints the "
        "table and which depth won, by how much over the default cut, with what fold spread; "
        "writes to --out probe.csv, depth.png (score against depth per head), the best "
        "(layer, head) as model.featx (for featx predict) and report.html.",
    )
    add_labelled_source(probe)
    probe.add_argument("--backbone", required=True, metavar="NAME",
                       help="a registry name (mobilenet, resnet50, ...) or a .keras/.h5 model file")
    probe.add_argument("--cache", required=True, metavar="FILE", help="the HDF5 cache file")
    probe.add_argument("--layers", type=_layers, default="auto", metavar="auto|L1,L2",
                       help="'auto' (default: 5-8 block outputs from early layers to the default "
                       "cut, registry backbones) or comma-separated layer names or indices; "
                       "'default' names the default cut")
    add_heads_flags(probe)
    add_test_flags(probe)
    probe.add_argument("--out", default="featx-probe", metavar="DIR",
                       help="where probe.csv, depth.png, model.featx and report.html go "
                       "(default featx-probe)")
    probe.add_argument("--weights", type=weights, default="imagenet", metavar="W",
                       help="'imagenet' (default), 'none' for random weights, or a weights file")
    probe.add_argument("--input-size", type=input_size, metavar="N",
                       help="resize images to N x N (or HxW) pixels; default: the backbone's")
    probe.add_argument("--pooling", choices=[p for p in POOLINGS if p != "none"], default="auto",
                       help="how each layer's feature map becomes a vector (default auto: avg, or "
                       "a Keras Hub encoder's class token; "
                       f"flatten is refused above {MAX_FLATTEN_WIDTH:,} features)")
    probe.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                       help="images per network call (default 32)")
    probe.add_argument("--engine", choices=ENGINES, default="auto",
                       help="what runs the network (default auto: OpenVINO on a CPU under "
                       "TensorFlow, else Keras)")
    probe.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="float32 (default) or mixed_bfloat16 (bfloat16 inference)")
    probe.add_argument("--n-workers", type=positive_int, metavar="N",
                       help="threads decoding images (default: one per core, up to 16)")
    add_search_flags(probe)
    add_path_column(probe)
    add_label_column(probe)


def run_probe(args: argparse.Namespace) -> int:
    """Run ``featx probe`` with parsed arguments; return the exit code."""
    import warnings

    import numpy as np

    from featx.model import FeatxModel
    from featx.report.plots import plot_depth
    from featx.transfer.probe import probe_layers

    say = say_for(args)
    paths, y = labelled_source(args.src, args.path_column, args.label_column)
    y = np.asarray(y)
    test_size = test_size_of(args)
    n_layers = "auto" if args.layers == "auto" else len(args.layers)
    say(f"{len(paths)} images in {len(np.unique(y))} classes from {args.src}; probing "
        f"{n_layers} layers of {args.backbone} with {len(args.heads)} heads, {args.cv}-fold "
        "cross-validation" + (f", {test_size:.0%} held out" if test_size else "")
        + (f", tested on {args.test}" if args.test else ""))
    # The test images are chosen here and passed as test=, so the report knows which they are.
    if args.test is not None:  # listed after the training images
        test_paths, test_y = labelled_source(args.test, args.path_column, args.label_column)
        listed, y = np.asarray([*paths, *test_paths], dtype=object), np.concatenate([y, test_y])
        fit_rows, test_rows = np.arange(len(paths)), np.arange(len(paths), len(listed))
    else:
        listed = np.asarray(paths, dtype=object)
        fit_rows, test_rows = held_out(y, test_size, args.random_state)
    test = (list(listed[test_rows]), y[test_rows]) if args.test or test_size else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
        probe = probe_layers(
            list(listed[fit_rows]), y[fit_rows], test=test, backbone=args.backbone,
            layers=args.layers, heads=args.heads, cache=args.cache, cv=args.cv,
            pooling=args.pooling, weights=args.weights, input_size=args.input_size,
            batch_size=args.batch_size, engine=args.engine, precision=args.precision,
            n_workers=args.n_workers, scoring=args.scoring, search=args.search,
            random_state=args.random_state, n_jobs=args.n_jobs, on_error="skip",
            verbose=progress(args), log=say,
        )
    for e in probe.errors:
        print(f"  {e.source}: {reason(e)} (left out)")
    print(probe.to_text())
    print(probe.decision())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best, layer = probe.best, probe.best_layer
    written = [
        probe.to_csv(out / "probe.csv"),
        plot_depth(probe, out / "depth.png",
                   title=f"{args.backbone}: score by depth ({probe.n_train} training images)"),
    ]
    embedder = probe.embedder(cache=args.cache)
    kept = np.delete(listed[fit_rows], probe.dropped)
    y_kept = np.delete(y[fit_rows], probe.dropped)
    evaluated = kept
    if test is not None:
        evaluated = np.delete(listed[test_rows], probe.test_dropped)
        kept = np.concatenate([kept, evaluated])
        y_kept = np.concatenate([y_kept, np.delete(y[test_rows], probe.test_dropped)])
    rows = embedder.transform(list(kept))  # the best layer's rows: all from the probe's cache
    if embedder.report_.n_embedded:
        raise FeatxError(  # pragma: no cover - the probe cached every row it tuned on
            f"the best layer's embeddings were not all in the cache {args.cache}"
        )
    model = FeatxModel(
        embedder.set_params(cache=None, verbose=False, on_error="raise"), best.estimator,
        info={"source": str(args.src), "head": best.head, "layer": layer.name,
              "cv_score": best.cv_mean, "test_score": best.test_score,
              "scoring": probe.scoring, "n_train": probe.n_train, "n_test": probe.n_test},
    )
    written.append(model.save(out / "model.featx"))
    written.append(_report(out, probe, rows, y_kept, evaluated, args, written[1]))
    say("wrote " + ", ".join(str(p) for p in written))
    return 0


def _report(out: Path, probe: Any, rows: Any, y: Any, evaluated: Any,
            args: argparse.Namespace, depth_png: Path) -> Path:
    """report.html (featx.report) for the best (layer, head), with the depth plot."""
    import numpy as np

    from featx.report.page import write_report
    from featx.report.plots import plot_confusion_matrix

    best = probe.best
    confusion = plot_confusion_matrix(
        probe.y_true, probe.y_pred, out / "confusion_matrix.png",
        title=f"{best.head} at {best.extra['layer']}: accuracy "
        f"{np.mean(probe.y_true == probe.y_pred):.1%}")
    return write_report(
        out / "report.html", probe, embeddings=rows, labels=y,
        eval_sources=[str(p) for p in evaluated], plots=[depth_png, confusion],
        title=f"featx probe: {args.src}", random_state=args.random_state,
        notes=[f"Backbone: {args.backbone}, layers probed: "
               f"{', '.join(p.name for p in probe.layers)}.", *probe.decision().splitlines()],
    )
