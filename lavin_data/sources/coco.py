"""Pure COCO conversions into the base-sample form: annotation masks as compressed RLE (via
pycocotools) and panoptic id maps as compact segment maps."""

from __future__ import annotations

import numpy as np


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
