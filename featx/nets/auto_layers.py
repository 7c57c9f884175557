"""Which layers ``layers="auto"`` probes: 5-8 block outputs per registry backbone, shallow to deep.

Each family's picks are the outputs of its blocks where the resolution changes (the end of a
stage) plus one or two in the middle of its longest stage, spread from early layers to the
default cut, which is always last. Layers are named by their Keras layer names, and only names
that Keras gives explicitly (never counters such as ``add_3``, which change with what else a
process has built). The deeper variants of a family (ResNet-101/152, DenseNet-169/201,
EfficientNet-B1..B7, ...) differ only in how many blocks each stage repeats, which the table
records (EfficientNet-Lite's come from :func:`featx.nets.efficientnet_lite.blocks`). The tests
build one network per family (``weights=None``) and check every name exists;
``scripts/dev/check_auto_layers.py`` builds all of them.

A Keras Hub encoder's picks are five of its transformer blocks, spread evenly
(:func:`featx.nets.hub.hub_auto_layers`).

The default cut is ``None`` in :func:`auto_layers`: probing it caches its rows in the group of
``ImageEmbedder(backbone)`` with no ``layer``, so a later default embedder reads them all.
"""

from __future__ import annotations

from featx.nets.backbones import get_backbone
from featx.nets.hub import hub_auto_layers, is_hub

__all__ = ["auto_layers", "default_cut_name"]

# ResNet / ResNetV2 blocks per stage (conv2..conv5).
_RESNET_BLOCKS = {"50": (3, 4, 6, 3), "101": (3, 4, 23, 3), "152": (3, 8, 36, 3)}
# DenseNet dense blocks per stage (conv2..conv5).
_DENSENET_BLOCKS = {"121": (6, 12, 24, 16), "169": (6, 12, 32, 32), "201": (6, 12, 48, 32)}
# EfficientNet blocks per stage (block1..block7), as Keras rounds them for each variant.
_EFFICIENTNET_BLOCKS = {
    "efficientnet_b0": (1, 2, 2, 3, 3, 4, 1),
    "efficientnet_b1": (2, 3, 3, 4, 4, 5, 2),
    "efficientnet_b2": (2, 3, 3, 4, 4, 5, 2),
    "efficientnet_b3": (2, 3, 3, 5, 5, 6, 2),
    "efficientnet_b4": (2, 4, 4, 6, 6, 8, 2),
    "efficientnet_b5": (3, 5, 5, 7, 7, 9, 3),
    "efficientnet_b6": (3, 6, 6, 8, 8, 11, 3),
    "efficientnet_b7": (4, 7, 7, 10, 10, 13, 4),
    "efficientnet_v2_b0": (1, 2, 2, 3, 5, 8),
    "efficientnet_v2_b1": (2, 3, 3, 4, 6, 9),
    "efficientnet_v2_b2": (2, 3, 3, 4, 6, 10),
    "efficientnet_v2_b3": (2, 3, 3, 5, 7, 12),
    "efficientnet_v2_s": (2, 4, 4, 6, 9, 15),
    "efficientnet_v2_m": (3, 5, 5, 7, 14, 18, 5),
    "efficientnet_v2_l": (4, 7, 7, 10, 19, 25, 7),
}

# The Keras name of each family's default cut (the last layer without the classifier), where
# Keras names it explicitly; MobileNetV3's and ConvNeXt's last layers carry counter names.
_DEFAULT_NAMES = {
    "mobilenet": "conv_pw_13_relu", "mobilenet_v2": "out_relu", "resnet": "conv5_block3_out",
    "resnet_v2": "post_relu", "vgg16": "block5_pool", "vgg19": "block5_pool",
    "inception_v3": "mixed10", "inception_resnet_v2": "conv_7b_ac",
    "xception": "block14_sepconv2_act", "densenet": "relu", "efficientnet": "top_activation",
    "efficientnet_v2": "top_activation", "featx.efficientnet_lite": "top_activation",
}


def _resnet(name: str) -> list[str]:
    b2, b3, b4, _ = _RESNET_BLOCKS[name.removeprefix("resnet").removesuffix("_v2")]
    return [f"conv2_block{b2}_out", f"conv3_block{b3}_out", f"conv4_block{b4 // 2}_out",
            f"conv4_block{b4}_out", "conv5_block1_out"]


def _densenet(name: str) -> list[str]:
    _, _, b4, b5 = _DENSENET_BLOCKS[name.removeprefix("densenet")]
    return ["pool2_relu", "pool3_relu", f"conv4_block{b4 // 2}_0_relu", "pool4_relu",
            f"conv5_block{b5 // 2}_0_relu"]


def _efficientnet(name: str) -> list[str]:
    # The last block of stages 2-6; a stage of n >= 2 blocks ends with block{s}{letter n}_add.
    blocks = _EFFICIENTNET_BLOCKS[name]
    return [f"block{s}{chr(ord('a') + blocks[s - 1] - 1)}_add" for s in range(2, 7)]


def _intermediate(name: str, module: str) -> list[str]:
    if module == "mobilenet":
        return ["conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_8_relu",
                "conv_pw_11_relu"]
    if module == "mobilenet_v2":
        return ["block_2_add", "block_5_add", "block_9_add", "block_12_add", "block_15_add"]
    if name == "mobilenet_v3_small":
        return ["expanded_conv_project_bn", "expanded_conv_2_add", "expanded_conv_5_add",
                "expanded_conv_7_add", "expanded_conv_10_add"]
    if name == "mobilenet_v3_large":
        return ["expanded_conv_2_add", "expanded_conv_5_add", "expanded_conv_9_add",
                "expanded_conv_11_add", "expanded_conv_14_add"]
    if module in ("resnet", "resnet_v2"):
        return _resnet(name)
    if module in ("vgg16", "vgg19"):
        return ["block1_pool", "block2_pool", "block3_pool", "block4_pool"]
    if module == "inception_v3":
        return ["mixed0", "mixed2", "mixed5", "mixed7", "mixed9"]
    if module == "inception_resnet_v2":
        return ["mixed_5b", "block35_10_ac", "block17_10_ac", "block17_20_ac", "block8_5_ac"]
    if module == "xception":
        # blockN_sepconv1_act is the ReLU of block N-1's output (Keras names the adds by counter).
        return ["block2_sepconv2_act", "block4_sepconv1_act", "block5_sepconv1_act",
                "block9_sepconv1_act", "block13_sepconv1_act"]
    if module == "densenet":
        return _densenet(name)
    if module == "convnext":
        prefix = name  # Keras names ConvNeXt's layers after the model: convnext_tiny_stem
        return [f"{prefix}_stem", *(f"{prefix}_downsampling_block_{i}" for i in range(3))]
    if module in ("efficientnet", "efficientnet_v2"):
        return _efficientnet(name)
    if module == "featx.efficientnet_lite":
        from featx.nets.efficientnet_lite import blocks

        counts = [sum(b.prefix.startswith(f"block{s}") for b in blocks(name)) for s in range(1, 8)]
        return [f"block{s}{chr(ord('a') + counts[s - 1] - 1)}_add" for s in range(2, 7)]
    raise KeyError(name)  # pragma: no cover - every registry family is listed above


def auto_layers(backbone: str) -> list[str | None]:
    """The layers ``layers="auto"`` probes for a registry backbone, shallow to deep.

    Parameters
    ----------
    backbone : str
        A registry name (see :func:`featx.list_backbones`), or ``"keras_hub:<preset>"``: five
        transformer blocks (``"block_<i>"``) spread from early to late.

    Returns
    -------
    list of str or None
        5 to 8 Keras layer names; the last is ``None``, the default cut (the layer an
        ``ImageEmbedder`` without ``layer`` embeds at; :func:`default_cut_name` names it).

    Examples
    --------
    >>> from featx.nets.auto_layers import auto_layers
    >>> auto_layers("mobilenet")[-3:]
    ['conv_pw_8_relu', 'conv_pw_11_relu', None]
    >>> auto_layers("resnet152")[:3]
    ['conv2_block3_out', 'conv3_block8_out', 'conv4_block18_out']
    """
    if is_hub(backbone):
        return hub_auto_layers(backbone)
    spec = get_backbone(backbone)
    return [*_intermediate(spec.name, spec.module), None]


def default_cut_name(backbone: str) -> str:
    """The Keras name of a registry backbone's default cut, or ``"default"`` where Keras names
    that layer by a counter (MobileNetV3, ConvNeXt).

    Examples
    --------
    >>> from featx.nets.auto_layers import default_cut_name
    >>> default_cut_name("mobilenet"), default_cut_name("convnext_tiny")
    ('conv_pw_13_relu', 'default')
    """
    if is_hub(backbone):
        return "output"  # the encoder's output after its final norm (its pooling says the rest)
    spec = get_backbone(backbone)
    return _DEFAULT_NAMES.get(spec.module, "default")
