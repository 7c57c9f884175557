"""Keras Hub presets as backbones: tiny random-initialised DINOv2, SigLIP, CLIP vision and ViT
encoders saved as local presets with their image converters; featx's embeddings checked against
Keras Hub's own converter + backbone, pooled as documented, through both engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featx import FeatxError, ImageEmbedder, UnknownBackboneError, list_backbones
from featx.nets.auto_layers import auto_layers, default_cut_name
from featx.nets.backbones import resolve_backbone

keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub")

ROOT = Path(__file__).resolve().parent.parent
SIZE = 28  # two 14-pixel patches a side: 4 patch tokens
IMAGENET = {"scale": [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)],
            "offset": [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]}
SMALL = {"hidden_dim": 32, "num_layers": 2, "num_heads": 2, "intermediate_dim": 64}


def _dinov2():
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_register_tokens=2, image_shape=(SIZE, SIZE, 3),
        position_embedding_shape=(SIZE, SIZE, 3), **SMALL)
    return backbone, keras_hub.layers.DINOV2ImageConverter(image_size=(SIZE, SIZE), **IMAGENET)


def _siglip():
    # The two-tower backbone, as SigLIP presets are saved; featx embeds its vision encoder.
    vision = keras_hub.models.SigLIPVisionEncoder(patch_size=14, image_shape=(SIZE, SIZE, 3),
                                                  **SMALL)
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=50, embedding_dim=32,
                                              max_sequence_length=8, **SMALL)
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    return backbone, keras_hub.layers.SigLIPImageConverter(
        image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)


def _clip():
    backbone = keras_hub.models.CLIPVisionEncoder(patch_size=14, image_shape=(SIZE, SIZE, 3),
                                                  **SMALL)
    return backbone, keras_hub.layers.CLIPImageConverter(image_size=(SIZE, SIZE), **IMAGENET)


def _vit():
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=14, num_layers=2, num_heads=2, hidden_dim=32,
        mlp_dim=64)
    return backbone, keras_hub.layers.ViTImageConverter(
        image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)


FAMILIES = {"dinov2": _dinov2, "siglip": _siglip, "clip": _clip, "vit": _vit}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """family -> (preset directory, Keras Hub's own backbone and converter objects)."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(7)
    out = {}
    for family, make in FAMILIES.items():
        backbone, converter = make()
        path = root / family
        backbone.save_to_preset(str(path))
        converter.save_to_preset(str(path))
        out[family] = (path, backbone, converter)
    return out


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8)


def _keras_hub_tokens(backbone, converter, images):
    """Keras Hub's own pipeline: its converter, then its backbone (the vision tower)."""
    vision = getattr(backbone, "vision_encoder", backbone)
    x = converter(images.astype("float32"))
    x = {"images": x} if isinstance(vision.input, dict) else x
    return keras.ops.convert_to_numpy(vision(x))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max() / np.abs(b).max()) < 1e-4


# The documented default pooling of each family, applied to Keras Hub's output.
DEFAULTS = {
    "dinov2": lambda t: np.concatenate([t[:, 0], t[:, 3:].mean(1)], -1),  # CLS + 2 registers
    "siglip": lambda t: t,  # the attention-pooling head's output
    "clip": lambda t: t[:, 0],
    "vit": lambda t: t[:, 0],
}


@pytest.mark.parametrize("engine", ["keras", "openvino"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_embeddings_equal_keras_hubs_own_pipeline(presets, images, family, engine):
    path, backbone, converter = presets[family]
    emb = ImageEmbedder(f"keras_hub:{path}", engine=engine)
    got = emb.fit_transform(images)
    expected = DEFAULTS[family](_keras_hub_tokens(backbone, converter, images))
    assert got.dtype == np.float32 and _close(got, expected)
    assert emb.report_.n_embedded == len(images)


def test_token_poolings_leave_out_class_and_register_tokens(presets, images):
    path, backbone, converter = presets["dinov2"]
    tokens = _keras_hub_tokens(backbone, converter, images)  # (6, 1 + 2 + 4, 32)
    patches = tokens[:, 3:]
    expected = {"cls": tokens[:, 0], "avg": patches.mean(1), "max": patches.max(1),
                "cls_avg": np.concatenate([tokens[:, 0], patches.mean(1)], -1),
                "flatten": tokens.reshape(len(images), -1)}
    for pooling, want in expected.items():
        got = ImageEmbedder(f"keras_hub:{path}", pooling=pooling, engine="keras").transform(images)
        assert _close(got, want), pooling
    # SigLIP has no class token: "avg" is the mean of every token after its final norm.
    path, backbone, converter = presets["siglip"]
    vision = backbone.vision_encoder
    final = keras.Model(vision.inputs, vision.get_layer("post_layer_norm").output)
    tokens = np.asarray(final({"images": converter(images.astype("float32"))}))
    got = ImageEmbedder(f"keras_hub:{path}", pooling="avg", engine="keras").transform(images)
    assert _close(got, tokens.mean(1))


def test_cut_at_a_transformer_block_matches_keras_hub(presets, images):
    path, backbone, converter = presets["dinov2"]
    stage = keras.Model(backbone.inputs, backbone.pyramid_outputs["stage1"])  # after block 0
    tokens = np.asarray(stage({"images": converter(images.astype("float32"))}))
    for layer in ("block_0", 0, -2):
        got = ImageEmbedder(f"keras_hub:{path}", layer=layer, engine="keras").transform(images)
        assert _close(got, tokens[:, 0]), layer  # "auto" at a block: the class token
    path, backbone, converter = presets["clip"]
    block = keras.Model(backbone.inputs, backbone.get_layer("encoder_block_1").output)
    tokens = np.asarray(block({"images": converter(images.astype("float32"))}))
    got = ImageEmbedder(f"keras_hub:{path}", layer="block_1", pooling="avg",
                        engine="openvino").transform(images)
    assert _close(got, tokens[:, 1:].mean(1))
    with pytest.raises(UnknownBackboneError, match="2 transformer blocks, block_0 to block_1"):
        ImageEmbedder(f"keras_hub:{path}", layer="block_5", engine="keras").transform(images)
    with pytest.raises(ValueError, match="'block_<i>'"):
        resolve_backbone(f"keras_hub:{path}", layer="encoder_block_1")


def test_several_blocks_in_one_pass_through_the_cache(presets, images, tmp_path):
    path, _, _ = presets["vit"]
    backbone = f"keras_hub:{path}"
    assert auto_layers(backbone) == ["block_0", None] and default_cut_name(backbone) == "output"
    from featx.embed.engine import embed_items
    from featx.embed.images import as_items

    configs = [resolve_backbone(backbone, layer=layer, pooling="auto", engine="keras")
               for layer in ("embeddings", "block_0", None)]
    cache = tmp_path / "emb.h5"
    result = embed_items(configs, as_items(images)[0], cache=cache)
    assert [r.shape for r in result.outputs] == [(6, 32)] * 3
    later = ImageEmbedder(backbone, layer="block_0", cache=cache, engine="openvino")
    assert np.array_equal(later.transform(images), result.outputs[1])
    assert later.report_.n_hits == len(images) and later.report_.n_embedded == 0


def test_layer_probe_auto_picks_transformer_blocks(presets, rng):
    from featx import probe_layers

    assert auto_layers("keras_hub:dinov2_small") == [
        "block_1", "block_3", "block_5", "block_7", "block_9", None]
    path, _, _ = presets["dinov2"]
    y = np.repeat([0, 1], 8)
    images = rng.integers(0, 120, (16, SIZE, SIZE, 3), dtype=np.uint8) + (
        100 * y[:, None, None, None]).astype(np.uint8)
    probe = probe_layers(images, y, embedder=ImageEmbedder(f"keras_hub:{path}", engine="keras"),
                         heads=["logreg"], cv=2)
    assert sorted(r.extra["layer"] for r in probe) == ["block_0", "output"]


def test_fingerprint_holds_the_presets_identity(presets, tmp_path):
    path, _, _ = presets["clip"]
    config = resolve_backbone(f"keras_hub:{path}")
    assert config.kind == "hub" and config.input_size == (SIZE, SIZE)
    assert config.pooling == "cls" and config.preprocess == "keras_hub.image_converter"
    # Where the directory lies does not matter; what it holds does.
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert resolve_backbone(f"keras_hub:{copy}").fingerprint == config.fingerprint
    other, _, _ = presets["vit"]
    assert resolve_backbone(f"keras_hub:{other}").fingerprint != config.fingerprint
    (copy / "model.weights.h5").write_bytes((path / "model.weights.h5").read_bytes() + b"x")
    changed = resolve_backbone(f"keras_hub:{copy}")
    assert changed.fingerprint != config.fingerprint
    assert changed.fingerprint_fields["backbone"] == config.fingerprint_fields["backbone"]
    assert resolve_backbone(f"keras_hub:{path}", weights=None).fingerprint != config.fingerprint
    # A preset name is its name and the Keras Hub release that pins its Kaggle version.
    named = resolve_backbone("keras_hub:dinov2_small")
    assert named.input_size == (224, 224) and named.pooling == "cls_avg"
    assert named.fingerprint_fields["backbone"] == (
        f"hub:dinov2_small@keras-hub-{keras_hub.__version__}")
    assert resolve_backbone("keras_hub:dinov2_base").fingerprint != named.fingerprint


def test_kaggle_and_hugging_face_handles_resolve_as_keras_hub_takes_them():
    """A handle is passed to Keras Hub as it is; its identity is the handle with the Keras Hub
    version; a model featx knows gets its size and pooling from the name."""
    handle = "kaggle://keras/dinov2/keras/dinov2_small/3"
    kaggle = resolve_backbone(f"keras_hub:{handle}")
    assert (kaggle.source.preset, kaggle.source.is_dir) == (handle, False)
    assert kaggle.input_size == (224, 224) and kaggle.pooling == "cls_avg"
    assert kaggle.fingerprint_fields["backbone"] == (
        f"hub:{handle}@keras-hub-{keras_hub.__version__}")
    assert kaggle.fingerprint_fields["weights"] == f"preset@keras-hub-{keras_hub.__version__}"
    others = {resolve_backbone(f"keras_hub:{h}").fingerprint for h in (
        "dinov2_small", "kaggle://keras/dinov2/keras/dinov2_small/2",
        "kaggle://keras/dinov2/keras/dinov2_small")}
    assert kaggle.fingerprint not in others and len(others) == 3
    hf = resolve_backbone("keras_hub:hf://google/siglip-base-patch16-224")
    assert hf.source.preset == "hf://google/siglip-base-patch16-224"
    assert (hf.source.family.name, hf.input_size, hf.pooling) == ("siglip", (224, 224), "pooled")
    custom = resolve_backbone("keras_hub:hf://someone/dinov2-finetuned", input_size=224)
    assert custom.source.family.name == "dinov2"
    with pytest.raises(FeatxError, match="input_size="):
        resolve_backbone("keras_hub:hf://someone/dinov2-finetuned")
    with pytest.raises(UnknownBackboneError, match=r"kaggle://<org>/<model>/keras/<variant>"):
        resolve_backbone("keras_hub:kaggle://keras/dinov2")
    with pytest.raises(UnknownBackboneError, match=r"not of the form hf://<org>/<model>"):
        resolve_backbone("keras_hub:hf://dinov2_small")
    with pytest.raises(UnknownBackboneError, match=r"s3:// handle, which featx does not pass"):
        resolve_backbone("keras_hub:s3://bucket/dinov2_small")
    with pytest.raises(UnknownBackboneError, match="not one featx embeds with"):
        resolve_backbone("keras_hub:hf://someone/bert_base_en")


def test_list_backbones_says_which_need_a_network():
    offline = list_backbones(network=False)
    assert "mobilenet" in offline and "resnet50" not in offline
    assert "keras_hub:dinov2_small" in list_backbones(hub=True, network=True)
    assert "keras_hub:dinov2_small" not in list_backbones()


def test_errors_say_what_was_expected(presets, tmp_path, images):
    dino, _, _ = presets["dinov2"]
    siglip, _, _ = presets["siglip"]
    with pytest.raises(UnknownBackboneError, match="does not exist"):
        resolve_backbone(f"keras_hub:{tmp_path / 'missing'}")
    with pytest.raises(UnknownBackboneError, match="list_backbones"):
        resolve_backbone("keras_hub:bert_base_en")
    with pytest.raises(FeatxError, match="input_size="):
        resolve_backbone("keras_hub:siglip_future_patch16")
    with pytest.raises(ValueError, match="needs a class token"):
        resolve_backbone(f"keras_hub:{siglip}", pooling="cls")
    with pytest.raises(ValueError, match="'pooled' is the encoder's own"):
        resolve_backbone(f"keras_hub:{dino}", pooling="pooled")
    with pytest.raises(ValueError, match="pools the tokens of a Keras Hub encoder"):
        resolve_backbone("mobilenet", pooling="cls_avg")
    with pytest.raises(FeatxError, match="'preset'"):
        resolve_backbone(f"keras_hub:{dino}", weights="imagenet.h5")
    with pytest.raises(FeatxError, match="position embeddings are fixed"):
        ImageEmbedder(f"keras_hub:{siglip}", input_size=42, engine="keras").transform(images)
    bare = tmp_path / "bare"
    shutil.copytree(dino, bare)
    (bare / "image_converter.json").unlink()
    with pytest.raises(FeatxError, match="ImageConverter.from_preset"):
        ImageEmbedder(f"keras_hub:{bare}", engine="keras").transform(images)


def test_dinov2_interpolates_to_another_input_size(presets, rng):
    path, backbone, converter = presets["dinov2"]
    images = rng.integers(0, 256, size=(3, 42, 42, 3), dtype=np.uint8)
    larger = keras_hub.models.DINOV2Backbone.from_preset(str(path), image_shape=(42, 42, 3))
    tokens = keras.ops.convert_to_numpy(larger({"images": converter.resizing.__class__(
        42, 42)(images.astype("float32")) * np.float32(IMAGENET["scale"]) + np.float32(
        IMAGENET["offset"])}))
    got = ImageEmbedder(f"keras_hub:{path}", input_size=42, pooling="cls",
                        engine="keras").transform(images)
    assert _close(got, tokens[:, 0])


def test_unreachable_host_and_missing_extra_each_give_one_line(monkeypatch, tmp_path, images):
    # No network on any machine: every request goes to a closed local port.
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(FeatxError, match="not reachable") as info:
        ImageEmbedder("keras_hub:dinov2_small", input_size=SIZE, engine="keras").transform(images)
    message = str(info.value)
    assert "\n" not in message and "save_to_preset('dinov2_small')" in message
    assert "kaggle models" in message and "keras_hub:/path/to/dinov2_small" in message
    # A Kaggle handle goes to Kaggle as it is; a Hugging Face handle to the Hub (offline mode
    # here: the same error as an unreachable host, without huggingface_hub's 25 s of retries).
    kaggle = "kaggle://keras/dinov2/keras/dinov2_small/3"
    with pytest.raises(FeatxError, match="not reachable") as info:
        ImageEmbedder(f"keras_hub:{kaggle}", input_size=SIZE, engine="keras").transform(images)
    message = str(info.value)
    assert "\n" not in message and f"could not download Keras Hub preset {kaggle!r}" in message
    assert "kaggle models instances versions download keras/dinov2/keras/dinov2_small/3" in (
        message) and "keras_hub:/path/to/dinov2_small" in message
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FeatxError, match="not reachable") as info:
        ImageEmbedder("keras_hub:hf://keras/dinov2_small", input_size=SIZE,
                      engine="keras").transform(images)
    message = str(info.value)
    assert "\n" not in message and "'hf://keras/dinov2_small'" in message
    assert "hf download keras/dinov2_small --local-dir dinov2_small" in message
    from featx.nets import hub_model

    monkeypatch.setitem(sys.modules, "keras_hub", None)
    with pytest.raises(FeatxError, match=r"pip install 'featx\[hub\]'"):
        hub_model._keras_hub()


def test_resolving_a_preset_imports_neither_keras_nor_keras_hub(presets):
    path, _, _ = presets["siglip"]
    code = ("import sys; from featx.nets.backbones import resolve_backbone; "
            f"c = resolve_backbone('keras_hub:{path}'); "
            "print(c.pooling, [m for m in ('keras', 'keras_hub', 'tensorflow') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.split() == ["pooled", "[]"]


def test_jax_backend_gives_the_same_embeddings(presets, images, tmp_path):
    pytest.importorskip("jax")
    path, backbone, converter = presets["dinov2"]
    np.save(tmp_path / "images.npy", images)
    code = ("import numpy as np; from featx import ImageEmbedder; "
            f"x = np.load({str(tmp_path / 'images.npy')!r}); "
            f"e = ImageEmbedder('keras_hub:{path}', engine='auto'); "
            f"np.save({str(tmp_path / 'jax.npy')!r}, e.transform(x))")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = DEFAULTS["dinov2"](_keras_hub_tokens(backbone, converter, images))
    assert _close(np.load(tmp_path / "jax.npy"), expected)


def test_saved_model_predicts_from_a_preset(presets, images, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from featx import load_model, save_model

    path, _, _ = presets["vit"]
    y = np.array([0, 1] * 3)
    pipe = make_pipeline(ImageEmbedder(f"keras_hub:{path}", engine="keras"),
                         LogisticRegression()).fit(images, y)
    save_model(pipe, tmp_path / "m.featx")
    model = load_model(tmp_path / "m.featx")
    assert list(model.predict(images)) == list(pipe.predict(images))


def test_featx_probe_and_predict_on_a_preset_directory(presets, tmp_path, capsys):
    from PIL import Image

    from featx.cli.main import main

    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, cls in enumerate(["dark", "light"]):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 90, size=(40, 40, 3)) + 40 + 100 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / cls / f"{cls}{i}.png")
    path, _, _ = presets["dinov2"]
    out = tmp_path / "out"
    code = main(["probe", str(root), "--backbone", f"keras_hub:{path}", "--cache",
                 str(tmp_path / "emb.h5"), "--heads", "logreg", "--cv", "2", "--n-jobs", "1",
                 "--engine", "keras", "--out", str(out)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0 and "block_0" in printed and "output" in printed, captured.err[-2000:]
    images = sorted(str(p) for p in root.rglob("*.png"))
    assert main(["predict", str(out / "model.featx"), *images[:2], "--out",
                 str(tmp_path / "pred.csv")]) == 0
    assert (tmp_path / "pred.csv").read_text().count("\n") == 3

