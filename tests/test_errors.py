"""Bad input end to end: every kind of bad image, bad array, bad cache file and untrusted model.

Each case goes through ``ImageEmbedder`` (and some through the ``featx`` command) and checks the
message names the file and says what was wrong; the report lists every failure; failures are
remembered in the cache until ``retry_failed=True``. tests/test_images.py checks the decoders one
by one; this file checks what a user sees.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageOps

import featx.embed.engine as engine_module
from featx import CacheError, EmbeddingCache, FeatxError, ImageEmbedder, ImageLoadError
from featx.cache.store import CACHE_FORMAT_VERSION
from featx.embed.embedder import MAX_PIXELS
from tests.conftest import save_tiny_convnet, tiny_convnet, tiny_dense
from tests.test_cli import run_featx

SIZE = 16


def embedder(**kwargs) -> ImageEmbedder:
    kwargs.setdefault("input_size", SIZE)
    return ImageEmbedder(tiny_convnet, **kwargs)


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of ``width`` x ``height`` zeros: a few kB that decode to ``w*h`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


# ---- every kind of bad image in one run ----------------------------------------------------------

#: name -> (what the reason must say). Each is made by ``_bad_files``.
BAD_FILES = {
    "missing.png": "file not found",
    "empty.jpg": "not an image file Pillow can read",
    "text.jpg": "not an image file Pillow can read",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "folder.jpg": "is a directory, not an image file",
    "bomb.png": f"9500x9500 pixels, over the limit of {MAX_PIXELS} pixels",
    "bigger-bomb.png": f"image has 400000000 pixels, over the limit of {MAX_PIXELS} pixels",
}


def _bad_files(root: Path, rng: np.random.Generator) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    photo = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(photo).save(root / "whole.jpg", quality=90)
    Image.fromarray(photo).save(root / "whole.png")
    files = {name: root / name for name in BAD_FILES}
    files["empty.jpg"].write_bytes(b"")
    files["text.jpg"].write_text("I am a text file with a .jpg name\n")
    data = (root / "whole.jpg").read_bytes()
    files["truncated.jpg"].write_bytes(data[: len(data) // 2])
    data = (root / "whole.png").read_bytes()
    files["truncated.png"].write_bytes(data[: len(data) // 2])
    files["folder.jpg"].mkdir()
    png_bomb(files["bomb.png"], 9500, 9500)  # 90.25 Mpx: just past featx's limit
    png_bomb(files["bigger-bomb.png"], 20000, 20000)  # 400 Mpx: past Pillow's own limit too
    return files


def _odd_but_good(root: Path, rng: np.random.Generator) -> list[Path]:
    """Valid images of every awkward kind and size, to be embedded in one batch."""
    root.mkdir(parents=True, exist_ok=True)
    out = []

    def add(name: str, img: Image.Image, **kwargs) -> None:
        img.save(root / name, **kwargs)
        out.append(root / name)

    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    add("rgb.jpg", Image.fromarray(rgb), quality=95)
    rgba = rng.integers(0, 256, (25, 20, 4), dtype=np.uint8)
    add("alpha.png", Image.fromarray(rgba))
    add("sixteen-bit.png", Image.fromarray((rng.integers(0, 65536, (18, 22))).astype(np.uint16)))
    add("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    add("grey.png", Image.fromarray(rgb[..., 0]))
    add("grey.jpg", Image.fromarray(rgb[..., 1]), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    add("exif-rotated.jpg", Image.fromarray(rgb), exif=exif, quality=95)
    add("one-pixel.png", Image.fromarray(rgb[:1, :1]))
    add("tall.png", Image.fromarray(rng.integers(0, 256, (300, 3, 3), dtype=np.uint8)))
    add("wide.bmp", Image.fromarray(rng.integers(0, 256, (2, 250, 3), dtype=np.uint8)))
    add("palette.gif", Image.fromarray(rgb).convert("P"))
    add("big.jpg", Image.fromarray(np.repeat(np.repeat(rgb, 20, 0), 20, 1)), quality=80)
    return out


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_bad_file_is_reported_with_its_path_and_reason(tmp_path, rng):
    bad = _bad_files(tmp_path / "bad", rng)
    good = _odd_but_good(tmp_path / "good", rng)
    X = [str(p) for p in good] + [str(p) for p in bad.values()]
    emb = embedder(on_error="skip", cache=tmp_path / "emb.h5", batch_size=64)
    with pytest.warns(UserWarning, match=f"skipped {len(bad)} of {len(X)}"):
        out = emb.fit_transform(X)

    report = emb.report_
    assert out.shape == (len(good), 5) and np.isfinite(out).all()
    assert report.n_failed == len(bad) == len(report.failures)
    assert report.dropped == list(range(len(good), len(X)))
    by_source = {f.source: f.reason for f in report.failures}
    assert set(by_source) == {str(p) for p in bad.values()}
    for name, pattern in BAD_FILES.items():
        assert re.search(pattern, by_source[str(bad[name])]), (
            name, by_source[str(bad[name])])


def test_mixed_sizes_and_modes_in_one_batch_equal_one_at_a_time(tmp_path, rng):
    good = [str(p) for p in _odd_but_good(tmp_path, rng)]
    together = embedder(batch_size=len(good)).fit_transform(good)
    alone = np.concatenate([embedder(batch_size=1).fit_transform([p]) for p in good])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # EXIF orientation is honoured: the rotated file embeds like its upright pixels.
    rotated = good.index(str(tmp_path / "exif-rotated.jpg"))
    with Image.open(good[rotated]) as img:
        upright = np.asarray(ImageOps.exif_transpose(img))
    assert upright.shape[:2] == (40, 30)
    np.testing.assert_allclose(together[rotated], embedder().fit_transform([upright])[0],
                               atol=1e-5)


def test_one_pixel_image_end_to_end(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 30)).save(tmp_path / "one.png")
    emb = embedder(cache=tmp_path / "emb.h5")
    out = emb.fit_transform([str(tmp_path / "one.png")])
    flat = embedder().fit_transform(np.full((1, SIZE, SIZE, 3), (200, 10, 30), np.uint8))
    np.testing.assert_allclose(out, flat, atol=1e-5)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_at_the_documented_limit(tmp_path):
    assert MAX_PIXELS == 89_478_485  # docs/robustness.md states this number
    bomb = png_bomb(tmp_path / "bomb.png", 9460, 9460)  # 89,491,600 pixels: 12,885 too many
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageLoadError, match=r"bomb\.png\): image is 9460x9460 pixels, over the "
                                             r"limit of 89478485 pixels \(a guard against "
                                             r"decompression bombs; see docs/robustness\.md\)"):
        embedder().fit_transform([bomb])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_a_float_array_fails_that_image_only(rng, bad):
    X = rng.uniform(0, 255, (4, 20, 20, 3)).astype(np.float32)
    X[2, 5, 5, 1] = bad
    emb = embedder(on_error="nan")
    out = emb.fit_transform(X)
    assert np.isnan(out[2]).all() and np.isfinite(out[[0, 1, 3]]).all()
    assert [(f.index, f.source, f.reason) for f in emb.report_.failures] == [
        (2, "array[2]", "the array holds NaN or infinite values")]
    expected = r"1 of 4 items.*item 2 \(array\[2\]\): the array holds NaN"
    with pytest.raises(ImageLoadError, match=expected):
        embedder().fit_transform(X)


def test_arrays_of_the_wrong_rank(rng):
    images = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
              rng.integers(0, 256, (20, 20, 2), dtype=np.uint8),  # two channels
              rng.integers(0, 256, (20, 20), dtype=np.uint8)]
    emb = embedder(on_error="skip")
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        assert emb.fit_transform(images).shape == (2, 5)
    assert (emb.report_.failures[0].index, emb.report_.failures[0].source) == (1, "array[1]")
    assert "expected an image of shape (H, W), (H, W, 1) or (H, W, 3); got (20, 20, 2)" in (
        emb.report_.failures[0].reason)
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 4, 3, 1\)"):
        embedder().fit_transform(np.zeros((2, 4, 4, 3, 1), np.uint8))
    with pytest.raises(ValueError, match=r"1-D array of shape \(7,\)"):
        embedder().fit_transform(np.zeros(7, np.float32))


def test_non_ascii_and_very_long_paths_end_to_end(tmp_path, rng):
    # A path of about 1,300 bytes: five folders of 200 bytes and a 255-byte file name (the
    # longest a Linux file system allows), all of it non-ASCII.
    folder = tmp_path
    for i in range(5):
        folder = folder / (f"{i}-" + "猫" * 66)  # 2 + 198 bytes
    folder.mkdir(parents=True)
    name = "ñandú-" + "é" * 120 + ".png"  # 7 + 240 + 4 = 251 bytes
    assert len(name.encode()) <= 255
    arr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    long_path = folder / name
    Image.fromarray(arr).save(long_path)
    short = tmp_path / "ascii.png"
    Image.fromarray(arr[::-1]).save(short)
    assert len(str(long_path).encode()) > 1200

    cache = tmp_path / "emb.h5"
    emb = embedder(cache=cache)
    out = emb.fit_transform([str(long_path), short])
    np.testing.assert_allclose(out, embedder().fit_transform(np.stack([arr, arr[::-1]])),
                               atol=1e-5)
    keys, _, sources = EmbeddingCache(cache).read_group(EmbeddingCache(cache).groups()[0]
                                                        .fingerprint)
    assert sources == [str(long_path), str(short)]
    again = embedder(cache=cache)
    again.fit_transform([long_path])
    assert again.report_.n_hits == 1
    # A path past the system's limit is a failure with a reason, not a crash.
    too_long = str(folder / ("x" * 300 + ".png"))
    emb = embedder(on_error="nan", cache=cache)
    assert np.isnan(emb.fit_transform([too_long])).all()
    assert "File name too long" in emb.report_.failures[0].reason


# ---- failure memory ------------------------------------------------------------------------------


def test_failures_are_remembered_until_retry_failed(tmp_path, rng, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(good)
    odd = tmp_path / "odd.png"
    odd.write_bytes(good.read_bytes() + b"...")  # decodes fine; our fake decoder refuses it
    cache = tmp_path / "emb.h5"
    calls: list[str] = []
    real = engine_module.load_pixels
    pillow_can_read_it = False

    def loader(item, *args, **kwargs):
        calls.append(item.name)
        if item.name == str(odd) and not pillow_can_read_it:
            raise ImageLoadError(item.name, "unsupported format (simulated)")
        return real(item, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pixels", loader)
    X = [str(good), str(odd)]

    first = embedder(cache=cache, on_error="skip")
    with pytest.warns(UserWarning):
        first.fit_transform(X)
    assert [(f.index, f.source, f.reason) for f in first.report_.failures] == [
        (1, str(odd), "unsupported format (simulated)")]
    (group,) = EmbeddingCache(cache).groups()
    assert (group.rows, group.failures) == (1, 1)

    calls.clear()
    second = embedder(cache=cache, on_error="skip")
    with pytest.warns(UserWarning):
        second.fit_transform(X)
    assert calls == []  # neither the hit nor the remembered failure was decoded
    (failure,) = second.report_.failures
    source, reason = failure.source, failure.reason
    assert source == str(odd)
    assert reason.startswith("unsupported format (simulated) (remembered from an earlier run")
    assert "retry_failed=True" in reason
    (error,) = second.report_.errors  # structured: a command line names its own option
    assert (error.reason, error.retry_param) == ("unsupported format (simulated)", "retry_failed")
    assert error.describe() == reason
    assert error.describe(retry_option="--retry-failed").endswith(
        "(remembered from an earlier run; pass --retry-failed to try again)")

    third = embedder(cache=cache, on_error="skip", retry_failed=True)
    with pytest.warns(UserWarning):
        third.fit_transform(X)
    assert calls == [str(odd)]
    assert [(f.index, f.source, f.reason) for f in third.report_.failures] == [
        (1, str(odd), "unsupported format (simulated)")]
    assert EmbeddingCache(cache).groups()[0].failures == 1  # not recorded twice

    pillow_can_read_it = True  # e.g. a Pillow plugin installed since
    fourth = embedder(cache=cache, retry_failed=True)
    fourth.fit_transform(X)
    assert fourth.report_.n_failed == 0 and fourth.report_.n_embedded == 1
    (group,) = EmbeddingCache(cache).groups()
    assert (group.rows, group.failures) == (2, 0)


def test_a_missing_file_is_not_remembered_and_is_embedded_once_it_appears(tmp_path, rng):
    """docs/robustness.md: items without content (a missing file) are not remembered, since the
    file may appear later; a decode failure in the same run is."""
    good, later, corrupt = tmp_path / "good.png", tmp_path / "later.png", tmp_path / "bad.png"
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(good)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    X = [str(good), str(later), str(corrupt)]
    cache = tmp_path / "emb.h5"
    for run in range(2):  # the second run meets the same missing file, and tries it again
        emb = embedder(cache=cache, on_error="nan")
        emb.fit_transform(X)
        reasons = {f.source: f.reason for f in emb.report_.failures}
        assert reasons[str(later)] == "file not found", run  # not "remembered from ..."
        assert ("remembered from an earlier run" in reasons[str(corrupt)]) == (run == 1)
        assert [e.retry_param for e in emb.report_.errors
                if e.source == str(later)] == [None]
        (group,) = EmbeddingCache(cache).groups()
        assert (group.rows, group.failures) == (1, 1)  # only the corrupt file's failure
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(later)
    appeared = embedder(cache=cache, on_error="nan")  # no retry_failed needed
    out = appeared.fit_transform(X)
    assert appeared.report_.n_embedded == 1 and appeared.report_.n_hits == 1
    assert [f.source for f in appeared.report_.failures] == [str(corrupt)]
    (group,) = EmbeddingCache(cache).groups()
    assert (group.rows, group.failures) == (2, 1)
    np.testing.assert_allclose(out[:2], embedder().fit_transform([str(good), str(later)]),
                               rtol=1e-5)


def test_on_error_raise_lists_every_failure_in_the_report(tmp_path, rng):
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(good)
    missing = [str(tmp_path / f"missing{i:02d}.png") for i in range(12)]
    emb = embedder(cache=tmp_path / "emb.h5")
    with pytest.raises(ImageLoadError, match=r"12 of 13 items.*missing00.*\(and 2 more\)"
                                             r".*on_error='skip'") as info:
        emb.fit_transform([str(good), *missing])
    assert "embedded and cached" in str(info.value)
    assert [f.source for f in emb.report_.failures] == missing  # the report has every one
    assert all(f.reason == "file not found" and f.key is None for f in emb.report_.failures)
    again = embedder(cache=tmp_path / "emb.h5", on_error="nan")
    out = again.fit_transform([str(good), *missing])
    assert again.report_.n_hits == 1 and np.isnan(out[1:]).all()


def test_cli_report_lists_every_failure_and_remembers_them(tmp_path, rng):
    model = tmp_path / "tiny.keras"
    save_tiny_convnet(model, SIZE)
    folder = tmp_path / "photos"
    bad = _bad_files(folder, rng)
    bad.pop("missing.png")  # a folder listing only finds files that exist
    bad.pop("folder.jpg").rmdir()  # and a sub-folder would make it a folder of classes
    names = ["Ñandú 猫.png", "é" * 120 + ".png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    args = ["embed", folder, "--backbone", model, "--input-size", str(SIZE), "--cache",
            tmp_path / "emb.h5"]

    first = run_featx(*args)
    assert first.returncode == 0, first.stderr
    n_good = 2 + 2  # whole.jpg and whole.png (written by _bad_files) and the two names
    total = n_good + len(bad)
    assert f"embedded {n_good}, already cached 0, failed {len(bad)} of {total} images" in (
        first.stdout)
    lines = first.stdout.splitlines()
    assert f"{len(bad)} failed:" in lines
    for name, path in bad.items():
        (line,) = [x for x in lines if x.startswith(f"  {path}: ")]
        assert re.search(BAD_FILES[name], line), line

    second = run_featx(*args)
    assert f"embedded 0, already cached {n_good}, failed {len(bad)}" in second.stdout
    assert second.stdout.count("remembered from an earlier run") == len(bad)

    third = run_featx(*args, "--retry-failed")
    assert f"failed {len(bad)}" in third.stdout
    assert "remembered" not in third.stdout


# ---- bad cache files -----------------------------------------------------------------------------


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)


def test_cache_that_is_not_hdf5(tmp_path, images):
    cache = tmp_path / "notes.h5"
    cache.write_text("my notes, not a cache\n")
    with pytest.raises(CacheError, match=r"notes\.h5' cannot be opened as HDF5.*another cache="):
        embedder(cache=cache).fit_transform(images)
    assert cache.read_text() == "my notes, not a cache\n"


def test_truncated_cache(tmp_path, images):
    cache = tmp_path / "emb.h5"
    embedder(cache=cache, batch_size=2).fit_transform(images)
    EmbeddingCache(cache).compact()
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match=r"emb\.h5.*(cannot be opened|damaged)"):
        embedder(cache=cache).fit_transform(images)


def test_cache_written_by_a_newer_featx(tmp_path, images):
    cache = tmp_path / "emb.h5"
    embedder(cache=cache).fit_transform(images)
    with h5py.File(cache, "a") as f:
        f.attrs["featx_cache_format"] = CACHE_FORMAT_VERSION + 1
    with pytest.raises(CacheError, match=f"format {CACHE_FORMAT_VERSION + 1}, written by a newer "
                                         "featx.*Upgrade featx"):
        embedder(cache=cache).fit_transform(images)


def test_cache_holding_another_backbones_group(tmp_path, images):
    cache = tmp_path / "emb.h5"
    other = ImageEmbedder(tiny_convnet, input_size=SIZE, pooling="max", cache=cache)
    other_rows = other.fit_transform(images)
    emb = embedder(cache=cache)
    out = emb.fit_transform(images)
    assert emb.report_.n_hits == 0  # nothing of the other group comes back
    np.testing.assert_allclose(out, embedder().fit_transform(images), atol=1e-5)
    assert len(EmbeddingCache(cache).groups()) == 2
    np.testing.assert_array_equal(other.fit_transform(images), other_rows)


def test_cache_group_whose_contents_do_not_match_its_name(tmp_path, images):
    cache = tmp_path / "emb.h5"
    emb = embedder(cache=cache)
    emb.fit_transform(images)
    EmbeddingCache(cache).compact()
    with h5py.File(cache, "a") as f:
        (grp,) = f["embeddings"].values()
        grp.attrs["fingerprint"] = grp.attrs["fingerprint"].replace('"avg"', '"max"')
    with pytest.raises(CacheError, match=r"holds embeddings made with .*\"max\".*not with "
                                         r".*\"avg\".*move it aside"):
        embedder(cache=cache).fit_transform(images)


def test_damaged_segment_is_skipped_with_a_warning_and_moved_aside(tmp_path, images,
                                                                  monkeypatch):
    cache = tmp_path / "emb.h5"
    monkeypatch.setattr(EmbeddingCache, "merge", False)  # keep the segments
    embedder(cache=cache).fit_transform(images[:1])  # the main file
    embedder(cache=cache).fit_transform(images[1:3])  # a segment
    (segment,) = EmbeddingCache(cache)._files.segments()
    segment.write_bytes(segment.read_bytes()[:100])  # disk damage (a crash cannot do this)
    emb = embedder(cache=cache)
    with pytest.warns(RuntimeWarning, match=r"ignoring the damaged segment .*embedded again"):
        out = emb.fit_transform(images)
    assert emb.report_.n_hits == 1 and emb.report_.n_embedded == 4
    np.testing.assert_allclose(out, embedder().fit_transform(images), atol=1e-5)
    with pytest.warns(RuntimeWarning, match="damaged segment"):
        EmbeddingCache(cache).compact()
    assert not segment.exists() and segment.with_name(segment.name + ".damaged").exists()
    assert EmbeddingCache(cache).groups()[0].rows == 5


# ---- untrusted model files -----------------------------------------------------------------------


def _model_with_code(path: Path, marker: Path):
    """A tabular model whose Lambda layer runs Python code (it writes ``marker``) when built."""
    import keras

    # The "payload": a lambda that writes a file whenever Keras builds the layer.
    payload = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t * 2)[1]")
    inp = keras.Input((4,))
    x = keras.layers.Lambda(payload)(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    model.save(path)
    marker.unlink()  # building the model in this process ran the code once
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_file_with_python_code_is_refused_unless_trusted(tmp_path, rng, suffix):
    marker = tmp_path / "code-ran"
    path = tmp_path / f"lambda{suffix}"
    _model_with_code(path, marker)
    X = rng.normal(size=(3, 4)).astype(np.float32)

    with pytest.raises(FeatxError, match=r"lambda.*holds Python code \(a Lambda layer\).*safe mode"
                                         r".*ImageEmbedder\(\.\.\., safe_mode=False\)"):
        ImageEmbedder(str(path)).fit_transform(X)
    assert not marker.exists()  # nothing from the file ran

    trusted = ImageEmbedder(str(path), safe_mode=False)
    assert trusted.fit_transform(X).shape == (3, 3)
    assert marker.exists()  # the opt-in is real: the file's code did run
    # The network loaded for the trusting embedder is not handed to one that did not opt in.
    with pytest.raises(FeatxError, match="holds Python code"):
        ImageEmbedder(str(path)).fit_transform(X)


def test_safe_mode_changes_nothing_for_plain_models(tmp_path, rng):
    path = tmp_path / "plain.keras"
    tiny_dense((4,)).save(path)
    X = rng.normal(size=(3, 4)).astype(np.float32)
    a = ImageEmbedder(str(path)).fit_transform(X)
    b = ImageEmbedder(str(path), safe_mode=False).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    assert ImageEmbedder(str(path)).backbone_config().fingerprint == ImageEmbedder(
        str(path), safe_mode=False).backbone_config().fingerprint


def test_keras_global_unsafe_switch_also_opts_in(tmp_path, rng):
    """Keras's process-wide switch wins over the safe_mode=True featx passes (documented)."""
    import keras
    from keras.src.backend.common import global_state

    marker = tmp_path / "code-ran"
    path = tmp_path / "lambda.keras"
    _model_with_code(path, marker)
    X = rng.normal(size=(2, 4)).astype(np.float32)
    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        assert ImageEmbedder(str(path)).fit_transform(X).shape == (2, 3)
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)
    assert marker.exists()
    from featx.nets.build import clear_networks

    clear_networks()  # the network loaded under the switch must not outlive it in this test run
    with pytest.raises(FeatxError, match="holds Python code"):
        ImageEmbedder(str(path)).fit_transform(X)
