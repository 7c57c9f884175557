"""The model: an image embedder and a fitted head that predicts straight from images.

:class:`FeatxModel` predicts from paths, arrays or anything :class:`~featx.ImageEmbedder` takes;
:meth:`FeatxModel.predict_items` gives a :class:`Prediction` per item, a file that cannot be read
getting its error instead of stopping the others; :func:`predictions_csv_rows` is the CSV
``featx predict`` writes. Saving and loading it is :mod:`featx.model.saved`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, ImageLoadError
from featx.model.saved import describe_head, plain, read_model, write_model

__all__ = ["FeatxModel", "Prediction", "load_model", "predictions_csv_rows", "save_model"]


@dataclass(frozen=True)
class Prediction:
    """One item's prediction from :meth:`FeatxModel.predict_items`.

    Attributes
    ----------
    source : str
        The item's name (its path, for files).
    label : object or None
        The predicted class; ``None`` when the item could not be read.
    probabilities : dict or None
        Class -> probability, when the head gives probabilities and the item was read.
    error : str or None
        Why the item could not be read.
    exception : ImageLoadError or None
        The same failure as an exception (its ``describe(retry_option=...)`` words the retry
        hint for a command line).
    """

    source: str
    label: Any
    probabilities: dict[Any, float] | None
    error: str | None
    exception: ImageLoadError | None = field(default=None, compare=False, repr=False)


class FeatxModel:
    """An image embedder and a fitted head: predicts straight from images.

    Parameters
    ----------
    embedder : ImageEmbedder
        Only its parameters matter (the network is built on first use and shared).
    head : fitted classifier
        Trained on ``embedder``'s embeddings.
    info : dict, optional
        Plain-JSON facts to keep with the model (scores, data set, ...).

    Attributes
    ----------
    classes_ : ndarray
        The head's classes.
    manifest : dict or None
        The manifest of the file the model was loaded from.

    Examples
    --------
    >>> from featx import FeatxModel, ImageEmbedder, load_model
    >>> model = FeatxModel(ImageEmbedder("mobilenet"), fitted_head)  # doctest: +SKIP
    >>> model.save("flowers.featx")                                   # doctest: +SKIP
    >>> load_model("flowers.featx").predict(["rose.jpg"])              # doctest: +SKIP
    """

    def __init__(self, embedder: Any, head: Any, *, info: dict[str, Any] | None = None):
        self.embedder = embedder
        self.head = head
        self.info = dict(info or {})
        self.manifest: dict[str, Any] | None = None

    @classmethod
    def portable(cls, embedder: Any, head: Any, *,
                 info: dict[str, Any] | None = None) -> FeatxModel:
        """The model to save from a tuning run: ``embedder`` as a saved model runs it, without
        the run's cache, quiet, raising on an image it cannot read (a copy: ``embedder`` is
        left as it is).

        Examples
        --------
        >>> from featx import FeatxModel, ImageEmbedder
        >>> embedder = ImageEmbedder("mobilenet", cache="emb.h5", on_error="skip")
        >>> model = FeatxModel.portable(embedder, head=None)
        >>> model.embedder.cache, model.embedder.on_error, embedder.cache
        (None, 'raise', 'emb.h5')
        """
        import copy

        reset = copy.copy(embedder).set_params(cache=None, verbose=False, on_error="raise")
        return cls(reset, head, info=info)

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.head.classes_)

    @property
    def has_proba(self) -> bool:
        """Whether the head gives probabilities."""
        return hasattr(self.head, "predict_proba")

    def embed(self, X: Any) -> np.ndarray:
        """The embeddings of ``X`` (as :meth:`ImageEmbedder.transform`)."""
        return np.asarray(self.embedder.transform(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted classes of the images ``X`` (paths, arrays, ...)."""
        return np.asarray(self.head.predict(self.embed(X)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of :attr:`classes_`."""
        if not self.has_proba:
            raise FeatxError(
                f"the head ({describe_head(self.head)}) gives no probabilities; use predict, or "
                "tune a head that does (logreg, hist_gb, knn, mlp)."
            )
        return np.asarray(self.head.predict_proba(self.embed(X)))

    def predict_items(self, X: Any) -> list[Prediction]:
        """A :class:`Prediction` per item, in input order; an unreadable item gets its error.

        Unlike :meth:`predict`, a file that cannot be read does not stop the others.
        """
        from sklearn.base import clone

        from featx.embed.images import iter_items

        names = [item.name for item in iter_items(X)[0]]  # a stream is read for its names
        embedder = clone(self.embedder).set_params(on_error="skip")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
            features = np.asarray(embedder.transform(X))
        errors = {e.index: e for e in embedder.report_.errors}
        kept = [i for i in range(len(names)) if i not in set(embedder.report_.dropped)]
        labels = self.head.predict(features) if len(kept) else []
        probas = self.head.predict_proba(features) if len(kept) and self.has_proba else None
        out: list[Prediction | None] = [None] * len(names)
        for row, i in enumerate(kept):
            probs = None
            if probas is not None:
                probs = {plain(c): float(p) for c, p in zip(self.classes_, probas[row],
                                                             strict=True)}
            out[i] = Prediction(names[i], plain(labels[row]), probs, None)
        for i in range(len(names)):
            if out[i] is None:
                error = errors.get(i)
                out[i] = Prediction(names[i], None, None,
                                    error.describe() if error else "could not be read", error)
        return [p for p in out if p is not None]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to ``path`` (see :func:`featx.save_model`); return the path."""
        return save_model(self, path)

    def __repr__(self) -> str:
        return f"FeatxModel({self.embedder!r}, {describe_head(self.head)})"


def predictions_csv_rows(model: FeatxModel, predictions: Sequence[Prediction]) -> list[list[str]]:
    """The predict CSV as rows of text: the header first, every row exactly as wide.

    Columns: ``path``, ``prediction``, one ``proba_<class>`` per class when the head gives
    probabilities (``model.has_proba``; none for an SVM), and ``error`` (why an item could not
    be read). An item that could not be read has empty prediction and probability cells.

    Parameters
    ----------
    model : FeatxModel
    predictions : sequence of Prediction
        From :meth:`FeatxModel.predict_items`.

    Returns
    -------
    list of list of str
        ``rows[0]`` is the header.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.svm import SVC
    >>> head = SVC().fit(np.array([[0.0], [1.0], [0.1], [0.9]]), ["a", "b", "a", "b"])
    >>> model = FeatxModel(None, head)
    >>> predictions_csv_rows(model, [Prediction("x.png", "a", None, None),
    ...                              Prediction("y.png", None, None, "not an image")])
    [['path', 'prediction', 'error'], ['x.png', 'a', ''], ['y.png', '', 'not an image']]
    """
    classes = [plain(c) for c in model.classes_] if model.has_proba else []
    rows = [["path", "prediction", *(f"proba_{c}" for c in classes), "error"]]
    for p in predictions:
        probs = p.probabilities or {}
        rows.append([
            p.source, "" if p.label is None else str(p.label),
            *(f"{probs[c]:.6f}" if c in probs else "" for c in classes),
            p.error or "",
        ])
    return rows


def save_model(
    model: Any, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None
) -> Path:
    """Save an embedder and its fitted head as one ``.featx`` file.

    Parameters
    ----------
    model : FeatxModel or Pipeline
        A :class:`FeatxModel`, or a fitted Pipeline whose first step is an
        :class:`featx.ImageEmbedder` (the other steps are the head), such as a grid search's
        ``best_estimator_``.
    path : path
        The file to write (written to a temporary name, then renamed: never half written).
    info : dict, optional
        Plain-JSON facts to keep in the manifest (merged over ``model.info``).

    Returns
    -------
    path : Path

    Raises
    ------
    FeatxError
        If the embedder's backbone is a ``keras.Model`` or a function, or a parameter is not
        plain data: the file stores configuration, never weights or code.
    """
    return write_model(_as_featx_model(model), path, info=info)


def load_model(
    path: str | os.PathLike[str],
    *,
    trusted: Sequence[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    safe_mode: bool = True,
) -> FeatxModel:
    """Load a ``.featx`` file written by :func:`save_model`; run no code it holds.

    Parameters
    ----------
    path : path
    trusted : sequence of str, optional
        Fully qualified type names to trust beyond skops's defaults and
        :data:`featx.model.saved.TRUSTED_TYPES`; needed only for a head of your own types. Trust
        only files whose origin you trust.
    cache : path, optional
        An embedding cache for the rebuilt embedder (the file never stores one).
    safe_mode : bool, default=True
        Passed to the embedder: a model-file backbone loads with Keras's safe mode (no Lambda
        code) unless ``False``, whatever the embedder had when saved.

    Returns
    -------
    FeatxModel
        With ``manifest`` set.

    Warns
    -----
    ModelVersionWarning
        When featx, scikit-learn or Keras differ from the versions the file was made with
        (each named with both versions).

    Raises
    ------
    UntrustedModelError
        If the head holds a type not trusted; the message names it and how to trust it.
    FeatxError
        If the file is not a featx model, has a newer format, is damaged, or its backbone no
        longer resolves to the embeddings the head was trained on.
    """
    embedder, head, manifest = read_model(path, trusted=trusted, cache=cache, safe_mode=safe_mode)
    model = FeatxModel(embedder, head, info=manifest.get("info") or {})
    model.manifest = manifest
    return model


def _as_featx_model(model: Any) -> FeatxModel:
    from featx.embed.embedder import ImageEmbedder

    if isinstance(model, FeatxModel):
        return model
    steps = getattr(model, "steps", None)
    if steps and isinstance(steps[0][1], ImageEmbedder) and len(steps) > 1:
        from sklearn.pipeline import Pipeline

        rest = steps[1:]
        head = rest[0][1] if len(rest) == 1 else Pipeline(rest)
        return FeatxModel(steps[0][1], head)
    raise FeatxError(
        f"save_model takes a FeatxModel or a fitted Pipeline whose first step is an "
        f"ImageEmbedder; got {type(model).__name__}."
    )
