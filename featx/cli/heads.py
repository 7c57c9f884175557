"""``featx heads``: tune classifier heads on labelled images' embeddings, from the command line.

A thin layer over :func:`featx.tune_heads`: it lists the labelled images, embeds them through the
cache (the backbone options default to the cache's own group), tunes the heads (on Ray with
``--ray``; adapted to an unlabelled target domain with ``--target``), prints the leaderboard and
writes to ``--out`` the leaderboard (CSV and PNG), the confusion matrix, ``model.featx`` and
``report.html``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
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
    progress,
    ray_flags,
    reason,
    say_for,
    test_size_of,
)
from featx.cli.embed import embed_on_ray, ray_options_need_ray
from featx.cli.sources import (
    add_source_flags,
    labelled_source,
    list_source,
    source_names,
    source_options,
)
from featx.exceptions import FeatxError
from featx.heads.presets import DEFAULT_HEADS


def add_heads_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx heads`` to the ``featx`` sub-commands."""

    heads = add_command(
        commands, "heads", cmd_heads,
        [flags, embedder_flags(from_cache=True), ray_flags()],
        help="tune classifier heads on labelled images' embeddings; plots and a saved model",
        description="Tune classifier heads (grid search, stratified cross-validation) on the "
        "embeddings of labelled images and rank them. The embeddings come through the cache: "
        "after `featx embed SRC` none is computed again, and without --backbone the backbone "
        "options are the ones the cache's embeddings were made with. "
        "Prints the leaderboard and writes to --out the leaderboard (CSV and PNG), the best "
        "head's confusion matrix (PNG), the best head with the embedder's configuration "
        "as model.featx (for featx predict), and report.html: one self-contained page with "
        "the leaderboard, the plots, per-class precision and recall, a t-SNE map of the "
        "embeddings and the images the best head got wrong.",
    )
    add_labelled_source(heads)
    add_source_flags(heads)
    add_heads_flags(heads)
    add_test_flags(heads)
    heads.add_argument("--out", default="featx-heads", metavar="DIR",
                       help="where the plots, the CSV, model.featx and report.html go (default "
                       "featx-heads)")
    add_search_flags(heads)
    add_label_column(heads)
    heads.add_argument("--target", metavar="DIR",
                       help="adapt the heads to these images' domain (a folder or CSV; "
                       "unlabelled, or one sub-folder per class to report on, never to choose): "
                       "heads are ranked by reverse validation on the target, and --test-size, "
                       "--test and --scoring do not apply")
    heads.add_argument("--adapt", choices=("coral", "subspace"), default="coral",
                       help="with --target: CORAL or subspace alignment (default coral)")
    heads.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                       help="time the tuning may take above --exact-rows: shared among the "
                       "heads, a streaming fit stops at its share, what had no time left is "
                       "skipped and said (default: no limit)")
    heads.add_argument("--exact-rows", type=int, default=None, metavar="N",
                       help="up to N training rows every head runs the exact cross-validated "
                       "grid in memory; above, the holdout protocol, rows read from the cache "
                       "by blocks, and the default heads are the ones that stream "
                       "(default 20000)")
    heads.add_argument("--no-dedupe", dest="dedupe", action="store_false",
                       help="do not keep near-duplicate images inside one fold and one side of "
                       "the test split, nor count the test images with a near-duplicate in "
                       "training (by default both are done and the leaderboard shows the "
                       "leak-free test score beside the raw one)")
    heads.set_defaults(heads=None)


def cmd_heads(args: argparse.Namespace) -> int:
    ray_options_need_ray(args)
    if not args.ray:
        return _heads(args)
    from featx.distributed.driver import ray_session

    with ray_session(args.ray_address):  # one cluster for the embedding and the tuning
        return _heads(args)


def _heads(args: argparse.Namespace) -> int:
    import numpy as np

    from featx.heads import tune_heads
    from featx.heads.tuning import EXACT_ROWS

    say = say_for(args)
    paths, y = labelled_source(args.src, args.path_column, args.label_column,
                               **source_options(args))
    from_cache = backbone_from_cache(args)
    embedder = embedder_from_args(args, on_error="skip", params=from_cache)
    embedder.fit(paths)  # checks the parameters before any work
    if from_cache is not None:
        say(f"backbone from the cache: {embedder.config_.label}")
    if args.ray:  # the misses are embedded on the cluster; the transform below reads the cache
        on_ray = embed_on_ray(args, paths, embedder)
        say(f"on Ray: {on_ray.n_embedded} embedded, {on_ray.n_hits} already cached, "
            f"{on_ray.n_failed} failed")
    exact_rows = EXACT_ROWS if args.exact_rows is None else args.exact_rows
    if (args.target is None and args.cache is not None
            and len(y) * (1 - (test_size_of(args) or 0)) > exact_rows):
        return _heads_at_scale(args, embedder, paths, y, say)
    X, report = _embed_readable(embedder, paths)
    y = np.delete(y, report.dropped)
    say(f"{report.n_items} images in {len(np.unique(y))} classes from {args.src}: "
        f"{report.n_hits} embeddings from the cache {args.cache}, {report.n_embedded} embedded, "
        f"{report.n_failed} failed (left out)")
    _print_failures(report)
    if args.target is not None:
        if args.test is not None:
            raise FeatxError(
                "--test does not apply with --target: heads adapted to a target are reported on "
                "the target's own labels (give --target one sub-folder per class)."
            )
        return _heads_on_target(args, embedder, X, y)
    kept = np.delete(np.asarray(source_names(paths), dtype=object), report.dropped)
    test_size = test_size_of(args)
    tuning = dict(heads=args.heads, cv=args.cv, search=args.search, scoring=args.scoring,
                  random_state=args.random_state, n_jobs=args.n_jobs, log=say,
                  budget=args.budget, exact_rows=args.exact_rows, dedupe=args.dedupe,
                  **({"backend": "ray"} if args.ray else {}))
    n_heads = len(args.heads or DEFAULT_HEADS)
    # Made here, passed as test=, so that the report knows the images behind board.y_true.
    if args.test is not None:
        X_test, y_test, tested = _test_images(args, embedder, say)
        say(f"tuning {n_heads} heads, {args.cv}-fold stratified cross-validation, "
            f"tested on {len(y_test)} images from {args.test}:")
        board = tune_heads(X, y, test=(X_test, y_test), **tuning)
        X, y = np.concatenate([X, X_test]), np.concatenate([y, y_test])  # the report's map
    else:
        say(f"tuning {n_heads} heads, {args.cv}-fold stratified cross-validation"
            + (f", {test_size:.0%} held out for testing" if test_size else "") + ":")
        groups = duplicate_groups_of(X) if args.dedupe and test_size else None
        fit_rows, evaluated = held_out(y, test_size, args.random_state, groups)
        tested = kept[evaluated]
        if test_size:
            board = tune_heads(X[fit_rows], y[fit_rows], test=(X[evaluated], y[evaluated]),
                               groups=None if groups is None else groups[fit_rows], **tuning)
        else:
            board = tune_heads(X, y, **tuning)
    print(board.to_text())
    _write_outputs(args, board, embedder, X, y, [str(p) for p in tested],
                   [f"Images: {args.src} ({report.n_items} listed, {report.n_failed} "
                    "unreadable)."],
                   say)
    return 0


def _write_outputs(args: argparse.Namespace, board: Any, embedder: Any, X: Any, y: Any,
                   tested: list[str] | None, notes: list[str], say: Any) -> None:
    """``--out``: the leaderboard (CSV, PNG), the confusion matrix, model.featx, report.html."""
    from featx.model import FeatxModel
    from featx.report.outputs import write_outputs
    from featx.report.plots import plot_leaderboard

    best = board.best
    where = (f"{board.n_test} test images" if board.n_test
             else f"{board.n_train} images, out-of-fold predictions" if board.cv
             else f"{len(board.y_true)} validation images")
    model = FeatxModel.portable(
        embedder, best.estimator,
        info={"source": str(args.src), "head": best.head, "cv_score": best.cv_mean,
              "test_score": best.test_score, "scoring": board.scoring,
              "n_train": board.n_train, "n_test": board.n_test},
    )
    written = write_outputs(
        args.out, board, model,
        plot=lambda out: plot_leaderboard(
            board, out / "leaderboard.png",
            title=f"Heads on {embedder.config_.name} features ({board.n_train} training images)"),
        confusion=f"{best.head}: {where},", report_title=f"featx heads: {args.src}",
        embeddings=X, labels=y, tested=tested, random_state=args.random_state,
        notes=[f"Backbone: {embedder.config_.label}.", *notes], log=say,
    )
    say(f"best head: {best.head} ({', '.join(f'{k}={v!r}' for k, v in best.best_params.items())})")
    say("wrote " + ", ".join(str(p) for p in written))


def _heads_at_scale(args: argparse.Namespace, embedder: Any, paths: list[str], y: Any,
                    say: Any) -> int:
    """More training images than ``--exact-rows``: the embeddings stay in the cache.

    The images are embedded into the cache keeping no rows (what is cached is only checked
    for), then :func:`featx.tune_heads` reads the cache group by blocks (the holdout protocol).
    The report's map is drawn from a seeded sample of the rows.
    """
    import numpy as np

    from featx.embed.engine import cache_group
    from featx.heads.tuning import cached_embeddings, tune_heads

    kept, y, report = _cached_readable(embedder, paths, y)
    say(f"{report.n_items:,} images in {len(np.unique(y))} classes from {args.src}: "
        f"{report.n_hits:,} embeddings in the cache {args.cache}, {report.n_embedded:,} "
        f"embedded, {report.n_failed:,} failed (left out)")
    group = cache_group(embedder.backbone_config(), None)
    tuning = dict(heads=args.heads, scoring=args.scoring, random_state=args.random_state,
                  n_jobs=args.n_jobs, log=say, budget=args.budget, exact_rows=args.exact_rows,
                  dedupe=args.dedupe,
                  group=group, progress=progress(args))
    if args.test is not None:
        test_paths, y_test = labelled_source(args.test, args.path_column, args.label_column,
                                             **source_options(args))
        test_kept, y_test, test_report = _cached_readable(embedder, test_paths, y_test)
        say(f"{test_report.n_items:,} test images from {args.test}: {test_report.n_failed:,} "
            "failed (left out)")
        board = tune_heads(args.cache, y, images=kept, test=(args.cache, y_test),
                           test_images=test_kept, **tuning)
    else:
        board = tune_heads(args.cache, y, images=kept, test_size=test_size_of(args), **tuning)
    print(board.to_text())
    sample = np.sort(np.random.default_rng(args.random_state).choice(
        len(kept), min(len(kept), 1500), replace=False))
    X_map = cached_embeddings(args.cache, [kept[i] for i in sample], group=group)
    _write_outputs(args, board, embedder, X_map, y[sample], None,
                   [f"Images: {args.src} ({report.n_items} listed, {report.n_failed} unreadable); "
                    "the map shows a seeded sample of 1,500."], say)
    return 0


def _cached_readable(embedder: Any, paths: Any, y: Any) -> tuple[list[Any], Any, Any]:
    """Embed into the cache keeping no rows; the paths and labels that could be read."""
    import numpy as np

    from featx.embed.item import Item

    report = embedder.embed_to_cache(paths)
    _print_failures(report)
    bad = sorted({f.index for f in report.failures})
    keep = np.ones(len(y), bool)
    keep[bad] = False
    kept = [p.keyed() if isinstance(p, Item) else p  # a shard member's key, not its bytes
            for p, k in zip(paths, keep, strict=True) if k]
    return kept, np.asarray(y)[keep], report


def _test_images(args: argparse.Namespace, embedder: Any, say: Any) -> tuple[Any, Any, Any]:
    """``--test``'s embeddings (through the cache), labels and the paths that could be read."""
    import numpy as np

    paths, y = labelled_source(args.test, args.path_column, args.label_column,
                               **source_options(args))
    X, report = _embed_readable(embedder, paths)
    _print_failures(report)
    say(f"{report.n_items} test images from {args.test}: {report.n_hits} from the cache, "
        f"{report.n_embedded} embedded, {report.n_failed} failed (left out)")
    kept = np.delete(np.asarray(source_names(paths), dtype=object), report.dropped)
    return X, np.delete(y, report.dropped), kept


def _embed_readable(embedder: Any, paths: list[str]) -> tuple[Any, Any]:
    """The rows of the images that could be read (through the cache), and the embedder's
    report of the others (``on_error="skip"``: their positions in ``report.dropped``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
        X = embedder.transform(paths)
    return X, embedder.report_


def _print_failures(report: Any) -> None:
    for e in report.errors:
        print(f"  {e.source}: {reason(e)}")


def held_out(y: Any, test_size: float | None, random_state: int,
             groups: Any = None) -> tuple[Any, Any]:
    """The rows to tune on and the rows to test on: :func:`featx.heads.tuning.test_split`, the
    split ``tune_heads(test_size=...)`` makes (each duplicate group of ``groups`` on one
    side)."""
    from featx.heads.tuning import test_split

    return test_split(y, test_size, random_state, groups)


def duplicate_groups_of(X: Any) -> Any:
    """The near-duplicate groups of the rows of ``X``, as ``tune_heads(dedupe=True)`` finds
    them (:func:`featx.heads.dedupe.duplicate_rows`); ``None`` when no two rows share one."""
    from featx.heads.dedupe import duplicate_rows

    found = duplicate_rows(X)
    return None if found.trivial else found.groups


def backbone_from_cache(args: argparse.Namespace) -> dict[str, Any] | None:
    """Backbone settings from the cache when no ``--backbone`` is given (``None`` when it is).

    With ``--backbone`` the options' defaults apply and ``--group`` is refused; without it the
    cache's one group (or the one ``--group`` names) gives every setting, and options that
    name a cache group are refused (they would be ignored).
    """
    from featx.cache.groups import describe_group, embedder_params_from_cache
    from featx.exceptions import CacheGroupError
    from featx.nets.options import EMBEDDER_OPTIONS

    given = [opt.flag for opt in EMBEDDER_OPTIONS
             if opt.names_group and opt.name != "backbone" and hasattr(args, opt.name)]
    if args.backbone is not None:
        if args.group is not None:
            raise FeatxError(
                "--group and --backbone both choose the embeddings; pass one of them."
            )
        return None
    if given:
        flags = ", ".join(str(flag) for flag in given)
        raise FeatxError(
            f"{flags} describe{'s' if len(given) == 1 else ''} a backbone, but no --backbone was "
            "given. Pass --backbone NAME with them, or leave them out to use the backbone the "
            f"cache {args.cache} was made with."
        )
    try:
        return embedder_params_from_cache(args.cache, group=args.group)
    except CacheGroupError as exc:
        listing = "; ".join(describe_group(g) for g in exc.groups)
        if not exc.groups:
            raise FeatxError(
                f"{exc} Run featx embed SRC --backbone NAME --cache {args.cache} first, or pass "
                "--backbone NAME (and its options) here."
            ) from None
        if exc.prefix is not None:
            n = sum(g.fingerprint.startswith(exc.prefix.strip()) for g in exc.groups)
            raise FeatxError(
                f"--group {exc.prefix!r} matches {n} of the {len(exc.groups)} groups of "
                f"{args.cache}; expected exactly one. Its groups: {listing}."
            ) from None
        raise FeatxError(
            f"cache {args.cache} holds {len(exc.groups)} groups (one per backbone "
            "configuration); choose one with --group PREFIX (the start of its fingerprint, as "
            "featx info shows it) or with the backbone options (--backbone NAME ...). "
            f"Groups: {listing}."
        ) from None


def _heads_on_target(args: argparse.Namespace, embedder: Any, X: Any, y: Any) -> int:
    """``featx heads SRC --target DIR``: heads adapted to the target folder's images.

    A target folder with one sub-folder per class gives labels that only report the test
    columns (they never choose); a flat folder is unlabelled.
    """
    import numpy as np

    from featx.heads.tuning import tune_heads
    from featx.model import FeatxModel
    from featx.report.outputs import write_outputs
    from featx.report.plots import plot_leaderboard

    say = say_for(args)
    folder = Path(args.target)
    labelled = folder.is_dir() and any(p.is_dir() and not p.name.startswith(".")
                                       for p in folder.iterdir())
    if labelled:
        target_paths, target_y = labelled_source(args.target, args.path_column,
                                                  args.label_column)
    else:
        target_paths, target_y = list_source(args.target, args.path_column), None
    X_target, report = _embed_readable(embedder, target_paths)
    if target_y is not None:
        target_y = np.delete(target_y, report.dropped)
    say(f"{len(target_paths)} target images from {args.target}: {report.n_hits} from the cache, "
        f"{report.n_embedded} embedded, {report.n_failed} failed (left out); "
        + ("their labels only report the test columns, never choose" if labelled
           else "unlabelled"))
    _print_failures(report)
    board = tune_heads(
        X, y, heads=args.heads, cv=args.cv, search=args.search, random_state=args.random_state,
        n_jobs=args.n_jobs, log=say, target=X_target, adapt=args.adapt,
        test=None if target_y is None else (X_target, target_y),
    )
    print(board.to_text())
    best = board.best
    model = FeatxModel.portable(
        embedder, best.estimator,
        info={"source": str(args.src), "target": str(args.target), "adapt": args.adapt,
              "head": best.head, "cv_score": best.cv_mean, "test_score": best.test_score,
              "scoring": board.scoring, "n_train": board.n_train, "n_target": len(X_target)},
    )
    written = write_outputs(
        args.out, board, model,
        plot=lambda out: plot_leaderboard(
            board, out / "leaderboard.png", title=f"Heads adapted to {folder.name} "
            f"({args.adapt}), {embedder.config_.name} features"),
        confusion=(f"{best.head} + {args.adapt} on {board.n_test} target images,"
                   if board.n_test else None),
    )
    out = Path(args.out)
    say(f"best head: {best.head} + {args.adapt} "
        f"({', '.join(f'{k}={v!r}' for k, v in best.best_params.items())}); predict the "
        f"target with: featx predict {out / 'model.featx'} {args.target}")
    say("wrote " + ", ".join(str(p) for p in written))
    return 0
