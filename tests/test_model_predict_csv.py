"""The predict CSV: every row as wide as its header, for every preset head (csv and pandas)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featx import FeatxModel, ImageEmbedder, list_heads, make_head
from featx.model import Prediction, predictions_csv_rows
from tests.conftest import tiny_convnet

# Class names that need quoting in CSV: a comma, a quote, a slash.
CLASSES = ["T-shirt/top", 'say "cheese"', "a,b"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], np.ndarray]:
    """24 small PNGs in three colour-coded classes, and one file that is not an image."""
    root = tmp_path_factory.mktemp("predict-csv")
    rng = np.random.default_rng(3)
    paths, labels = [], []
    for i in range(24):
        c = i % 3
        arr = rng.integers(0, 120, size=(16, 16, 3), dtype=np.uint8)
        arr[..., c] = 250
        path = root / f"img{i:02d}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
        labels.append(CLASSES[c])
    (root / "broken.png").write_bytes(b"not a PNG")
    return paths + [str(root / "broken.png")], np.asarray(labels)


@pytest.fixture(scope="module")
def features(photos: tuple[list[str], np.ndarray]) -> np.ndarray:
    paths, _ = photos
    return ImageEmbedder(tiny_convnet, input_size=16).fit_transform(paths[:-1])


@pytest.mark.parametrize("name", list_heads())
def test_every_row_has_the_headers_width(name, photos, features):
    paths, labels = photos
    head = make_head(name).fit(features, labels)
    model = FeatxModel(ImageEmbedder(tiny_convnet, input_size=16), head)
    predictions = model.predict_items(paths)
    rows = predictions_csv_rows(model, predictions)
    text = io.StringIO()
    csv.writer(text).writerows(rows)

    parsed = list(csv.reader(io.StringIO(text.getvalue())))
    header = parsed[0]
    assert {len(row) for row in parsed} == {len(header)}, name
    probas = [f"proba_{c}" for c in sorted(CLASSES)] if model.has_proba else []
    assert header == ["path", "prediction", *probas, "error"]
    assert len(parsed) == len(paths) + 1

    frame = pd.read_csv(io.StringIO(text.getvalue()), keep_default_na=False)
    assert list(frame.columns) == header
    assert frame["path"].tolist() == paths
    expected = head.predict(features).tolist()
    assert frame["prediction"].tolist()[:-1] == expected
    assert frame["prediction"].iloc[-1] == "" and "Pillow" in frame["error"].iloc[-1]
    assert (frame["error"].iloc[:-1] == "").all()
    if probas:
        sums = frame[probas].iloc[:-1].astype(float).sum(axis=1)
        assert np.allclose(sums, 1.0, atol=1e-4)
        assert (frame[probas].iloc[-1] == "").all()


def test_rbf_svm_has_no_probability_columns(features, photos):
    # The measured choice (docs/architecture.md): SVC(probability=True) made the grid search
    # 8x slower on the demo's size, and scikit-learn 1.9 deprecates it.
    head = make_head("rbf_svm").fit(features, photos[1])
    rows = predictions_csv_rows(FeatxModel(None, head), [Prediction("x.png", "a,b", None, None)])
    assert rows == [["path", "prediction", "error"], ["x.png", "a,b", ""]]

