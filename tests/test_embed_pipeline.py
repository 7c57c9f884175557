"""The embedding pipeline: compiled inference, bounded prefetch, the cache writer, and the JAX
backend (what the GPU machines run) giving the same numbers as TensorFlow.

The pipeline runs whichever engine the network has, so every test that runs a network runs on
both engines (``engine`` parametrised) and asserts that the network which ran is that engine's:
``engine="auto"`` would pick OpenVINO on this CPU and leave the Keras path (what GPU users run)
untested. Reduced precision is tested in tests/test_embed_precision.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featx.embed.engine as engine_module
from featx import CacheError, ImageEmbedder
from featx.nets.build import get_builder_network
from featx.nets.network import Network
from tests.conftest import tiny_convnet

#: The engines the pipeline tests run on (tests/test_nets_openvino.py compares their numbers).
ENGINES = ["keras", "openvino"]


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(40, 20, 20, 3), dtype=np.uint8)


def network_of(emb: ImageEmbedder) -> Network:
    """The network an embedder of ``tiny_convnet`` on 16x16 images runs (one per process)."""
    return get_builder_network(emb.backbone_config(), (16, 16, 3))


def test_inference_never_goes_through_model_predict(images, monkeypatch):
    """On the Keras engine, the one that holds a keras.Model whose predict could be called."""
    import keras

    def forbidden(*args, **kwargs):
        raise AssertionError("model.predict was called")

    monkeypatch.setattr(keras.Model, "predict", forbidden)
    monkeypatch.setattr(keras.Model, "predict_on_batch", forbidden)
    emb = ImageEmbedder(tiny_convnet, input_size=16, batch_size=8, engine="keras")
    out = emb.fit_transform(images)
    assert out.shape == (40, 5)
    net = network_of(emb)
    assert net.engine == "keras" and isinstance(net.model, keras.Model)
    assert net.n_seen >= 40  # the rows came from this network's forward pass


@pytest.mark.parametrize("engine", ENGINES)
def test_prefetch_is_bounded(engine, images, monkeypatch):
    """Decoding runs ahead of the network by at most a fixed number of batches."""
    loads = []
    real_load = engine_module.load_pixels

    def counting_load(*args, **kwargs):
        loads.append(1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pixels", counting_load)
    emb = ImageEmbedder(tiny_convnet, input_size=16, batch_size=4, engine=engine)
    net = network_of(emb)
    assert net.engine == engine
    seen_at_embed = []
    real_dispatch = net.dispatch

    def recording_dispatch(x):
        seen_at_embed.append(len(loads))
        return real_dispatch(x)

    monkeypatch.setattr(net, "dispatch", recording_dispatch)
    emb.fit_transform(images)
    ahead = engine_module.PREFETCH + 1
    for k, started in enumerate(seen_at_embed):
        assert started <= (k + ahead) * 4, (k, started)
    assert len(seen_at_embed) == 10


def test_one_decoding_thread_per_usable_core_up_to_16(images, monkeypatch):
    """The default pool follows the cores this process may run on (an affinity mask or a
    container's CPU set), capped at 16, and never drops to zero."""
    for cores, expected in ((set(range(40)), 16), ({3}, 1), ({0, 1, 2, 3, 4}, 5)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: c, raising=False)
        assert engine_module.default_workers() == expected
    sizes = []
    real_pool = engine_module.ThreadPoolExecutor

    def recording_pool(max_workers=None, **kwargs):
        if not kwargs:  # the decoding pool (the assembler's has a thread name prefix)
            sizes.append(max_workers)
        return real_pool(max_workers, **kwargs)

    monkeypatch.setattr(engine_module, "ThreadPoolExecutor", recording_pool)
    # The decoding pool belongs to the pipeline, not the network: one engine is enough.
    for n_workers in (None, 3):
        ImageEmbedder(tiny_convnet, input_size=16, n_workers=n_workers,
                      engine="keras").fit_transform(images[:4])
    assert sizes == [5, 3]


@pytest.mark.parametrize("engine", ENGINES)
def test_padding_to_a_power_of_two_does_not_change_rows(engine, images):
    one = ImageEmbedder(tiny_convnet, input_size=16, batch_size=64, engine=engine)
    one_batch = one.fit_transform(images)
    singles = ImageEmbedder(tiny_convnet, input_size=16, batch_size=1,
                            engine=engine).fit_transform(images[:5])
    np.testing.assert_allclose(singles, one_batch[:5], atol=1e-5)
    assert network_of(one).engine == engine


@pytest.mark.parametrize("engine", ENGINES)
def test_cache_write_errors_surface(engine, images, tmp_path, monkeypatch):
    from featx.cache.store import EmbeddingCache

    def broken(self, *args, **kwargs):
        raise CacheError("disk full (simulated)")

    monkeypatch.setattr(EmbeddingCache, "append", broken)
    emb = ImageEmbedder(tiny_convnet, input_size=16, cache=tmp_path / "c.h5", engine=engine)
    with pytest.raises(CacheError, match="disk full"):
        emb.fit_transform(images)
    assert network_of(emb).engine == engine


@pytest.mark.parametrize("engine", ENGINES)
def test_writer_commits_every_batch(engine, images, tmp_path):
    from featx import EmbeddingCache

    emb = ImageEmbedder(tiny_convnet, input_size=16, batch_size=3, cache=tmp_path / "c.h5",
                        engine=engine)
    out = emb.fit_transform(images)
    assert network_of(emb).engine == engine
    (group,) = EmbeddingCache(tmp_path / "c.h5").groups()
    assert group.rows == 40
    again = ImageEmbedder(tiny_convnet, input_size=16, cache=tmp_path / "c.h5", engine=engine)
    np.testing.assert_array_equal(again.fit_transform(images), out)
    assert again.report_.n_hits == 40


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("step", ["prepare", "dispatch"])
def test_a_failing_batch_keeps_the_batches_before_it(step, engine, images, tmp_path,
                                                     monkeypatch):
    """With a batch in flight, a failure in the next one (stacking it, or handing it to the
    network) still delivers and caches the one before: only the failing batch is lost."""
    from featx import EmbeddingCache

    emb = ImageEmbedder(tiny_convnet, input_size=16, batch_size=4, cache=tmp_path / "c.h5",
                        engine=engine)
    net = network_of(emb)
    assert net.engine == engine
    real, calls = getattr(net, step), []

    def failing(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise RuntimeError("device lost (simulated)")
        return real(x)

    monkeypatch.setattr(net, step, failing)
    with pytest.raises(RuntimeError, match="device lost"):
        emb.fit_transform(images)
    (group,) = EmbeddingCache(tmp_path / "c.h5").groups()
    assert group.rows == 8  # batches 1 and 2
    monkeypatch.setattr(net, step, real)
    again = ImageEmbedder(tiny_convnet, input_size=16, batch_size=4, cache=tmp_path / "c.h5",
                          engine=engine)
    again.fit_transform(images)
    assert (again.report_.n_hits, again.report_.n_embedded) == (8, 32)


_JAX_SCRIPT = """
import sys, numpy as np
from featx import ImageEmbedder
from featx.nets.build import get_network
x = np.load(sys.argv[1])
emb = ImageEmbedder("mobilenet", input_size=128, engine="keras")
np.save(sys.argv[2], emb.fit_transform(x))
import keras
print(keras.backend.backend(), get_network(emb.backbone_config()).engine)
"""


@pytest.mark.imagenet
def test_jax_backend_gives_the_same_embeddings_as_tensorflow(images, tmp_path, imagenet_weights):
    """The GPU machines run featx on JAX: same weights, same numbers as TensorFlow (on the CPU
    here). Both run the Keras engine, so this compares JAX (in a child: Keras fixes its backend
    at import) with TensorFlow's Keras forward pass in this process, not with OpenVINO (which
    engine="auto" would pick for TensorFlow on this CPU). Tolerance: 1e-4 of the largest
    feature, float32 rounding in two different compilers."""
    import keras

    np.save(tmp_path / "x.npy", images[:6])
    run = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(tmp_path / "x.npy"), str(tmp_path / "jax.npy")],
        env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True,
        cwd=Path(__file__).parent.parent, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-2:] == ["jax", "keras"], run.stdout[-500:]
    jax = np.load(tmp_path / "jax.npy")
    emb = ImageEmbedder("mobilenet", input_size=128, engine="keras")
    tensorflow = emb.fit_transform(images[:6])
    assert keras.backend.backend() == "tensorflow" and network_of(emb).engine == "keras"
    scale = np.abs(tensorflow).max()
    print("scale", scale, "max abs diff", np.abs(jax - tensorflow).max())
    assert scale > 0.1  # ImageNet features: a real signal
    assert np.abs(jax - tensorflow).max() <= 1e-4 * scale


@pytest.mark.parametrize("engine", ENGINES)
def test_chunks_give_the_same_rows_and_failure_positions(engine, images, tmp_path, monkeypatch):
    from PIL import Image

    paths = []
    for i, arr in enumerate(images[:20]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    paths[9] = str(tmp_path / "missing.png")
    paths[15] = paths[3]  # a duplicate across chunks
    whole = ImageEmbedder(tiny_convnet, input_size=16, on_error="nan",
                          engine=engine).fit_transform(paths)
    monkeypatch.setattr(engine_module, "CHUNK", 7)
    emb = ImageEmbedder(tiny_convnet, input_size=16, on_error="nan", cache=tmp_path / "c.h5",
                        engine=engine)
    chunked = emb.fit_transform(paths)
    assert network_of(emb).engine == engine
    np.testing.assert_allclose(chunked, whole, atol=1e-6, equal_nan=True)
    assert [f.index for f in emb.report_.failures] == [9]
    assert emb.report_.n_items == 20 and emb.report_.n_embedded in (18, 19)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_users_preprocess_function_runs(engine, images):
    """A Python preprocessing function runs in NumPy before either engine's network."""
    halved = ImageEmbedder(tiny_convnet, input_size=16, preprocess=lambda x: x / 2,
                           engine=engine)
    plain = ImageEmbedder(tiny_convnet, input_size=16, preprocess="none", engine=engine)
    np.testing.assert_allclose(
        halved.fit_transform(images[:4, :16, :16]),
        plain.fit_transform(images[:4, :16, :16].astype(np.float32) / 2),
        atol=1e-5,
    )
    assert network_of(halved).engine == network_of(plain).engine == engine
