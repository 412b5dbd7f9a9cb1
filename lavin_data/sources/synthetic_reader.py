"""Reader for ``kind: synthetic``: items are scene indices; reading ray-casts the scene."""

from __future__ import annotations

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.rng import stable_int
from lavin_data.sources.synthetic import CATEGORIES, render_scene


def check(src) -> None:
    return None  # nothing on disk to check


def provides(src) -> frozenset[str]:
    return frozenset({"depth", "normals", "segments", "instances"})


def plan(src) -> list[dict]:
    return [{"item_id": f"{i:06d}"} for i in range(src.num_items)]


def source_meta(src) -> dict:
    return {}


def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    # Scenes depend on the spec seed and the item index only, not on the source's name.
    ss = np.random.SeedSequence([seed, stable_int("synthetic"), int(item["item_id"])])
    w, h = src.image_size
    scene = render_scene(ss, w, h, src.fov_deg, src.max_objects)
    meta = {
        "source": src.name, "item_id": item["item_id"], "width": w, "height": h,
        "intrinsics": list(scene.intrinsics), "depth_kind": "depth", "depth_unit": "m",
        "segments_info": scene.segments_info, "categories": CATEGORIES, "licence": src.licence,
        "scene": scene.params,
    }
    return BaseSample(meta, image=scene.image, depth=scene.depth, normals=scene.normals, segments=scene.segments)
