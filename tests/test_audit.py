"""featx.audit(): duplicates, leaks, label issues and outliers of a labelled set, from a cache."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.exceptions import FeatxError
from tests.audit_data import make_audit_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_audit_set(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def found(data):
    return featx.audit(data.paths, data.y, cache=data.cache, test=data.test_paths,
                       y_test=data.y_test, k=5, cv=3)


def _name(path) -> str:
    return os.path.basename(str(path))


def test_featx_audit_is_callable_and_the_package(found):
    import featx.audit as package

    assert package is featx.audit and callable(featx.audit)
    assert featx.audit.find_label_issues is package.find_label_issues
    assert isinstance(found, featx.audit.AuditResult)


def test_each_known_problem_is_found(found):
    dups = list(found.duplicates.rows())
    assert (_name(dups[0][0]), _name(dups[0][1]), dups[0][3]) == ("a0.png", "copy_of_a0.png",
                                                                  "exact")
    near = [(_name(a), _name(b)) for a, b, _, kind in dups if kind == "near"]
    assert near[0] == ("a1.png", "a2.png")
    leaks = list(found.leaks.rows())
    assert (_name(leaks[0][0]), _name(leaks[0][1])) == ("t_a0.png", "b3.png")
    issue = next(found.label_issues.rows())
    assert (_name(issue[0]), issue[1], issue[2]) == ("b7.png", "b", "a")
    assert _name(next(found.outliers.rows())[0]) == "c0.png"
    s = found.summary
    assert (s["n_train"], s["n_test"], s["width"], s["exact"]) == (25, 6, 16, 1)
    assert s["duplicates"] == len(found.duplicates) and s["leaked_test_images"] >= 1
    assert s["threshold"] == featx.audit.DEFAULT_THRESHOLD and "default" in s["threshold_chosen"]
    text = found.summary_text()
    assert "label issues:" in text and f"threshold:    {s['threshold']:g}" in text


def test_tables_as_csv_and_frames(found, tmp_path):
    written = found.write_csv(tmp_path)
    assert [p.name for p in written] == ["duplicates.csv", "leaks.csv", "label_issues.csv",
                                         "outliers.csv"]
    with open(tmp_path / "label_issues.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label", "suggested", "score"] and len(rows) == 1 + len(
        found.label_issues)
    frame = found.leaks.to_frame()
    assert list(frame.columns) == ["test_path", "train_path", "similarity"]
    assert len(frame) == len(found.leaks)


def test_arrays_without_a_cache_and_a_given_threshold(data):
    got = featx.audit(X=data.X, y=None, X_test=data.X_test, threshold=0.9, k=5)
    assert got.summary["threshold_chosen"] == "given" and not got.summary["labelled"]
    assert len(got.label_issues) == 0 and list(got.label_issues.columns) == [
        "path", "label", "suggested", "score"]
    assert next(got.duplicates.rows())[:2] == ("0", "24")  # row numbers name the rows
    assert next(got.leaks.rows())[0] == "0"


def test_bad_input_is_one_clear_line(data, tmp_path):
    stranger = tmp_path / "stranger.png"
    stranger.write_bytes(Path(data.test_paths[1]).read_bytes() + b"x")
    with pytest.raises(FeatxError, match=r"1 of 26 images are not in cache group .*"
                                         r"featx embed SRC --cache"):
        featx.audit([*data.paths, str(stranger)], [*data.y, "a"], cache=data.cache)
    with pytest.raises(FeatxError, match=r"label that no training image carries \('zebra'\)"):
        featx.audit(data.paths, data.y, cache=data.cache, test=data.test_paths,
                    y_test=[*data.y_test[:-1], "zebra"])
    few = data.y.copy()
    few[:2] = "d"
    with pytest.raises(FeatxError, match="class 'd' has 2 images, fewer than the cv=3 folds"):
        featx.audit(data.paths, few, cache=data.cache, cv=3)
    with pytest.raises(FeatxError, match="pass cache="):
        featx.audit(data.paths, data.y)
    with pytest.raises(FeatxError, match="one name per row"):
        featx.audit(data.paths[:3], X=data.X)
    assert np.isfinite(data.X).all()


def test_import_featx_loads_neither_faiss_nor_a_network_framework():
    import subprocess
    import sys

    code = ("import sys, featx; assert callable(featx.audit); "
            "print(sorted(m for m in ('faiss', 'tensorflow', 'keras', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
