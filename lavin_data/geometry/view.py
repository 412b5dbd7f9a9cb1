"""Views: a base sample brought to the output resolution, annotations transformed with it.

:func:`make_view` applies one :class:`~lavin_data.geometry.resize.Resize` to the image and
to every annotation given with it (depth, normals, segments, boxes, masks, keypoints), so
that renderers only ever see output-resolution data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lavin_data.geometry.resize import Resize, plan_resize


@dataclass
class Instance:
    """One annotated object at the output resolution.

    bbox: output xyxy (float, clipped to the frame). mask: (R, R) bool or None (masks of
    different instances may overlap). keypoints: (K, 3) float (x, y, v) in output pixels,
    v as in COCO (0 unlabeled, 1 labelled occluded, 2 visible), or None. A crowd region
    (``iscrowd``) is not an object: detection and instance targets leave it out.
    """

    id: int
    category_id: int
    bbox: list[float]
    mask: np.ndarray | None = None
    iscrowd: bool = False
    keypoints: np.ndarray | None = None


@dataclass
class View:
    """A base sample at the output resolution. Arrays are (R, R, ...) after the resize policy.

    image: (R, R, 3) uint8 RGB. depth: (R, R) float32, 0 = invalid (metric or relative,
    see ``depth_kind``). normals: (R, R, 3) float32 unit vectors, camera frame (x right,
    y up, z towards the camera), 0 = invalid. segments: (R, R) int32 segment ids, 0 =
    unlabeled (a panoptic partition). ``segments_info``: [{id, category_id, isthing,
    iscrowd?, bbox (output xyxy)}] for segments still visible after the resize.
    ``instances``: the annotated objects (see :class:`Instance`), in annotation order.
    """

    key: str
    source: str
    item_id: str
    image: np.ndarray
    resize: Resize
    licence: str | None = None
    depth: np.ndarray | None = None
    depth_kind: str = "depth"  # "depth" or "disparity"
    normals: np.ndarray | None = None
    segments: np.ndarray | None = None
    segments_info: list[dict] = field(default_factory=list)
    instances: list[Instance] | None = None
    categories: dict[int, dict] = field(default_factory=dict)
    skeleton: list[tuple[int, int]] | None = None  # 0-based keypoint index pairs

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def things(self) -> list[dict]:
        return [s for s in self.segments_info if s["isthing"]]

    def is_thing(self, category_id: int) -> bool:
        return bool(self.categories.get(category_id, {}).get("isthing", 1))

    def things_and_crowds(self, task: str) -> list[Instance]:
        """Instances of thing categories (stuff annotations, as in COCO panoptic's detection
        format, are not objects); a task that needs instances fails clearly without them."""
        if self.instances is None:
            raise ValueError(f"task {task} needs object annotations, which {self.key} does not have")
        return [i for i in self.instances if self.is_thing(i.category_id)]

    def objects(self, task: str) -> list[Instance]:
        """Thing instances that are single objects (crowd regions left out)."""
        return [i for i in self.things_and_crowds(task) if not i.iscrowd]

    def class_map(self) -> np.ndarray:
        """(R, R) int32 category id per pixel, 0 = unlabeled."""
        lut = np.zeros(int(self.segments.max(initial=0)) + 1, np.int32)
        for s in self.segments_info:
            lut[s["id"]] = s["category_id"]
        return lut[self.segments]


def make_view(
    key: str, source: str, item_id: str, image: np.ndarray, resolution: int, policy: str,
    depth: np.ndarray | None = None, normals: np.ndarray | None = None, segments: np.ndarray | None = None,
    segments_info: list[dict] | None = None, categories: list[dict] | None = None,
    licence: str | None = None, depth_kind: str = "depth", instances: list[dict] | None = None,
    skeleton: list[tuple[int, int]] | None = None,
) -> View:
    """Apply the resize policy to an image and every annotation given with it.

    Boxes (``segments_info[i]["bbox"]``, source xyxy) follow the continuous transform and
    are clipped; segments that leave the frame entirely are dropped. ``instances`` are
    source-level dicts {id, category_id, bbox (xyxy), mask ((H, W) bool or None), iscrowd,
    keypoints ((K, 3) or None)}; without them, the thing segments become the instances.
    """
    h, w = image.shape[:2]
    rz = plan_resize(w, h, resolution, policy)
    v = View(key=key, source=source, item_id=item_id, image=rz.image(image), resize=rz, licence=licence,
             depth_kind=depth_kind, categories={c["id"]: c for c in (categories or [])})
    if depth is not None:
        v.depth = rz.image(depth.astype(np.float32), "nearest")
    if normals is not None:
        v.normals = rz.image(normals.astype(np.float32), "nearest")
    if segments is not None:
        v.segments = rz.image(segments.astype(np.int32), "nearest")
        present = set(np.unique(v.segments).tolist())
        infos = [s for s in (segments_info or []) if s["id"] in present]
        if infos:
            boxes, _keep = rz.boxes(np.array([s["bbox"] for s in infos], np.float64))
            v.segments_info = [dict(s, bbox=b.tolist()) for s, b in zip(infos, boxes)]
        if instances is None:
            v.instances = [Instance(s["id"], s["category_id"], s["bbox"], v.segments == s["id"],
                                    bool(s.get("iscrowd", 0))) for s in v.things()]
    if instances is not None:
        v.instances = []
        for inst in instances:
            box, keep = rz.boxes(np.array(inst["bbox"], np.float64))
            if not keep[0]:
                continue  # outside the crop
            mask = inst.get("mask")
            if mask is not None:
                mask = rz.image(mask.astype(np.uint8), "nearest").astype(bool)
            kps = inst.get("keypoints")
            if kps is not None:
                kps = np.asarray(kps, np.float64).reshape(-1, 3).copy()
                kps[:, :2], _inside = rz.points(kps[:, :2])
            v.instances.append(Instance(int(inst["id"]), int(inst["category_id"]), box[0].tolist(), mask,
                                        bool(inst.get("iscrowd", 0)), kps))
    v.skeleton = skeleton
    return v


@dataclass
class ClipView:
    """A base clip at the output resolution (one resize for every frame and annotation).

    frames: (T, R, R, 3) uint8 RGB. depth: (T, R, R) float32, 0 = invalid (``depth_kind``
    as in :class:`View`). normals: (T, R, R, 3) float32 unit vectors, 0 = invalid.
    flow: (T-1, R, R, 2) float32 forward flow from frame t to t+1 in output pixels (u right,
    v down), NaN = unknown. tracks: (T, R, R) int32 object ids, 0 = background, stable
    across the clip; ``annotated`` (T,) bool says which frames have masks; ``objects``
    [{id, category_id?, name?}] lists the ids of the source sequence (colours follow their
    order). ``frame_indices`` and ``pts_seconds`` name the source frames.
    """

    key: str
    source: str
    item_id: str
    frames: np.ndarray
    resize: Resize
    frame_indices: list[int]
    pts_seconds: list[float] | None = None
    licence: str | None = None
    depth: np.ndarray | None = None
    depth_kind: str = "depth"
    normals: np.ndarray | None = None
    flow: np.ndarray | None = None
    tracks: np.ndarray | None = None
    annotated: np.ndarray | None = None
    objects: list[dict] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]


def resize_clip(rz: Resize, arr: np.ndarray, kind: str = "image") -> np.ndarray:
    """Apply ``rz`` to every frame of a (T, H, W, ...) array."""
    return np.stack([rz.image(a, kind) for a in arr]) if len(arr) else arr


def resize_flow(rz: Resize, flow: np.ndarray) -> np.ndarray:
    """(T, H, W, 2) flow in source pixels -> output pixels: nearest-neighbour resampling (no
    invented vectors at motion boundaries), vectors scaled by the resize's x and y scales."""
    out = resize_clip(rz, flow.astype(np.float32), "nearest") * np.array([rz.sx, rz.sy], np.float32)
    covered = rz.image(np.ones((rz.src_h, rz.src_w), np.uint8), "nearest").astype(bool)
    out[:, ~covered] = np.nan  # padding (resize: pad) has no motion to tell: unknown, not zero
    return out


def make_clip_view(
    key: str, source: str, item_id: str, frames: np.ndarray, resolution: int, policy: str,
    frame_indices: list[int], pts_seconds: list[float] | None = None, licence: str | None = None,
    depth: np.ndarray | None = None, depth_kind: str = "depth", normals: np.ndarray | None = None,
    flow: np.ndarray | None = None, tracks: np.ndarray | None = None, annotated: list[bool] | None = None,
    objects: list[dict] | None = None,
) -> ClipView:
    """Bring a (T, H, W, 3) clip and its per-frame annotations to ``resolution``."""
    t, h, w = frames.shape[:3]
    rz = plan_resize(w, h, resolution, policy)
    v = ClipView(key=key, source=source, item_id=item_id, frames=resize_clip(rz, frames), resize=rz,
                 frame_indices=list(frame_indices), pts_seconds=pts_seconds, licence=licence, depth_kind=depth_kind,
                 objects=list(objects or []))
    if depth is not None:
        v.depth = resize_clip(rz, depth.astype(np.float32), "nearest")
    if normals is not None:
        v.normals = resize_clip(rz, normals.astype(np.float32), "nearest")
    if flow is not None:
        v.flow = resize_flow(rz, flow)
    if tracks is not None:
        v.tracks = resize_clip(rz, tracks.astype(np.int32), "nearest")
        v.annotated = np.ones(t, bool) if annotated is None else np.asarray(annotated, bool)
    return v
