"""Tuning heads on embeddings: :func:`tune_heads` and reading embeddings from a cache.

:func:`tune_heads` tunes any set of heads (the presets of :mod:`featx.heads`, or your own)
on the same embeddings with the same stratified folds and returns a :class:`~featx.Leaderboard`.

The expensive part, embedding, happens once, before tuning; nothing in this module builds a
network or embeds an image. Embeddings come in as arrays, or as an embedding cache file plus the
images they belong to (looked up by content, see :func:`cached_embeddings`).

Search strategy. :func:`tune_heads` runs an exhaustive ``GridSearchCV`` by default: the preset
grids are small (3 to 8 candidates) and the embeddings are already computed, so an exhaustive
search costs seconds to a minute and gives every candidate the same folds, which makes the
leaderboard's numbers directly comparable. ``search="halving"`` uses successive halving
(``HalvingGridSearchCV``, factor 3) instead; it pays off for large grids (dozens of candidates)
on many samples with heads whose fit time grows faster than the sample count (RBF SVM, MLP,
gradient boosting), because most candidates are only fitted on a fraction of the data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from featx.embed.lookup import cached_embeddings, image_keys, require_keys
from featx.exceptions import FeatxError
from featx.heads.at_scale import (
    EXACT_ROWS,
    ScaleData,
    arrays_at_scale,
    cache_at_scale,
    test_split,
    tune_at_scale,
)
from featx.heads.dedupe import (
    GROUP_MIN_COSINE,
    MIN_WIDTH,
    Dedupe,
    duplicate_rows,
    grouped_folds,
    leak_note,
    leaked_test_rows,
)
from featx.heads.leaderboard import Leaderboard
from featx.heads.presets import DEFAULT_HEADS, SCALABLE_HEADS, HeadPreset, _preset, list_heads
from featx.heads.rows import DEFAULT_BLOCK_ROWS
from featx.heads.search import (
    TuningData,
    best_predictions,
    candidates,
    make_plan,
    result_line,
    score_rows,
    tune_head,
)

__all__ = ["tune_heads", "cached_embeddings", "image_keys", "test_split", "EXACT_ROWS"]


def _resolve_heads(heads: Any) -> list[tuple[str, Any, dict[str, list[Any]]]]:
    """Names, presets or (name, estimator, grid) triples -> (name, estimator, grid)."""
    if heads is None:
        heads = DEFAULT_HEADS
    if isinstance(heads, str):
        heads = [heads]
    out = []
    for h in heads:
        if isinstance(h, str):
            preset = _preset(h)
            out.append((preset.name, preset, dict(preset.grid)))
        elif isinstance(h, HeadPreset):
            out.append((h.name, h, dict(h.grid)))
        elif isinstance(h, tuple) and len(h) == 3 and isinstance(h[0], str):
            out.append((h[0], h[1], dict(h[2])))
        else:
            raise FeatxError(
                f"head {h!r} is not understood. Expected a preset name ({', '.join(list_heads())})"
                ", a HeadPreset, or a (name, estimator, param_grid) tuple."
            )
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names) or not names:
        raise FeatxError(f"expected one or more heads with distinct names; got {names}.")
    return out


def _as_matrix(X: Any, images: Any, group: str | None, what: str) -> np.ndarray:
    if isinstance(X, (str, os.PathLike)):
        if images is None:
            raise FeatxError(
                f"{what} is a cache file ({str(X)!r}); pass images= (the images whose "
                "embeddings to read, in the order of the labels)."
            )
        return cached_embeddings(X, images, group=group)
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise FeatxError(
            f"{what} must be a 2-D numeric array of embeddings (n_samples, width) or a cache "
            f"file; got {arr.dtype} of shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise FeatxError(
            f"{what} has {bad} rows with NaN or infinite values (images that failed to embed "
            "with on_error='nan'?); leave them out before tuning."
        )
    return arr


def tune_heads(
    X: Any,
    y: Any,
    *,
    heads: Any = None,
    cv: int = 5,
    test_size: float | None = None,
    test: tuple[Any, Any] | None = None,
    images: Any = None,
    test_images: Any = None,
    group: str | None = None,
    scoring: str = "accuracy",
    search: str = "grid",
    grids: Mapping[str, Mapping[str, list[Any]]] | None = None,
    random_state: int = 0,
    n_jobs: int | None = None,
    log: Callable[[str], None] | None = None,
    target: Any = None,
    target_images: Any = None,
    adapt: str = "coral",
    adapt_grid: Mapping[str, list[Any]] | None = None,
    backend: str | None = None,
    budget: float | None = None,
    exact_rows: int | None = None,
    progress: bool | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    dedupe: bool = True,
    dedupe_threshold: float | None = None,
    groups: Any = None,
) -> Leaderboard:
    """Tune several heads on the same embeddings and rank them.

    Every head is searched over its grid with the same stratified ``cv`` folds, refitted on
    all the training data with its best parameters, and (when a test set is given) scored on
    it. Nothing is embedded here.

    Parameters
    ----------
    X : array of shape (n_samples, width), or a cache file path
        The embeddings; a cache file needs ``images``.
    y : array-like of shape (n_samples,)
        Class labels (ints or strings; strings make the saved model predict names).
    heads : sequence of str, HeadPreset or (name, estimator, grid), default=None
        Which heads; ``None``: :data:`DEFAULT_HEADS`.
    cv : int, default=5
        Stratified folds (shuffled with ``random_state``).
    test_size : float or None, default=None
        Hold out this fraction of ``X`` (stratified) as the test set.
    test : (X_test, y_test) or None, default=None
        An explicit test set instead (``X_test`` a cache file needs ``test_images``).
    images, test_images : sequence, optional
        The images whose embeddings to read when ``X`` / ``X_test`` is a cache file.
    group : str or None
        The cache group (see :func:`cached_embeddings`).
    scoring : str, default="accuracy"
        A scikit-learn scorer name the search maximises.
    search : {"grid", "halving"}, default="grid"
        Exhaustive ``GridSearchCV``, or successive halving (see the module docstring).
    grids : mapping of head name -> grid, optional
        Grids replacing the presets' for the named heads.
    random_state : int, default=0
        Seeds the split, the folds and the heads.
    n_jobs : int or None, default=None
        Parallel fits in each search (``-1``: all cores).
    log : callable or None
        Called with a line per head as it finishes.
    target : array of shape (n_target, width), or a cache file path, optional
        Unlabelled embeddings of the domain the heads will predict (a cache file needs
        ``target_images``). Every head is then wrapped in a domain adapter (``adapt``), searched
        over its grid and the adapter's, and ranked by reverse validation on the target
        (:class:`featx.adapt.ReverseValidationScorer`): no target label is used, and
        ``scoring`` is not. The metrics are measured on ``test`` (labelled target rows, when you
        have some to report on; they never choose), else they are NaN: the source folds say nothing
        about the target. ``test_size`` is refused (it would test on the source).
    target_images : sequence, optional
        The images whose embeddings to read when ``target`` is a cache file.
    adapt : {"coral", "subspace"}, default="coral"
        The adapter (:class:`featx.adapt.CORAL` or
        :class:`featx.adapt.SubspaceAlignment`).
    adapt_grid : dict, optional
        The adapter's grid, replacing its default (:data:`featx.adapt.ADAPTERS`).
    backend : {None, "ray"}, default=None
        Where the searches' fits run: in this process (``n_jobs`` of them at once), or on a Ray
        cluster (``RAY_ADDRESS``, a connection already open, or a local one started for the
        call) through Ray's joblib backend, ``n_jobs=None`` then meaning every CPU of the
        cluster. The embeddings go into Ray's object store once, not once per fit.
        Needs ``pip install 'featx[ray]'``.
    budget : float or None, default=None
        Seconds the whole tuning may take, honoured above ``exact_rows``: shared out among
        the heads still to run and their candidates; a streaming fit stops at the first block
        past its share (keeping its best epoch) and what had no time left is skipped with a
        note on the leaderboard. ``None``: no limit.
    exact_rows : int or None, default=None
        The protocol rule. Up to this many training rows (``None``: :data:`EXACT_ROWS`,
        20,000) every head runs the exact cross-validated grid in memory. Above it, the holdout
        protocol (:mod:`featx.heads.at_scale`): rows stay in the cache (read by blocks) or in
        the array, one stratified validation block ranks candidates and heads, heads that
        stream train on every row and the others on a seeded sample of their preset's
        ``max_rows``, and ``heads=None`` means :data:`SCALABLE_HEADS`. Each leaderboard row
        says which protocol ran, on how many rows and why.
    progress : bool or None, default=None
        A progress bar per head above ``exact_rows`` (``None``: when on a terminal).
    block_rows : int, default=8192
        Rows per block above ``exact_rows``: memory holds about one block (32 MB at width
        1,024) besides the 48 bytes a row of the labelled keys' index.
    dedupe : bool, default=True
        Honest scores (:mod:`featx.heads.dedupe`): near-duplicate training images
        (:func:`featx.audit.find_duplicates`) are kept inside one fold and, with
        ``test_size``, on one side of the split; the test images with a near-duplicate in
        training are counted and every head is also scored without them
        (``HeadResult.n_test_leaked``, ``test_score_leak_free``, the ``leak-free`` column).
        Above ``exact_rows``: leaks of a seeded sample of the test rows only. Data without
        duplicates gets the folds and split of ``dedupe=False``. Not with ``target``.
    dedupe_threshold : float or None, default=None
        The near-duplicate threshold (:data:`featx.audit.DEFAULT_THRESHOLD`).
    groups : array-like of shape (n_samples,), optional
        Duplicate groups of the rows of ``X`` already known (a group id per row, as
        :func:`featx.audit.duplicate_groups` gives): used instead of searching.

    Returns
    -------
    Leaderboard

    Examples
    --------
    >>> import numpy as np
    >>> from featx import tune_heads
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 40)
    >>> X = rng.normal(size=(80, 5)) + y[:, None]
    >>> board = tune_heads(X, y, heads=["logreg", "knn"], cv=3, test_size=0.25)
    >>> [r.head for r in board][0] in ("logreg", "knn"), board.n_train, board.n_test
    (True, 60, 20)
    >>> board.best.roc_auc > 0.8
    True
    """
    say = log or (lambda line: None)
    _check_options(search=search, backend=backend, cv=cv, test=test, test_size=test_size)
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise FeatxError(f"budget={budget!r} is not valid; expected seconds > 0, or None.")
    limit = EXACT_ROWS if exact_rows is None else int(exact_rows)
    n_rows = _n_rows(X, images)
    if target is None and n_rows * (1 - (test_size or 0)) > limit:
        if backend is not None:
            raise FeatxError(
                f"backend={backend!r} applies to the exact protocol (at most {limit:,} training "
                f"rows); {n_rows:,} rows are tuned by the holdout protocol in this process. "
                "Train one head on Ray with featx.heads.on_ray.fit_on_ray."
            )
        resolved = _heads_to_tune(SCALABLE_HEADS if heads is None else heads, grids)
        big = _scale_data(X, y, images, test, test_images, test_size, group, random_state,
                          block_rows)
        say(f"{big.n_train:,} training rows are more than {limit:,}: the holdout protocol "
            f"({big.fit.n_rows:,} rows to train on, a validation block of "
            f"{big.valid.n_rows:,}" + (f", {big.test.n_rows:,} test rows" if big.test
                                        else "") + ")")
        return tune_at_scale(resolved, big, scoring=scoring, budget=budget,
                             random_state=random_state, n_jobs=n_jobs, log=say,
                             progress=progress, dedupe=dedupe,
                             dedupe_threshold=dedupe_threshold)
    resolved = _heads_to_tune(heads, grids)
    X_all = _as_matrix(X, images, group, "X")
    X_target = _target_matrix(target, target_images, group, test_size, X_all.shape[1], adapt)
    found = _duplicates(X_all, dedupe and X_target is None, dedupe_threshold, groups)
    data = _train_and_test(X_all, y, test, test_images, test_size, group, random_state, X_target,
                           None if found is None else found.groups)
    classes = _classes(data.y_train, cv)
    folds = None
    if data.groups is not None and len(np.unique(data.groups)) < len(data.groups):
        folds = grouped_folds(data.y_train, data.groups, cv, random_state)
    plan = make_plan(data, len(classes) == 2, cv, scoring, search, n_jobs, random_state, folds)
    if X_target is not None:
        say(f"adapting every head to {len(X_target)} unlabelled target rows ({adapt}); ranked "
            "by reverse validation on the target: no target label is used")
    with _parallel(backend) as share:  # the fits run here, or on a Ray cluster
        X_fit = share(data.X_train)  # on Ray: in the object store once, not once per fit
        results = []
        for name, head, default_grid in resolved:
            estimator, grid = candidates(
                head, dict((grids or {}).get(name, default_grid)), plan, X_target, adapt,
                adapt_grid,
            )
            result = tune_head(name, estimator, grid, X_fit, data, plan, adapt)
            results.append(result)
            say(result_line(result, plan.scoring))
        results.sort(key=lambda r: -r.cv_mean)  # stable: ties keep the order the heads were given
        y_true, y_pred = best_predictions(results[0], X_fit, data, plan)
    for r in results:
        r.protocol, r.n_fit = f"{int(cv)}-fold cv", len(data.y_train)
        r.why = f"{len(data.y_train):,} training rows, at most {limit:,}: the exact grid"
    notes = [] if found is None else _leak_free(results, data, found, plan.scoring,
                                                grouped=folds is not None)
    return Leaderboard(
        results=results, scoring=plan.scoring, classes=classes, n_train=len(data.y_train),
        n_test=0 if data.y_test is None else len(data.y_test), cv=int(cv),
        y_true=np.asarray(y_true), y_pred=np.asarray(y_pred), notes=notes,
    )


def _duplicates(X: np.ndarray, dedupe: bool, threshold: float | None,
                groups: Any) -> Dedupe | None:
    """The duplicate groups of the rows tuned on: given, searched, or none (``dedupe=False``)."""
    if not dedupe or (groups is None and X.shape[1] < MIN_WIDTH):
        return None  # narrow rows: the threshold is calibrated on network embeddings
    if groups is None:
        return duplicate_rows(X, threshold)
    from featx.audit.duplicates import DEFAULT_THRESHOLD

    ids = np.asarray(groups)
    if ids.shape != (len(X),):
        raise FeatxError(f"groups must hold one group id per row of X ({len(X)}); got shape "
                         f"{ids.shape}.")
    return Dedupe(ids, -1, DEFAULT_THRESHOLD if threshold is None else float(threshold))


def _leak_free(results: list[Any], data: TuningData, found: Dedupe, scoring: str,
               grouped: bool) -> list[str]:
    """Count the test rows with a near-duplicate in training, score every head without them;
    the leaderboard's notes about both."""
    notes = []
    if not grouped and data.groups is not None and len(np.unique(data.groups)) < len(data.groups):
        notes.append(
            f"dedupe: the training images' duplicate groups (the largest of "
            f"{int(np.bincount(np.unique(data.groups, return_inverse=True)[1]).max()):,}) cannot "
            "be split into folds that each hold every class; plain stratified folds")
    elif not found.trivial and data.groups is not None:
        pairs = f"{found.n_pairs:,} near-duplicate pairs join " if found.n_pairs >= 0 else ""
        notes.append(
            f"dedupe: {pairs}{found.n_grouped:,} images into groups, each kept inside one fold"
            + (" and on one side of the test split" if len(data.groups) < len(found.groups)
               else "") + f" (pair score >= {found.threshold:g}, cosine >= {GROUP_MIN_COSINE:g}; "
            "dedupe=False to opt out)")
    if data.X_test is None or data.y_test is None or data.X_target is not None:
        return notes
    leaked = leaked_test_rows(data.X_train, data.X_test, found.threshold)
    clean = ~leaked
    for r in results:
        r.n_test_leaked = int(leaked.sum())
        r.test_score_leak_free = (
            score_rows(r.estimator, data.X_test[clean], data.y_test[clean], scoring)
            if clean.any() else None)
    notes.append(leak_note(int(leaked.sum()), len(leaked), len(leaked), found.threshold,
                           sampled=False))
    return notes


def _check_options(
    *, search: str, backend: str | None, cv: Any, test: Any, test_size: float | None
) -> None:
    """Refuse option values that no data could make valid."""
    if search not in ("grid", "halving"):
        raise FeatxError(f"search={search!r} is not valid. Expected 'grid' or 'halving'.")
    if backend not in (None, "ray"):
        raise FeatxError(f"backend={backend!r} is not valid. Expected None or 'ray'.")
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise FeatxError(f"cv={cv!r} is not valid; expected an integer of at least 2 folds.")
    if test is not None and test_size:
        raise FeatxError("pass either test=(X_test, y_test) or test_size, not both.")


def _heads_to_tune(
    heads: Any, grids: Mapping[str, Any] | None
) -> list[tuple[str, Any, dict[str, list[Any]]]]:
    """The heads as (name, estimator, grid), every name in ``grids`` among them."""
    resolved = _resolve_heads(heads)
    for name in grids or {}:
        if name not in {n for n, _, _ in resolved}:
            raise FeatxError(f"grids names head {name!r}, which is not among the heads tuned.")
    return resolved


def _train_and_test(
    X_all: np.ndarray,
    y: Any,
    test: tuple[Any, Any] | None,
    test_images: Any,
    test_size: float | None,
    group: str | None,
    random_state: int,
    X_target: np.ndarray | None,
    groups: np.ndarray | None = None,
) -> TuningData:
    """The training rows and the test set: ``test``, a stratified ``test_size`` split (each
    duplicate group on one side), or none; with the training rows' duplicate groups."""
    y_all = np.asarray(y)
    if y_all.shape != (len(X_all),):
        raise FeatxError(
            f"y must hold one label per row of X ({len(X_all)}); got shape {y_all.shape}."
        )
    if test is not None:
        X_test = _as_matrix(test[0], test_images, group, "X_test")
        y_test = np.asarray(test[1])
        if y_test.shape != (len(X_test),) or X_test.shape[1] != X_all.shape[1]:
            raise FeatxError(
                f"the test set has {X_test.shape} embeddings and {y_test.shape} labels; expected "
                f"one label per row and width {X_all.shape[1]} like X."
            )
        return TuningData(X_all, y_all, X_test, y_test, X_target, groups)
    if test_size:
        if not 0 < test_size < 1:
            raise FeatxError(f"test_size={test_size!r} is not valid; expected 0 < test_size < 1.")
        fit_rows, test_rows = test_split(y_all, test_size, random_state, groups)
        return TuningData(X_all[fit_rows], y_all[fit_rows], X_all[test_rows], y_all[test_rows],
                          X_target, None if groups is None else groups[fit_rows])
    return TuningData(X_all, y_all, None, None, X_target, groups)


def _classes(y_train: np.ndarray, cv: int) -> np.ndarray:
    """The training classes, each with at least ``cv`` samples."""
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise FeatxError(f"expected at least 2 classes to tell apart; got {classes.tolist()}.")
    if counts.min() < cv:
        rare = classes[int(np.argmin(counts))].item()
        raise FeatxError(
            f"class {rare!r} has {int(counts.min())} training samples, fewer than the cv={cv} "
            "folds; pass a smaller cv or give it more samples."
        )
    return classes


@contextlib.contextmanager
def _parallel(backend: str | None) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """Where the fits run; yields how to hand them the training rows."""
    if backend is None:
        yield lambda X: X
        return
    from featx.distributed.cluster import ray_joblib

    with ray_joblib() as share:
        yield share


def _target_matrix(
    target: Any, images: Any, group: str | None, test_size: float | None, width: int, adapt: str
) -> np.ndarray | None:
    """The unlabelled target embeddings, checked against the source's width."""
    if target is None:
        return None
    from featx.adapt.adapters import ADAPTERS

    if adapt not in ADAPTERS:
        raise FeatxError(f"adapt={adapt!r} is not known; expected one of "
                         f"{', '.join(sorted(ADAPTERS))}.")
    if test_size:
        raise FeatxError(
            "test_size holds out source rows, which say nothing about heads adapted to a "
            "target; with target=, pass test=(X_target_labelled, y) to report on labelled "
            "target rows (they never choose), or no test set."
        )
    Xt = _as_matrix(target, images, group, "target")
    if Xt.shape[1] != width:
        raise FeatxError(
            f"target has {Xt.shape[1]} features per row, but X has {width}; expected embeddings "
            "of the same width (the same backbone, layer and pooling)."
        )
    if len(Xt) < 2:
        raise FeatxError(f"target has {len(Xt)} row; adapting needs at least 2 target rows.")
    return Xt


def _n_rows(X: Any, images: Any) -> int:
    """How many labelled rows ``X`` stands for, without reading them."""
    if isinstance(X, (str, os.PathLike)):
        return 0 if images is None else len(images)
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(X)


def _scale_data(
    X: Any, y: Any, images: Any, test: tuple[Any, Any] | None, test_images: Any,
    test_size: float | None, group: str | None, random_state: int, block_rows: int,
) -> ScaleData:
    """The rows of the holdout protocol: in the array given, or in the cache, by content key."""
    y_all = np.asarray(y)
    if y_all.shape != (_n_rows(X, images),):
        raise FeatxError(
            f"y must hold one label per row of X ({_n_rows(X, images)}); got shape "
            f"{y_all.shape}."
        )
    if test_size and not 0 < test_size < 1:
        raise FeatxError(f"test_size={test_size!r} is not valid; expected 0 < test_size < 1.")
    if not isinstance(X, (str, os.PathLike)):
        X_all = _as_matrix(X, None, group, "X")
        tested = None
        if test is not None:
            X_test = _as_matrix(test[0], test_images, group, "X_test")
            tested = (X_test, np.asarray(test[1]))
        _classes(y_all, 2)
        return arrays_at_scale(X_all, y_all, tested, test_size, random_state, block_rows)
    from featx.cache.groups import choose_group
    from featx.cache.store import open_cache

    store = open_cache(X)
    chosen = choose_group(store, group, offer_backbone=False)
    keys = image_keys(images)
    require_keys(store, chosen.fingerprint, keys, X, chosen.label)
    test_keys = y_test = None
    if test is not None:
        if not isinstance(test[0], (str, os.PathLike)) or test_images is None:
            raise FeatxError(
                "above exact_rows with X a cache file, test= must be (the same cache file, "
                "y_test) with test_images= (the test images, read by content)."
            )
        test_keys, y_test = image_keys(test_images), np.asarray(test[1])
        if y_test.shape != (len(test_keys),):
            raise FeatxError(f"expected one test label per test image ({len(test_keys)}); got "
                             f"shape {y_test.shape}.")
        require_keys(store, chosen.fingerprint, test_keys, X, chosen.label)
    _classes(y_all, 2)
    return cache_at_scale(store, chosen.fingerprint, keys, y_all, test_keys, y_test, test_size,
                          random_state, block_rows)
