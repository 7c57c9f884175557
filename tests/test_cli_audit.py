"""featx audit: the CSV files and report.html in --out, all or nothing, and one-line errors."""

from __future__ import annotations

import csv
import shutil

import pytest

from tests.audit_data import make_audit_set
from tests.conftest import featx_main


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_audit_set(tmp_path_factory.mktemp("cli-audit"))


def test_audit_writes_the_tables_and_a_report(data, tmp_path):
    out = tmp_path / "out"
    done = featx_main("audit", data.train, "--cache", data.cache, "--test", data.test,
                      "--out", out, "-k", "5", "--cv", "3")
    assert done.returncode == 0, done.stderr
    assert "duplicates:" in done.stdout and "threshold:" in done.stdout
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # a folder like any other
    assert sorted(p.name for p in out.iterdir()) == [
        "duplicates.csv", "label_issues.csv", "leaks.csv", "outliers.csv", "report.html"]
    with open(out / "duplicates.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path_a", "path_b", "similarity", "kind"]
    assert rows[1][0].endswith("a0.png") and rows[1][3] == "exact"
    with open(out / "leaks.csv", newline="") as f:
        assert next(csv.reader(f)) == ["test_path", "train_path", "similarity"]
    page = (out / "report.html").read_text()
    assert 'id="duplicates"' in page and 'id="leaks"' in page and 'id="label-issues"' in page
    assert page.count('<figure class="pair"') >= 3  # duplicate pairs and leaks side by side
    assert "suggested: a" in page and page.count("data:image/png;base64") >= 8


def test_bad_input_leaves_no_files(data, tmp_path):
    out = tmp_path / "out"
    extra = tmp_path / "train"
    shutil.copytree(data.train, extra)
    (extra / "a" / "new.png").write_bytes((data.train / "b" / "b1.png").read_bytes() + b"!")
    done = featx_main("audit", extra, "--cache", data.cache, "--out", out, "--cv", "3")
    assert done.returncode == 1
    assert "not in cache group" in done.stderr and f"featx embed SRC --cache {data.cache}" in (
        done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
    out.mkdir()
    (out / "duplicates.csv").write_text("earlier\n")
    unseen = tmp_path / "test"
    shutil.copytree(data.test, unseen)
    (unseen / "c").rename(unseen / "zebra")
    done = featx_main("audit", data.train, "--cache", data.cache, "--test", unseen, "--out", out)
    assert done.returncode == 1 and "'zebra'" in done.stderr
    done = featx_main("audit", data.train, "--cache", data.cache, "--out", out, "--cv", "9")
    assert done.returncode == 1 and "fewer than the cv=9 folds" in done.stderr
    assert [p.name for p in out.iterdir()] == ["duplicates.csv"]
    assert (out / "duplicates.csv").read_text() == "earlier\n"
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind
