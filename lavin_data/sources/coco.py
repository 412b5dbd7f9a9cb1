"""Pure COCO conversions into the base-sample form: annotation masks as compressed RLE (via
pycocotools) and panoptic id maps as compact segment maps."""

from __future__ import annotations

import math

import numpy as np


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def bbox_problem(bbox) -> str | None:
    """What is wrong with a COCO box ``[x, y, width, height]`` (source pixels), or None: not a
    list of 4 numbers, a non-finite value, or a width or height <= 0. A box partly outside
    its image is normal and passes."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox {bbox!r} is not 4 numbers [x, y, width, height]"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox {list(bbox)} holds a non-finite value"
    for name, v in (("width", bbox[2]), ("height", bbox[3])):
        if v <= 0:
            return f"bbox {list(bbox)} has {name} {v} <= 0"
    return None


def keypoints_problem(keypoints, n_keypoints: int | None) -> str | None:
    """What is wrong with a COCO annotation's ``keypoints`` (flat x, y, visibility per
    keypoint), or None. ``n_keypoints``: the length of its category's ``keypoints`` list
    (None where the category lists none: any multiple of 3 passes)."""
    if not isinstance(keypoints, (list, tuple)):
        return f"keypoints is a {type(keypoints).__name__}, not a list of numbers"
    for i, v in enumerate(keypoints):
        if not _is_number(v):
            return f"keypoints holds a non-number at position {i}: {v!r}"
        if not math.isfinite(v):
            return f"keypoints holds a non-finite value at position {i}: {v}"
    if n_keypoints is not None and len(keypoints) != 3 * n_keypoints:
        return f"keypoints has {len(keypoints)} values, expected 3 x {n_keypoints} = {3 * n_keypoints}"
    if len(keypoints) % 3:
        return f"keypoints has {len(keypoints)} values, not a multiple of 3 (x, y, visibility per keypoint)"
    return None


def skeleton_problem(skeleton, n_keypoints: int) -> str | None:
    """What is wrong with a category's ``skeleton`` (1-based [a, b] pairs of indices into its
    ``keypoints`` list of ``n_keypoints`` names), or None. CrowdPose, for one, ships COCO's
    17-point skeleton with its 14 keypoints."""
    if not isinstance(skeleton, list):
        return f"skeleton is a {type(skeleton).__name__}, not a list of [a, b] pairs"
    for edge in skeleton:
        if not (isinstance(edge, list) and len(edge) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in edge)):
            return f"skeleton edge {edge!r} is not a pair of ints"
        bad = [v for v in edge if not 1 <= v <= n_keypoints]
        if bad and not n_keypoints:
            return f"skeleton edge {edge} refers to keypoint {bad[0]}, but the category lists no keypoints"
        if bad:
            return (f"skeleton edge {edge} refers to keypoint {bad[0]}, but the category has {n_keypoints} keypoints "
                    f"(skeleton indices are 1-based, 1..{n_keypoints})")
    return None


def ann_rle(ann: dict, h: int, w: int) -> dict:
    """COCO compressed RLE ({size, counts: str}) of one annotation's polygons, uncompressed
    or compressed RLE: the source-independent mask form of base samples.

    A polygon with fewer than 3 points, an odd number of coordinates, or no area is
    degenerate and raises ValueError naming the annotation.
    """
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    aid = ann.get("id")
    if seg is None or seg == []:
        raise ValueError(f"annotation {aid}: no segmentation")
    if isinstance(seg, list):
        for poly in seg:
            if len(poly) < 6 or len(poly) % 2:
                raise ValueError(f"annotation {aid}: degenerate polygon ({len(poly)} coordinates)")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and "counts" in seg:
        if isinstance(seg["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = dict(seg, counts=seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"])
        if tuple(rle["size"]) != (h, w):
            raise ValueError(f"annotation {aid}: RLE size {rle['size']} does not match the image {h}x{w}")
    else:
        raise ValueError(f"annotation {aid}: unknown segmentation format {type(seg).__name__}")
    if not mask_utils.area(rle) and not ann.get("iscrowd"):
        raise ValueError(f"annotation {aid}: degenerate segmentation (zero area)")
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def ann_instance(ann: dict, h: int, w: int) -> dict:
    """COCO annotation -> base-sample instance (see :mod:`lavin_data.base`): bbox xyxy,
    mask as compressed RLE (or None without a segmentation), keypoints (K, 3) or None."""
    x, y, bw, bh = ann["bbox"]
    kps = ann.get("keypoints")
    return {
        "id": ann["id"], "category_id": ann["category_id"], "bbox": [x, y, x + bw, y + bh],
        "iscrowd": bool(ann.get("iscrowd", 0)),
        "mask": ann_rle(ann, h, w) if ann.get("segmentation") not in (None, []) else None,
        "keypoints": np.asarray(kps, np.float64).reshape(-1, 3) if kps else None,
    }


def panoptic_segments(rgb: np.ndarray, segments_info: list[dict], categories: dict[int, dict]):
    """Panoptic PNG (H, W, 3) uint8 with id = R + 256 G + 256² B -> compact (H, W) uint16
    segment map (1..N in ``segments_info`` order, 0 unlabeled) and its segment list."""
    rgb = rgb.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    seg = np.zeros(ids.shape, np.uint16)
    infos = []
    for k, s in enumerate(segments_info, 1):
        m = ids == s["id"]
        seg[m] = k
        x, y, bw, bh = s["bbox"]
        infos.append({"id": k, "category_id": int(s["category_id"]),
                      "isthing": int(categories[int(s["category_id"])]["isthing"]),
                      "iscrowd": int(s.get("iscrowd", 0)), "bbox": [x, y, x + bw, y + bh], "area": int(m.sum())})
    return seg, infos
