"""Keras Hub encoders built for featx: the preset's backbone and image converter, cut at a
transformer block, its tokens pooled into one vector per image.

:func:`build_hub_model` loads the preset's backbone (its vision encoder, for a two-tower
SigLIP or CLIP backbone) with Keras Hub and traces it again as a Keras functional model from
its own layers, so that every transformer block's tokens can be an output (Keras Hub's DINOv2
and ViT keep their blocks inside one encoder layer): ``"embeddings"``, ``"block_<i>"`` (from 0)
or the encoder's output after its final norm (``layer=None``). Tokens ``(N, T, D)`` are pooled:

- ``"cls"``: the class token (token 0);
- ``"avg"`` / ``"max"``: the mean / maximum of the patch tokens, leaving out the class token and
  DINOv2's register tokens;
- ``"cls_avg"``: both concatenated, DINOv2's linear-evaluation feature;
- ``"pooled"``: SigLIP's attention-pooling head (the encoder's own image embedding);
- ``"flatten"``: every token.

:func:`converter_preprocess` is the preset's image converter without its resize (featx resizes
the decoded images itself): ``x * scale + offset``, traced into the compiled forward pass of
either engine. Keras and Keras Hub are imported only here, when such a backbone is built.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, UnknownBackboneError
from featx.nets.backbones import BackboneConfig
from featx.nets.hub import HubPreset, block_name, download_hint, missing_extra_message

__all__ = ["build_hub_model", "converter_preprocess", "load_hub_backbone"]


def _keras_hub() -> Any:
    try:
        import keras_hub
    except ImportError as exc:
        raise FeatxError(missing_extra_message()) from exc
    return keras_hub


def _network_failure(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    text = str(exc).lower()
    return (module in ("requests", "urllib3", "httpx", "httpx2", "httpcore", "kagglehub",
                       "huggingface_hub")
            or (isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError))
            or any(w in text for w in ("connection", "resolve", "timed out", "unreachable")))


def _load_failure(preset: HubPreset, what: str, exc: Exception) -> FeatxError:
    first = (str(exc).splitlines() or [""])[0][:200]
    if not preset.is_dir and _network_failure(exc):
        return FeatxError(
            f"could not download Keras Hub preset {preset.preset!r}: the preset host is not "
            f"reachable from here ({type(exc).__name__}: {first}). {download_hint(preset.preset)}"
        )
    return FeatxError(
        f"Keras Hub could not load the {what} of preset {preset.preset!r}: "
        f"{type(exc).__name__}: {first}. Expected a preset name Keras Hub knows or a directory "
        "written by save_to_preset."
    )


def _fetch_config(preset: HubPreset) -> None:
    """Fetch a Hugging Face handle's ``config.json`` as Keras Hub would, first: Keras Hub reports
    any failure to fetch it as a preset with no config.json, which hides an unreachable host
    (a Kaggle handle's failure comes through as it is)."""
    if not preset.preset.startswith("hf://"):
        return
    try:
        import huggingface_hub
    except ImportError:
        return  # Keras Hub says what to install
    huggingface_hub.hf_hub_download(repo_id=preset.preset[len("hf://"):], filename="config.json")


def load_hub_backbone(
    config: BackboneConfig, seeded: Callable[[], contextlib.AbstractContextManager[Any]]
) -> Any:
    """The preset's image encoder, with its weights (or seeded random ones for weights=None),
    at the configuration's input size."""
    keras_hub = _keras_hub()
    preset: HubPreset = config.source
    assert config.input_size is not None
    h, w = config.input_size
    kwargs: dict[str, Any] = {}
    if preset.family.name == "dinov2":  # interpolates its position embeddings to any size
        if h != w:
            raise FeatxError(
                f"DINOv2 takes square images; input_size={config.input_size} is not. "
                f"Expected input_size={h} (a multiple of the patch size)."
            )
        kwargs["image_shape"] = (h, w, 3)
    try:
        _fetch_config(preset)
        with seeded() if config.weights is None else contextlib.nullcontext():
            backbone = keras_hub.models.Backbone.from_preset(
                preset.preset, load_weights=config.weights is not None, **kwargs)
    except Exception as exc:
        raise _load_failure(preset, "backbone", exc) from exc
    vision = getattr(backbone, "vision_encoder", backbone)
    native = tuple(vision.image_shape[:2])
    if native != (h, w):
        raise FeatxError(
            f"Keras Hub preset {preset.preset!r} ({type(vision).__name__}) takes {native[0]}x"
            f"{native[1]} images (its position embeddings are fixed); input_size="
            f"{config.input_size} cannot be used. Omit input_size (or pass {native[0]})."
        )
    return vision


def _trace(vision: Any, family: str, inp: Any) -> tuple[Any, list[Any], Any, Any]:
    """Run the encoder's own layers on ``inp``: (token embeddings, each block's tokens, the
    tokens after the final norm, the encoder's pooled output or None)."""
    if family == "dinov2":
        x = emb = vision.embeddings(inp)
        blocks = []
        for block in vision.encoder.layers:
            x = block(x)
            blocks.append(x)
        return emb, blocks, vision.layernorm(x), None
    if family in ("siglip", "clip"):
        x = emb = vision.embedding(inp)
        if family == "clip":
            x = vision.pre_layer_norm(x)
        blocks = []
        for block in vision.encoder_layers:
            x = block(x)
            blocks.append(x)
        if family == "clip":
            return emb, blocks, vision.layer_norm(x), None
        final = vision.post_layer_norm(x)
        return emb, blocks, final, vision.head(final)
    # ViT: the patching layer, then the encoder layer's dropout, blocks and norm.
    emb = vision.get_layer("vit_patching_and_embedding")(inp)
    encoder = vision.get_layer("vit_encoder")
    x = encoder.dropout(emb)
    blocks = []
    for block in encoder.encoder_layers:
        x = block(x)
        blocks.append(x)
    return emb, blocks, encoder.layer_norm(x), None


def prefix_tokens(vision: Any, family: str) -> int:
    """Tokens before the patch tokens: the class token and DINOv2's register tokens."""
    if family == "dinov2":
        return 1 + int(vision.num_register_tokens)
    if family == "siglip":
        return 0
    if family == "vit":
        return 1 if vision.use_class_token else 0
    return 1


def _pool_tokens(x: Any, pooling: str, n_prefix: int) -> Any:
    import keras
    from keras import ops

    if pooling == "flatten":
        return keras.layers.Flatten()(x)
    patches = x[:, n_prefix:, :]
    if pooling == "max":
        return ops.max(patches, axis=1)
    mean = ops.mean(patches, axis=1)
    if pooling == "avg":
        return mean
    if n_prefix == 0:
        raise FeatxError(
            f"pooling={pooling!r} needs a class token, and this encoder has none. Expected "
            "'avg', 'max' or 'flatten'."
        )
    if pooling == "cls":
        return x[:, 0, :]
    if pooling == "cls_avg":
        return ops.concatenate([x[:, 0, :], mean], axis=-1)
    raise FeatxError(
        f"pooling={pooling!r} does not pool tokens. Expected 'cls', 'avg', 'cls_avg', 'max', "
        "'flatten' or (SigLIP, at the default cut) 'pooled'."
    )


def _cut(emb: Any, blocks: list[Any], final: Any, layer: str | int | None, name: str) -> Any:
    if layer is None:
        return final
    if layer == "embeddings":
        return emb
    index = layer if isinstance(layer, int) else int(str(layer)[len("block_"):])
    if not -len(blocks) <= index < len(blocks):
        raise UnknownBackboneError(
            f"layer {layer!r} is not in {name}: it has {len(blocks)} transformer blocks, "
            f"{block_name(0)} to {block_name(len(blocks) - 1)} (or an int from "
            f"{-len(blocks)} to {len(blocks) - 1}); 'embeddings' and None are the others."
        )
    return blocks[index]


def _explicit_attention(vision: Any) -> None:
    """Make Keras's attention layers compute softmax(QK^T)V explicitly when converted for OpenVINO.

    Keras's TensorFlow ``dot_product_attention`` computes ``tf.shape(key)[-1]`` even when the
    scale is given and leaves it unused; OpenVINO's converter turns every such dangling tensor
    into an extra model output (one scalar per attention layer), which the OpenVINO engine
    cannot take. ``MultiHeadAttention`` takes its explicit path (einsum, softmax, dropout,
    einsum) when its dropout rate is positive; in inference the dropout does nothing, so a
    positive rate that is never applied gives the same numbers (1e-6 relative, tested) and a
    graph without dangling tensors.
    """
    import keras

    for layer in vision._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.MultiHeadAttention) and not layer._dropout:
            layer._dropout = float(np.finfo(np.float32).tiny)


def build_hub_model(
    configs: list[BackboneConfig], seeded: Callable[[], contextlib.AbstractContextManager[Any]]
) -> Any:
    """One Keras model from images (after preprocessing) to one pooled output per
    configuration (several cuts of one preset share one pass)."""
    import keras

    config = configs[0]
    family = config.source.family.name
    vision = load_hub_backbone(config, seeded)
    if config.engine == "openvino":
        _explicit_attention(vision)
    assert config.input_size is not None
    inp = keras.Input((*config.input_size, 3), name="images")
    emb, blocks, final, pooled = _trace(vision, family, inp)
    n_prefix = prefix_tokens(vision, family)
    outputs = []
    for c in configs:
        if c.layer is None and c.pooling == "pooled":
            outputs.append(pooled)
            continue
        tokens = _cut(emb, blocks, final, c.layer, config.name)
        outputs.append(_pool_tokens(tokens, c.pooling, n_prefix))
    return keras.Model(inp, outputs if len(outputs) > 1 else outputs[0],
                       name=f"{vision.name}_featx")


def converter_preprocess(config: BackboneConfig) -> Callable[[Any], Any]:
    """The preset's image converter after the resize: ``x * scale + offset`` per channel."""
    keras_hub = _keras_hub()
    preset: HubPreset = config.source
    if preset.is_dir and not (_path(preset) / "image_converter.json").is_file():
        raise FeatxError(
            f"Keras Hub preset directory {preset.preset!r} has no image_converter.json, so "
            "featx does not know its preprocessing. Save the converter there too "
            "(keras_hub.layers.ImageConverter.from_preset(name).save_to_preset(dir)) or pass "
            "preprocess= ('scale', 'tf', 'torch', ... or a function)."
        )
    try:
        if preset.is_dir:
            # The converter as saved (Keras Hub's from_preset looks for the converter class of
            # the backbone, and a vision encoder saved on its own has none registered).
            import keras

            text = (_path(preset) / "image_converter.json").read_text()
            converter = keras.saving.deserialize_keras_object(json.loads(text))
        else:
            converter = keras_hub.layers.ImageConverter.from_preset(preset.preset)
    except Exception as exc:
        raise _load_failure(preset, "image converter", exc) from exc
    scale = None if converter.scale is None else np.asarray(converter.scale, np.float32)
    offset = None if converter.offset is None else np.asarray(converter.offset, np.float32)

    def preprocess(x: Any) -> Any:
        if scale is not None:
            x = x * scale
        if offset is not None:
            x = x + offset
        return x

    return preprocess


def _path(preset: HubPreset) -> Any:
    from pathlib import Path

    return Path(preset.preset)
