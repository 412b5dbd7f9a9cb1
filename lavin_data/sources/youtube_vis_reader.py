"""Reader for ``kind: youtube_vis``: YouTube-VIS (2019/2021/2022) video instance segmentation.

``annotations`` is the official json: ``videos`` ({id, file_names [per frame, relative to
``images``], width, height}), ``annotations`` ({id, video_id, category_id, segmentations
[per frame: RLE (compressed or not), polygons, or null where the object is not visible],
iscrowd}) and ``categories``. Every listed frame is annotated (the dataset annotates every
5th frame of the source video and lists those). An object keeps its annotation id as its
track id; colours follow the video's sorted ids, stable across clips.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.codecs import decode_rle, encode_png
from lavin_data.sources import SourceError, inside, planned_problem
from lavin_data.sources.coco import ann_rle
from lavin_data.sources.image_folder_reader import load_rgb
from lavin_data.video import spaced_clips

LAYOUT = ("annotations: the YouTube-VIS json (videos, annotations, categories lists); images: the folder holding "
          "each video's file_names, e.g. images/<video>/00000.jpg")


def _load(src) -> dict:
    """The annotation file, parsed and validated once per process."""
    try:
        mtime = os.path.getmtime(src.annotations)
    except OSError:
        raise SourceError(f"{src.annotations}: YouTube-VIS annotation file not found") from None
    return _parse(str(src.annotations), mtime)


@lru_cache(maxsize=2)
def _parse(path: str, mtime: float) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: not a YouTube-VIS file (top level is not an object)")
    for field in ("videos", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise SourceError(f"{path}: not a YouTube-VIS file: missing or invalid '{field}' list")
    data["by_id"] = {int(a["id"]): a for a in data["annotations"]}
    return data


def check(src) -> None:
    if not Path(src.images).is_dir():
        raise SourceError(f"{src.images}: YouTube-VIS image folder not found")
    _load(src)


def frames(src) -> str:
    return "video"


def provides(src) -> frozenset[str]:
    return frozenset({"tracks"})


def plan(src) -> list[dict]:
    data = _load(src)
    cats = {int(c["id"]): c.get("name", str(c["id"])) for c in data["categories"]}
    anns: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        anns.setdefault(int(a["video_id"]), []).append(a)
    items = []
    for v in sorted(data["videos"], key=lambda v: int(v["id"])):
        vid = f"{int(v['id']):06d}"
        names = v["file_names"]
        base = {"item_id": vid, "video_id": int(v["id"]), "files": "[]", "frame_indices": "[]", "objects": "[]",
                "width": int(v["width"]), "height": int(v["height"]), "skip": "", "skip_code": ""}
        clips = spaced_clips(len(names), src.clip_frames, src.frame_stride, src.clips_per_video)
        if not clips:
            items.append(dict(base, skip=f"video {v['id']}: {len(names)} annotated frames are fewer than one clip "
                                         f"of {src.clip_frames} frames {src.frame_stride} apart",
                              skip_code="shorter_than_clip"))
            continue
        objects = [{"id": int(a["id"]), "category_id": int(a["category_id"]), "name": cats.get(int(a["category_id"]))}
                   for a in sorted(anns.get(int(v["id"]), []), key=lambda a: int(a["id"]))]
        for idx in clips:
            items.append(dict(base, item_id=f"{vid}-f{idx[0]:05d}", files=json.dumps([names[i] for i in idx]),
                              frame_indices=json.dumps(idx), objects=json.dumps(objects)))
    return items



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    idx, files = json.loads(item["frame_indices"]), json.loads(item["files"])
    h, w = item["height"], item["width"]
    frame_files = []
    for rel in files:
        path = inside(src.images, rel, str(src.annotations))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"frame file not found: {path}") from None
        rgb, plain = load_rgb(data, str(path), src.max_image_pixels)
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, the video record says {w}x{h}")
        frame_files.append(("jpg", data) if plain else ("png", encode_png(rgb)))
    anns = _load(src)["by_id"]
    tracks = np.zeros((len(idx), h, w), np.uint16)
    for ob in json.loads(item["objects"]):
        segs = anns[ob["id"]]["segmentations"]
        for t, i in enumerate(idx):
            seg = segs[i] if i < len(segs) else None
            if seg:
                rle = ann_rle({"id": ob["id"], "segmentation": seg, "iscrowd": 1}, h, w)
                tracks[t][decode_rle(rle, (h, w))] = ob["id"]
    meta = {"source": src.name, "item_id": item["item_id"], "video_id": item["video_id"], "files": files,
            "frame_indices": idx, "pts_seconds": None, "fps": None, "annotated": [True] * len(idx),
            "objects": json.loads(item["objects"]), "width": w, "height": h, "licence": src.licence}
    return BaseSample(meta, frame_files=frame_files, tracks=tracks)
