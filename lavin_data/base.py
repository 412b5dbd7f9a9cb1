"""Base samples: what ingest writes per source item, at the source's own resolution.

Members of a base sample ``<key>.<ext>`` (all optional but the image and the json):

- ``image.jpg`` / ``image.png``: RGB; a source's original JPEG bytes are kept as they are.
- ``depth.npy``: (H, W) float32, 0 = invalid; ``json["depth_kind"]`` says metric depth
  (``"depth"``, metres) or relative inverse depth (``"disparity"``).
- ``normals.npy``: (H, W, 3) float16 unit normals, camera frame x right, y up, z towards
  the camera; 0 = invalid.
- ``segments.png``: (H, W) uint16 segment ids, 0 = unlabeled, described by
  ``json["segments_info"]`` ({id, category_id, isthing, bbox xyxy, area}) and
  ``json["categories"]`` ({id, name, isthing}).
- ``json``: source, item_id, size, intrinsics, licence, source-specific parameters.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lavin_data.codecs import decode_image, decode_npy, encode_npy, encode_png
from lavin_data.tasks import View, make_view


def encode_base(
    meta: dict[str, Any], image: np.ndarray | None = None, image_bytes: tuple[str, bytes] | None = None,
    depth: np.ndarray | None = None, normals: np.ndarray | None = None, segments: np.ndarray | None = None,
    png_level: int = 1, extra: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Arrays + meta -> tar members. Give ``image`` (RGB uint8) or ``image_bytes`` (ext, bytes);
    ``extra`` members are stored as given (e.g. a source's own panoptic PNG)."""
    members: dict[str, bytes] = dict(extra or {})
    if image_bytes is not None:
        members[f"image.{image_bytes[0]}"] = image_bytes[1]
    elif image is not None:
        members["image.png"] = encode_png(image, png_level)
    else:
        raise ValueError("a base sample needs an image")
    if depth is not None:
        members["depth.npy"] = encode_npy(depth.astype(np.float32))
    if normals is not None:
        members["normals.npy"] = encode_npy(normals.astype(np.float16))
    if segments is not None:
        if segments.max(initial=0) > 65535:
            raise ValueError("segment ids must fit in uint16")
        members["segments.png"] = encode_png(segments.astype(np.uint16), png_level)
    members["json"] = json.dumps(meta, sort_keys=True).encode()
    return members


def base_image(key: str, members: dict[str, bytes]) -> tuple[np.ndarray, dict]:
    """A base sample's (H, W, 3) uint8 RGB image and its json."""
    if "json" not in members:
        raise ValueError(f"base sample {key} has no json member (has {sorted(members)})")
    img_ext = next((e for e in ("image.jpg", "image.png") if e in members), None)
    if img_ext is None:
        raise ValueError(f"base sample {key} has no image member (has {sorted(members)})")
    return decode_image(members[img_ext], f"{key}.{img_ext}"), json.loads(members["json"])


def view_from_base(key: str, members: dict[str, bytes], resolution: int, policy: str) -> View:
    """Decode a base sample and bring it to ``resolution`` with the resize ``policy``."""
    image, meta = base_image(key, members)
    instances = segments = segments_info = None
    if "segments.png" in members:
        segments = decode_image(members["segments.png"], f"{key}.segments.png")
        segments_info = meta.get("segments_info")
    coco = meta.get("coco")
    if coco is not None:
        from lavin_data.sources.coco import ann_instance, panoptic_segments

        h, w = image.shape[:2]
        instances = [ann_instance(a, h, w) for a in coco["anns"]]
        if "panoptic.png" in members:
            rgb = decode_image(members["panoptic.png"], f"{key}.panoptic.png")
            if rgb.shape[:2] != (h, w):
                raise ValueError(f"{key}: panoptic PNG is {rgb.shape[1]}x{rgb.shape[0]}, the image {w}x{h}")
            cats = {c["id"]: c for c in meta["categories"]}
            segments, segments_info = panoptic_segments(rgb, coco["panoptic_segments"], cats)
    return make_view(
        key=key, source=meta["source"], item_id=meta["item_id"], image=image, resolution=resolution,
        policy=policy, licence=meta.get("licence"),
        depth=decode_npy(members["depth.npy"]) if "depth.npy" in members else None,
        depth_kind=meta.get("depth_kind", "depth"),
        normals=decode_npy(members["normals.npy"]) if "normals.npy" in members else None,
        segments=segments, segments_info=segments_info, categories=meta.get("categories"),
        instances=instances, skeleton=[tuple(e) for e in meta["skeleton"]] if meta.get("skeleton") else None,
    )
