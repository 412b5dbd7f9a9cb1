"""Reader for ``kind: sav``: SA-V manual masklets (Segment Anything Video).

``root`` holds ``sav_XXXXXX.mp4`` videos beside ``sav_XXXXXX_manual.json`` annotations
(SA-V's ``vos_table`` layout). A json's ``masklet`` lists, per annotated frame, one COCO
RLE per object (``masklet_id`` gives the ids). Annotations run at ``annotation_fps`` (6)
while the videos run at their own rate (24): annotated frame k is video frame
round(k * video_fps / annotation_fps), decoded frame-exactly with PyAV. Clips are cut from
annotated frames, so every clip frame has its masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.codecs import decode_rle
from lavin_data.sources import SourceError, check_pixels, planned_problem
from lavin_data.video import VideoError, probe, probe_cached, read_frames, spaced_clips

LAYOUT = "root/**/sav_<id>.mp4 beside sav_<id>_manual.json (SA-V's vos_table layout)"


def check(src) -> None:
    if not Path(src.root).is_dir():
        raise SourceError(f"{src.root}: SA-V folder not found")


def frames(src) -> str:
    return "video"


def provides(src) -> frozenset[str]:
    return frozenset({"tracks"})


def _annotation(path: Path) -> dict:
    data = json.loads(path.read_text())
    for field in ("masklet", "masklet_id"):
        if field not in data:
            raise ValueError(f"{path}: not an SA-V manual annotation: no '{field}'")
    return data


def plan(src) -> list[dict]:
    items = []
    for ann_path in sorted(Path(src.root).rglob("*_manual.json")):
        vid = ann_path.name.removesuffix("_manual.json")
        video = ann_path.with_name(f"{vid}.mp4")
        base = {"item_id": vid.replace("_", "-"), "video": str(video.relative_to(src.root)),
                "annotation": str(ann_path.relative_to(src.root)), "annotated": "[]", "frame_indices": "[]",
                "objects": "[]", "error": "", "skip": "", "skip_code": ""}
        try:
            ann = _annotation(ann_path)
            info = probe(video)
            check_pixels(info.width, info.height, src.max_image_pixels, f"{video}: video frames")
        except (ValueError, VideoError, json.JSONDecodeError) as e:
            items.append(dict(base, error=f"{type(e).__name__}: {e}"))
            continue
        step = info.fps / src.annotation_fps
        n_ann = len(ann["masklet"])
        frame_of = [int(round(k * step)) for k in range(n_ann)]
        if frame_of and frame_of[-1] >= info.n_frames:
            items.append(dict(base, error=f"{video}: {n_ann} annotated frames at {src.annotation_fps} fps reach frame "
                                          f"{frame_of[-1]}, but the video has {info.n_frames} at {info.fps:g} fps"))
            continue
        clips = spaced_clips(n_ann, src.clip_frames, 1, src.clips_per_video)
        if not clips:
            items.append(dict(base, skip=f"{vid}: {n_ann} annotated frames are fewer than one clip of "
                                         f"{src.clip_frames}", skip_code="shorter_than_clip"))
            continue
        objects = [{"id": int(i) + 1, "masklet_id": int(i)} for i in ann["masklet_id"]]  # 0 is background
        for ks in clips:
            items.append(dict(base, item_id=f"{base['item_id']}-a{ks[0]:05d}", annotated=json.dumps(ks),
                              frame_indices=json.dumps([frame_of[k] for k in ks]), objects=json.dumps(objects)))
    return items



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    root = Path(src.root)
    info = probe_cached(root / item["video"])
    idx = json.loads(item["frame_indices"])
    clip, pts = read_frames(info, idx)
    ann = _annotation(root / item["annotation"])
    objects = json.loads(item["objects"])
    h, w = clip.shape[1:3]
    tracks = np.zeros((len(idx), h, w), np.uint16)
    for t, k in enumerate(json.loads(item["annotated"])):
        for ob, rle in zip(objects, ann["masklet"][k]):
            if rle:
                tracks[t][decode_rle(rle, (h, w), f"{item['annotation']} frame {k} object {ob['masklet_id']}")] = \
                    ob["id"]
    meta = {"source": src.name, "item_id": item["item_id"], "video": item["video"], "frame_indices": idx,
            "pts_seconds": pts, "fps": info.fps, "annotated_frames": json.loads(item["annotated"]),
            "annotation_fps": src.annotation_fps, "annotated": [True] * len(idx), "objects": objects,
            "width": w, "height": h, "licence": src.licence}
    return BaseSample(meta, frames=clip, tracks=tracks)
