"""The leaderboard of tuned heads: one row per tuned head, ranked by cross-validated score.

:class:`HeadResult` is one row (scores, timings, best parameters, the refitted head);
:class:`Leaderboard` ranks rows and renders them as text, CSV or a pandas DataFrame. A row may
carry extra identifying columns (``HeadResult.extra``, e.g. the layer a head was tuned on), and
:meth:`Leaderboard.combine` merges several leaderboards into one with such a column: that is how
the layer probe reports one row per (layer, head) with the same metrics as :func:`featx.tune_heads`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["HeadResult", "Leaderboard"]


@dataclass
class HeadResult:
    """One tuned head: its scores, timings and best parameters.

    Attributes
    ----------
    head : str
        The head's name.
    cv_mean, cv_std : float
        Mean and standard deviation of the search's score over the folds, for the best
        parameters.
    test_score : float or None
        The score of the refitted head on the held-out test set (``None`` without one).
    accuracy, balanced_accuracy, macro_f1 : float
        On the test set when there is one (``metrics_on == "test"``), else the mean over the
        cross-validation folds of the best parameters (``metrics_on == "cv"``).
    roc_auc : float or None
        As above, for two classes only.
    metrics_on : {"test", "cv"}
    fit_seconds : float
        Time to refit the best parameters on all the training data.
    predict_seconds : float
        Time to predict the test set; without one, the mean time to score one fold.
    search_seconds : float
        Wall time of the whole search.
    n_candidates : int
        Parameter combinations searched.
    best_params : dict
    estimator : Pipeline
        The best head, refitted on all the training data.
    extra : dict
        Columns that identify the row beyond its head, shown before it (e.g.
        ``{"layer": "conv_pw_11_relu"}`` on a layer probe's leaderboard); empty for
        :func:`featx.tune_heads`.
    protocol : str
        How the head was searched: ``"5-fold cv"`` (the exact grid, every candidate on every
        fold), or ``"holdout"`` (each candidate trained once and scored on a held-out
        validation block: ``cv_mean`` is that score and ``cv_std`` is NaN).
    n_fit : int
        The rows the best candidate was trained on.
    why : str
        Why this protocol and these rows (one phrase).
    n_test_leaked : int or None
        Test images with a near-duplicate among the training images (of the sample checked,
        above ``exact_rows``); ``None`` when leaks were not counted (no test set, or
        ``dedupe=False``).
    test_score_leak_free : float or None
        The test score on the test images without those (``None`` as above, or when every
        test image leaked).
    """

    head: str
    cv_mean: float
    cv_std: float
    test_score: float | None
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    roc_auc: float | None
    metrics_on: str
    fit_seconds: float
    predict_seconds: float
    search_seconds: float
    n_candidates: int
    best_params: dict[str, Any]
    estimator: Any = field(repr=False, default=None)
    extra: dict[str, Any] = field(default_factory=dict)
    protocol: str = ""
    n_fit: int = 0
    why: str = ""
    n_test_leaked: int | None = None
    test_score_leak_free: float | None = None

    def as_row(self) -> dict[str, Any]:
        """The result as a flat dict of plain values (what the CSV and the frame hold)."""
        return {
            **self.extra,
            "head": self.head,
            "cv_mean": self.cv_mean,
            "cv_std": self.cv_std,
            "test_score": self.test_score,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "roc_auc": self.roc_auc,
            "metrics_on": self.metrics_on,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "search_seconds": self.search_seconds,
            "n_candidates": self.n_candidates,
            "best_params": _params_text(self.best_params),
            "protocol": self.protocol,
            "n_fit": self.n_fit,
            # Only where leaks were counted, so boards without them keep their columns.
            **({} if self.n_test_leaked is None else {
                "n_test_leaked": self.n_test_leaked,
                "test_score_leak_free": self.test_score_leak_free}),
        }


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('clf__')}={v!r}" for k, v in sorted(params.items()))


@dataclass
class Leaderboard:
    """Tuned heads, best first (by cross-validated score: the test set never picks a head).

    A list of :class:`HeadResult` rather than a pandas DataFrame, so that the command line and
    the saved model need no pandas; :meth:`to_frame` gives a DataFrame when pandas is there.

    Attributes
    ----------
    results : list of HeadResult
        Sorted by ``cv_mean``, best first.
    scoring : str
        The score the search maximised (``"accuracy"``, ...).
    classes : ndarray
        The class labels, sorted.
    n_train, n_test : int
        Samples tuned on, and held out (0 without a test set).
    cv : int
        Number of stratified folds.
    y_true, y_pred : ndarray
        The best head's test labels and predictions (out-of-fold predictions on the training
        data when there is no test set): what its confusion matrix shows.
    notes : list of str
        One line per head that was not tuned (why: the time budget, ...), and what chose the
        protocol; printed under the table.
    """

    results: list[HeadResult]
    scoring: str
    classes: np.ndarray
    n_train: int
    n_test: int
    cv: int
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> HeadResult:
        """The head with the best cross-validated score."""
        return self.results[0]

    @property
    def columns(self) -> list[str]:
        """The extra columns the rows carry (``HeadResult.extra``), in order; ``[]`` for none."""
        names: list[str] = []
        for r in self.results:
            names += [k for k in r.extra if k not in names]
        return names

    @classmethod
    def combine(cls, boards: Mapping[Any, Leaderboard], column: str) -> Leaderboard:
        """Merge leaderboards tuned on the same labels into one, with a column telling them apart.

        Parameters
        ----------
        boards : mapping of value -> Leaderboard
            E.g. ``{"conv_pw_5_relu": board_a, "conv_pw_13_relu": board_b}``: leaderboards of
            the same samples, folds, scoring and test set (as :func:`featx.tune_heads` gives
            with the same arguments on different embeddings).
        column : str
            The new column's name (``"layer"``); each row gets ``extra[column] = value``.

        Returns
        -------
        Leaderboard
            Every row of every board, best first (ties keep the order given); ``y_true`` and
            ``y_pred`` are those of the best row's board.

        Examples
        --------
        >>> import numpy as np
        >>> from featx import Leaderboard, tune_heads
        >>> y = np.repeat([0, 1], 20)
        >>> X = np.random.default_rng(0).normal(size=(40, 3)) + y[:, None]
        >>> board = Leaderboard.combine(
        ...     {"all": tune_heads(X, y, heads=["logreg", "knn"], cv=3),
        ...      "first": tune_heads(X[:, :1], y, heads=["logreg", "knn"], cv=3)},
        ...     column="features")
        >>> board.columns, len(board), board.best.extra["features"] in ("all", "first")
        (['features'], 4, True)
        """
        if not boards:
            raise FeatxError(f"expected one or more leaderboards to combine; got {boards!r}.")
        named = list(boards.items())
        first = named[0][1]
        for key, board in named[1:]:
            same = (board.scoring == first.scoring and board.n_train == first.n_train
                    and board.n_test == first.n_test and board.cv == first.cv
                    and np.array_equal(board.classes, first.classes))
            if not same:
                raise FeatxError(
                    f"leaderboard {key!r} was tuned on other samples, folds or scoring "
                    f"({board.n_train} train, {board.n_test} test, cv={board.cv}, "
                    f"{board.scoring}) than {named[0][0]!r} ({first.n_train} train, "
                    f"{first.n_test} test, cv={first.cv}, {first.scoring}); expected the same "
                    "labels, cv, test split and scoring for every board."
                )
        rows: list[tuple[HeadResult, Leaderboard]] = []
        for key, board in named:
            for r in board.results:
                if column in r.extra:
                    raise FeatxError(
                        f"leaderboard {key!r} already has a {column!r} column; pick another name."
                    )
                tagged = dataclasses.replace(r, extra={**r.extra, column: key})
                rows.append((tagged, board))
        rows.sort(key=lambda pair: -pair[0].cv_mean)  # stable: ties keep the order given
        top = rows[0][1]
        return cls(
            results=[r for r, _ in rows], scoring=first.scoring, classes=first.classes,
            n_train=first.n_train, n_test=first.n_test, cv=first.cv, y_true=top.y_true,
            y_pred=top.y_pred, notes=[f"{key}: {n}" for key, b in named for n in b.notes],
        )

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[HeadResult]:
        return iter(self.results)

    def __getitem__(self, name: str) -> HeadResult:
        """The best row of the head ``name``."""
        for r in self.results:
            if r.head == name:
                return r
        raise KeyError(f"no head {name!r} on the leaderboard; it has {[r.head for r in self]}")

    def to_frame(self) -> Any:
        """The leaderboard as a pandas DataFrame (needs pandas), one row per head."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dev dependency
            raise ImportError(
                "Leaderboard.to_frame needs pandas: pip install pandas (or featx[pandas])."
            ) from None
        return pd.DataFrame([r.as_row() for r in self.results])

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the leaderboard as CSV (one row per head, best first); return the path."""
        out = Path(path)
        rows = [r.as_row() for r in self.results]
        # Every row's columns, in first-seen order: rows can differ (a layer probe's layers
        # too narrow for the duplicate search have no leak columns).
        fields = list(dict.fromkeys([*self.columns, *(k for r in rows for k in r), "head"]))
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        return out

    def to_text(self) -> str:
        """A plain-text table, best first."""
        metric = "test" if self.n_test else "cv"
        extra = self.columns
        leaks = any(r.n_test_leaked is not None for r in self.results)
        header = ["#", *extra, "head", f"cv {self.scoring}", "test", *(["leak-free"] * leaks),
                  "bal.acc", "macro-F1"]
        binary = any(r.roc_auc is not None for r in self.results)
        if binary:
            header.append("ROC AUC")
        header += ["fit s", "pred s", "best parameters"]
        table = [header]
        for i, r in enumerate(self.results, 1):
            row = [
                str(i), *(str(r.extra.get(c, "-")) for c in extra), r.head,
                (f"{r.cv_mean:.3f} ± {r.cv_std:.3f}" if np.isfinite(r.cv_std)
                 else f"{r.cv_mean:.3f}"),
                "-" if r.test_score is None else f"{r.test_score:.3f}",
                *(["-" if r.test_score_leak_free is None else f"{r.test_score_leak_free:.3f}"]
                  * leaks),
                f"{r.balanced_accuracy:.3f}", f"{r.macro_f1:.3f}",
            ]
            if binary:
                row.append("-" if r.roc_auc is None else f"{r.roc_auc:.3f}")
            row += [f"{r.fit_seconds:.2f}", f"{r.predict_seconds:.2f}",
                    _params_text(r.best_params)]
            table.append(row)
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        right = {0, *range(2 + len(extra), len(header) - 1)}
        lines = []
        for row in table:
            cells = [c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths))
        what = f"{len(self.results)} heads" if not extra else (
            f"{len(self.results)} rows ("
            + " x ".join(f"{len({str(r.extra.get(c)) for r in self})} {c}s" for c in extra)
            + f" x {len({r.head for r in self})} heads)"
        )
        if all(r.protocol in ("", f"{self.cv}-fold cv") for r in self.results):
            lines.append(
                f"{what}, {self.cv}-fold stratified cross-validation on "
                f"{self.n_train} samples" + (f", tested on {self.n_test} held out" if self.n_test
                                             else "") + f"; bal.acc/macro-F1 on {metric}"
            )
        else:
            lines.append(
                f"{what} on {self.n_train} training samples"
                + (f", tested on {self.n_test} held out" if self.n_test else "")
                + f"; bal.acc/macro-F1 on {metric}; the 'cv' column is the score on the held-out "
                "validation block where the protocol is holdout. Per head:"
            )
            lines += [f"  {r.head}: {r.protocol} on {r.n_fit} rows ({r.why})" for r in self]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

