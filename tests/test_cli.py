"""Tests of the installed ``featx`` console script, run in a subprocess as a user runs it.

conftest.py points KERAS_HOME and FEATX_HOME at a session temp dir at import time; the
subprocesses inherit that environment, so they never touch the user's real caches.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featx
from featx.cli import main

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
    [[], ["embed"], ["info"], ["weights"], ["weights", "install"], ["weights", "list"], ["demo"]],
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
    ],
)
def test_usage_errors_exit_2(command, message, capsys):
    assert main(command) == 2
    assert message in capsys.readouterr().err


# ---- embed / info -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved model, a class folder of 6 good images and one corrupt file."""
    from tests.conftest import tiny_convnet

    base = tmp_path_factory.mktemp("cli")
    tiny_convnet((16, 16, 3)).save(base / "tiny.keras")
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
    result = run_featx(
        "embed", workspace / "images", "--backbone", workspace / "tiny.keras",
        "--input-size", "16", "--cache", workspace / "emb.h5",
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 0, already cached 6, failed 1 of 7 images" in result.stdout
    assert "broken.jpg" in result.stdout


def test_quiet_embed_prints_only_failures(workspace, first_embed):
    assert first_embed.returncode == 0
    result = run_featx(
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
    result = run_featx(
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
    result = run_featx(
        "embed", listing, "--backbone", workspace / "tiny.keras", "--input-size", "16",
        "--cache", workspace / "emb.h5",
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 0, already cached 1, failed 1 of 2 images" in result.stdout
    assert f"{tmp_path / 'missing.png'}: file not found" in result.stdout


def test_info_lists_the_group(workspace, first_embed):
    assert first_embed.returncode == 0
    result = run_featx("info", workspace / "emb.h5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{workspace / 'emb.h5'}: 1 group"
    fingerprint, rows, width = lines[1].split()[0], lines[1].split()[2], lines[1].split()[4]
    assert len(fingerprint) == 24 and rows == "6" and width == "5"
    assert "tiny.keras" in lines[2] and "16x16" in lines[2]
    verbose = run_featx("info", workspace / "emb.h5", "-v")
    assert "input_size: [16, 16]" in verbose.stdout


def test_unknown_backbone_is_one_line_with_a_suggestion(workspace, tmp_path):
    result = run_featx(
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
    result = run_featx("embed", tmp_path / "nope", "--backbone", "mobilenet", "--cache",
                       tmp_path / "c.h5")
    assert result.returncode == 1
    assert "does not exist" in error_lines(result)[0]
    result = run_featx("info", tmp_path / "nope.h5")
    assert result.returncode == 1
    assert error_lines(result) == [f"featx: error: cache file '{tmp_path / 'nope.h5'}' does not "
                                   "exist."]


def test_on_error_raise_exits_1_naming_the_file(workspace, tmp_path):
    result = run_featx(
        "embed", workspace / "images", "--backbone", workspace / "tiny.keras",
        "--input-size", "16", "--cache", tmp_path / "c.h5", "--on-error", "raise",
    )
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1 and "broken.jpg" in errors[0]


# ---- weights ------------------------------------------------------------------------------------


def test_weights_list_empty_keras_home(tmp_path):
    result = run_featx("weights", "list", env={"KERAS_HOME": str(tmp_path / "keras")})
    assert result.returncode == 0, result.stderr
    assert "none installed" in result.stdout
    assert "featx weights install mobilenet" in result.stdout


def test_weights_install_unknown_backbone(tmp_path):
    result = run_featx("weights", "install", "resnet50",
                       env={"KERAS_HOME": str(tmp_path / "keras")})
    assert result.returncode == 1
    assert len(error_lines(result)) == 1 and "resnet50" in error_lines(result)[0]


# ---- demo ---------------------------------------------------------------------------------------


def test_demo_command_small_tiny_network(workspace, tmp_path):
    # Not the real demo (a tiny random network, 100 images): checks the command end to end.
    result = run_featx(
        "demo", "--out", tmp_path, "--n-train", "60", "--n-test", "40",
        "--backbone", workspace / "tiny.keras", "--input-size", "16",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fashion-mnist: 60 training and 40 test images" in out
    assert "embedded 100 images (0 from the cache)" in out
    assert "embeddings" in out and "raw pixels" in out
    assert (tmp_path / "embeddings.h5").is_file()
