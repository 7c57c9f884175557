"""The audit of a labelled image set: :func:`audit` and the tables it returns.

One nearest-neighbour index over the training rows serves every finding:

- **duplicates**: pairs of training images that are copies of each other
  (:func:`featx.audit.find_duplicates`: ``exact`` for the same content, ``near`` above the
  threshold);
- **leaks**: test images with a copy among the training images (:func:`featx.audit.find_leaks`);
- **label issues**: training images whose label disagrees with out-of-fold predictions and with
  their neighbours' labels (:func:`featx.audit.labels.find_label_issues`, confident learning);
- **outliers**: images far from all others (:func:`featx.audit.outlier_scores`), those whose
  score is more than :data:`OUTLIER_Z` robust standard deviations (1.4826 median absolute
  deviations) above the median.

Rows of images come from an embedding cache, by content (nothing is embedded here), or are
given as arrays. The tables need no pandas: each is a :class:`Table` of columns, with
``to_frame()`` when pandas is there and ``to_csv()`` either way.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["AuditResult", "Table", "audit", "OUTLIER_Z", "TABLES"]

#: Robust z-score above which an image is listed as an outlier.
OUTLIER_Z = 3.0

#: The tables of an audit and their columns, in the order the CSV files hold them.
TABLES: dict[str, tuple[str, ...]] = {
    "duplicates": ("path_a", "path_b", "similarity", "kind"),
    "leaks": ("test_path", "train_path", "similarity"),
    "label_issues": ("path", "label", "suggested", "score"),
    "outliers": ("path", "score"),
}


@dataclass(frozen=True)
class Table:
    """One finding's rows, as named columns of equal length (most important row first)."""

    name: str
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Each row as a tuple of plain Python values, in column order."""
        cols = [c.tolist() for c in self.columns.values()]
        return iter(zip(*cols, strict=True)) if cols else iter(())

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dev dependency
            raise ImportError(
                f"{self.name}.to_frame needs pandas: pip install 'featx[pandas]'."
            ) from None
        return pd.DataFrame({k: v for k, v in self.columns.items()})

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as CSV (a header, then one line a row); return the path."""
        out = Path(path)
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(list(self.columns))
            for row in self.rows():
                writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        return out


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit` found: a table per finding and a summary.

    Attributes
    ----------
    duplicates : Table
        ``path_a, path_b, similarity, kind`` (``exact`` or ``near``), most similar first.
    leaks : Table
        ``test_path, train_path, similarity``; empty without a test set.
    label_issues : Table
        ``path, label, suggested, score``, most likely wrong first; empty without labels.
    outliers : Table
        ``path, score``, most outlying first.
    summary : dict
        Counts per finding, the images audited, the threshold used and how it was chosen.
    """

    duplicates: Table
    leaks: Table
    label_issues: Table
    outliers: Table
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def tables(self) -> dict[str, Table]:
        return {name: getattr(self, name) for name in TABLES}

    def write_csv(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``duplicates.csv``, ``leaks.csv``, ``label_issues.csv`` and ``outliers.csv``
        into ``folder`` (which must exist); return the paths."""
        return [table.to_csv(Path(folder) / f"{name}.csv") for name, table in self.tables.items()]

    def summary_text(self) -> str:
        """The summary as lines to print."""
        s = self.summary
        lines = [
            f"audited {s['n_train']:,} images"
            + (f" and {s['n_test']:,} test images" if s["n_test"] else "")
            + f" ({s['width']}-wide embeddings)",
            f"  duplicates:   {s['duplicates']:,} pairs ({s['exact']:,} exact, "
            f"{s['near']:,} near) in {s['duplicate_groups']:,} groups",
            "  leaks:        " + (f"{s['leaks']:,} pairs; {s['leaked_test_images']:,} test "
                                   "images have a copy in training" if s["n_test"]
                                   else "no test set"),
            "  label issues: " + (f"{s['label_issues']:,} images (confident learning estimates "
                                   f"{s['estimated_label_errors']:,} wrong labels)"
                                   if s["labelled"] else "no labels"),
            f"  outliers:     {s['outliers']:,} images (robust z > {OUTLIER_Z:g})",
            f"  threshold:    {s['threshold']:g} ({s['threshold_chosen']})",
        ]
        return "\n".join(lines)


def audit(
    images: Any = None,
    y: Any = None,
    *,
    X: Any = None,
    cache: str | os.PathLike[str] | None = None,
    group: str | None = None,
    test: Any = None,
    y_test: Any = None,
    X_test: Any = None,
    threshold: float | None = None,
    k: int = 10,
    cv: int = 5,
    head: Any = None,
    random_state: int = 0,
) -> AuditResult:
    """Audit a labelled image set: duplicates, leaks, label issues and outliers.

    Parameters
    ----------
    images : sequence of paths (or anything :class:`featx.ImageEmbedder` takes), optional
        The training images. With ``cache``, their rows are read from it by content; with
        ``X``, they only name the rows in the tables (default: row numbers).
    y : array-like of shape (n_images,), optional
        Their labels; ``None``: no label issues.
    X : array of shape (n_images, width), optional
        The embeddings, instead of a cache.
    cache : path, optional
        An embedding cache holding every image (``featx embed SRC --cache FILE``).
    group : str, optional
        The cache group (a fingerprint prefix); needed when the cache holds several.
    test : sequence of paths, optional
        Test images (rows from ``cache``), for leaks.
    y_test : array-like, optional
        Their labels: every one must be a training label.
    X_test : array of shape (n_test, width), optional
        Test embeddings, instead of ``test`` with a cache (``test`` then names them).
    threshold : float, optional
        The near-duplicate threshold on the pair score
        (:data:`featx.audit.DEFAULT_THRESHOLD` by default).
    k : int, default=10
        Neighbours searched per image (duplicates, outliers, the neighbours' labels).
    cv : int, default=5
        Folds of the out-of-fold probabilities (every class needs at least ``cv`` images).
    head : classifier with ``predict_proba``, optional
        The head of the out-of-fold probabilities
        (:func:`featx.audit.labels.default_label_head`).
    random_state : int, default=0

    Returns
    -------
    AuditResult

    Raises
    ------
    FeatxError
        If the cache group does not hold every image (the message names the ``featx embed``
        command), a test label is not a training label, or a class has fewer than ``cv``
        images.

    Examples
    --------
    >>> import featx
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["a", "b"], 30)
    >>> X = rng.normal(size=(60, 16)) + 3 * (y == "b")[:, None]
    >>> X[7] = X[3]
    >>> found = featx.audit(X=X, y=y, cv=3)
    >>> found.summary["exact"], len(found.leaks), next(found.duplicates.rows())
    (1, 0, ('3', '7', 1.0, 'exact'))
    """
    X_train, names = _rows(images, X, cache, group, "images", "X")
    y_arr = _labels(y, len(X_train), "y", "images")
    X_t, test_names = (None, None)
    if test is not None or X_test is not None:
        X_t, test_names = _rows(test, X_test, cache, group, "test", "X_test")
        if X_t.shape[1] != X_train.shape[1]:
            raise FeatxError(f"the test rows are {X_t.shape[1]} wide and the training rows "
                             f"{X_train.shape[1]}; expected embeddings of the same cache group.")
        _check_test_labels(y_arr, _labels(y_test, len(X_t), "y_test", "test images"))
    if y_arr is not None:
        from featx.audit.labels import check_out_of_fold

        check_out_of_fold(y_arr, cv)  # before any search: too few images for cv folds
    return _audit_rows(X_train, names, y_arr, X_t, test_names, threshold=threshold, k=k, cv=cv,
                       head=head, random_state=random_state)


def _audit_rows(
    X: np.ndarray, names: np.ndarray, y: np.ndarray | None, X_test: np.ndarray | None,
    test_names: np.ndarray | None, *, threshold: float | None, k: int, cv: int, head: Any,
    random_state: int,
) -> AuditResult:
    """Every finding from one index over the training rows."""
    from featx.audit.duplicates import (
        DEFAULT_THRESHOLD,
        duplicate_groups,
        find_duplicates,
        find_leaks,
    )
    from featx.audit.index import EmbeddingIndex
    from featx.audit.labels import find_label_issues
    from featx.audit.outliers import outlier_scores

    index = EmbeddingIndex.from_array(X)
    kk = max(1, min(int(k), len(X) - 1))
    pairs = find_duplicates(index, threshold=threshold, k=kk)
    groups = duplicate_groups(pairs, len(X))
    duplicates = Table("duplicates", {
        "path_a": names[pairs.a], "path_b": names[pairs.b],
        "similarity": pairs.similarity.astype(np.float64), "kind": pairs.kind.astype(str)})
    leak_pairs = None
    if X_test is not None and test_names is not None:
        leak_pairs = find_leaks(index, X_test, threshold=threshold, k=kk)
        leaks = Table("leaks", {
            "test_path": test_names[leak_pairs.a], "train_path": names[leak_pairs.b],
            "similarity": leak_pairs.similarity.astype(np.float64)})
    else:
        leaks = _empty("leaks")
    scores = outlier_scores(index, k=kk).astype(np.float64)
    flagged = _outliers(scores)
    outliers = Table("outliers", {"path": names[flagged], "score": scores[flagged]})
    n_estimated = 0
    if y is not None:
        _, neighbours = index.search_self(kk)
        issues = find_label_issues(X, y, head=head, cv=cv, random_state=random_state,
                                   neighbours=neighbours)
        n_estimated = issues.n_estimated
        label_issues = Table("label_issues", {
            "path": names[issues.index], "label": np.asarray(issues.label),
            "suggested": np.asarray(issues.suggested), "score": issues.score})
    else:
        label_issues = _empty("label_issues")
    th = pairs.threshold
    summary = {
        "n_train": len(X), "n_test": 0 if X_test is None else len(X_test),
        "width": int(X.shape[1]), "labelled": y is not None,
        "duplicates": len(pairs), "exact": int((pairs.kind == "exact").sum()),
        "near": int((pairs.kind == "near").sum()),
        "duplicate_groups": int(len(np.unique(groups[np.concatenate([pairs.a, pairs.b])])))
        if len(pairs) else 0,
        "leaks": 0 if leak_pairs is None else len(leak_pairs),
        "leaked_test_images": 0 if leak_pairs is None else len(np.unique(leak_pairs.a)),
        "label_issues": len(label_issues), "estimated_label_errors": n_estimated,
        "outliers": len(outliers), "threshold": th,
        "threshold_chosen": (
            "given" if threshold is not None else
            f"the default, DEFAULT_THRESHOLD={DEFAULT_THRESHOLD:g} on the pair score relative "
            "to each image's neighbourhood, calibrated on augmented copies (docs/audit.md)"),
        "k": kk, "cv": cv,
    }
    return AuditResult(duplicates, leaks, label_issues, outliers, summary)


def _empty(name: str) -> Table:
    return Table(name, {c: np.zeros(0, object if "path" in c or c in ("label", "suggested",
                                                                       "kind") else np.float64)
                        for c in TABLES[name]})


def _outliers(scores: np.ndarray) -> np.ndarray:
    """Rows whose score is more than OUTLIER_Z robust standard deviations above the median,
    most outlying first."""
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median)))
    if spread <= 0:
        return np.zeros(0, np.int64)
    rows = np.flatnonzero(scores > median + OUTLIER_Z * spread)
    return rows[np.argsort(-scores[rows], kind="stable")]


def _rows(images: Any, X: Any, cache: Any, group: str | None, what: str,
          x_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows and their names: read from the cache by content, or given."""
    if X is not None:
        rows = np.asarray(X)
        if rows.ndim != 2 or rows.dtype.kind not in "fiu" or len(rows) < 2:
            raise FeatxError(f"{x_name} must be a 2-D numeric array of at least 2 embeddings; "
                             f"got {rows.dtype} of shape {rows.shape}.")
        if not np.isfinite(rows).all():
            raise FeatxError(f"{x_name} holds NaN or infinite values (images that failed to "
                             "embed?); leave those rows out.")
        if images is not None and len(images) != len(rows):
            raise FeatxError(f"{what} names {len(images)} images but {x_name} has {len(rows)} "
                             "rows; expected one name per row.")
        return rows, _names(images, len(rows))
    if images is None:
        raise FeatxError(f"pass {what}= (with cache=) or {x_name}= (the embeddings).")
    if cache is None:
        raise FeatxError(
            f"{what} need their embeddings: pass cache= (a cache holding them, written by "
            f"featx embed SRC --cache FILE) or {x_name}= (the embeddings). The audit embeds "
            "nothing itself."
        )
    from featx.embed.lookup import cached_embeddings

    rows = cached_embeddings(cache, images, group=group)
    if len(rows) < 2:
        raise FeatxError(f"expected at least 2 {what} to audit; got {len(rows)}.")
    return rows, _names(images, len(rows))


def _names(images: Any, n: int) -> np.ndarray:
    """A printable name per row: a path as it is, otherwise the row number."""
    if images is None:
        return np.asarray([str(i) for i in range(n)], dtype=object)
    out = np.empty(n, dtype=object)
    for i, image in enumerate(images):
        out[i] = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"row {i}"
    return out


def _labels(y: Any, n: int, what: str, of: str) -> np.ndarray | None:
    if y is None:
        return None
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise FeatxError(f"{what} must hold one label per row of the {of} ({n}); got shape "
                         f"{arr.shape}.")
    return arr


def _check_test_labels(y: np.ndarray | None, y_test: np.ndarray | None) -> None:
    """Refuse test labels that no training image carries."""
    if y is None or y_test is None:
        return
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y))
    if len(unseen):
        shown = ", ".join(repr(v) for v in unseen[:5].tolist())
        raise FeatxError(
            f"the test set has {len(unseen)} label{'s' if len(unseen) > 1 else ''} that no "
            f"training image carries ({shown}); expected the training classes "
            f"({', '.join(repr(v) for v in np.unique(y)[:10].tolist())}). Check that the test "
            "folders are named like the training ones, or leave those images out."
        )
