"""featx probe: the layers x heads table, the decision, and what it writes for featx predict."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from featx import load_model
from featx.cli.main import main


@pytest.fixture
def labelled_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, cls in enumerate(["dark", "light"]):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            base = rng.integers(0, 110) + 60 * c
            pixels = (rng.integers(0, 90, size=(24, 24, 3)) + base).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{cls}{i}.png")
    return root


def test_probe_prints_the_table_and_decision_and_writes_a_model(labelled_folder, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    cache = tmp_path / "emb.h5"
    code = main(["probe", str(labelled_folder), "--backbone", "mobilenet", "--weights", "none",
                 "--input-size", "32", "--cache", str(cache), "--layers",
                 "conv_pw_3_relu,conv_pw_11_relu,default", "--heads", "logreg,knn", "--cv", "2",
                 "--test-size", "0.25", "--n-jobs", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    header = next(line for line in printed.splitlines() if line.startswith("#"))
    assert header.split()[:3] == ["#", "layer", "head"]
    assert "6 rows (3 layers x 2 heads)" in printed
    assert "best: " in printed and "over 2 folds" in printed
    assert "the default cut (conv_pw_13_relu" in printed or "wins" in printed
    with open(out / "probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"layer", "head", "cv_mean", "cv_std"} <= set(rows[0])
    assert {r["layer"] for r in rows} == {"conv_pw_3_relu", "conv_pw_11_relu", "conv_pw_13_relu"}
    assert (out / "depth.png").read_bytes()[:4] == b"\x89PNG"
    assert "<html" in (out / "report.html").read_text(encoding="utf-8")[:300].lower()
    # The saved model embeds at the best layer and predicts the files.
    model = load_model(out / "model.featx")
    best_layer = rows[0]["layer"]
    assert model.embedder.get_params()["layer"] == (
        None if best_layer == "conv_pw_13_relu" else best_layer)
    assert model.info["layer"] == best_layer
    images = sorted(str(p) for p in labelled_folder.rglob("*.png"))
    assert main(["predict", str(out / "model.featx"), *images[:3], "--out",
                 str(tmp_path / "pred.csv")]) == 0
    with open(tmp_path / "pred.csv", newline="") as f:
        assert [r["prediction"] in ("dark", "light") for r in csv.DictReader(f)] == [True] * 3


def test_flatten_on_a_wide_layer_is_refused_naming_avg_and_max(labelled_folder, tmp_path,
                                                               capsys):
    code = main(["probe", str(labelled_folder), "--backbone", "mobilenet", "--weights", "none",
                 "--cache", str(tmp_path / "emb.h5"), "--layers", "conv_pw_1_relu",
                 "--pooling", "flatten", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "802,816 features per image" in err and "pooling='avg' or pooling='max'" in err
    assert not (tmp_path / "emb.h5").exists()


def test_bad_layers_option_is_a_usage_error(labelled_folder, tmp_path, capsys):
    code = main(["probe", str(labelled_folder), "--backbone", "mobilenet", "--cache",
                 str(tmp_path / "emb.h5"), "--layers", "a,,b"])
    assert code == 2
    assert "expected 'auto' or comma-separated layer names" in capsys.readouterr().err


def test_the_reports_thumbnails_are_of_held_out_images(labelled_folder, tmp_path):
    """featx probe splits the images itself and passes test= to probe_layers, so the report's
    mistakes are test images: never one the heads were tuned on."""
    from featx.cli.heads import held_out

    out = tmp_path / "out"
    code = main(["probe", str(labelled_folder), "--backbone", "mobilenet", "--weights", "none",
                 "--input-size", "32", "--cache", str(tmp_path / "emb.h5"), "--layers",
                 "conv_pw_3_relu,default", "--heads", "knn", "--cv", "2", "--test-size", "0.5",
                 "--n-jobs", "1", "--random-state", "3", "--out", str(out)])
    assert code == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    paths = sorted(str(p) for p in labelled_folder.rglob("*.png"))
    y = np.array([p.split("/")[-2] for p in paths])
    fit_rows, test_rows = held_out(y, 0.5, random_state=3)
    named = {p for p in paths if p.rsplit("/", 1)[1] in html}
    assert named, "the report names no image (knn at 32 px makes mistakes on this data)"
    assert named <= {paths[i] for i in test_rows}
    assert not named & {paths[i] for i in fit_rows}
