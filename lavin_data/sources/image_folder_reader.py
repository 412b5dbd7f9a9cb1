"""Reader for ``kind: image_folder``: ImageNet-style class folders or a flat folder, recursive.

Items are the image files under ``root`` (or those named in ``file_list``, one path
relative to root per line), sorted; with ``limit``, a ``seed``-ed random subset is kept
(then sorted again, so the plan stays in path order). The class of an image is its first
folder under root (ImageNet: the synset), recorded in the json.

Images are normalised to RGB uint8: EXIF orientation applied, greyscale and palette
images expanded, CMYK converted, 16-bit images scaled to 8 bits. A plain RGB JPEG with
no rotation keeps its original bytes; anything else is stored as PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, check_pixels, inside, item_id_from, planned_problem

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe"}

LAYOUT = ("image files (.jpg .jpeg .png .bmp .webp .tif .tiff .jpe) anywhere under root: root/<class>/<name>.jpg "
          "(ImageNet) or root/<name>.jpg; with file_list, one path relative to root per line")


def check(src) -> None:
    if not Path(src.root).is_dir():
        raise SourceError(f"{src.root}: image folder not found")
    if src.file_list and not Path(src.file_list).is_file():
        raise SourceError(f"{src.file_list}: file_list not found")


def frames(src) -> str:
    return "image"


def provides(src) -> frozenset[str]:
    return frozenset()


def plan(src) -> list[dict]:
    root = Path(src.root)
    if src.file_list:
        rels = [ln.strip().split()[0] for ln in Path(src.file_list).read_text().splitlines() if ln.strip()]
    else:
        rels = [str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()]
    rels = sorted(set(rels))
    if src.limit is not None and src.limit < len(rels):
        pick = np.random.default_rng(src.seed).choice(len(rels), size=src.limit, replace=False)
        rels = sorted(rels[i] for i in pick)
    items, seen = [], set()
    for rel in rels:
        item_id = item_id_from(str(Path(rel).with_suffix("")))
        if item_id in seen:
            raise SourceError(f"{root}: two files map to the item id {item_id!r} (e.g. {rel}); rename one")
        seen.add(item_id)
        parts = Path(rel).parts
        try:
            inside(root, rel, str(src.file_list or root))
            error = None
        except ValueError as e:  # a listed path outside root: that item fails, the others go on
            error = str(e)
        items.append({"item_id": item_id, "path": rel, "class_name": parts[0] if len(parts) > 1 else "",
                      "error": error})
    return items


def load_rgb(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Image bytes -> ((H, W, 3) uint8 RGB, whether the bytes are already a plain upright RGB JPEG).
    An image over ``max_pixels`` is refused from its header, before decoding."""
    from PIL import Image, ImageOps

    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image file {name} is unreadable: {e}") from None
    check_pixels(*im.size, max_pixels, f"image file {name}")
    try:
        im.load()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image file {name} is unreadable or truncated: {e}") from None
    orientation = im.getexif().get(0x0112, 1)
    plain = im.format == "JPEG" and im.mode == "RGB" and orientation == 1
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        g = np.clip(np.rint(a / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), False
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)  # transparent pixels become black
    return np.asarray(im.convert("RGB")), plain


def source_meta(src) -> dict:
    return {}


def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    path = inside(src.root, item["path"], str(src.file_list or src.root))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    rgb, plain = load_rgb(data, str(path), src.max_image_pixels)
    meta = {"source": src.name, "item_id": item["item_id"], "file": item["path"], "class_name": item["class_name"],
            "width": rgb.shape[1], "height": rgb.shape[0], "licence": src.licence}
    return BaseSample(meta, image=rgb, image_file=("jpg", data) if plain else None)
