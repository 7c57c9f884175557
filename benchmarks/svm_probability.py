"""What probabilities would cost the rbf_svm head, on the demo's size.

    .venv/bin/python -m benchmarks.svm_probability [--n 2000]

Embeds ``--n`` Fashion-MNIST training images with ImageNet MobileNet at the demo's 160 px
(2,000 x 1,024 features by default), then times, against the preset as it is (SVC without
probabilities): one fit with ``SVC(probability=True)`` (Platt scaling by an internal 5-fold
cross-validation; deprecated in scikit-learn 1.9), one fit of its named replacement
``CalibratedClassifierCV(SVC(), ensemble=False)``, and the preset's whole grid search (4 values
of C x 5 folds, refit) with and without ``probability=True``. Prints a table of seconds and
ratios. The decision it informed is in docs/architecture.md ("rbf_svm gives no probabilities").
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def _seconds(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="training images (default 2000)")
    args = parser.parse_args()

    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from featx import ImageEmbedder
    from featx.data.datasets import load_fashion_mnist

    images, y, _ = load_fashion_mnist("train", args.n)
    X = ImageEmbedder("mobilenet", input_size=160).fit_transform(images)
    print(f"features: {X.shape[0]} x {X.shape[1]}, {len(np.unique(y))} classes")
    warnings.simplefilter("ignore", FutureWarning)  # probability=True is deprecated in 1.9

    def svc(**kw):  # type: ignore[no-untyped-def]
        return make_pipeline(StandardScaler(), SVC(C=3.0, random_state=0, **kw))

    plain = _seconds(lambda: svc().fit(X, y))
    rows = [("one fit, SVC (the preset)", plain)]
    rows.append(("one fit, SVC(probability=True)", _seconds(lambda: svc(probability=True)
                                                            .fit(X, y))))
    rows.append(("one fit, CalibratedClassifierCV(SVC, ensemble=False)", _seconds(
        lambda: make_pipeline(StandardScaler(), CalibratedClassifierCV(
            SVC(C=3.0, random_state=0), ensemble=False, cv=5)).fit(X, y))))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    grid = {"svc__C": [1.0, 3.0, 10.0, 30.0]}
    search = _seconds(lambda: GridSearchCV(svc(), grid, cv=folds, n_jobs=-1).fit(X, y))
    rows.append(("grid search 4 x 5 folds + refit, SVC", search))
    rows.append(("grid search 4 x 5 folds + refit, SVC(probability=True)", _seconds(
        lambda: GridSearchCV(svc(probability=True), grid, cv=folds, n_jobs=-1).fit(X, y))))
    print(f"| {'what':<56} | seconds | vs SVC |")
    print(f"|{'-' * 58}|--------:|-------:|")
    for name, seconds in rows:
        base = search if name.startswith("grid") else plain
        print(f"| {name:<56} | {seconds:7.1f} | {seconds / base:5.1f}x |")


if __name__ == "__main__":
    main()
