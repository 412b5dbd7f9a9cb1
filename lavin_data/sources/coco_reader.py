"""Reader for ``kind: coco``: the official instances, person-keypoints and panoptic files.

Plan (metadata only, in the driver): the annotation files are parsed and validated (a
file that is not COCO JSON stops the build before any work, naming the file), the spec's
selection is applied (categories, minimum area, maximum objects, empty images), and each
image's annotations travel with it in the plan. Person annotations present in both the
instances and the keypoints file (same annotation id) are merged into one object.

Per-sample problems do not stop the build; they are recorded against the image's key:
an annotation whose image id is not in ``images``, a category id not in ``categories``,
a missing or truncated image file, an image whose size differs from its record, a
degenerate polygon and a panoptic PNG of another size (found at ingest, where masks become
RLE and the panoptic PNG a segment map: the base sample is source-independent).

Crowd annotations (``iscrowd=1``) are kept, flagged: detection, instance and
single-object targets leave them out (they are groups, not objects), foreground
segmentation includes them (they are pixels of the class), and panoptic / semantic
renderings paint them in their class colour.
"""

from __future__ import annotations

import io
import json
import os
from functools import lru_cache
from pathlib import Path

from lavin_data.base import BaseSample
from lavin_data.codecs import decode_image
from lavin_data.sources import SourceError, check_pixels, inside, planned_problem
from lavin_data.sources.coco import ann_instance, panoptic_segments


@lru_cache(maxsize=8)
def _load(path: str, mtime: float, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SourceError(f"{path}: {what} annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: {what} annotation file is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: {what} annotation file is not a COCO file (top level is not an object)")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise SourceError(f"{path}: {what} annotation file is not a COCO file: missing or invalid '{field}' list")
    return data


def load_coco(path: str, what: str) -> dict:
    """Parse one COCO json once per process (the plan and the preflight share it)."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        raise SourceError(f"{path}: {what} annotation file not found") from None
    return _load(str(path), mtime, what)


def _masks_dir(src) -> Path:
    return Path(src.panoptic_masks) if src.panoptic_masks else Path(src.panoptic).with_suffix("")


def check(src) -> None:
    if not Path(src.images).is_dir():
        raise SourceError(f"{src.images}: images folder not found")
    for what in ("instances", "keypoints", "panoptic"):
        path = getattr(src, what)
        if path:
            load_coco(path, what)
    if src.panoptic and not _masks_dir(src).is_dir():
        raise SourceError(f"{_masks_dir(src)}: panoptic PNG folder not found (set panoptic_masks)")
    _category_filter(src, _categories(src))


def _categories(src) -> dict[int, dict]:
    cats: dict[int, dict] = {}
    for what in ("instances", "keypoints", "panoptic"):
        path = getattr(src, what)
        if not path:
            continue
        for c in load_coco(path, what)["categories"]:
            entry = cats.setdefault(int(c["id"]), {"id": int(c["id"]), "name": c.get("name", str(c["id"])),
                                                   "isthing": 1})
            if what == "panoptic":
                entry["isthing"] = int(c.get("isthing", 1))
            if c.get("skeleton"):
                entry["skeleton"] = [[a - 1, b - 1] for a, b in c["skeleton"]]  # 1-based in COCO
                entry["keypoints"] = c.get("keypoints", [])
    return cats


def _category_filter(src, cats: dict[int, dict]) -> set[int] | None:
    if src.categories is None:
        return None
    by_name = {c["name"]: i for i, c in cats.items()}
    keep = set()
    for c in src.categories:
        if isinstance(c, int) and c in cats:
            keep.add(c)
        elif isinstance(c, str) and c in by_name:
            keep.add(by_name[c])
        else:
            raise SourceError(f"source {src.name!r}: field categories: unknown category {c!r}")
    return keep


def frames(src) -> str:
    return "image"


def provides(src) -> frozenset[str]:
    return frozenset({"instances"} | ({"keypoints"} if src.keypoints else set())
                     | ({"segments"} if src.panoptic else set()))


def plan(src) -> list[dict]:
    cats = _categories(src)
    keep = _category_filter(src, cats)
    images: dict[int, dict] = {}
    for what in ("instances", "keypoints", "panoptic"):
        if getattr(src, what):
            data = load_coco(getattr(src, what), what)
            lic = {x.get("id"): x for x in data.get("licenses", [])}
            for im in data["images"]:
                images.setdefault(int(im["id"]), {
                    "file_name": im["file_name"], "width": int(im["width"]), "height": int(im["height"]),
                    "licence": lic.get(im.get("license"), {}).get("name"), "anns": {}, "panoptic": None, "error": [],
                })
    orphans: dict[int, list[str]] = {}

    def problem(image_id: int, msg: str) -> None:
        if image_id in images:
            images[image_id]["error"].append(msg)
        else:
            orphans.setdefault(image_id, []).append(msg)

    for what in ("instances", "keypoints"):
        path = getattr(src, what)
        if not path:
            continue
        file_cats = {int(c["id"]) for c in load_coco(path, what)["categories"]}
        for a in load_coco(path, what)["annotations"]:
            iid, aid = int(a["image_id"]), int(a["id"])
            if iid not in images:
                problem(iid, f"annotation {aid} in {path} points at image id {iid}, which is not in 'images'")
                continue
            if int(a["category_id"]) not in file_cats:
                problem(iid, f"annotation {aid} in {path} has category id {a['category_id']}, not in 'categories'")
                continue
            ann = images[iid]["anns"].setdefault(aid, {"id": aid})
            if what == "instances" or "segmentation" not in ann:
                ann.update({k: a[k] for k in ("category_id", "bbox", "iscrowd", "area", "segmentation") if k in a})
            if what == "keypoints" and a.get("keypoints"):
                ann["keypoints"] = a["keypoints"]
    if src.panoptic:
        pan = load_coco(src.panoptic, "panoptic")
        for a in pan["annotations"]:
            iid = int(a["image_id"])
            if iid not in images:
                problem(iid, f"panoptic annotation {a.get('file_name')} points at image id {iid}, not in 'images'")
                continue
            bad = [s["category_id"] for s in a.get("segments_info", []) if int(s["category_id"]) not in cats]
            if bad:
                problem(iid, f"panoptic segments of image {iid} have category ids {bad}, not in 'categories'")
                continue
            images[iid]["panoptic"] = a

    items = []
    for iid in sorted(set(images) | set(orphans)):
        item = {"item_id": f"{iid:012d}", "file_name": "", "width": 0, "height": 0, "licence": None,
                "anns": "[]", "panoptic": "", "error": "", "skip": ""}
        if iid in orphans:
            item["error"] = "; ".join(orphans[iid])
            items.append(item)
            continue
        im = images[iid]
        anns = [a for a in im["anns"].values() if "bbox" in a]
        if keep is not None:
            anns = [a for a in anns if int(a["category_id"]) in keep]
        anns = [a for a in anns if float(a.get("area", a["bbox"][2] * a["bbox"][3])) >= src.min_area]
        n_obj = sum(not a.get("iscrowd") for a in anns)
        people = [a for a in anns if sum(v > 0 for v in a.get("keypoints", [])[2::3]) >= src.pose_min_keypoints]
        for a in anns:
            if a not in people:
                a.pop("keypoints", None)
        item.update(file_name=im["file_name"], width=im["width"], height=im["height"], licence=im["licence"],
                    anns=json.dumps(anns), panoptic=json.dumps(im["panoptic"]) if im["panoptic"] else "",
                    error="; ".join(im["error"]))
        if src.max_instances is not None and n_obj > src.max_instances:
            item["skip"] = f"{n_obj} objects > max_instances {src.max_instances}"
        elif not anns and not im["panoptic"] and src.empty_images == "skip":
            item["skip"] = "no annotations (empty_images: skip)"
        items.append(item)
    return items


def _check_image(data: bytes, path: Path, width: int, height: int, max_pixels: int) -> None:
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image file {path} is unreadable: {e}") from None
    with im:
        check_pixels(*im.size, max_pixels, f"image file {path}")  # from the header, before decoding
        try:
            im.load()  # a full decode: OpenCV only warns on a truncated JPEG, PIL raises
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"image file {path} is unreadable or truncated: {e}") from None
        size = im.size
    if size != (width, height):
        raise ValueError(f"image file {path} is {size[0]}x{size[1]}, but its record says {width}x{height}")


def source_meta(src) -> dict:
    """Per-source facts every item needs (categories, skeleton), computed once in the driver."""
    cats = _categories(src)
    return {"categories": [{k: c[k] for k in ("id", "name", "isthing")} for c in cats.values()],
            "skeleton": next((c["skeleton"] for c in cats.values() if "skeleton" in c), None)}


def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    path = inside(src.images, item["file_name"], f"image {item['item_id']} file_name")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    _check_image(data, path, item["width"], item["height"], src.max_image_pixels)
    h, w = item["height"], item["width"]
    segments = segments_info = None
    pan = json.loads(item["panoptic"]) if item["panoptic"] else None
    if pan is not None:
        png = inside(_masks_dir(src), pan["file_name"], f"panoptic mask of image {item['item_id']}")
        try:
            rgb = decode_image(png.read_bytes(), str(png))
        except FileNotFoundError:
            raise FileNotFoundError(f"panoptic PNG not found: {png}") from None
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"panoptic PNG {png} is {rgb.shape[1]}x{rgb.shape[0]}, the image {w}x{h}")
        cats = {c["id"]: c for c in source_meta["categories"]}
        segments, segments_info = panoptic_segments(rgb, pan["segments_info"], cats)
    meta = {
        "source": src.name, "item_id": item["item_id"], "image_id": int(item["item_id"]),
        "file_name": item["file_name"], "width": w, "height": h,
        "licence": f"{src.licence}; image: {item['licence']}" if item["licence"] else src.licence,
        "categories": source_meta["categories"], "skeleton": source_meta["skeleton"],
    }
    if segments_info is not None:
        meta["segments_info"] = segments_info
    ext = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"
    return BaseSample(meta, image_file=(ext, data), segments=segments,
                      instances=[ann_instance(a, h, w) for a in json.loads(item["anns"])])
