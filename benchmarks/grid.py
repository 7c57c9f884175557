"""GridSearchCV (5 folds x 4 candidates) with featx inside the Pipeline, against one embedding
pass plus the same search on arrays, and against the same Pipeline with the embedder uncached.

    python -m benchmarks.grid --folder DIR --n 200 [--backbone mobilenet]

Prints one JSON line of seconds. Labels: which sample photo each JPEG was cut from (6 classes).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--backbone", default="mobilenet")
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    from featx import ImageEmbedder

    paths = sorted(str(p) for p in Path(args.folder).glob("*.jpg"))[: args.n]
    y = np.arange(len(paths)) % 6  # photo i was cut from sample photo i % 6
    weights = "imagenet" if args.backbone == "mobilenet" else None
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    ImageEmbedder(args.backbone, weights=weights).fit_transform(paths[:2])  # build the network

    t0 = time.perf_counter()
    X = ImageEmbedder(args.backbone, weights=weights).fit_transform(paths)
    one_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    GridSearchCV(LogisticRegression(max_iter=2000), grid, cv=cv).fit(X, y)
    heads = time.perf_counter() - t0

    pipe_grid = {"logisticregression__C": grid["C"]}
    timings = {}
    for name, cache in (("featx_cached_s", Path(tempfile.mkdtemp()) / "grid.h5"),
                        ("uncached_s", None)):
        pipe = make_pipeline(ImageEmbedder(args.backbone, weights=weights, cache=cache),
                             LogisticRegression(max_iter=2000))
        t0 = time.perf_counter()
        GridSearchCV(pipe, pipe_grid, cv=cv).fit(paths, y)
        timings[name] = time.perf_counter() - t0
    print(json.dumps({"images": len(paths), "one_pass_s": one_pass, "heads_on_arrays_s": heads,
                      **timings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
