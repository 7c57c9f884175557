"""``featx probe``: which layer of a backbone transfers best, from the command line.

A thin layer over :func:`featx.probe_layers`: it lists the labelled images, probes the layers,
prints the layers x heads table and the decision, and writes to ``--out`` the CSV
(``probe.csv``), the score-by-depth plot (``depth.png``), the best (layer, head) as
``model.featx`` for ``featx predict``, and ``report.html``.
"""

from __future__ import annotations

import argparse
from typing import Any

from featx.cli.args import (
    add_command,
    add_heads_flags,
    add_label_column,
    add_labelled_source,
    add_search_flags,
    add_test_flags,
    embedder_flags,
    embedder_from_args,
    reason,
    say_for,
    test_size_of,
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
    probe = add_command(
        commands, "probe", run_probe, [flags, embedder_flags(without=("layer",))],
        help="which layer transfers best: tune heads on several depths of one backbone",
        description="Embed labelled images once through a network that returns several cut "
        "layers (each cached where `featx embed --layer L` would put it), tune the heads on every "
        "layer with the same folds and test split, and rank the (layer, head) pairs. Prints the "
        "table and which depth won, by how much over the default cut, with what fold spread; "
        "writes to --out probe.csv, depth.png (score against depth per head), the best "
        "(layer, head) as model.featx (for featx predict) and report.html.",
    )
    add_labelled_source(probe)
    probe.add_argument("--layers", type=_layers, default="auto", metavar="auto|L1,L2",
                       help="'auto' (default: 5-8 block outputs from early layers to the default "
                       "cut, registry backbones) or comma-separated layer names or indices; "
                       "'default' names the default cut")
    add_heads_flags(probe)
    add_test_flags(probe)
    probe.add_argument("--out", default="featx-probe", metavar="DIR",
                       help="where probe.csv, depth.png, model.featx and report.html go "
                       "(default featx-probe)")
    add_search_flags(probe)
    add_label_column(probe)


def run_probe(args: argparse.Namespace) -> int:
    """Run ``featx probe`` with parsed arguments; return the exit code."""
    import warnings

    import numpy as np

    from featx.model import FeatxModel
    from featx.report.outputs import write_outputs
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
            list(listed[fit_rows]), y[fit_rows], embedder=embedder_from_args(args, on_error="skip"),
            test=test, layers=args.layers, heads=args.heads, cv=args.cv, scoring=args.scoring,
            search=args.search, random_state=args.random_state, n_jobs=args.n_jobs, log=say,
        )
    for e in probe.errors:
        print(f"  {e.source}: {reason(e)} (left out)")
    print(probe.to_text())
    print(probe.decision())
    best, layer = probe.best, probe.best_layer
    embedder = probe.embedder()
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
    model = FeatxModel.portable(
        embedder, best.estimator,
        info={"source": str(args.src), "head": best.head, "layer": layer.name,
              "cv_score": best.cv_mean, "test_score": best.test_score,
              "scoring": probe.scoring, "n_train": probe.n_train, "n_test": probe.n_test},
    )
    written = write_outputs(
        args.out, probe, model, csv_name="probe.csv",
        plot=lambda out: plot_depth(probe, out / "depth.png", title=f"{args.backbone}: score by "
                                    f"depth ({probe.n_train} training images)"),
        confusion=f"{best.head} at {layer.name}:", report_title=f"featx probe: {args.src}",
        embeddings=rows, labels=y_kept, tested=[str(p) for p in evaluated],
        random_state=args.random_state,
        notes=[f"Backbone: {args.backbone}, layers probed: "
               f"{', '.join(p.name for p in probe.layers)}.", *probe.decision().splitlines()],
    )
    say("wrote " + ", ".join(str(p) for p in written))
    return 0
