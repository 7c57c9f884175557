"""Tests of the ``featx`` command line.

Most run ``featx.cli.main.main`` in this process (:func:`featx_main`): the text and exit code are
the same, without the few seconds each child spends importing TensorFlow. What only a child
shows runs the installed console script (:func:`run_featx`): that it is installed and starts,
``python -m featx``, a first real embed, an environment variable Keras reads when it is
imported, and the native start-up lines on file descriptor 2.

conftest.py points KERAS_HOME and FEATX_HOME at a session temp dir at import time; the
subprocesses inherit that environment, so they never touch the user's real caches.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featx
from featx.cli.main import main
from tests.conftest import featx_main

FEATX = Path(sys.executable).parent / "featx"


def run_featx(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ)
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    environ.update(env or {})
    return subprocess.run(
        [str(FEATX), *map(str, args)], capture_output=True, text=True, env=environ, timeout=300
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr's ``featx: error:`` lines (TensorFlow may print start-up chatter around them)."""
    return [line for line in result.stderr.splitlines() if line.startswith("featx: error:")]


def test_console_script_is_installed():
    assert FEATX.is_file(), f"the console script {FEATX} is missing; pip install -e ."
    result = run_featx("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"featx {featx.__version__}"


def test_python_dash_m_featx():
    result = subprocess.run(
        [sys.executable, "-m", "featx", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and featx.__version__ in result.stdout


# --help and usage errors run in this process (fast); everything else runs the installed script.


@pytest.mark.parametrize(
    "command",
    [[], ["embed"], ["heads"], ["predict"], ["info"], ["weights"], ["weights", "install"],
     ["weights", "list"], ["demo"]],
    ids=lambda c: " ".join(c) or "featx",
)
def test_help_of_every_command(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: featx {' '.join(command)}".rstrip())
    assert "-q" in out and "-v" in out


def test_help_through_the_console_script():
    result = run_featx("embed", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: featx embed")


@pytest.mark.parametrize(
    "command, message",
    [
        ([], "required: COMMAND"),
        (["weights"], "required: COMMAND"),
        (["embed", "photos"], "required: --backbone, --cache"),
        (["embed", "photos", "--backbone", "x", "--cache", "c.h5", "--batch-size", "0"],
         "positive integer"),
        (["embed", "photos", "--backbone", "x", "--cache", "c.h5", "--input-size", "2x"],
         "expected N or HxW"),
        (["frobnicate"], "invalid choice"),
        (["heads", "photos", "--backbone", "x", "--cache", "c.h5", "--heads", "logreg,svm"],
         "unknown head 'svm'"),
        (["heads", "photos", "--backbone", "x", "--cache", "c.h5", "--test-size", "1.5"],
         "expected a fraction"),
        (["heads", "photos", "--backbone", "x", "--cache", "c.h5", "--cv", "1"],
         "at least 2 folds"),
        (["heads", "photos", "--backbone", "x", "--cache", "c.h5", "--n-jobs", "0"],
         "positive number of jobs or -1"),
        (["predict", "model.featx"], "required: PATH"),
    ],
)
def test_usage_errors_exit_2(command, message, capsys):
    assert main(command) == 2
    assert message in capsys.readouterr().err


# ---- embed / info -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved model, a class folder of 6 good images and one corrupt file."""
    from tests.conftest import save_tiny_convnet

    base = tmp_path_factory.mktemp("cli")
    save_tiny_convnet(base / "tiny.keras", 16)
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["cat", "dog"]):
        (base / "images" / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, size=(18 + i, 20, 3), dtype=np.uint8)
            arr[..., c] = 255
            Image.fromarray(arr).save(base / "images" / cls / f"{cls}{i}.png")
    (base / "images" / "dog" / "broken.jpg").write_bytes(b"this is not a JPEG file")
    return base


@pytest.fixture(scope="module")
def first_embed(workspace: Path) -> subprocess.CompletedProcess:
    return run_featx(
        "embed", workspace / "images", "--backbone", workspace / "tiny.keras",
        "--input-size", "16", "--cache", workspace / "emb.h5",
    )


def test_embed_reports_counts_and_failures(workspace, first_embed):
    result = first_embed
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "embedded 6, already cached 0, failed 1 of 7 images" in out
    broken = str(workspace / "images" / "dog" / "broken.jpg")
    failure = [line for line in out.splitlines() if broken in line]
    assert len(failure) == 1
    assert "not an image file Pillow can read" in failure[0]
    assert (workspace / "emb.h5").is_file()


def test_second_embed_finds_everything_cached(workspace, first_embed):
    assert first_embed.returncode == 0
    result = featx_main(
        "embed", workspace / "images", "--backbone", workspace / "tiny.keras",
        "--input-size", "16", "--cache", workspace / "emb.h5",
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 0, already cached 6, failed 1 of 7 images" in result.stdout
    assert "broken.jpg" in result.stdout


def test_quiet_embed_prints_only_failures(workspace, first_embed):
    assert first_embed.returncode == 0
    result = featx_main(
        "embed", workspace / "images", "--backbone", workspace / "tiny.keras",
        "--input-size", "16", "--cache", workspace / "emb.h5", "-q",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "1 failed:" and "broken.jpg" in lines[1] and len(lines) == 2


def test_embed_flat_folder_and_csv(workspace, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for src in sorted((workspace / "images" / "cat").glob("*.png")):
        (flat / src.name).write_bytes(src.read_bytes())
    (flat / "notes.txt").write_text("not an image; ignored")
    result = featx_main(
        "embed", flat, "--backbone", workspace / "tiny.keras", "--input-size", "16",
        "--cache", workspace / "emb.h5",
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 0, already cached 3, failed 0 of 3 images" in result.stdout

    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerow(["flat/cat0.png", "cat"])  # relative to the CSV's folder
        writer.writerow([str(tmp_path / "missing.png"), "cat"])
    result = featx_main(
        "embed", listing, "--backbone", workspace / "tiny.keras", "--input-size", "16",
        "--cache", workspace / "emb.h5",
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 0, already cached 1, failed 1 of 2 images" in result.stdout
    assert f"{tmp_path / 'missing.png'}: file not found" in result.stdout


def test_info_lists_the_group(workspace, first_embed):
    assert first_embed.returncode == 0
    result = featx_main("info", workspace / "emb.h5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{workspace / 'emb.h5'}: 1 group"
    fingerprint, rows, width = lines[1].split()[0], lines[1].split()[2], lines[1].split()[4]
    assert len(fingerprint) == 24 and rows == "6" and width == "5"
    assert "tiny.keras" in lines[2] and "16x16" in lines[2]
    verbose = featx_main("info", workspace / "emb.h5", "-v")
    assert "input_size: [16, 16]" in verbose.stdout


def test_unknown_backbone_is_one_line_with_a_suggestion(workspace, tmp_path):
    result = featx_main(
        "embed", workspace / "images", "--backbone", "resnet5", "--cache", tmp_path / "c.h5"
    )
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    assert "resnet5" in errors[0] and "did you mean" in errors[0].lower()
    assert "resnet50" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c.h5").exists()


def test_missing_source_and_cache_are_errors(tmp_path):
    result = featx_main("embed", tmp_path / "nope", "--backbone", "mobilenet", "--cache",
                       tmp_path / "c.h5")
    assert result.returncode == 1
    assert "does not exist" in error_lines(result)[0]
    result = featx_main("info", tmp_path / "nope.h5")
    assert result.returncode == 1
    assert error_lines(result) == [f"featx: error: cache file '{tmp_path / 'nope.h5'}' does not "
                                   "exist."]


def test_on_error_raise_exits_1_naming_the_file(workspace, tmp_path):
    result = featx_main(
        "embed", workspace / "images", "--backbone", workspace / "tiny.keras",
        "--input-size", "16", "--cache", tmp_path / "c.h5", "--on-error", "raise",
    )
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1 and "broken.jpg" in errors[0]


# ---- weights ------------------------------------------------------------------------------------


def test_weights_list_empty_keras_home(tmp_path):
    # A child: KERAS_HOME is read when Keras is imported, and this one must be a new, empty home.
    result = run_featx("weights", "list", env={"KERAS_HOME": str(tmp_path / "keras")})
    assert result.returncode == 0, result.stderr
    assert "none installed" in result.stdout
    assert "featx weights install mobilenet" in result.stdout


def test_weights_install_unknown_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    result = featx_main("weights", "install", "resnet50")
    assert result.returncode == 1
    assert len(error_lines(result)) == 1 and "resnet50" in error_lines(result)[0]
    assert not (tmp_path / "keras").exists()  # nothing written for an unknown backbone


# ---- demo ---------------------------------------------------------------------------------------


def test_demo_command_small_tiny_network(workspace, tmp_path):
    # Not the real demo (a tiny random network, 100 images): checks the command end to end.
    result = featx_main(
        "demo", "--out", tmp_path, "--n-train", "60", "--n-test", "40",
        "--backbone", workspace / "tiny.keras", "--input-size", "16", "--heads", "logreg,knn",
        "--cv", "3",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fashion-mnist: 60 training and 40 test images" in out
    assert "embedded 100 images (0 from the cache)" in out
    assert "leaderboard on embeddings" in out and "leaderboard on raw pixels" in out
    assert "best head on raw pixels:" in out
    for name in ("embeddings.h5", "leaderboard.png", "confusion_matrix.png", "model.featx",
                 "leaderboard-embeddings.csv", "leaderboard-pixels.csv", "report.html"):
        assert (tmp_path / name).is_file(), name
        assert str(tmp_path / name) in out  # the report says where everything went


# ---- heads / predict / info on a model ----------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 10 images each, told apart by their red channel."""
    base = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(1)
    for c, cls in enumerate(["NORMAL", "PNEUMONIA"]):
        (base / "train" / cls).mkdir(parents=True)
        for i in range(10):
            arr = rng.integers(0, 200, size=(16, 16, 3), dtype=np.uint8)
            arr[..., 0] = 255 * c
            Image.fromarray(arr).save(base / "train" / cls / f"{i}.png")
    return base


@pytest.fixture(scope="module")
def tuned(workspace: Path, labelled: Path) -> subprocess.CompletedProcess:
    backbone = ("--backbone", workspace / "tiny.keras", "--input-size", "16",
                "--cache", labelled / "emb.h5")
    embedded = featx_main("embed", labelled / "train", *backbone)
    assert embedded.returncode == 0, embedded.stderr
    assert "embedded 20, already cached 0" in embedded.stdout
    return featx_main("heads", labelled / "train", *backbone, "--heads", "logreg,knn",
                     "--cv", "3", "--test-size", "0.25", "--out", labelled / "out",
                     "--n-jobs", "2")


def test_heads_after_embed_embeds_nothing_and_writes_everything(labelled, tuned):
    assert tuned.returncode == 0, tuned.stderr
    out = tuned.stdout
    assert "20 images in 2 classes" in out and "20 embeddings from the cache" in out
    assert "0 embedded" in out
    table = out[out.index("#  head"):].splitlines()
    assert {table[2].split()[1], table[3].split()[1]} == {"logreg", "knn"}
    assert "ROC AUC" in table[0]  # two classes
    assert "tested on 5 held out" in out
    for name in ("leaderboard.csv", "leaderboard.png", "confusion_matrix.png", "model.featx"):
        assert (labelled / "out" / name).is_file(), name
    with open(labelled / "out" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["head"] for r in rows] == [table[2].split()[1], table[3].split()[1]]


@pytest.fixture
def train_and_test(tmp_path: Path) -> Path:
    """train/ and test/ class folders (red channel tells the classes apart); one test file is
    not an image."""
    rng = np.random.default_rng(2)
    for split, n in (("train", 8), ("test", 4)):
        for c, cls in enumerate(["NORMAL", "PNEUMONIA"]):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 200, size=(16, 16, 3), dtype=np.uint8)
                arr[..., 0] = 255 * c
                Image.fromarray(arr).save(tmp_path / split / cls / f"{split}{i}.png")
    (tmp_path / "test" / "NORMAL" / "broken.png").write_bytes(b"not a PNG")
    return tmp_path


@pytest.mark.parametrize("command", ["heads", "probe"])
def test_a_separate_test_folder_is_scored_and_never_tuned_on(workspace, train_and_test,
                                                             command, capsys):
    from featx import load_model
    from featx.cli.main import main

    root = train_and_test
    args = [command, str(root / "train"), "--backbone", str(workspace / "tiny.keras"),
            "--input-size", "16", "--cache", str(root / "emb.h5"), "--heads", "knn", "--cv", "2",
            "--n-jobs", "1", "--test", str(root / "test"), "--out", str(root / "out")]
    if command == "probe":
        args += ["--weights", "none", "--layers", "conv,default"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.out + captured.err
    model = load_model(root / "out" / "model.featx")
    assert (model.info["n_train"], model.info["n_test"]) == (16, 8)
    # Both sets went through the cache: a second run embeds nothing.
    assert main([*args, "-v"]) == 0
    assert " 0 embedded" in capsys.readouterr().out


def test_test_folder_and_test_size_are_one_choice(train_and_test, capsys):
    from featx.cli.main import main

    assert main(["heads", str(train_and_test / "train"), "--test", str(train_and_test / "test"),
                 "--test-size", "0.3"]) == 2
    assert "--test-size: not allowed with argument --test" in capsys.readouterr().err


def test_predict_writes_csv_with_probabilities_and_errors(labelled, tuned, tmp_path):
    assert tuned.returncode == 0, tuned.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG")
    target = tmp_path / "predictions.csv"
    result = featx_main("predict", labelled / "out" / "model.featx", labelled / "train" / "NORMAL",
                       labelled / "train" / "PNEUMONIA" / "0.png", broken, "--out", target)
    assert result.returncode == 0, result.stderr
    assert "11 predictions written" in result.stdout
    assert "1 of 12 images could not be read" in result.stderr
    with open(target, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "prediction", "proba_NORMAL", "proba_PNEUMONIA", "error"]
    assert [r["prediction"] for r in rows[:11]] == ["NORMAL"] * 10 + ["PNEUMONIA"]
    assert all(float(r["proba_NORMAL"]) + float(r["proba_PNEUMONIA"]) == pytest.approx(1, abs=1e-5)
               for r in rows[:11])
    assert rows[11]["path"] == str(broken) and rows[11]["prediction"] == ""
    assert "Pillow" in rows[11]["error"]
    # To standard output when there is no --out; all images unreadable is a failure.
    result = featx_main("predict", labelled / "out" / "model.featx", broken)
    assert result.returncode == 1 and result.stdout.startswith("path,prediction,")


def test_predict_with_a_cache_names_and_takes_retry_failed(labelled, tuned, tmp_path):
    """A failure remembered in the cache says --retry-failed in the CSV; predict takes it."""
    assert tuned.returncode == 0, tuned.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG")
    args = ["predict", str(labelled / "out" / "model.featx"),
            str(labelled / "train" / "NORMAL" / "0.png"), str(broken),
            "--cache", str(tmp_path / "c.h5"), "--out", str(tmp_path / "p.csv"), "-q"]

    def error_column() -> str:
        with open(tmp_path / "p.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows[0]["prediction"] == "NORMAL" and rows[1]["prediction"] == ""
        return rows[1]["error"]

    assert main(args) == 0
    assert "Pillow" in error_column() and "remembered" not in error_column()
    assert main(args) == 0  # from the cache: the failure is remembered
    error = error_column()
    assert error.startswith("not an image file Pillow can read")
    assert error.endswith("(remembered from an earlier run; pass --retry-failed to try again)")
    assert "retry_failed" not in error
    assert main([*args, "--retry-failed"]) == 0  # tried again: the reason, nothing remembered
    assert "Pillow" in error_column() and "remembered" not in error_column()


def test_info_describes_a_saved_model(labelled, tuned):
    assert tuned.returncode == 0, tuned.stderr
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):
        assert main(["info", str(labelled / "out" / "model.featx")]) == 0
    text = lines.getvalue()
    assert "featx model (format 1)" in text
    assert "classes (2): NORMAL, PNEUMONIA" in text
    assert "tiny.keras" in text and f"featx {featx.__version__}" in text


def test_heads_and_predict_errors_are_one_line(labelled, tmp_path, capsys):
    args = ["--backbone", "mobilenet", "--cache", str(tmp_path / "c.h5")]
    assert main(["heads", str(tmp_path / "c.h5"), *args]) == 1
    (tmp_path / "emb.h5").write_bytes(b"")
    assert main(["heads", str(tmp_path / "emb.h5"), *args]) == 1
    assert main(["heads", str(labelled / "nope"), *args]) == 1
    assert main(["predict", str(tmp_path / "none.featx"), str(labelled / "train")]) == 1
    (tmp_path / "x.featx").write_text("text")
    assert main(["predict", str(tmp_path / "x.featx"), str(labelled / "train")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 5 and all(e.startswith("featx: error: ") for e in errors)
    assert "c.h5' does not exist" in errors[0]
    assert "is a file, not labelled images" in errors[1] and "--cache emb.h5" in errors[1]
    assert "nope' does not exist" in errors[2]
    assert "none.featx' does not exist" in errors[3]
    assert "not a zip archive" in errors[4]


def test_embed_refuses_a_model_file_with_code_unless_trusted(tmp_path):
    import keras

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inp)
    x = keras.layers.Conv2D(2, 3, kernel_initializer="ones", name="conv")(x)
    model_path = tmp_path / "with_code.keras"
    keras.Model(inp, x).save(model_path)

    refused = featx_main("embed", root, "--backbone", model_path, "--cache", tmp_path / "c.h5")
    assert refused.returncode == 1
    assert "holds Python code" in error_lines(refused)[0]
    trusted = featx_main("embed", root, "--backbone", model_path, "--cache", tmp_path / "c.h5",
                        "--unsafe-backbone")
    assert trusted.returncode == 0, trusted.stderr[-1000:]
    assert "embedded 3" in trusted.stdout


# ---- heads from the cache alone -----------------------------------------------------------------


def test_heads_without_backbone_uses_the_caches_group_and_predict_csv_parses(
    labelled, tuned, tmp_path
):
    """After featx embed, featx heads needs the cache alone; an SVM's predict CSV is rectangular."""
    assert tuned.returncode == 0, tuned.stderr
    out = tmp_path / "out"
    result = featx_main("heads", labelled / "train", "--cache", labelled / "emb.h5",
                       "--heads", "rbf_svm", "--cv", "3", "--out", out, "--n-jobs", "1")
    assert result.returncode == 0, result.stderr
    assert "backbone from the cache: file " in result.stdout and "tiny.keras" in result.stdout
    assert "20 embeddings from the cache" in result.stdout and "0 embedded" in result.stdout
    target = tmp_path / "predictions.csv"
    predicted = featx_main("predict", out / "model.featx", labelled / "train", "--out", target)
    assert predicted.returncode == 0, predicted.stderr
    with open(target, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "prediction", "error"]  # an SVM gives no probabilities
    assert {len(r) for r in rows} == {3} and len(rows) == 21
    assert {r[1] for r in rows[1:]} <= {"NORMAL", "PNEUMONIA"}


def _copy_cache(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copy(src, dst)
    segments = src.with_name(src.name + ".segments")
    if segments.is_dir():
        shutil.copytree(segments, dst.with_name(dst.name + ".segments"))
    return dst


def _add_mobilenet_group(cache: Path) -> str:
    """A second group (one made-up row of a mobilenet configuration): no network is built."""
    from featx.cache.store import EmbeddingCache
    from featx.nets.backbones import resolve_backbone

    config = resolve_backbone("mobilenet", input_size=160)
    EmbeddingCache(cache).append(config.fingerprint, ["f" * 64], np.zeros((1, 1024), np.float32),
                                 ["made-up.png"], fields=config.fingerprint_fields,
                                 label=config.label)
    return config.fingerprint


def test_heads_with_several_groups_lists_them_and_group_picks_one(labelled, tuned, tmp_path,
                                                                 capsys):
    assert tuned.returncode == 0, tuned.stderr
    cache = _copy_cache(labelled / "emb.h5", tmp_path / "two.h5")
    tiny = _fingerprints(cache)[0]
    mobilenet = _add_mobilenet_group(cache)
    src = str(labelled / "train")
    assert main(["heads", src, "--cache", str(cache)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"featx: error: cache {cache} holds 2 groups")
    assert "--group PREFIX" in error and "--backbone NAME" in error
    assert f"{tiny} (file " in error and "20 rows" in error
    assert f"{mobilenet} (mobilenet, 160x160 resize" in error and "1 rows" in error

    result = featx_main("heads", src, "--cache", cache, "--group", tiny[:8], "--heads", "knn",
                       "--cv", "3", "--out", tmp_path / "out", "--n-jobs", "1")
    assert result.returncode == 0, result.stderr
    assert "backbone from the cache: file " in result.stdout
    assert "20 embeddings from the cache" in result.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--group", "zz"], "--group 'zz' matches 0 of the 2 groups of "),
        (["--input-size", "16", "--pooling", "max"],
         "--pooling, --input-size describe a backbone, but no --backbone was given"),
        (["--backbone", "mobilenet", "--group", "ab"], "--group and --backbone both choose"),
    ],
)
def test_heads_backbone_choice_errors_are_one_line(labelled, tuned, tmp_path, capsys, extra,
                                                   message):
    assert tuned.returncode == 0, tuned.stderr
    cache = _copy_cache(labelled / "emb.h5", tmp_path / "two.h5")
    _add_mobilenet_group(cache)
    assert main(["heads", str(labelled / "train"), "--cache", str(cache), *extra]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("featx: error: ")
    assert message in errors[0]


def test_heads_on_a_missing_cache_without_backbone_says_how_to_start(labelled, tmp_path, capsys):
    assert main(["heads", str(labelled / "train"), "--cache", str(tmp_path / "none.h5")]) == 1
    error = capsys.readouterr().err
    assert "does not exist, so it cannot say which backbone to use" in error
    assert f"featx embed SRC --backbone NAME --cache {tmp_path / 'none.h5'}" in error


def _fingerprints(cache: Path) -> list[str]:
    from featx.cache.store import EmbeddingCache

    return [g.fingerprint for g in EmbeddingCache(cache).groups()]


# ---- quiet start-up -----------------------------------------------------------------------------

NATIVE_CHATTER = ("oneDNN", "cuda", "cuInit", "absl")


def test_embed_prints_no_tensorflow_start_up_lines(tmp_path):
    """Even with TF_CPP_MIN_LOG_LEVEL=2 and oneDNN on, stderr holds featx's lines only."""
    from tests.conftest import tiny_convnet

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(root / f"{i}.png")
    (root / "bad.png").write_bytes(b"not a PNG")
    # A fresh save (its own sha256): no converted model on disk, so the child imports TensorFlow.
    tiny_convnet((16, 16, 3)).save(tmp_path / "tiny.keras")
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [str(FEATX), "embed", str(root), "--backbone", str(tmp_path / "tiny.keras"),
         "--cache", str(tmp_path / "c.h5"), "--on-error", "raise"],
        capture_output=True, text=True, env=environ, timeout=300,
    )
    assert result.returncode == 1  # the network ran (3 images embedded), then the error
    assert result.stderr.splitlines() == error_lines(result), result.stderr
    assert "bad.png" in result.stderr
    for word in NATIVE_CHATTER:
        assert word not in result.stderr, result.stderr


def test_the_native_stderr_filter_drops_native_lines_and_keeps_the_rest():
    """Lines written to fd 2 by native code are filtered; Python's stderr is not."""
    script = (
        "import os, sys\n"
        "from featx.cli.quiet import quiet_native_stderr\n"
        "with quiet_native_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1796068568.633239    6249 port.cc:153] oneDNN custom "
        "operations are on.\\nE0000 00:00:1796.9    62 cuda_platform.cc:52] failed call to "
        "cuInit\\n')\n"
        "    os.write(2, b'a native line of its own\\n')\n"
        "    os.write(2, b'F0000 00:00:17.1  6 x.cc:1] fatal: kept\\n')\n"
        "    print('python says hello', file=sys.stderr)\n"
        "    os.write(2, b'no newline at the end')\n"
        "os.write(2, b'\\nafter the block: I0000 00:00:1.2  3 y.cc:4] shown\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "python says hello" in lines
    assert "a native line of its own" in lines
    assert "F0000 00:00:17.1  6 x.cc:1] fatal: kept" in lines
    assert "no newline at the end" in lines
    assert "after the block: I0000 00:00:1.2  3 y.cc:4] shown" in lines
    for word in NATIVE_CHATTER:
        assert not any(word in line for line in lines), result.stderr


def test_the_library_leaves_logging_and_stderr_alone(tmp_path):
    import logging

    from featx import ImageEmbedder
    from tests.conftest import tiny_convnet

    before = (os.fstat(2).st_ino, list(logging.getLogger().handlers), sys.stderr,
              os.environ.get("TF_CPP_MIN_LOG_LEVEL"), logging.getLogger().level)
    ImageEmbedder(tiny_convnet, input_size=16, cache=tmp_path / "c.h5").fit_transform(
        np.zeros((2, 16, 16, 3), np.uint8)
    )
    after = (os.fstat(2).st_ino, list(logging.getLogger().handlers), sys.stderr,
             os.environ.get("TF_CPP_MIN_LOG_LEVEL"), logging.getLogger().level)
    assert after == before


# ---- command-line words -------------------------------------------------------------------------


def test_a_remembered_failure_names_the_command_line_option(workspace, first_embed):
    assert first_embed.returncode == 0, first_embed.stderr
    args = ("embed", workspace / "images", "--backbone", workspace / "tiny.keras",
            "--input-size", "16", "--cache", workspace / "emb.h5")
    result = featx_main(*args)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "broken.jpg" in x)
    assert line.endswith("(remembered from an earlier run; pass --retry-failed to try again)")
    assert "retry_failed" not in result.stdout

    raised = featx_main(*args, "--on-error", "raise")
    assert raised.returncode == 1
    errors = error_lines(raised)
    assert len(errors) == 1 and "broken.jpg" in errors[0], raised.stderr
    assert "pass --retry-failed to try again" in errors[0]
    assert "pass --on-error skip to leave the bad ones out" in errors[0]
    assert "retry_failed" not in errors[0] and "on_error=" not in errors[0]

    retried = featx_main(*args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    line = next(x for x in retried.stdout.splitlines() if "broken.jpg" in x)
    assert "not an image file Pillow can read" in line and "remembered" not in line
