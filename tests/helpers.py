"""Hand-made instrument-format data for the tests (importable, unlike conftest.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from icecore_lib.schema import CLASSES, FLOWCAM_FEATURES, IMGPATH, SESSION

TINY_IMAGE_SIZE = 32


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """A PNG file's bytes from a Pillow image or an array (uint8 -> L, uint16 -> 16-bit gray)."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def crop(index: int, seed: int = 0) -> np.ndarray:
    """A small brightfield-like crop (light background, dark disc) whose size and darkness depend on ``index``."""
    rng = np.random.default_rng([seed, index])
    h, w = (int(v) for v in rng.integers(12, 40, size=2))
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    image = np.full((h, w), 110, dtype=np.uint8)
    image[disc] = 20 + (index * 7) % 60
    return image


def write_instrument_dataset(
    root: Path,
    *,
    classes: tuple[str, ...] = ("camp", "dust"),
    n_per_class: int = 3,
    layout: str = "zip",
    seed: int = 0,
) -> Path:
    """Hand-made data in the instrument's format (one CSV per class, images in a zip or folder).

    Writes ``root/<class>.csv``, ``root/images.zip`` or ``root/images/`` and ``root/manifest.yaml``
    (dataset ``lab``, part ``train``, root relative to the manifest); returns the manifest path.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: dict[str, bytes] = {}
    csvs = []
    for k, label in enumerate(classes):
        names = [f"{label}/{label}_{i:03d}.png" for i in range(n_per_class)]
        images |= {name: png_bytes(crop(k * 100 + i, seed)) for i, name in enumerate(names)}
        table = pd.DataFrame(rng.normal(10, 2, size=(n_per_class, len(FLOWCAM_FEATURES))), columns=FLOWCAM_FEATURES)
        table.insert(0, IMGPATH, names)
        table.insert(1, SESSION, [f"{label}_run{i % 2}" for i in range(n_per_class)])
        table.to_csv(root / f"{label}.csv", index=False)
        csvs.append({"path": f"{label}.csv", "label": label})
    if layout == "zip":
        with zipfile.ZipFile(root / "images.zip", "w") as zf:
            for name, data in images.items():
                zf.writestr(name, data)
    else:
        for name, data in images.items():
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "images" / name).write_bytes(data)
    images_path = "images.zip" if layout == "zip" else "images"
    manifest = {"classes": dict(CLASSES),
                "datasets": {"lab": {"root": ".", "parts": {"train": {"csv": csvs, "images": images_path}}}}}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root / "manifest.yaml"
