"""Tuning heads on more rows than an exact cross-validated grid can afford: the holdout protocol.

Above :data:`EXACT_ROWS` training rows :func:`featx.tune_heads` stops cross-validating (five
fits per candidate, each on the whole matrix in memory) and runs this instead:

- the labelled rows are split once, stratified and seeded, into the rows heads train on, a
  held-out *validation block* (10% of the training rows, at most :data:`VALID_ROWS`) that ranks
  the candidates and the heads, and the test rows;
- a head that streams (``fit_stream``: :mod:`featx.heads.scalable`, :mod:`featx.heads.knn_index`)
  trains on every training row, read a block at a time from the cache (or from the array);
- a head that does not (the exact scikit-learn presets) trains on a seeded sample of at most
  its preset's ``max_rows`` rows, chosen so that one fit takes about a minute on 2 cores;
- each candidate is trained once and scored on the validation block; the best is scored on the
  test rows, streamed;
- a time ``budget`` is shared out among the heads still to run and, within a head, among its
  candidates: a streaming fit stops at the first block past its share (keeping its best epoch),
  and a head or candidate whose time is gone is skipped with a note.

The leaderboard says per head which protocol ran, on how many rows and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.exceptions import FeatxError
from featx.heads.leaderboard import HeadResult, Leaderboard
from featx.heads.presets import HeadPreset
from featx.heads.rows import ArrayBlocks, BlockSource, CachedBlocks, all_rows
from featx.heads.scalable import BudgetExceeded, fit_scaler

__all__ = ["EXACT_ROWS", "VALID_ROWS", "ScaleData", "arrays_at_scale", "cache_at_scale",
           "test_split", "tune_at_scale"]

#: Training rows up to which :func:`featx.tune_heads` runs the exact cross-validated grid in
#: memory (the protocol of small data sets). At 20,000 rows one RBF SVM fit takes about a minute
#: on 2 cores and the default heads' 5-fold grids some 20 minutes; above it, the holdout protocol.
EXACT_ROWS = 20_000

#: The largest held-out validation block (10% of the training rows below it).
VALID_ROWS = 20_000

#: ``max_rows`` for a head of the caller's own that does not stream.
DEFAULT_MAX_ROWS = 20_000

#: Rows predicted at a time (128 MB of float32 at width 1,024): at a million rows the kNN head
#: reads its 2 GB index once per call, so the test rows go in a few calls, not one per block.
PREDICT_ROWS = 32_768

#: The scores the holdout protocol can rank by.
_SCORERS = ("accuracy", "balanced_accuracy", "f1_macro")


@dataclass(frozen=True)
class ScaleData:
    """The rows of the holdout protocol: trained on, validated on, tested on (or ``None``)."""

    fit: BlockSource
    valid: BlockSource
    test: BlockSource | None
    classes: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def n_train(self) -> int:
        return self.fit.n_rows + self.valid.n_rows


def test_split(y: Any, test_size: float | None, random_state: int,
               groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``tune_heads(test_size=...)`` tunes on and the rows it tests on (a stratified,
    seeded split); every row in both when ``test_size`` is ``None`` or 0.

    For callers that need to know which images were tested (``featx heads`` and ``featx probe``
    show the test images the best head got wrong).

    With ``groups`` (a group id per row: near-duplicates share one, see
    :mod:`featx.heads.dedupe`) each group lands on one side: the split is drawn over one row
    per group (its first, stratified by its label) and the other rows follow theirs. Without
    any shared group this is the plain split.

    Examples
    --------
    >>> fit_rows, test_rows = test_split([0, 0, 0, 0, 1, 1, 1, 1], 0.5, random_state=0)
    >>> sorted([*fit_rows, *test_rows]) == list(range(8)), len(test_rows)
    (True, 4)
    """
    rows = np.arange(len(y))
    if not test_size:
        return rows, rows
    from sklearn.model_selection import train_test_split

    if groups is not None:
        groups = np.asarray(groups)
        first = np.sort(np.unique(groups, return_index=True)[1])
        if len(first) < len(rows):
            y_arr = np.asarray(y)
            try:
                _, test_firsts = train_test_split(first, test_size=test_size,
                                                  stratify=y_arr[first],
                                                  random_state=random_state)
            except ValueError:  # a class with a single group
                test_firsts = first[:0]
            tested = np.isin(groups, groups[test_firsts])
            share = tested.mean()
            # Groups so large that a side loses a class or the share is far off (embeddings
            # all alike, e.g. random weights): the plain split.
            if (test_size / 2 <= share <= min(0.95, 2 * test_size)
                    and len(np.unique(y_arr[~tested])) == len(np.unique(y_arr))):
                return rows[~tested], rows[tested]
    fit_rows, test_rows = train_test_split(rows, test_size=test_size, stratify=np.asarray(y),
                                           random_state=random_state)
    return fit_rows, test_rows


def _split(y: np.ndarray, test_size: float | None, random_state: int) -> np.ndarray:
    """Each row's part: 0 train, 1 validation, 2 test (stratified, seeded; the test rows are
    :func:`test_split`'s, as below ``EXACT_ROWS``)."""
    from sklearn.model_selection import train_test_split

    part = np.zeros(len(y), np.int8)
    train, test = test_split(y, test_size, random_state)
    if test_size:
        part[test] = 2
    n_classes = len(np.unique(y[train]))
    n_valid = min(VALID_ROWS, max(2 * n_classes, round(0.1 * len(train))))
    _, valid = train_test_split(train, test_size=n_valid, stratify=y[train],
                                random_state=random_state)
    part[valid] = 1
    return part


def arrays_at_scale(
    X: np.ndarray, y: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None,
    test_size: float | None, random_state: int, block_rows: int,
) -> ScaleData:
    """The parts of rows in memory (no row is copied: each part is a list of row numbers)."""
    part = _split(y, test_size, random_state)
    fit = ArrayBlocks(X, y, rows=np.flatnonzero(part == 0), block_rows=block_rows)
    valid = ArrayBlocks(X, y, rows=np.flatnonzero(part == 1), block_rows=block_rows)
    tested: BlockSource | None = None
    if test is not None:
        tested = ArrayBlocks(test[0], test[1], block_rows=block_rows)
    elif test_size:
        tested = ArrayBlocks(X, y, rows=np.flatnonzero(part == 2), block_rows=block_rows)
    return ScaleData(fit, valid, tested, np.unique(y[part != 2]))


def cache_at_scale(
    cache: Any, fingerprint: str, keys: np.ndarray, y: np.ndarray,
    test_keys: np.ndarray | None, y_test: np.ndarray | None,
    test_size: float | None, random_state: int, block_rows: int,
) -> ScaleData:
    """The parts of labelled images' rows in a cache group, found by content key.

    ``keys`` are ``S64``; an image listed twice is trained on once, and a test image whose
    content is also among the training images stays in training (both are said in the notes).
    """
    notes = []
    first = np.sort(np.unique(keys, return_index=True)[1])
    if len(first) < len(keys):
        notes.append(f"{len(keys) - len(first)} training images are byte-identical copies of "
                     "others; each distinct image is used once")
    keys, y = keys[first], y[first]
    part = _split(y, None if test_keys is not None else test_size, random_state)
    if test_keys is not None and y_test is not None:
        test_first = np.sort(np.unique(test_keys, return_index=True)[1])
        t_keys, t_y = test_keys[test_first], y_test[test_first]
        in_train = np.isin(t_keys, keys)
        if in_train.any():
            notes.append(f"{int(in_train.sum())} test images are byte-identical to training "
                         "images; they stay in training only")
        keys = np.concatenate([keys, t_keys[~in_train]])
        y = np.concatenate([y, t_y[~in_train]])
        part = np.concatenate([part, np.full(int((~in_train).sum()), 2, np.int8)])
    parts = CachedBlocks.split(cache, fingerprint, keys, y, part, block_rows=block_rows)
    classes = np.unique(y[part != 2])
    return ScaleData(parts["fit"], parts["valid"], parts.get("test"), classes, tuple(notes))


def tune_at_scale(
    heads: list[tuple[str, Any, dict[str, list[Any]]]],
    data: ScaleData,
    *,
    scoring: str,
    budget: float | None,
    random_state: int,
    n_jobs: int | None,
    log: Callable[[str], None],
    progress: bool | None,
    dedupe: bool = True,
    dedupe_threshold: float | None = None,
) -> Leaderboard:
    """Tune ``heads`` by the holdout protocol (see the module docstring); with ``dedupe``,
    the leaks of a seeded sample of the test rows are counted
    (:func:`featx.heads.dedupe.sampled_leaks`) and every head scored without them."""
    if scoring not in _SCORERS:
        raise FeatxError(
            f"scoring={scoring!r} cannot rank heads above {EXACT_ROWS} rows (the holdout "
            f"protocol scores a validation block by predictions); expected one of "
            f"{', '.join(_SCORERS)}."
        )
    started = time.monotonic()
    deadline = None if budget is None else started + float(budget)
    binary = len(data.classes) == 2
    shared: dict[str, Any] = {}
    results: list[HeadResult] = []
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    notes = list(data.notes)
    leaks = None
    if dedupe and data.test is not None and data.test.width >= _min_width():
        from featx.heads.dedupe import LEAK_SAMPLE, leak_note, sampled_leaks

        t0 = time.monotonic()
        leaks = sampled_leaks(data.fit, data.valid, data.test, threshold=dedupe_threshold,
                              random_state=random_state)
        n_checked, n_leaked = int(leaks[0].sum()), int(leaks[1].sum())
        threshold = _threshold(dedupe_threshold)
        notes.append(leak_note(n_leaked, n_checked, data.test.n_rows, threshold,
                               sampled=data.test.n_rows > LEAK_SAMPLE))
        log(f"  leaks: {n_leaked:,} of {n_checked:,} test rows checked have a near-duplicate in "
            f"training ({time.monotonic() - t0:.1f} s)")
    for i, (name, head, grid) in enumerate(heads):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            notes.append(f"{name}: skipped, the time budget ({budget:g} s) was spent")
            continue
        head_deadline = None if left is None else time.monotonic() + left / (len(heads) - i)
        try:
            result, predicted = _tune_one(name, head, grid, data, shared, scoring, binary,
                                          head_deadline, random_state, n_jobs, progress)
        except BudgetExceeded as exc:
            notes.append(f"{name}: skipped, {exc}")
            continue
        if leaks is not None:
            result.n_test_leaked = int(leaks[1].sum())
            result.test_score_leak_free = _leak_free(scoring, result.test_score, predicted, leaks)
        results.append(result)
        kept[name] = predicted
        log(f"  {name}: {result.protocol} on {result.n_fit} rows, validation {scoring} "
            f"{result.cv_mean:.3f}"
            + (f", test {result.test_score:.3f}" if result.test_score is not None else "")
            + f" ({result.search_seconds:.1f} s)")
    if not results:
        raise FeatxError(
            f"the time budget of {budget:g} s was too small for any head ("
            + "; ".join(notes) + "). Give a larger budget (--budget SECONDS) or fewer heads."
        )
    results.sort(key=lambda r: -r.cv_mean)
    y_true, y_pred = kept[results[0].head]
    return Leaderboard(
        results=results, scoring=scoring, classes=data.classes, n_train=data.n_train,
        n_test=0 if data.test is None else data.test.n_rows, cv=0, y_true=y_true,
        y_pred=y_pred, notes=notes,
    )


def _tune_one(
    name: str, head: Any, grid: dict[str, list[Any]], data: ScaleData, shared: dict[str, Any],
    scoring: str, binary: bool, deadline: float | None, random_state: int,
    n_jobs: int | None, progress: bool | None,
) -> tuple[HeadResult, tuple[np.ndarray, np.ndarray]]:
    """One head: its candidates trained and validated, the best tested."""
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    started = time.monotonic()
    preset = head if isinstance(head, HeadPreset) else None
    base = preset.make(random_state) if preset is not None else clone(head)
    streams = hasattr(base, "fit_stream")
    if preset is not None and preset.scale_grid is not None:
        grid = dict(preset.scale_grid) if grid == preset.grid else grid
    candidates = list(ParameterGrid(grid)) if grid else [{}]
    if streams:
        rows: BlockSource = data.fit
        why = "streams every training row by blocks"
    else:
        limit = (preset.max_rows if preset is not None and preset.max_rows else
                 DEFAULT_MAX_ROWS)
        rows = data.fit
        if data.fit.n_rows > limit:
            X_s, y_s = data.fit.sample(limit, seed=random_state)
            rows = ArrayBlocks(X_s, y_s)
            why = (f"does not stream: a seeded sample of {limit:,} of the {data.fit.n_rows:,} "
                   "training rows")
        else:
            why = "does not stream; every training row fits in memory"
    best: tuple[float, Any, dict[str, Any], float] | None = None
    skipped = 0
    bar = _bar(name, rows.n_rows * len(candidates) * _epochs(base), progress)
    try:
        for j, params in enumerate(candidates):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                skipped = len(candidates) - j
                break
            share = None if deadline is None else now + (deadline - now) / (len(candidates) - j)
            est = clone(base).set_params(**params)
            if n_jobs is not None and "n_jobs" in est.get_params():
                est.set_params(n_jobs=n_jobs)
            t0 = time.monotonic()
            try:
                _fit(est, rows, data, shared, streams, share, bar)
            except BudgetExceeded:
                if best is None and j == len(candidates) - 1:
                    raise
                skipped += 1
                continue
            fit_seconds = time.monotonic() - t0
            y_valid, pred_valid, _ = _predict(est, data.valid, binary)
            score = _score(scoring, y_valid, pred_valid)
            if best is None or score > best[0]:
                best = (score, est, params, fit_seconds)
    finally:
        if bar is not None:
            bar.close()
    if best is None:
        raise BudgetExceeded("its time share ran out before a candidate was trained")
    score, est, params, fit_seconds = best
    if skipped:
        why += f"; {skipped} of {len(candidates)} candidates left out for the time budget"
    scores, test_score, on, predicted, predict_seconds = _evaluate(est, data, scoring, binary)
    return HeadResult(
        head=name, cv_mean=float(score), cv_std=float("nan"), test_score=test_score,
        accuracy=scores["accuracy"], balanced_accuracy=scores["balanced_accuracy"],
        macro_f1=scores["macro_f1"], roc_auc=scores.get("roc_auc"), metrics_on=on,
        fit_seconds=fit_seconds, predict_seconds=predict_seconds,
        search_seconds=time.monotonic() - started, n_candidates=len(candidates),
        best_params=dict(params), estimator=est, protocol="holdout", n_fit=rows.n_rows,
        why=why,
    ), predicted


def _min_width() -> int:
    from featx.heads.dedupe import MIN_WIDTH

    return MIN_WIDTH


def _threshold(threshold: float | None) -> float:
    from featx.audit.duplicates import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD if threshold is None else float(threshold)


def _leak_free(scoring: str, test_score: float | None, predicted: tuple[np.ndarray, np.ndarray],
               leaks: tuple[np.ndarray, np.ndarray]) -> float | None:
    """The test score without the leaked rows. When only a sample was checked, the score on all
    the test rows moved by what dropping the sample's leaks changed on the sample: with no leak
    found it is the test score itself, not the noisier score of the sample."""
    checked, leaked = leaks
    clean = checked & ~leaked
    if not clean.any():
        return None
    on_clean = _score(scoring, predicted[0][clean], predicted[1][clean])
    if checked.all() or test_score is None:
        return on_clean
    if not leaked.any():
        return test_score
    return test_score + on_clean - _score(scoring, predicted[0][checked], predicted[1][checked])


def _epochs(est: Any) -> int:
    """Passes over the rows a fit makes at most (the progress bar's length): an SGD head's
    epochs and its scaler's pass; a boosted head's rounds and its first read."""
    params = est.get_params()
    if "max_epochs" in params:
        return int(params["max_epochs"]) + 1
    return int(params["n_estimators"]) + 1 if "early_stopping_rounds" in params else 1


def _bar(name: str, total: int, progress: bool | None) -> Any:
    if progress is False:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"  {name}", unit="row", unit_scale=True, leave=False,
                disable=None if progress is None else False, mininterval=1.0)


def _fit(est: Any, rows: BlockSource, data: ScaleData, shared: dict[str, Any], streams: bool,
         deadline: float | None, bar: Any) -> None:
    """Train one candidate (the standardisation shared by the SGD heads)."""
    step = None if bar is None else bar.update
    if not streams:
        if deadline is not None and time.monotonic() >= deadline:
            raise BudgetExceeded("its time share ran out")
        X, y = all_rows(rows)
        est.fit(X, y)
        if step is not None:
            step(len(y))
        return
    params = est.get_params()
    kwargs: dict[str, Any] = {"deadline": deadline, "progress": step}
    if "max_epochs" in params:  # an SGDHead: validated per epoch, one standardisation shared
        if "scaler" not in shared:
            shared["scaler"] = fit_scaler(data.fit, deadline)
        kwargs |= {"valid": data.valid, "classes": data.classes, "scaler": shared["scaler"]}
    elif "early_stopping_rounds" in params:  # a BoostedHead: the validation block stops it
        kwargs |= {"valid": data.valid, "classes": data.classes}
    est.fit_stream(rows, **kwargs)


def _batches(source: BlockSource, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The source's blocks joined into batches of about ``rows`` rows: a part of a cache group
    comes as a few rows of each block read (the test rows of one 8,192-row block of the group),
    and a head that reads its own index once per call (the kNN's on disk) would read it once
    per handful of rows."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    held = 0
    for X, y in source.blocks(seed=None):
        xs.append(X)
        ys.append(y)
        held += len(y)
        if held >= rows:
            yield np.concatenate(xs), np.concatenate(ys)
            xs, ys, held = [], [], 0
    if held:
        yield np.concatenate(xs), np.concatenate(ys)


def _predict(est: Any, source: BlockSource,
             binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, predictions and (two classes) scores over a source, a batch of
    :data:`PREDICT_ROWS` rows at a time."""
    ys, preds, scores = [], [], []
    for X, y in _batches(source, PREDICT_ROWS):
        ys.append(y)
        preds.append(est.predict(X))
        if binary:
            s = est.predict_proba(X)[:, 1] if hasattr(est, "predict_proba") else (
                est.decision_function(X))
            scores.append(np.asarray(s).ravel())
    if not ys:
        return np.zeros(0), np.zeros(0), None
    return (np.concatenate(ys), np.concatenate(preds),
            np.concatenate(scores) if binary else None)


def _score(scoring: str, y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    if scoring == "accuracy":
        return float(accuracy_score(y, pred))
    if scoring == "balanced_accuracy":
        return float(balanced_accuracy_score(y, pred))
    return float(f1_score(y, pred, average="macro"))


def _evaluate(est: Any, data: ScaleData, scoring: str, binary: bool) -> tuple[
        dict[str, float], float | None, str, tuple[np.ndarray, np.ndarray], float]:
    """The best candidate's metrics on the test rows (the validation block without them)."""
    from sklearn.metrics import roc_auc_score

    source, on = (data.test, "test") if data.test is not None else (data.valid, "valid")
    t0 = time.monotonic()
    y, pred, score = _predict(est, source, binary)
    seconds = time.monotonic() - t0
    out = {m: _score(s, y, pred) for m, s in (("accuracy", "accuracy"),
                                              ("balanced_accuracy", "balanced_accuracy"),
                                              ("macro_f1", "f1_macro"))}
    if binary and score is not None and len(np.unique(y)) == 2:
        out["roc_auc"] = float(roc_auc_score(y == est.classes_[1], score))
    test_score = _score(scoring, y, pred) if data.test is not None else None
    return out, test_score, on, (y, pred), seconds
