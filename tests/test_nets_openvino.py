"""The OpenVINO engine: same numbers as Keras in float32, bfloat16 in its own cache group, the
converted model kept on disk and rebuilt when damaged, and a fallback that says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featx import FeatxError, ImageEmbedder
from featx.embed.engine import embed_items
from featx.embed.images import as_items
from featx.nets.backbones import resolve_backbone
from featx.nets.build import clear_networks, get_network
from tests.conftest import save_tiny_convnet, tiny_convnet, tiny_dense

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(9, 20, 20, 3), dtype=np.uint8)


def _openvino_files() -> list[Path]:
    return sorted((Path(os.environ["FEATX_HOME"]) / "openvino").glob("*.xml"))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f
                             if line.startswith(("flags", "Features"))), []))
    except OSError:  # not Linux
        return set()


def openvino_bf16() -> tuple[bool, str]:
    """Whether OpenVINO's CPU plugin runs a bfloat16 hint in bfloat16 on this CPU, and why.

    The plugin honours the hint on x86-64 CPUs with AVX-512 (natively with ``avx512_bf16`` or
    AMX, emulated without) or with AVX2-VNNI-2 (``avx_vnni_int8`` and ``avx_ne_convert``), and
    keeps float32 everywhere else (``hasBF16HardwareSupport`` in its ``precision_support.cpp``).
    """
    flags = _cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        how = f"natively ({', '.join(native)})" if native else "emulated on AVX-512"
        return True, f"this CPU runs bfloat16 {how}"
    if {"avx_vnni_int8", "avx_ne_convert"} <= flags:
        return True, "this CPU runs bfloat16 natively (AVX2-VNNI-2)"
    return False, "this CPU has neither AVX-512 nor AVX2-VNNI-2: OpenVINO keeps float32"


def test_the_cpu_feature_reading_agrees_with_openvino():
    """The bfloat16 tests below branch on :func:`openvino_bf16`; OpenVINO says what it runs."""
    import openvino as ov
    import openvino.opset13 as ops

    expected, why = openvino_bf16()
    x = ops.parameter([1, 4], np.float32)
    compiled = ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "bf16"})
    ran = compiled.get_property("INFERENCE_PRECISION_HINT")
    assert ran == (ov.Type.bf16 if expected else ov.Type.f32), (
        f"read from /proc/cpuinfo: {why}; but OpenVINO compiled a bfloat16 hint as {ran}")


def test_auto_picks_openvino_on_this_cpu_and_keras_elsewhere():
    assert resolve_backbone("mobilenet", engine="auto").engine == "openvino"
    assert resolve_backbone("mobilenet").engine == "keras"  # the function's own default
    # Float16 is a GPU's precision: Keras runs it, and engine='openvino' refuses it.
    half = resolve_backbone("mobilenet", engine="auto", precision="mixed_float16")
    assert half.engine == "keras" and "float16" in half.engine_note
    with pytest.raises(ValueError, match="engine='keras'"):
        resolve_backbone("mobilenet", engine="openvino", precision="mixed_float16")
    with pytest.raises(ValueError, match="engine='cuda' is not valid"):
        resolve_backbone("mobilenet", engine="cuda")
    code = ("from featx.nets.backbones import resolve_backbone as r; "
            "c = r('mobilenet', engine='auto'); print(c.engine, '|', c.engine_note)")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=ROOT)
    assert out.stdout.startswith("keras | engine='auto' runs Keras: Keras runs on 'jax'")


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_both_engines_agree_on_a_tiny_image_network(images, dtype):
    X = images.astype(dtype)
    keras_rows = ImageEmbedder(tiny_convnet, input_size=16, engine="keras").fit_transform(X)
    ov = ImageEmbedder(tiny_convnet, input_size=16, engine="openvino")
    ov_rows = ov.fit_transform(X)
    np.testing.assert_allclose(ov_rows, keras_rows, rtol=1e-5, atol=1e-6)
    assert get_network(ov.backbone_config(), (16, 16, 3)).engine == "openvino"
    # Float32 on either engine is one embedding space: one cache group.
    assert ov.backbone_config().fingerprint == ImageEmbedder(
        tiny_convnet, input_size=16, engine="keras").backbone_config().fingerprint


def test_openvino_bfloat16_is_close_to_float32_where_the_cpu_runs_it(images):
    """Where the CPU runs bfloat16 the rows differ from float32 but stay within 5e-2 of the
    largest feature (about 3e-3 on this tiny network); where it does not, OpenVINO keeps float32
    and the rows are float32's. Either way the group is a bfloat16 one, apart from float32."""
    f32 = ImageEmbedder(tiny_convnet, input_size=16, engine="openvino")
    bf16 = ImageEmbedder(tiny_convnet, input_size=16, engine="openvino",
                         precision="mixed_bfloat16")
    a, b = f32.fit_transform(images), bf16.fit_transform(images)
    assert get_network(bf16.backbone_config(), (16, 16, 3)).engine == "openvino"
    assert bf16.backbone_config().fingerprint_fields["precision"] == "mixed_bfloat16@openvino"
    assert bf16.backbone_config().fingerprint != f32.backbone_config().fingerprint
    scale = np.abs(a).max()
    runs_bf16, why = openvino_bf16()
    if runs_bf16:
        assert not np.array_equal(a, b), f"{why}, yet bfloat16 gave float32's exact rows"
        assert np.abs(b - a).max() <= 5e-2 * scale, why
    else:
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * scale, err_msg=why)


def test_both_engines_agree_on_a_tabular_model_file(tmp_path, rng):
    import keras

    path = tmp_path / "tabular.keras"
    keras.Model(*_dense_graph()).save(path)
    X = rng.normal(size=(7, 6)).astype(np.float32)
    rows = {e: ImageEmbedder(str(path), layer="hidden", engine=e).fit_transform(X)
            for e in ("keras", "openvino")}
    np.testing.assert_allclose(rows["openvino"], rows["keras"], rtol=1e-5, atol=1e-6)
    assert rows["keras"].shape == (7, 8)


def _dense_graph():
    import keras

    inp = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inp)
    return inp, keras.layers.Dense(2, name="out")(hidden)


@pytest.mark.imagenet
def test_engines_agree_within_1e_4_on_the_imagenet_mobilenet(imagenet_weights):
    """The test that keeps the engine out of the float32 fingerprint (docs/cache-format.md)."""
    from skimage import data

    photos = np.stack([data.chelsea()[:224, :224], data.coffee()[:224, :224],
                       data.astronaut()[:224, :224]])
    rows = {e: ImageEmbedder("mobilenet", engine=e).fit_transform(photos)
            for e in ("keras", "openvino")}
    scale = np.abs(rows["keras"]).max()
    assert np.abs(rows["openvino"] - rows["keras"]).max() <= 1e-4 * scale
    # Where the CPU runs bfloat16 it is close but not the same numbers; where it does not,
    # OpenVINO keeps float32. Either way it is cached apart.
    bf16 = ImageEmbedder("mobilenet", engine="openvino", precision="mixed_bfloat16")
    low = bf16.fit_transform(photos)
    runs_bf16, why = openvino_bf16()
    if runs_bf16:
        assert 1e-4 * scale < np.abs(low - rows["keras"]).max() < 0.25 * scale, why
        for a, b in np.c_[low, rows["keras"]].reshape(3, 2, -1):
            assert np.corrcoef(a, b)[0, 1] > 0.99, why
    else:
        assert np.abs(low - rows["keras"]).max() <= 1e-4 * scale, why
    fingerprints = {ImageEmbedder("mobilenet", engine="keras").backbone_config().fingerprint,
                    bf16.backbone_config().fingerprint,
                    ImageEmbedder("mobilenet", engine="keras",
                                  precision="mixed_bfloat16").backbone_config().fingerprint}
    assert len(fingerprints) == 3


@pytest.mark.imagenet
def test_a_later_process_reads_the_converted_model_without_tensorflow(imagenet_weights, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from featx import ImageEmbedder\n"
        "x = np.arange(2 * 40 * 40 * 3, dtype=np.uint8).reshape(2, 40, 40, 3)\n"
        "rows = ImageEmbedder('mobilenet', input_size=96, engine='openvino').fit_transform(x)\n"
        "np.save(sys.argv[1], rows)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "FEATX_HOME": str(tmp_path / "home")}

    def run(name: str) -> tuple[str, np.ndarray]:
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], env=env,
                             capture_output=True, text=True, check=True, cwd=ROOT)
        return out.stdout.strip(), np.load(tmp_path / name)

    first, rows1 = run("1.npy")
    assert first == "True"  # converted from the Keras model
    saved = list((tmp_path / "home" / "openvino").glob("*.xml"))
    assert len(saved) == 1 and saved[0].with_suffix(".bin").stat().st_size > 1_000_000
    second, rows2 = run("2.npy")
    assert second == "False"  # read from disk: TensorFlow never imported
    np.testing.assert_array_equal(rows1, rows2)


def test_a_damaged_converted_model_is_rebuilt(tmp_path, rng):
    import keras

    path = tmp_path / "model.keras"
    keras.Model(*_dense_graph()).save(path)
    X = rng.normal(size=(5, 6)).astype(np.float32)
    before = set(_openvino_files())
    expected = ImageEmbedder(str(path), engine="openvino").fit_transform(X)
    xml = sorted(set(_openvino_files()) - before)
    assert len(xml) == 1, "the converted model was not kept on disk"
    for damage in ("truncate_bin", "garbage_xml"):
        for p in xml:
            if damage == "truncate_bin":
                p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes()[:10])
            else:
                p.write_text("<net>not a model")
        clear_networks()
        got = ImageEmbedder(str(path), engine="openvino").fit_transform(X)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert _mentions(xml[0], "<net")  # written again, whole


def _mentions(xml: Path, text: str) -> bool:
    try:
        return text in xml.read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _unconvertible_model():
    """A network OpenVINO cannot take: a Python function inside the graph."""
    import keras
    import tensorflow as tf

    inp = keras.Input((4,))
    x = keras.layers.Dense(3, kernel_initializer="ones")(inp)
    out = keras.layers.Lambda(lambda t: tf.numpy_function(np.tanh, [t], tf.float32),
                              output_shape=(3,))(x)
    model = keras.Model(inp, out)
    return model


def test_auto_falls_back_to_keras_with_a_reason_and_openvino_refuses(rng, capsys):
    X = rng.normal(size=(3, 4)).astype(np.float32)
    model = _unconvertible_model()
    auto = ImageEmbedder(model, engine="auto", verbose=True)
    rows = auto.fit_transform(X)
    np.testing.assert_allclose(rows, np.tanh(X.sum(axis=1, keepdims=True)).repeat(3, 1),
                               rtol=1e-5)
    err = capsys.readouterr().err
    assert "engine='auto' runs Keras: OpenVINO could not convert" in err
    with pytest.raises(FeatxError, match=r"OpenVINO could not convert.*engine='keras'"):
        ImageEmbedder(model, engine="openvino").fit_transform(X)


@pytest.mark.parametrize("engine", ["keras", "openvino"])
def test_several_cuts_in_one_pass_equal_one_cut_at_a_time(images, engine, tmp_path):
    configs = [resolve_backbone(tiny_convnet, input_size=16, layer=layer, pooling=pooling,
                                engine=engine)
               for layer, pooling in (("conv", "avg"), ("conv", "max"), (None, "avg"))]
    net = get_network(configs, (16, 16, 3))
    assert net.widths == [4, 4, 5] and net.engine == engine
    items, _ = as_items(images)
    cache = tmp_path / "cuts.h5"
    result = embed_items(configs, items, cache=cache)
    assert result.report.n_embedded == len(images) and net.n_seen >= len(images)
    for config, rows in zip(configs, result.outputs, strict=True):
        single = ImageEmbedder(tiny_convnet, input_size=16, layer=config.layer,
                               pooling=config.pooling, engine=engine, cache=cache)
        np.testing.assert_allclose(single.fit_transform(images), rows, rtol=1e-5, atol=1e-6)
        assert single.report_.n_hits == len(images)  # each cut sits in its own cache group
    with pytest.raises(ValueError, match="differ in more than layer and pooling"):
        get_network([configs[0], resolve_backbone(tiny_dense, input_size=16)], (16, 16, 3))


def test_command_line_engine_and_precision(image_folder, tmp_path, capsys):
    from featx.cli.main import main

    model = tmp_path / "tiny.keras"
    save_tiny_convnet(model, 16)
    base = ["embed", str(image_folder), "--backbone", str(model), "--input-size", "16",
            "--cache", str(tmp_path / "c.h5")]
    counts = []
    for extra in (["--engine", "keras"], ["--engine", "openvino"],
                  ["--engine", "openvino", "--precision", "mixed_bfloat16"]):
        assert main([*base, *extra]) == 0
        out = capsys.readouterr().out
        counts.append(out[out.index("embedded"):].split(",")[:2])
    # float32 is one group for both engines; bfloat16 is another.
    assert counts == [["embedded 8", " already cached 0"], ["embedded 0", " already cached 8"],
                      ["embedded 8", " already cached 0"]]


@pytest.mark.imagenet
def test_weights_install_prepares_the_default_network_for_openvino(imagenet_weights, tmp_path):
    """`featx weights install` converts the default configuration once, so a new process's first
    `ImageEmbedder("mobilenet")` reads it from disk and never imports TensorFlow."""
    home = tmp_path / "home"
    env = {**os.environ, "FEATX_HOME": str(home)}
    featx = [sys.executable, "-m", "featx.cli.main"]

    def install(*flags: str) -> str:
        return subprocess.run([*featx, "weights", "install", "mobilenet", *flags], env=env,
                              capture_output=True, text=True, check=True, cwd=ROOT).stdout

    assert "ready for OpenVINO" not in install("--no-openvino")
    assert not (home / "openvino").exists()
    assert "mobilenet ready for OpenVINO" in install()
    assert len(list((home / "openvino").glob("*.xml"))) == 1
    code = (
        "import sys, numpy as np\n"
        "from featx import ImageEmbedder\n"
        "x = np.arange(2 * 40 * 40 * 3, dtype=np.uint8).reshape(2, 40, 40, 3)\n"
        "emb = ImageEmbedder('mobilenet').fit(x)\n"
        "print(emb.transform(x).shape, emb.config_.engine, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split("\n")[0] == "(2, 1024) openvino False"
