"""Tests of featx.data.demo on a few images with a random network (the real demo is `featx
demo`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import featx.data.datasets
from featx import FeatxError, load_image_folder, load_model
from featx.data.demo import run_demo


def test_demo_small_random_network_then_rerun_from_cache(tmp_path):
    lines: list[str] = []
    kwargs = dict(n_train=50, n_test=30, weights=None, input_size=32, heads=("logreg", "knn"),
                  cv=3, log=lines.append)
    result = run_demo(tmp_path, **kwargs)
    assert result["dataset"] == "fashion-mnist"
    assert (result["n_train"], result["n_test"], result["n_images"]) == (50, 30, 80)
    assert result["n_embedded"] == 80 and result["n_cached"] == 0
    assert result["input_size"] == (32, 32)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["pixel_accuracy"] > 0.3
    assert result["best_head"] == result["leaderboard"].best.head
    assert result["accuracy"] == result["leaderboard"].best.test_score
    assert {r.head for r in result["pixel_leaderboard"]} == {"logreg", "knn"}
    assert result["images_per_second"] > 0 and result["wall_seconds"] >= result["embed_seconds"]
    assert result["cache"] == str(tmp_path / "embeddings.h5")
    assert any("raw pixels" in line for line in lines)
    assert any(line.strip().startswith("#  head") for line in lines)  # the leaderboards
    for path in [*result["plots"], *result["tables"], result["model"], result["report"]]:
        assert Path(path).is_file() and str(path) in "\n".join(lines)
    # report.html: the leaderboard, the demo's plots, the t-SNE map of the embeddings.
    page = Path(result["report"]).read_text(encoding="utf-8")
    assert result["report"] == str(tmp_path / "report.html")
    assert "<h2>Leaderboard</h2>" in page and "fashion-mnist" in page
    assert 'id="map"' in page and "No embeddings were given" not in page
    assert page.count('src="data:image/png;base64,') >= 3  # two plots and the map
    assert "Raw pixels, the same heads and folds: best " in page

    # The saved model predicts the test images' classes (by name) as the tuned head did.
    model = load_model(result["model"], cache=result["cache"])
    test_paths = load_image_folder(result["image_dirs"][1])[0]
    assert model.predict(test_paths).tolist() == result["leaderboard"].y_pred.tolist()

    again = run_demo(tmp_path, **kwargs)
    assert again["n_embedded"] == 0 and again["n_cached"] == 80
    assert again["images_per_second"] is None
    assert again["accuracy"] == result["accuracy"]


def _missing(*args, **kwargs):
    raise FeatxError("Fashion-MNIST file '...' does not exist")


def test_demo_falls_back_to_digits_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(featx.data.datasets, "load_fashion_mnist", _missing)
    lines: list[str] = []
    result = run_demo(tmp_path, n_train=40, n_test=20, weights=None, input_size=32,
                      heads=("knn",), log=lines.append)
    assert result["dataset"] == "digits" and result["classes"] == [str(d) for d in range(10)]
    assert result["n_images"] == 60
    assert any("FALLING BACK" in line for line in lines)
    # 4 training images per class: the demo uses 4 folds rather than failing.
    assert result["leaderboard"].cv == 4 and any("4-fold" in line for line in lines)


def test_demo_digits_sizes_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(featx.data.datasets, "load_fashion_mnist", _missing)
    from featx.data.demo import load_demo_data

    name, x_train, y_train, x_test, y_test, _ = load_demo_data(2000, 1000, lambda line: None)
    assert name == "digits" and len(x_train) + len(x_test) == 1797
    assert len(x_test) == 599
    assert np.bincount(y_test).min() > 50  # stratified



def test_demo_reports_a_second_family_side_by_side(tmp_path):
    lines: list[str] = []
    result = run_demo(tmp_path, n_train=40, n_test=20, weights=None, input_size=32,
                      heads=("logreg",), cv=2, also=("efficientnet_lite0",), log=lines.append)
    assert list(result["families"]) == ["mobilenet", "efficientnet_lite0"]
    lite = result["families"]["efficientnet_lite0"]
    assert lite["leaderboard"].best.head == lite["best_head"] == "logreg"
    assert lite["accuracy"] == lite["leaderboard"].best.test_score
    assert lite["embed_seconds"] > 0
    assert result["families"]["mobilenet"]["accuracy"] == result["accuracy"]
    best_line = "best head on efficientnet_lite0 features: logreg"
    assert any(line.startswith(best_line) for line in lines)
    assert any("leaderboard on efficientnet_lite0 features" in line for line in lines)
    # Both families' rows went into the one cache, a group each.
    from featx import EmbeddingCache

    assert len(EmbeddingCache(result["cache"]).groups()) == 2


def test_second_family_only_beside_imagenet_mobilenet_when_installed(
    tmp_path, monkeypatch, lite0_weights
):
    from featx.data.demo import second_family

    assert second_family("mobilenet", "imagenet") == ("efficientnet_lite0",)
    assert second_family("mobilenet", None) == ()
    assert second_family("resnet50", "imagenet") == ()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing installed there
    assert second_family("mobilenet", "imagenet") == ()
