"""Base samples: what a reader returns per source item, and how the ingest stage stores it.

A reader returns a :class:`BaseSample` (arrays and metadata at the source's own
resolution, in a source-independent form); :func:`encode_base` turns it into tar members
(the codec choice is the writer's), and :func:`view_from_base` decodes those members and
brings them to the output resolution for the renderers.

Members of a base sample ``<key>.<ext>`` (all optional but the image and the json):

- ``image.jpg`` / ``image.png``: RGB; a source file that already is a plain upright RGB
  JPEG or PNG is kept byte for byte, anything else is stored as PNG.
- ``depth.npy``: (H, W) float32, 0 = invalid; ``json["depth_kind"]`` says metric depth
  (``"depth"``, metres) or relative inverse depth (``"disparity"``).
- ``normals.npy``: (H, W, 3) float16 unit normals, camera frame x right, y up, z towards
  the camera; 0 = invalid.
- ``segments.png``: (H, W) uint16 segment ids, 0 = unlabeled (a panoptic partition),
  described by ``json["segments_info"]`` ({id, category_id, isthing, iscrowd?, bbox xyxy, area}).
- ``json``: source, item_id, width, height, licence, ``categories`` ({id, name, isthing}),
  ``skeleton`` (0-based keypoint index pairs), ``intrinsics`` (fx, fy, cx, cy; OpenCV
  pixel centres), ``instances`` (annotated objects: {id, category_id, bbox xyxy, iscrowd,
  mask (COCO compressed RLE {size, counts}) or null, keypoints [[x, y, v], ...] or null})
  and source-specific parameters. Without ``instances``, the thing segments are the objects.

A *clip* (video sources) has ``frame_000.png|jpg`` ... instead of the image, or the
source's own compressed packets for the clip, copied without re-encoding: ``video.mp4``
(with ``segment_pts``, ``frame_pts`` and ``time_base`` in the json;
:func:`lavin_data.video.cut_segment`) or, for a file whose frames can only be counted
from the start, ``video.<container>`` (:func:`lavin_data.video.cut_prefix`); arrays with a
leading frame axis (``depth.npy`` (T, H, W), ``normals.npy`` (T, H, W, 3), ``flow.npy``
(T-1, H, W, 2) float32 forward flow in source pixels, NaN = unknown), ``tracks_000.png`` ...
(uint16 object ids per frame, 0 = background) and in the json ``frame_indices`` (source
frame numbers, 0-based in presentation order), ``pts_seconds``, ``fps``, ``annotated``
(per frame: has a mask annotation) and ``objects`` ([{id, category_id?, name?}]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from lavin_data.codecs import decode_image, decode_npy, decode_rle, encode_npy, encode_png
from lavin_data.geometry.view import ClipView, View, make_clip_view, make_view

# Version of the base-sample layout, recorded in a build's spec.json: a build folder of
# another version is refused rather than resumed. 1: COCO annotations as json["coco"] plus
# the source's panoptic PNG, synthetic intrinsics with cx = W/2. 2: this module's layout.
BASE_FORMAT = 2


@dataclass
class BaseSample:
    """One source item as a reader returns it, at the source's resolution.

    image: (H, W, 3) uint8 RGB, or None when ``image_file`` holds it. image_file: (ext,
    bytes) of the source's own file when it already is a plain upright RGB JPEG/PNG (kept
    as is, so no re-encoding loses anything). depth: (H, W) float32, 0 = invalid.
    normals: (H, W, 3) float unit vectors, 0 = invalid. segments: (H, W) uint16 ids.
    instances: dicts as in the module docstring (masks as compressed RLE). meta: the json.
    A clip gives ``frames`` (T, H, W, 3) uint8 (or ``frame_files``, the source's own JPEG/PNG
    per frame) instead of the image, and per-frame depth, normals, ``flow`` (T-1, H, W, 2)
    and ``tracks`` (T, H, W) uint16.
    """

    meta: dict[str, Any]
    image: np.ndarray | None = None
    image_file: tuple[str, bytes] | None = None
    depth: np.ndarray | None = None
    normals: np.ndarray | None = None
    segments: np.ndarray | None = None
    instances: list[dict] | None = None
    frames: np.ndarray | None = None
    frame_files: list[tuple[str, bytes]] | None = None
    video_segment: bytes | None = None  # see lavin_data.video.cut_segment; meta: segment_pts, frame_pts
    video_format: str = "mp4"  # the segment's container; other than mp4: a cut_prefix copy
    flow: np.ndarray | None = None
    tracks: np.ndarray | None = None


def encode_base(sample: BaseSample, png_level: int = 1) -> dict[str, bytes]:
    """A reader's sample -> tar members (PNG at zlib ``png_level`` where we encode)."""
    members: dict[str, bytes] = {}
    if sample.video_segment is not None:
        members[f"video.{sample.video_format}"] = sample.video_segment
    elif sample.frame_files is not None:
        for t, (ext, data) in enumerate(sample.frame_files):
            members[f"frame_{t:03d}.{ext}"] = data
    elif sample.frames is not None:
        for t, frame in enumerate(sample.frames):
            members[f"frame_{t:03d}.png"] = encode_png(frame, png_level)
    elif sample.image_file is not None:
        ext, data = sample.image_file
        members[f"image.{ext}"] = data
    elif sample.image is not None:
        members["image.png"] = encode_png(sample.image, png_level)
    else:
        raise ValueError("a base sample needs an image")
    if sample.depth is not None:
        members["depth.npy"] = encode_npy(sample.depth.astype(np.float32))
    if sample.normals is not None:
        members["normals.npy"] = encode_npy(sample.normals.astype(np.float16))
    if sample.segments is not None:
        if sample.segments.max(initial=0) > 65535:
            raise ValueError("segment ids must fit in uint16")
        members["segments.png"] = encode_png(sample.segments.astype(np.uint16), png_level)
    if sample.flow is not None:
        members["flow.npy"] = encode_npy(sample.flow.astype(np.float32))
    if sample.tracks is not None:
        if sample.tracks.max(initial=0) > 65535:
            raise ValueError("object ids must fit in uint16")
        for t, ids in enumerate(sample.tracks):
            members[f"tracks_{t:03d}.png"] = encode_png(ids.astype(np.uint16), png_level)
    meta = dict(sample.meta)
    if sample.instances is not None:
        meta["instances"] = [_jsonable_instance(i) for i in sample.instances]
    members["json"] = json.dumps(meta, sort_keys=True).encode()
    return members


def _jsonable_instance(inst: dict) -> dict:
    kps = inst.get("keypoints")
    return {"id": int(inst["id"]), "category_id": int(inst["category_id"]),
            "bbox": [float(x) for x in inst["bbox"]], "iscrowd": bool(inst.get("iscrowd", False)),
            "mask": inst.get("mask"), "keypoints": None if kps is None else np.asarray(kps, float).tolist()}


def base_image(key: str, members: dict[str, bytes]) -> tuple[np.ndarray, dict]:
    """A base sample's (H, W, 3) uint8 RGB image and its json."""
    if "json" not in members:
        raise ValueError(f"base sample {key} has no json member (has {sorted(members)})")
    img_ext = next((e for e in ("image.jpg", "image.png") if e in members), None)
    if img_ext is None:
        raise ValueError(f"base sample {key} has no image member (has {sorted(members)})")
    return decode_image(members[img_ext], f"{key}.{img_ext}"), json.loads(members["json"])


def is_clip(members: dict[str, bytes]) -> bool:
    return any(m.startswith(("frame_", "video.")) for m in members)


def base_frames(key: str, members: dict[str, bytes]) -> tuple[np.ndarray, dict]:
    """A base clip's (T, H, W, 3) uint8 RGB frames and its json."""
    if "json" not in members:
        raise ValueError(f"base sample {key} has no json member (has {sorted(members)})")
    video = [m for m in members if m.startswith("video.")]
    if video:
        from lavin_data.video import decode_prefix, decode_segment

        meta, name = json.loads(members["json"]), video[0]
        if name == "video.mp4":
            return decode_segment(members[name], meta["segment_pts"], meta["frame_pts"], meta["time_base"],
                                  f"{key}.{name}"), meta
        return decode_prefix(members[name], meta["frame_indices"], f"{key}.{name}"), meta
    names = sorted(m for m in members if m.startswith("frame_"))
    if not names:
        raise ValueError(f"base sample {key} has no frame members (has {sorted(members)})")
    frames = [decode_image(members[n], f"{key}.{n}") for n in names]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"base clip {key}: frames differ in size {sorted({f.shape for f in frames})}")
    return np.stack(frames), json.loads(members["json"])


def view_from_base(key: str, members: dict[str, bytes], resolution: int, policy: str) -> View | ClipView:
    """Decode a base sample (image or clip) and bring it to ``resolution`` with ``policy``."""
    if is_clip(members):
        return _clip_view(key, members, resolution, policy)
    image, meta = base_image(key, members)
    h, w = image.shape[:2]
    segments = None
    if "segments.png" in members:
        segments = decode_image(members["segments.png"], f"{key}.segments.png")
        if segments.shape != (h, w):
            raise ValueError(f"{key}: segments.png is {segments.shape[1]}x{segments.shape[0]}, the image {w}x{h}")
    instances = None
    if meta.get("instances") is not None:
        instances = [dict(i, mask=None if i["mask"] is None else decode_rle(i["mask"], (h, w), f"{key} instance "
                                                                                             f"{i['id']}"))
                     for i in meta["instances"]]
    return make_view(
        key=key, source=meta["source"], item_id=meta["item_id"], image=image, resolution=resolution,
        policy=policy, licence=meta.get("licence"),
        depth=decode_npy(members["depth.npy"]) if "depth.npy" in members else None,
        depth_kind=meta.get("depth_kind", "depth"),
        normals=decode_npy(members["normals.npy"]) if "normals.npy" in members else None,
        segments=segments, segments_info=meta.get("segments_info"), categories=meta.get("categories"),
        instances=instances, skeleton=[tuple(e) for e in meta["skeleton"]] if meta.get("skeleton") else None,
    )


def _clip_view(key: str, members: dict[str, bytes], resolution: int, policy: str) -> ClipView:
    frames, meta = base_frames(key, members)
    t = len(frames)
    tracks = None
    names = sorted(m for m in members if m.startswith("tracks_"))
    if names:
        if len(names) != t:
            raise ValueError(f"base clip {key}: {len(names)} track maps for {t} frames")
        tracks = np.stack([decode_image(members[n], f"{key}.{n}") for n in names])
    arrays = {}
    for name, shape in (("depth", (t,) + frames.shape[1:3]), ("normals", (t,) + frames.shape[1:3] + (3,)),
                        ("flow", (t - 1,) + frames.shape[1:3] + (2,))):
        if f"{name}.npy" in members:
            arrays[name] = decode_npy(members[f"{name}.npy"])
            if arrays[name].shape != shape:
                raise ValueError(f"base clip {key}: {name}.npy is {arrays[name].shape}, expected {shape}")
    return make_clip_view(
        key=key, source=meta["source"], item_id=meta["item_id"], frames=frames, resolution=resolution, policy=policy,
        frame_indices=meta["frame_indices"], pts_seconds=meta.get("pts_seconds"), licence=meta.get("licence"),
        depth=arrays.get("depth"), depth_kind=meta.get("depth_kind", "depth"), normals=arrays.get("normals"),
        flow=arrays.get("flow"), tracks=tracks, annotated=meta.get("annotated"), objects=meta.get("objects"),
    )
