"""The fast JPEG path (featx.embed.jpeg): close to Pillow's, antialiased, and Pillow's fallback."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx import ImageEmbedder
from featx.embed.images import Item, load_pixels
from featx.embed.jpeg import antialiased_resize, dct_reduction, decode_fast, fast_available
from featx.exceptions import ImageLoadError
from featx.nets.backbones import resolve_backbone


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour photo-like image with some texture (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, 128 + 60 * np.sin(xx / 17 + yy / 23)], -1)
    noise = rng.normal(0, 6, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def jpeg(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


def both(data: bytes, size: tuple[int, int], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    item = Item("bytes", data, "x.jpg")
    return (load_pixels(item, size, decoder="fast", **kwargs).astype(np.float32),
            load_pixels(item, size, decoder="pillow", **kwargs).astype(np.float32))


def test_fast_decoder_is_installed() -> None:
    # featx depends on simplejpeg and OpenCV; without them "auto" would quietly mean Pillow.
    assert fast_available()


def test_dct_reduction_follows_pillow_draft() -> None:
    for w, h in [(800, 600), (3000, 2000), (447, 300), (224, 224), (100, 50), (5000, 230)]:
        img = Image.new("RGB", (w, h))
        buf = io.BytesIO()
        img.save(buf, "JPEG")
        with Image.open(buf) as opened:
            opened.draft("RGB", (224, 224))
            assert opened.size == (-(-w // dct_reduction(w, h, (224, 224))),
                                   -(-h // dct_reduction(w, h, (224, 224)))), (w, h)


@pytest.mark.parametrize("shape", [(600, 800), (300, 450), (1200, 700), (150, 120), (224, 224)])
@pytest.mark.parametrize("resize", ["resize", "center_crop"])
def test_fast_path_is_close_to_pillows(shape: tuple[int, int], resize: str) -> None:
    fast, pil = both(jpeg(photo(*shape)), (224, 224), resize=resize)
    assert fast.shape == pil.shape == (224, 224, 3)
    assert np.abs(fast - pil).mean() < 1.5
    assert np.abs(fast.mean(axis=(0, 1)) - pil.mean(axis=(0, 1))).max() < 1.0


def test_non_square_target_keeps_its_orientation() -> None:
    fast, pil = both(jpeg(photo(500, 700)), (160, 96))
    assert fast.shape == (160, 96, 3)
    assert np.abs(fast - pil).mean() < 1.5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_as_pillow(orientation: int, monkeypatch) -> None:
    # Turned photos go through Pillow by default (jpeg._ORIENT_FAST); the fast path's own
    # orientation code is checked here with it switched on.
    import featx.embed.jpeg as jpeg_module

    monkeypatch.setattr(jpeg_module, "_ORIENT_FAST", True)
    arr = photo(300, 500, seed=orientation)
    arr[:40, :60] = 0  # a dark corner shows where the top-left went
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(arr, exif=exif.tobytes())
    for size, resize in (((128, 96), "resize"), ((64, 64), "center_crop")):
        fast, pil = both(data, size, resize=resize)
        assert fast.shape == pil.shape
        assert np.abs(fast - pil).mean() < 2.0, (orientation, resize)


@pytest.mark.parametrize("side", [392, 420])
def test_antialiased_like_pillow(side: int) -> None:
    # One-pixel stripes shrunk 1.75-1.9x: an antialiased resize gives flat grey; plain bilinear
    # sampling (no widened filter) gives beats (bands of light and dark).
    import cv2

    stripes = np.zeros((side, side, 3), np.uint8)
    stripes[:, ::2] = 255
    fast = antialiased_resize(stripes, (224, 224))[:, 4:-4, 0].astype(np.float32)
    aliased = cv2.resize(stripes, (224, 224), interpolation=cv2.INTER_LINEAR)[:, 4:-4, 0]
    assert aliased.std() > 60
    assert fast.std() < 12
    assert abs(fast.mean() - 127.5) < 3


def test_greyscale_jpeg_becomes_three_equal_channels() -> None:
    grey = photo(300, 400)[..., 0]
    fast, pil = both(jpeg(grey), (100, 100))
    assert (fast[..., 0] == fast[..., 1]).all() and (fast[..., 1] == fast[..., 2]).all()
    assert np.abs(fast - pil).mean() < 1.5


def test_cmyk_jpeg_is_left_to_pillow() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as opened:
        assert decode_fast(opened, data, (8, 8), "resize") is None
    fast, pil = both(data, (8, 8))
    np.testing.assert_array_equal(fast, pil)


def test_truncated_jpeg_is_refused_then_fails_in_pillow(tmp_path: Path) -> None:
    data = jpeg(photo(300, 400))
    cut = data[: len(data) // 2]
    with Image.open(io.BytesIO(cut)) as opened:
        assert decode_fast(opened, cut, (64, 64), "resize") is None
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: .*truncated"):
        load_pixels(Item("path", str(path), str(path)), (64, 64), decoder="fast")


def test_truncated_jpeg_that_pillow_reads_is_embedded_through_pillow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With LOAD_TRUNCATED_IMAGES Pillow reads what is there; the fast path still refuses.
    from PIL import ImageFile

    data = jpeg(photo(300, 400))
    cut = data[: len(data) * 3 // 4]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    fast, pil = both(cut, (64, 64))
    np.testing.assert_array_equal(fast, pil)


def test_pixel_bomb_guard_holds_on_the_fast_path() -> None:
    data = jpeg(photo(60, 80))
    with pytest.raises(ImageLoadError, match="image is 80x60 pixels, over the limit of 1000"):
        load_pixels(Item("bytes", data, "b"), (8, 8), max_pixels=1000, decoder="fast")


def test_png_and_one_channel_keep_the_pillow_path(tmp_path: Path) -> None:
    arr = photo(50, 70)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    fast, pil = both(buf.getvalue(), (20, 20))
    np.testing.assert_array_equal(fast, pil)
    item = Item("bytes", jpeg(arr), "j")
    np.testing.assert_array_equal(load_pixels(item, (20, 20), channels=1, decoder="fast"),
                                  load_pixels(item, (20, 20), channels=1, decoder="pillow"))


def test_decoder_is_part_of_the_fingerprint() -> None:
    fast = resolve_backbone("mobilenet", decoder="fast")
    pillow = resolve_backbone("mobilenet", decoder="pillow")
    assert fast.fingerprint_fields["format"] == 2 and pillow.fingerprint_fields["format"] == 1
    assert fast.fingerprint != pillow.fingerprint
    assert resolve_backbone("mobilenet").fingerprint == fast.fingerprint
    assert ImageEmbedder(decoder="pillow").backbone_config().fingerprint == pillow.fingerprint
    with pytest.raises(ValueError, match="decoder='turbo' is not valid"):
        resolve_backbone("mobilenet", decoder="turbo")


def test_fast_decoder_missing_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "simplejpeg" else real(name, *a))
    with pytest.raises(ValueError, match=r"simplejpeg is not installed.*decoder='pillow'"):
        resolve_backbone("mobilenet", decoder="fast")
    assert resolve_backbone("mobilenet").decoder == "pillow"
