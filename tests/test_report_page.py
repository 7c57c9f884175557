"""report.html: self-contained, structured, with the best head's mistakes as thumbnails.

The page is checked by parsing it with the standard library's html.parser. That it renders in a
real browser (headless Chromium) is a documented manual check: docs/report.md.
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx import tune_heads
from featx.exceptions import FeatxError
from featx.report.page import embedding_map, write_report


class Page(HTMLParser):
    """The parts of a page the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.open: list[str] = []
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.figures: list[dict[str, str]] = []
        self.text: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag not in ("meta", "img", "br", "link"):
            self.open.append(tag)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
        if tag == "img":
            self.images.append(attrs)
        if tag == "figure":
            self.figures.append(attrs)
        if tag == "h2":
            self._in_h2 = True
        for key in ("href", "src", "action"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()
        self._in_h2 = False if tag == "h2" else self._in_h2

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.open == [], f"unclosed tags: {page.open}"
    return page


def png_of(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,"), uri[:60]
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """60 images of 3 classes on disk, embeddings that blur two of the classes, labels."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    classes = np.array(["ankle boot", "sandal", "<shirt & co>"])  # names that need escaping
    y = classes[np.arange(60) % 3]
    X = rng.normal(size=(60, 6)).astype(np.float32)
    X[y == "ankle boot", 0] += 4.0  # one class apart, two that overlap
    paths = []
    for i in range(60):
        arr = np.full((28, 28), 40 * (i % 3) + 20, np.uint8)
        arr[4:8, 4 + i % 20] = 255
        path = root / f"item{i:02d}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return X, y, np.array(paths), root


def test_the_report_is_self_contained_and_shows_the_mistakes(data, tmp_path):
    X, y, paths, _ = data
    positions = np.arange(len(y))
    test = positions[::4]
    fit = np.setdiff1d(positions, test)
    board = tune_heads(X[fit], y[fit], heads=["logreg", "knn"], cv=3, test=(X[test], y[test]))
    wrong = np.flatnonzero(board.y_true != board.y_pred)
    assert 0 < len(wrong) < len(test)  # the two overlapping classes are confused

    page_path = write_report(tmp_path / "out" / "report.html", board, embeddings=X, labels=y,
                             eval_sources=list(paths[test]), title="Shoes & shirts",
                             notes=["Backbone: tiny <net>."])
    text = page_path.read_text(encoding="utf-8")
    page = parse(page_path)

    assert text.startswith("<!DOCTYPE html>")
    assert page.sections == ["leaderboard", "per-class", "map", "misclassified"]
    assert page.h2 == ["Leaderboard", "Per-class precision and recall", "Embedding map",
                       "What the best head got wrong"]
    assert "script" not in page.tags and "link" not in page.tags and page.links == []
    assert "Shoes & shirts" in page.text and "Backbone: tiny <net>." in "".join(page.text)
    # Every image is inline PNG: two plots, the map, one thumbnail per mistake.
    plots = [png_of(img["src"]) for img in page.images if img.get("class") == "plot"]
    assert len(plots) == 3 and all(p.size[0] > 300 for p in plots)
    thumbs = [img for img in page.images if img.get("class") == "thumb"]
    assert len(thumbs) == len(wrong) == len(page.figures)
    for img, figure, i in zip(thumbs, page.figures, wrong, strict=True):
        assert png_of(img["src"]).size == (28, 28)
        assert figure["data-true"] == board.y_true[i] and figure["data-pred"] == board.y_pred[i]
        assert Path(paths[test][i]).name in "".join(page.text)
        assert figure["data-true"] != figure["data-pred"]
    # The leaderboard table names both heads, the per-class table every class once.
    body = "".join(page.text)
    assert "logreg" in body and "knn" in body
    for cls in y:
        assert cls in page.text
    assert f"got {len(wrong)} of {len(test)} test images wrong" in body


def test_without_a_test_set_the_mistakes_are_out_of_fold_and_capped(data, tmp_path):
    X, y, paths, _ = data
    board = tune_heads(X, y, heads=["knn"], cv=3)
    wrong = np.flatnonzero(board.y_true != board.y_pred)
    assert len(wrong) > 5
    page = parse(write_report(tmp_path / "r.html", board, eval_sources=list(paths),
                              max_thumbnails=5))
    body = "".join(page.text)
    assert f"got {len(wrong)} of {len(y)} training images (out-of-fold predictions) wrong" in body
    assert "The first 5 are shown." in body and len(page.figures) == 5
    assert "No embeddings were given" in body
    assert sum(img.get("class") == "plot" for img in page.images) == 2


def test_array_images_and_an_unreadable_file_are_handled(data, tmp_path):
    X, y, paths, root = data
    board = tune_heads(X, y, heads=["knn"], cv=3)
    sources: list = [np.full((40, 30, 3), 9, np.uint8) for _ in y]
    first_wrong = int(np.flatnonzero(board.y_true != board.y_pred)[0])
    sources[first_wrong] = str(root / "missing.png")
    page = parse(write_report(tmp_path / "r.html", board, eval_sources=sources))
    assert "(unreadable)" in page.text and "missing.png" in page.text
    thumbs = [png_of(img["src"]) for img in page.images if img.get("class") == "thumb"]
    assert thumbs and all(t.size == (30, 40) for t in thumbs)


def test_sources_that_do_not_match_the_board_are_refused(data, tmp_path):
    X, y, paths, _ = data
    board = tune_heads(X, y, heads=["knn"], cv=3)
    with pytest.raises(FeatxError, match=r"eval_sources holds 3 images; expected one per "
                                         r"evaluated row of the leaderboard \(60"):
        write_report(tmp_path / "r.html", board, eval_sources=list(paths[:3]))


def test_the_map_is_seeded_and_sampled(data):
    X, y, _, _ = data
    a, ya = embedding_map(X, y, max_points=40, random_state=1)
    b, yb = embedding_map(X, y, max_points=40, random_state=1)
    assert a.shape == (40, 2) and np.array_equal(a, b) and np.array_equal(ya, yb)
    with pytest.raises(FeatxError, match="at least 5 embeddings; got 3"):
        embedding_map(X[:3], y[:3])
    with pytest.raises(FeatxError, match=r"embeddings of shape \(n, width\) and n labels"):
        embedding_map(X, y[:-1])
