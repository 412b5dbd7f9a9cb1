"""Reader for ``kind: nyu`` (NYU-Depth-v2).

Two layouts:

- **labeled .mat** (``root`` ends in ``.mat``): HDF5 read with h5py. ``images`` is stored
  (N, 3, W, H) uint8 and ``depths`` (N, W, H) float metres, both transposed (MATLAB
  column order), so each frame is transposed back to (H, W).
- **folder** (BTS / Metric3D layout): ``rgb_<id>.jpg`` files, searched recursively, each
  with ``sync_depth_<id>.png`` (uint16, ``depth_scale`` units per metre, 0 = invalid) in
  the same folder or in a sibling ``depth/`` folder; or an ``annotations`` json listing
  ``{rgb, depth, cam_in, depth_scale}`` per frame.

Depth is stored in the base shard as float32 metres (0 = invalid) with the intrinsics in
the json; optional ground-truth normals are stored in our frame (x right, y up, z towards
the camera).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.codecs import decode_image
from lavin_data.sources import SourceError, item_id_from
from lavin_data.sources.dense_folder_reader import read_depth_png, read_normals_png

LAYOUT = ("root: nyu_depth_v2_labeled.mat, or a folder searched recursively for rgb_<id>.jpg|png, each with "
          "sync_depth_<id>.png beside it or in a sibling depth/ folder (or an annotations json {files: [...]})")


def _is_mat(src) -> bool:
    return str(src.root).endswith(".mat")


def check(src) -> None:
    root = Path(src.root)
    if _is_mat(src):
        if not root.is_file():
            raise SourceError(f"{root}: NYU labeled .mat file not found")
        try:
            import h5py
        except ImportError:
            raise SourceError("reading the NYU .mat needs h5py: pip install h5py") from None
        try:
            with h5py.File(root, "r") as f:
                for name in ("images", "depths"):
                    if name not in f:
                        raise SourceError(f"{root}: not the NYU labeled .mat: no '{name}' dataset")
        except OSError as e:
            raise SourceError(f"{root}: not an HDF5 (MATLAB v7.3) file: {e}") from None
    elif not root.is_dir():
        raise SourceError(f"{root}: NYU folder not found")
    for field in ("split_file", "annotations"):
        p = getattr(src, field)
        if p and not Path(p).is_file():
            raise SourceError(f"{p}: {field} not found")
    if src.normals and not Path(src.normals).is_dir():
        raise SourceError(f"{src.normals}: normals folder not found")


def frames(src) -> str:
    return "image"


def own_split(src, item: dict) -> str | None:
    """NYU's own split: a source read through a test split list (the Eigen/BTS
    ``nyudepthv2_test_files_with_gt.txt``) or a test annotation file (Metric3D's
    ``test_annotations.json``) is held out (:mod:`lavin_data.split`)."""
    from lavin_data.split import names_val

    files = [Path(f).name for f in (src.split_file, src.annotations) if f]
    return "val" if files and all(names_val(f) for f in files) else None


def provides(src) -> frozenset[str]:
    return frozenset({"depth"} | ({"normals"} if src.normals else set()))


def _split_lines(path: str) -> list[str]:
    return [ln.split()[0] for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def plan(src) -> list[dict]:
    root = Path(src.root)
    if _is_mat(src):
        import h5py

        with h5py.File(root, "r") as f:
            n = f["images"].shape[0]
        idx = [int(x) for x in _split_lines(src.split_file)] if src.split_file else list(range(1, n + 1))
        bad = [i for i in idx if not 1 <= i <= n]
        if bad:
            raise SourceError(f"{src.split_file}: frame indices {bad[:5]} outside 1..{n}")
        return [{"item_id": f"{i:05d}", "rgb": "", "depth": "", "index": i, "cam_in": "",
                 "depth_scale": 0.0} for i in idx]
    if src.annotations:
        try:
            files = json.loads(Path(src.annotations).read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{src.annotations}: not a {{files: [...]}} annotations json ({e})") from None
        entries = []
        for f in files:
            rgb = _resolve(root, f["rgb"])
            depth = _resolve(root, f["depth"])
            entries.append((rgb, depth, json.dumps(f.get("cam_in", list(src.intrinsics))),
                            float(f.get("depth_scale", src.depth_scale))))
    else:
        rgbs = sorted(root.rglob("rgb_*.jpg")) + sorted(root.rglob("rgb_*.png"))
        entries = [(p, _depth_for(p), "", src.depth_scale) for p in rgbs]
    if src.split_file:
        keep = set(_split_lines(src.split_file))
        entries = [e for e in entries if str(e[0].relative_to(root)).lstrip("/") in keep
                   or str(e[0].relative_to(root)).lstrip("/").split("/", 1)[-1] in keep]
    items = []
    for rgb, depth, cam, scale in sorted(entries, key=lambda e: str(e[0])):
        rel = rgb.relative_to(root) if rgb.is_relative_to(root) else Path(rgb.name)
        # bathroom_0001/rgb_00045.jpg -> bathroom-0001-00045; rgb/rgb_00000.jpg -> 00000
        parts = [p for p in rel.parent.parts if p != "rgb"] + [rel.stem.removeprefix("rgb_")]
        item_id = item_id_from("-".join(parts))
        items.append({"item_id": item_id, "rgb": str(rgb.resolve()), "depth": str(depth.resolve()), "index": 0,
                      "cam_in": cam, "depth_scale": scale})
    ids = [it["item_id"] for it in items]
    if len(set(ids)) != len(ids):
        raise SourceError(f"{root}: two frames map to the same item id; keep one layout per root")
    return items


def _resolve(root: Path, p: str) -> Path:
    """Annotation paths may carry a prefix of their own repo (data/nyu_demo/rgb/...):
    take the longest suffix of the path that exists under root."""
    parts = Path(p).parts
    for i in range(len(parts)):
        cand = root.joinpath(*parts[i:])
        if cand.exists():
            return cand
    return root / p


def _depth_for(rgb: Path) -> Path:
    name = "sync_depth_" + rgb.stem.removeprefix("rgb_") + ".png"
    same = rgb.with_name(name)
    if same.exists():
        return same
    return rgb.parent.parent / "depth" / name


def _normals_for(src, rgb_name: str) -> Path | None:
    if not src.normals:
        return None
    stem = Path(rgb_name).stem
    for cand in (stem.replace("rgb", "normal", 1), stem):
        p = Path(src.normals) / f"{cand}.png"
        if p.exists():
            return p
    return None



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    meta = {"source": src.name, "item_id": item["item_id"], "licence": src.licence, "depth_kind": "depth",
            "depth_unit": "m"}
    if _is_mat(src):
        import h5py

        with h5py.File(src.root, "r") as f:
            i = item["index"] - 1
            image = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
            depth = np.ascontiguousarray(f["depths"][i].T).astype(np.float32)
        intr = list(src.intrinsics)
        image_bytes = None
        normals_file = None
    else:
        rgb, dpath = Path(item["rgb"]), Path(item["depth"])
        try:
            image_bytes = ("jpg" if rgb.suffix.lower() in (".jpg", ".jpeg") else "png", rgb.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {rgb}") from None
        image = decode_image(image_bytes[1], str(rgb))
        raw = read_depth_png(dpath, src.max_image_pixels)
        if raw.dtype != np.uint16:
            raise ValueError(f"depth file {dpath} is {raw.dtype} {raw.shape}; expected a single-channel 16-bit PNG")
        depth = raw.astype(np.float32) / float(item["depth_scale"] or src.depth_scale)
        intr = json.loads(item["cam_in"]) if item["cam_in"] else list(src.intrinsics)
        normals_file = _normals_for(src, rgb.name)
    if depth.shape != image.shape[:2]:
        raise ValueError(f"{item['item_id']}: depth {depth.shape} and image {image.shape[:2]} differ in size")
    depth[~np.isfinite(depth)] = 0
    normals = None
    if normals_file is not None:
        # Black pixels are invalid ground truth: they stay 0 (rendered black), not a unit vector.
        normals = read_normals_png(normals_file, "rgb", src.normals_frame, src.max_image_pixels)
        if normals.shape[:2] != image.shape[:2]:
            raise ValueError(f"normals file {normals_file} is {normals.shape[1]}x{normals.shape[0]}, its image "
                             f"{image.shape[1]}x{image.shape[0]}: they must have the same size")
    meta.update(width=image.shape[1], height=image.shape[0], intrinsics=intr)
    return BaseSample(meta, image=image, image_file=image_bytes, depth=depth, normals=normals)
