"""The end-to-end demo: real images on disk -> ImageNet features -> tuned heads, against pixels.

:func:`run_demo` writes Fashion-MNIST (or, when the Debian package is missing, scikit-learn's
digits) as a folder of PNG files, embeds the files with :class:`featx.ImageEmbedder` through an
HDF5 cache, and tunes the same heads (:func:`featx.tune_heads`: logistic regression, RBF SVM,
k nearest neighbours and a small MLP by default) on the embeddings and on the raw pixels, with
the same stratified folds. It prints both leaderboards, and writes a leaderboard plot, the best
head's confusion matrix, the leaderboards as CSV, the best embedding head as a saved model
(``model.featx``) and ``report.html`` (:func:`featx.report.write_report`: the leaderboard, the
plots, per-class precision and recall, a t-SNE map of at most 1,500 of the embeddings and the
test images the best head got wrong) into the output folder. A second run with the same sizes
finds every embedding in the cache.

The input size (160 px) was chosen by 5-fold cross-validation on the 2,000 training images,
never on the test images: with the offline MobileNet v1 ImageNet weights and a logistic
regression the cross-validated accuracy was 83.8-85.5% at 128 px, 85.5-86.6% at 160 px and
85.0-86.1% at 224 px (which costs 2.5 times as much to embed). The sizes (2,000 + 1,000 images)
keep the whole run to two to three minutes on 2 CPU cores, well inside ten.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["run_demo", "load_demo_data", "second_family", "DEMO_INPUT_SIZE", "DEMO_HEADS"]

#: The input size the demo embeds at (see the module docstring for how it was chosen).
DEMO_INPUT_SIZE = 160
#: The heads the demo tunes, on the embeddings and on the raw pixels.
DEMO_HEADS: tuple[str, ...] = ("logreg", "rbf_svm", "knn", "mlp")


def load_demo_data(
    n_train: int, n_test: int, log: Callable[[str], None] | None = print
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Class-stratified Fashion-MNIST training and test images, or digits when it is missing.

    The fallback to scikit-learn's digits is announced loudly through ``log`` (digits is a
    different, easier data set), and its sizes are capped to the 1,797 images it has.

    Returns
    -------
    (name, train images, train labels, test images, test labels, class names)
        ``name`` is ``"fashion-mnist"`` or ``"digits"``; images are uint8 (N, H, W).
    """
    log = log or (lambda line: None)
    from featx.data.datasets import load_digits_images, load_fashion_mnist, stratified_subset

    try:
        x_train, y_train, classes = load_fashion_mnist("train", n_train)
        x_test, y_test, _ = load_fashion_mnist("test", n_test)
        return "fashion-mnist", x_train, y_train, x_test, y_test, classes
    except FeatxError as exc:
        log("!" * 78)
        log(f"!! Fashion-MNIST is not available: {exc}")
        log("!! FALLING BACK to scikit-learn's 8x8 digits: a different, smaller and easier data")
        log("!! set. The numbers below are NOT the Fashion-MNIST demo.")
        log("!" * 78)
    images, labels, classes = load_digits_images()
    total = len(images)
    if n_train + n_test > total:
        n_test = max(1, round(total * n_test / (n_train + n_test)))
        n_train = total - n_test
        log(f"digits has {total} images: using {n_train} to train and {n_test} to test")
    test = stratified_subset(labels, n_test)
    rest = np.setdiff1d(np.arange(total), test)
    train = rest[stratified_subset(labels[rest], n_train)]
    return "digits", images[train], labels[train], images[test], labels[test], classes


def second_family(backbone: Any, weights: Any) -> tuple[str, ...]:
    """The other offline ImageNet family the demo compares with: EfficientNet-Lite0, when
    the demo runs ImageNet MobileNet and ``featx weights install efficientnet_lite0`` was run.

    Examples
    --------
    >>> from featx.data.demo import second_family
    >>> second_family("resnet50", "imagenet")
    ()
    """
    from featx._home import keras_models_dir
    from featx.nets.efficientnet_lite import weight_filename

    if backbone != "mobilenet" or weights != "imagenet":
        return ()
    lite = "efficientnet_lite0"
    installed = (keras_models_dir() / weight_filename(lite, include_top=False)).is_file()
    return (lite,) if installed else ()


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    n_train: int = 2000,
    n_test: int = 1000,
    backbone: Any = "mobilenet",
    weights: Any = "imagenet",
    input_size: Any = DEMO_INPUT_SIZE,
    heads: Sequence[str] = DEMO_HEADS,
    cv: int = 5,
    n_jobs: int | None = None,
    random_state: int = 0,
    batch_size: int = 32,
    verbose: bool | None = None,
    also: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Embed a real labelled image set from PNG files, tune heads on it, compare with pixels.

    The images are written under ``out_dir`` (``<dataset>-train-<n>/`` and
    ``<dataset>-test-<n>/``, one sub-folder per class), listed with
    :func:`featx.load_image_folder` and embedded from their paths with
    :class:`featx.ImageEmbedder` into ``out_dir/embeddings.h5``. The same heads are tuned
    (:func:`featx.tune_heads`, stratified ``cv``-fold grid search on the training images) on
    the embeddings and, as a baseline, on the raw pixels (scaled to [0, 1]); each is refitted
    with its best parameters and scored on the test images. The head with the best
    cross-validated score on the embeddings is saved with the embedder's configuration as
    ``out_dir/model.featx``, and ``out_dir/report.html`` shows it
    (:func:`featx.report.write_report`).

    With the defaults (Fashion-MNIST, ImageNet MobileNet v1 at 160 px, 2,000 + 1,000 images)
    the best head reaches about 88% test accuracy on the embeddings against about 85% on the
    pixels (88.2% against 84.9% measured), in two to three minutes on 2 CPU cores.

    Parameters
    ----------
    out_dir : path
        Where the image folders, the cache, the plots and the model go; created when missing.
    n_train, n_test : int, default=2000, 1000
        Sizes of the class-stratified training and test subsets.
    backbone, weights, input_size, batch_size
        As in :class:`featx.ImageEmbedder`. ``weights=None`` (a random network) runs without
        the ImageNet weights, for tests; its features are much worse.
    heads : sequence of str, default=DEMO_HEADS
        Preset heads to tune (:func:`featx.list_heads`).
    cv : int, default=5
        Cross-validation folds (fewer when a class has fewer training images).
    n_jobs : int or None, default=None
        Parallel fits in each search (``-1``: all cores).
    random_state : int, default=0
        Seeds the folds and the heads.
    verbose : bool or None, default=None
        Show a progress bar while embedding; ``None``: when standard error is a terminal.
    also : sequence of str or None, default=None
        More registry backbones to embed (same weights, input size and cache) and tune the same
        heads on, reported side by side. ``None``: :func:`second_family` (EfficientNet-Lite0
        beside ImageNet MobileNet when its weights are installed).
    log : callable or None, default=print
        Called with each line of the report.

    Returns
    -------
    dict
        ``dataset``, ``n_train``, ``n_test``, ``n_images``, ``classes``, ``backbone`` (the
        embedder's description), ``input_size``, ``accuracy`` and ``best_head`` (the best head
        on the embeddings, by cross-validation, and its test accuracy), ``pixel_accuracy`` and
        ``pixel_best_head`` (the same on raw pixels), ``leaderboard`` and
        ``pixel_leaderboard`` (:class:`featx.Leaderboard`), ``n_embedded``, ``n_cached``,
        ``embed_seconds``, ``images_per_second`` (images through the network per second of
        embedding; ``None`` when all came from the cache), ``tune_seconds``, ``wall_seconds``,
        ``cache``, ``image_dirs``, ``model``, ``report``, ``plots``, ``tables``, and
        ``families``: per backbone (the main one first, then ``also``), its ``accuracy``,
        ``best_head``, ``cv_score``, ``embed_seconds`` and ``leaderboard``.

    Raises
    ------
    WeightsNotFoundError
        If ``weights="imagenet"`` and the weights are not installed; ``featx weights install
        mobilenet`` installs them.

    Examples
    --------
    >>> import tempfile
    >>> result = run_demo(tempfile.mkdtemp(), n_train=40, n_test=20, weights=None,
    ...                   input_size=32, log=None)  # doctest: +SKIP
    >>> result["n_images"]  # doctest: +SKIP
    60
    """
    from featx.embed.embedder import ImageEmbedder

    say = log or (lambda line: None)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if verbose is None:
        verbose = sys.stderr.isatty()

    dataset, x_train, y_train, x_test, y_test, classes = load_demo_data(n_train, n_test, say)
    splits = {split: _write_split(out / f"{dataset}-{split}-{len(labels)}", images, labels,
                                  classes)
              for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test))}
    say(
        f"{dataset}: {len(y_train)} training and {len(y_test)} test images, "
        f"{len(classes)} classes, written as PNG files under {out}"
    )

    cache = out / "embeddings.h5"
    embedding = dict(weights=weights, input_size=input_size, batch_size=batch_size, cache=cache,
                     verbose=verbose)
    embedder = ImageEmbedder(backbone, **embedding)
    features, n_embedded, n_cached, embed_seconds = _embed(embedder, splits)
    label = embedder.config_.label
    rate = n_embedded / embed_seconds if n_embedded and embed_seconds > 0 else None
    say(
        f"embedded {n_embedded} images ({n_cached} from the cache) with {label} "
        f"in {embed_seconds:.1f} s" + (f", {rate:.1f} images/s" if rate else "")
    )

    smallest = int(np.unique(splits["train"]["y"], return_counts=True)[1].min())
    folds = max(2, min(cv, smallest))
    if folds != cv:
        say(f"using {folds}-fold cross-validation: a class has only {smallest} training images")
    pixels = {s: splits[s]["images"].reshape(len(splits[s]["images"]), -1) / 255.0
              for s in ("train", "test")}
    tune = dict(heads=heads, cv=folds, random_state=random_state, n_jobs=n_jobs, log=say)
    tune_started = time.perf_counter()
    boards = {}
    for name, X in (("embeddings", features), ("raw pixels", pixels)):
        say(f"tuning {len(heads)} heads on {name} ({X['train'].shape[1]} features), "
            f"{folds}-fold cross-validation:")
        boards[name] = _tune(X, splits, tune)
    tune_seconds = time.perf_counter() - tune_started
    main_name = embedder.config_.name if embedder.config_.kind == "registry" else "backbone"
    families = {main_name: _family(boards["embeddings"], embed_seconds)}
    for other in second_family(backbone, weights) if also is None else also:
        other_embedder = ImageEmbedder(other, **embedding)
        X, _, _, other_seconds = _embed(other_embedder, splits)
        say(f"embedded the same images with {other_embedder.config_.label} in "
            f"{other_seconds:.1f} s; tuning {len(heads)} heads on its {X['train'].shape[1]} "
            "features:")
        boards[f"{other} features"] = _tune(X, splits, tune)
        families[other] = _family(boards[f"{other} features"], other_seconds)
    for name, board in boards.items():
        say("")
        say(f"leaderboard on {name} (ranked by cross-validation; test = {len(y_test)} held-out "
            "images):")
        for line in board.to_text().splitlines():
            say("  " + line)

    written = _write_outputs(out, dataset, classes, main_name, boards, embedder, features,
                             splits, random_state)
    wall = time.perf_counter() - started
    emb_board, px_board = boards["embeddings"], boards["raw pixels"]
    best, px_best = emb_board.best, px_board.best
    assert best.test_score is not None and px_best.test_score is not None
    _say_summary(say, families, px_board, written, splits["test"]["root"])
    say(f"wall time {wall:.1f} s (embedding {embed_seconds:.1f} s, tuning {tune_seconds:.1f} s); "
        f"cache {cache}")
    plots, tables = written["plots"], written["tables"]
    return {
        "dataset": dataset,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_images": int(len(y_train) + len(y_test)),
        "classes": list(classes),
        "backbone": label,
        "input_size": embedder.config_.input_size,
        "accuracy": float(best.test_score),
        "best_head": best.head,
        "pixel_accuracy": float(px_best.test_score),
        "pixel_best_head": px_best.head,
        "leaderboard": emb_board,
        "pixel_leaderboard": px_board,
        "n_embedded": n_embedded,
        "n_cached": n_cached,
        "embed_seconds": embed_seconds,
        "images_per_second": rate,
        "tune_seconds": tune_seconds,
        "wall_seconds": wall,
        "cache": str(cache),
        "image_dirs": [str(splits[s]["root"]) for s in ("train", "test")],
        "model": str(written["model"]),
        "report": str(written["report"]),
        "plots": [str(p) for p in plots],
        "tables": [str(t) for t in tables],
        "families": families,
    }


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray,
                 classes: Sequence[str]) -> dict[str, Any]:
    """One split as PNG files under ``root``, one folder per class; its paths, class names
    (the heads learn names, so that the saved model predicts names) and pixels, aligned."""
    from featx.data.datasets import write_image_folder
    from featx.embed.images import load_image_folder

    # Sorted by label, the folder lists in array order: paths and pixels stay aligned.
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    root = write_image_folder(images, labels, classes, root)
    paths, folder_labels, _ = load_image_folder(root)
    if not np.array_equal(folder_labels, labels):  # pragma: no cover - a bug, not bad input
        raise FeatxError(f"the images read back from {str(root)!r} lost their order")
    return {"root": root, "paths": paths, "y": np.asarray(classes)[labels], "images": images}


def _embed(embedder: Any, splits: dict[str, dict[str, Any]]
           ) -> tuple[dict[str, np.ndarray], int, int, float]:
    """Both splits' embeddings, the images embedded and found in the cache, and the seconds."""
    started = time.perf_counter()
    features: dict[str, np.ndarray] = {}
    n_embedded = n_cached = 0
    for split in ("train", "test"):
        features[split] = embedder.fit_transform(splits[split]["paths"])
        n_embedded += embedder.report_.n_embedded
        n_cached += embedder.report_.n_hits
    return features, n_embedded, n_cached, time.perf_counter() - started


def _tune(X: dict[str, np.ndarray], splits: dict[str, dict[str, Any]],
          tune: dict[str, Any]) -> Any:
    """The heads tuned on the training rows and tested on the test rows."""
    from featx.heads import tune_heads

    return tune_heads(X["train"], splits["train"]["y"], test=(X["test"], splits["test"]["y"]),
                      **tune)


def _write_outputs(out: Path, dataset: str, classes: Sequence[str], backbone_name: str,
                   boards: dict[str, Any], embedder: Any, features: dict[str, np.ndarray],
                   splits: dict[str, dict[str, Any]], random_state: int) -> dict[str, Any]:
    """The plots, the leaderboards as CSV, the best head as ``model.featx`` and
    ``report.html`` (featx.report: t-SNE of at most 1,500 of the embeddings)."""
    from featx.model import FeatxModel
    from featx.report.page import write_report
    from featx.report.plots import plot_confusion_matrix, plot_leaderboard

    emb_board, px_board = boards["embeddings"], boards["raw pixels"]
    best = emb_board.best
    n_train, n_test = len(splits["train"]["y"]), len(splits["test"]["y"])
    others = {name: board for name, board in boards.items() if name.endswith(" features")}
    plots = [
        plot_leaderboard(
            {f"{backbone_name} features": emb_board, **others, "raw pixels": px_board},
            out / "leaderboard.png",
            title=f"{dataset}: heads on {backbone_name} features vs raw pixels "
            f"({n_train} training images)",
        ),
        plot_confusion_matrix(
            emb_board.y_true, emb_board.y_pred, out / "confusion_matrix.png", labels=classes,
            title=f"{best.head} on {backbone_name} features: {n_test} {dataset} test "
            f"images, accuracy {best.test_score:.1%}",
        ),
    ]
    tables = [emb_board.to_csv(out / "leaderboard-embeddings.csv"),
              px_board.to_csv(out / "leaderboard-pixels.csv")]
    model = FeatxModel.portable(
        embedder, best.estimator,
        info={"dataset": dataset, "head": best.head, "test_accuracy": best.test_score,
              "n_train": int(n_train), "n_test": int(n_test)},
    )
    model_path = model.save(out / "model.featx")
    px_best = px_board.best
    report = write_report(
        out / "report.html", emb_board,
        embeddings=np.concatenate([features["train"], features["test"]]),
        labels=np.concatenate([splits["train"]["y"], splits["test"]["y"]]),
        eval_sources=splits["test"]["paths"], plots=plots,
        title=f"featx demo: {dataset} on {backbone_name} features",
        random_state=random_state,
        notes=[f"Backbone: {embedder.config_.label}.",
               f"Images: {n_train} training and {n_test} test {dataset} images, as PNG files "
               f"under {out}.",
               f"Raw pixels, the same heads and folds: best {px_best.head}, test accuracy "
               f"{px_best.test_score:.1%}."],
    )
    return {"plots": plots, "tables": tables, "model": model_path, "report": report}

def _say_summary(say: Callable[[str], None], families: dict[str, dict[str, Any]],
                 px_board: Any, written: dict[str, Any], test_root: Path) -> None:
    """The best head per family and on the pixels, and where everything was written."""
    say("")
    for i, (name, family) in enumerate(families.items()):
        say(f"best head on {name} features: {family['best_head']}, test accuracy "
            f"{family['accuracy']:.1%}" + (" (same images, heads and folds)" if i else ""))
    say(f"best head on raw pixels: {px_board.best.head}, test accuracy "
        f"{px_board.best.test_score:.1%}")
    plots, tables, model = written["plots"], written["tables"], written["model"]
    say(f"plots: {plots[0]}, {plots[1]}")
    say(f"leaderboards: {tables[0]}, {tables[1]}")
    say(f"report: {written['report']}  (open it in a browser)")
    say(f"model: {model}  (try: featx predict {model} {test_root})")

def _family(board: Any, embed_seconds: float) -> dict[str, Any]:
    best = board.best
    return {"accuracy": float(best.test_score), "best_head": best.head,
            "cv_score": float(best.cv_mean), "embed_seconds": embed_seconds, "leaderboard": board}
