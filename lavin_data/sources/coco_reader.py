"""Reader for ``kind: coco``: the official instances, person-keypoints and panoptic files.

Plan (metadata only, in the driver): the annotation files are parsed and validated (a
file that is not COCO JSON, a record without the fields the plan needs, or a category
``skeleton`` that is not 1-based pairs within its ``keypoints`` list stops the build before
any work, naming the file), the spec's selection is applied (categories, minimum area,
maximum objects, empty images), and each image's annotations travel with it in the plan.
Person annotations present in both the instances and the keypoints file (same annotation
id) are merged into one object.

Per-sample problems do not stop the build; they are recorded against the image's key:
an annotation whose image id is not in ``images``, a category id not in ``categories``, a
box that is not 4 finite numbers with positive width and height, ``keypoints`` that are
not 3 numbers per keypoint of its category (each named by annotation id; only
annotations the selection keeps count), a missing or truncated image file, an image whose
size differs from its record, a degenerate polygon and a panoptic PNG of another size
(found at ingest, where masks become RLE and the panoptic PNG a segment map: the base
sample is source-independent).

An image left with no annotation by the selection is skipped (``empty_images: skip``,
code ``no_annotations``) with what emptied it: none in the files, none of the selected
categories, or all under ``min_area``; one over ``max_instances`` with code ``max_instances``.

Crowd annotations (``iscrowd=1``) are kept, flagged: detection, instance and
single-object targets leave them out (they are groups, not objects), foreground
segmentation includes them (they are pixels of the class), and panoptic / semantic
renderings paint them in their class colour.
"""

from __future__ import annotations

import io
import json
import math
import os
from functools import lru_cache
from pathlib import Path

from lavin_data.base import BaseSample
from lavin_data.codecs import decode_image
from lavin_data.sources import SourceError, check_pixels, inside, planned_problem
from lavin_data.sources.coco import ann_instance, bbox_problem, keypoints_problem, panoptic_segments, skeleton_problem

LAYOUT = ("instances / keypoints / panoptic: COCO json files with images, annotations and categories lists; images: "
          "the folder holding each image record's file_name (panoptic PNGs: panoptic_masks)")


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
    # The fields the plan indexes by: one record without them would otherwise stop it with a KeyError.
    needs = {"images": ("id", "file_name", "width", "height"), "categories": ("id",),
             "annotations": ("image_id", "file_name", "segments_info") if what == "panoptic"
             else ("id", "image_id", "category_id")}
    for field, keys in needs.items():
        for k, rec in enumerate(data[field]):
            if not isinstance(rec, dict):
                raise SourceError(f"{path}: {what} annotation file: {field}[{k}] is not an object")
            missing = [key for key in keys if key not in rec]
            if missing:
                raise SourceError(f"{path}: {what} annotation file: {field}[{k}] has no {missing[0]!r}")
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
                names = c.get("keypoints") or []
                problem = skeleton_problem(c["skeleton"], len(names)) if isinstance(names, list) else \
                    f"keypoints is a {type(names).__name__}, not a list of names"
                if problem:  # found here, it refuses the source; found while drawing, it failed every image
                    raise SourceError(f"{path}: {what} annotation file: category {c['id']} ({c.get('name')!r}): "
                                      f"{problem}")
                entry["skeleton"] = [[a - 1, b - 1] for a, b in c["skeleton"]]  # 1-based in COCO
                entry["keypoints"] = names
    return cats


def _keypoint_counts(categories: list[dict]) -> dict[int, int | None]:
    """Category id -> the length of its ``keypoints`` list (None where it lists none)."""
    return {int(c["id"]): len(c["keypoints"]) if isinstance(c.get("keypoints"), list) and c["keypoints"] else None
            for c in categories}


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


def own_split(src, item: dict) -> str | None:
    """COCO's own split: every image of a source whose annotation files are a val split
    (``instances_val2017.json``) is held out (:mod:`lavin_data.split`)."""
    from lavin_data.split import names_val

    files = [Path(f).name for f in (src.instances, src.keypoints, src.panoptic) if f]
    return "val" if files and all(names_val(f) for f in files) else None


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
                    "ann_errors": {},  # annotation id -> what is wrong with it (fails the image if it is kept)
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
        file_cats = _keypoint_counts(load_coco(path, what)["categories"])
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
            # A malformed box or keypoint list fails its image, named, at ingest; the other images go on.
            wrong = [bbox_problem(a.get("bbox")) if "bbox" in a else "no bbox"]
            if "area" in a and not (isinstance(a["area"], (int, float)) and math.isfinite(a["area"])):
                wrong.append(f"area {a['area']!r} is not a finite number")
            if what == "keypoints" and a.get("keypoints"):
                kp_wrong = keypoints_problem(a["keypoints"], file_cats[int(a["category_id"])])
                wrong.append(kp_wrong)
                if not kp_wrong:
                    ann["keypoints"] = a["keypoints"]
            for msg in filter(None, wrong):
                images[iid]["ann_errors"].setdefault(aid, []).append(f"annotation {aid} (image {iid}): {msg} ({path})")
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

    files = ", ".join(str(getattr(src, w)) for w in ("instances", "keypoints", "panoptic") if getattr(src, w))
    items = []
    for iid in sorted(set(images) | set(orphans)):
        item = {"item_id": f"{iid:012d}", "file_name": "", "width": 0, "height": 0, "licence": None,
                "anns": "[]", "panoptic": "", "error": "", "skip": "", "skip_code": ""}
        if iid in orphans:
            item["error"] = "; ".join(orphans[iid])
            items.append(item)
            continue
        im = images[iid]
        listed = list(im["anns"].values())
        selected = listed if keep is None else [a for a in listed if int(a["category_id"]) in keep]
        # Only the annotations the selection keeps can fail the image: a broken one of a left-out category is moot.
        errors = im["error"] + [m for a in selected for m in im["ann_errors"].get(a["id"], [])]
        anns = [a for a in selected if a["id"] not in im["ann_errors"]]
        anns = [a for a in anns if float(a.get("area", a["bbox"][2] * a["bbox"][3])) >= src.min_area]
        n_obj = sum(not a.get("iscrowd") for a in anns)
        people = [a for a in anns if sum(v > 0 for v in a.get("keypoints", [])[2::3]) >= src.pose_min_keypoints]
        for a in anns:
            if a not in people:
                a.pop("keypoints", None)
        item.update(file_name=im["file_name"], width=im["width"], height=im["height"], licence=im["licence"],
                    anns=json.dumps(anns), panoptic=json.dumps(im["panoptic"]) if im["panoptic"] else "",
                    error="; ".join(errors))
        if src.max_instances is not None and n_obj > src.max_instances:
            item.update(skip=f"{n_obj} objects > max_instances {src.max_instances}", skip_code="max_instances")
        elif not anns and not im["panoptic"] and src.empty_images == "skip" and not errors:
            if not listed:
                why = f"image {iid} has no annotations in {files}"
            elif not selected:
                why = (f"none of image {iid}'s {len(listed)} annotations is of the selected categories "
                       f"{src.categories}")
            else:
                why = (f"all {len(selected)} annotations of image {iid} in the selected categories are smaller than "
                       f"min_area {src.min_area:g}")
            item.update(skip=f"{why} (empty_images: skip)", skip_code="no_annotations")
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
