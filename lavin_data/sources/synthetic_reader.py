"""Reader for ``kind: synthetic``: items are scene indices; reading ray-casts the scene."""

from __future__ import annotations

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.rng import stable_int
from lavin_data.sources.synthetic import CATEGORIES, render_clip, render_scene

LAYOUT = "nothing on disk: num_items procedurally generated scenes"


def check(src) -> None:
    return None  # nothing on disk to check


def frames(src) -> str:
    return "video" if src.clip_frames > 1 else "image"


def provides(src) -> frozenset[str]:
    if src.clip_frames > 1:
        return frozenset({"depth", "normals", "flow", "tracks"})
    return frozenset({"depth", "normals", "segments", "instances"})


def plan(src) -> list[dict]:
    return [{"item_id": f"{i:06d}"} for i in range(src.num_items)]



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    # Scenes depend on the spec seed and the item index only, not on the source's name.
    ss = np.random.SeedSequence([seed, stable_int("synthetic"), int(item["item_id"])])
    w, h = src.image_size
    if src.clip_frames > 1:
        return _read_clip(src, item, ss)
    scene = render_scene(ss, w, h, src.fov_deg, src.max_objects)
    meta = {
        "source": src.name, "item_id": item["item_id"], "width": w, "height": h,
        "intrinsics": list(scene.intrinsics), "depth_kind": "depth", "depth_unit": "m",
        "segments_info": scene.segments_info, "categories": CATEGORIES, "licence": src.licence,
        "scene": scene.params,
    }
    return BaseSample(meta, image=scene.image, depth=scene.depth, normals=scene.normals, segments=scene.segments)


def _read_clip(src, item: dict, ss: np.random.SeedSequence) -> BaseSample:
    w, h = src.image_size
    clip = render_clip(ss, src.clip_frames, w, h, src.fov_deg, src.max_objects, src.camera_speed, src.object_speed)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    objects = [{"id": int(o_id), "category_id": cat, "name": names[cat]}
               for o_id, cat in sorted(clip.params["object_categories"].items())]
    things = np.isin(clip.segments, [o["id"] for o in objects])
    meta = {
        "source": src.name, "item_id": item["item_id"], "width": w, "height": h, "frames": src.clip_frames,
        "frame_indices": list(range(src.clip_frames)), "pts_seconds": None, "fps": None,
        "intrinsics": list(clip.intrinsics), "depth_kind": "depth", "depth_unit": "m", "objects": objects,
        "annotated": [True] * src.clip_frames, "categories": CATEGORIES, "licence": src.licence,
        "scene": {k: v for k, v in clip.params.items() if k != "object_categories"},
    }
    return BaseSample(meta, frames=clip.frames, depth=clip.depth, normals=clip.normals, flow=clip.flow,
                      tracks=np.where(things, clip.segments, 0).astype(np.uint16))
