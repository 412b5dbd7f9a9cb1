"""Render -> decode -> compare with ground truth, on exact synthetic scenes and on real data."""

import json

import cv2
import numpy as np
import pytest

from lavin_data.codecs import decode_image, encode_png
from lavin_data.geometry import make_view
from lavin_data.render import (
    PALETTE,
    THING_OFFSET,
    angular_error_deg,
    box_iou,
    canny_edges,
    decode_boxes,
    decode_depth,
    decode_edges,
    decode_filled_box,
    decode_foreground,
    decode_instances,
    decode_normals,
    decode_panoptic,
    decode_semantic,
    grey,
    mask_iou,
    render_boxes,
    render_depth,
    render_edges,
    render_filled_box,
    render_foreground,
    render_instances,
    render_normals,
    render_panoptic,
    render_semantic,
)
from lavin_data.sources.synthetic import render_scene
from tests.conftest import fixture_path


def png_roundtrip(img):
    return decode_image(encode_png(img))  # the renderings are read back from the PNG on disk


def matched_iou(gt, pred):
    """Mean IoU of each GT box with its best decoded box (0 when none)."""
    if len(gt) == 0:
        return 1.0
    if len(pred) == 0:
        return 0.0
    return float(box_iou(gt, pred).max(1).mean())


def assert_panoptic_counts(v, rel_tol):
    """Render v's panoptic map, decode it from PNG, compare each segment's pixel count."""
    lab = decode_panoptic(png_roundtrip(render_panoptic(v.segments, v.segments_info)))
    k = 0
    for s in v.segments_info:
        want = int((v.segments == s["id"]).sum())
        code = THING_OFFSET + k if s["isthing"] else s["category_id"]
        k += bool(s["isthing"])
        assert abs(int((lab == code).sum()) - want) <= rel_tol * want, s
    return lab


def views(n=6, policy="crop"):
    out = []
    for seed in range(n):
        s = render_scene(seed, 320, 240)
        out.append(make_view(f"syn_{seed}", "syn", str(seed), s.image, 256, policy, depth=s.depth,
                             normals=s.normals, segments=s.segments, segments_info=s.segments_info))
    return out


def test_palette_is_distinct_and_not_dark():
    assert len({tuple(c) for c in PALETTE}) == len(PALETTE)
    assert tuple(PALETTE[0]) == (0, 0, 0)
    assert PALETTE[1:].max(axis=1).min() >= 0.6 * 255 - 1  # no entry close to black


@pytest.mark.parametrize("policy", ["crop", "squash", "pad"])
def test_boxes_roundtrip_on_synthetic(policy):
    ious = []
    for v in views(policy=policy):
        things = v.things()
        boxes = np.array([s["bbox"] for s in things], float).reshape(-1, 4)
        classes = np.array([s["category_id"] for s in things])
        img, drawn = render_boxes(boxes, classes, v.size)
        dec, dcls = decode_boxes(png_roundtrip(img))
        ious.append(matched_iou(boxes[drawn], dec))
        # Every decoded box carries the class of the GT box it matches.
        if len(dec) and drawn.any():
            best = box_iou(dec, boxes[drawn]).argmax(1)
            assert (dcls == classes[drawn][best]).mean() >= 0.9
    assert np.mean(ious) >= 0.95, ious


def test_boxes_decoder_handles_overlaps_and_rejects_phantom_intersections():
    boxes = np.array([[10, 10, 60, 50], [40, 30, 100, 90], [5, 70, 30, 120], [70, 5, 120, 40]], float)
    img, drawn = render_boxes(boxes, np.array([3, 3, 3, 4]), (128, 128))
    dec, cls = decode_boxes(img)
    assert drawn.all() and len(dec) == 4  # the 10..60 / 40..100 crossing makes no fifth box
    assert box_iou(boxes, dec).max(1).min() == 1.0


def test_instances_semantic_panoptic_roundtrip_on_synthetic():
    for v in views():
        things = v.things()
        # instances: exact masks
        dec = decode_instances(png_roundtrip(render_instances([v.segments == s["id"] for s in things])))
        assert sorted(dec) == list(range(len(things)))
        for k, s in enumerate(things):
            assert mask_iou(dec[k], v.segments == s["id"]) == 1.0
        # semantic: exact class map
        cmap = v.class_map()
        assert np.array_equal(decode_semantic(png_roundtrip(render_semantic(cmap))), cmap)
        # panoptic: every segment's pixel count, and the unlabeled pixels
        lab = assert_panoptic_counts(v, rel_tol=0.0)
        assert int((lab == 0).sum()) == int((v.segments == 0).sum())


def test_foreground_and_filled_box_roundtrip():
    for v in views():
        for s in v.things():
            m = v.segments == s["id"]
            assert mask_iou(decode_foreground(png_roundtrip(render_foreground(m, s["category_id"]))), m) == 1.0
            b = np.array(s["bbox"])
            dec = decode_filled_box(png_roundtrip(render_filled_box(b, v.size)))
            assert box_iou(b, dec)[0, 0] >= 0.9


def fit_scale_shift(pred, gt):
    a = np.stack([pred, np.ones_like(pred)], 1)
    coef, *_ = np.linalg.lstsq(a, gt, rcond=None)
    return a @ coef


def test_depth_roundtrip_on_synthetic():
    for v in views():
        valid = v.depth > 0
        img, rng = render_depth(v.depth)
        gt = 1.0 / v.depth[valid].astype(np.float64)
        lo, hi = np.percentile(gt, [2, 98])  # the default robust range, computed here independently
        assert (rng["disparity_min"], rng["disparity_max"]) == pytest.approx((lo, hi), rel=1e-12)
        disp = decode_depth(png_roundtrip(img), rng["disparity_min"], rng["disparity_max"])
        err = np.abs(disp[valid] - np.clip(gt, lo, hi))
        assert err.max() <= (hi - lo) / 254 * 0.5 + 1e-9  # within half a grey level of 1..255
        inside = (gt >= lo) & (gt <= hi)
        rel = fit_scale_shift(decode_depth(img)[valid][inside], gt[inside])  # up to scale and shift, image alone
        assert np.mean(np.abs(rel - gt[inside]) / gt[inside]) <= 0.01
        assert (img[~valid] == 0).all() and (img[valid] >= 1).all()


def test_normals_roundtrip_on_synthetic():
    for v in views():
        valid = np.linalg.norm(v.normals, axis=2) > 0.5
        n, ok = decode_normals(png_roundtrip(render_normals(v.normals)))
        assert np.array_equal(ok, valid)
        err = angular_error_deg(n[valid], v.normals[valid])
        assert err.mean() < 0.5 and err.max() < 1.0  # 8-bit quantisation: <= 0.5/127.5 per component


def test_edges_roundtrip():
    img = views(1)[0].image
    e = canny_edges(img, 80, 160)
    assert 0.005 < e.mean() < 0.3
    assert np.array_equal(decode_edges(png_roundtrip(render_edges(e))), e)


def test_grey_is_bt601_luma():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    g = grey(img)
    assert g[0, :, 0].tolist() == [76, 150, 29, round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


# --------------------------------------------------------------------------- real data


def test_depth_roundtrip_on_nyu_fixture():
    for p in sorted(fixture_path("nyu_v2", "depth").glob("*.png")):
        mm = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert mm.dtype == np.uint16
        rgb_path = next(fixture_path("nyu_v2", "rgb").glob(p.stem.replace("sync_depth", "rgb") + ".*"))
        rgb = decode_image(rgb_path.read_bytes())
        v = make_view("nyu_x", "nyu", "x", rgb, 256, "crop", depth=mm.astype(np.float32) / 1000.0)
        valid = v.depth > 0
        assert valid.mean() > 0.5
        img, rng = render_depth(v.depth)
        inside = valid & (1 / np.maximum(v.depth, 1e-9) >= rng["disparity_min"]) & \
            (1 / np.maximum(v.depth, 1e-9) <= rng["disparity_max"])
        assert inside.sum() >= 0.95 * valid.sum()  # the 2-98 % range clips at most 4 % of the pixels
        disp = decode_depth(png_roundtrip(img))[inside]
        pred = fit_scale_shift(disp, 1.0 / v.depth[inside])
        depth_gt = v.depth[inside]
        abs_rel = np.mean(np.abs(1.0 / pred - depth_gt) / depth_gt)
        assert abs_rel <= 0.01, (p.name, abs_rel)


def _panoptic_fixture():
    root = fixture_path("coco_panoptic", "sample_data")
    meta = json.loads((root / "panoptic_examples.json").read_text())
    cats = {c["id"]: c for c in json.loads(fixture_path("coco_panoptic", "panoptic_coco_categories.json").read_text())}
    for ann in meta["annotations"]:
        rgb = decode_image((root / "panoptic_examples" / ann["file_name"]).read_bytes()).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        segs = [dict(id=s["id"], category_id=s["category_id"], isthing=cats[s["category_id"]]["isthing"],
                     bbox=[s["bbox"][0], s["bbox"][1], s["bbox"][0] + s["bbox"][2], s["bbox"][1] + s["bbox"][3]])
                for s in ann["segments_info"]]
        yield ann, ids, segs


def test_panoptic_semantic_instances_roundtrip_on_coco_fixture():
    n = 0
    for _ann, ids, segs in _panoptic_fixture():
        n += 1
        # Our 16-bit segment maps need compact ids: remap COCO's 24-bit ids.
        compact = np.zeros_like(ids)
        for i, s in enumerate(segs, 1):
            compact[ids == s["id"]] = i
        segs_c = [dict(s, id=i) for i, s in enumerate(segs, 1)]
        img = np.zeros(ids.shape + (3,), np.uint8)
        v = make_view("coco_x", "coco", "x", img, 256, "crop", segments=compact, segments_info=segs_c)
        assert_panoptic_counts(v, rel_tol=0.01)
        cmap = v.class_map()
        assert np.array_equal(decode_semantic(png_roundtrip(render_semantic(cmap))), cmap)
    assert n == 2


def test_boxes_roundtrip_on_coco_keypoints_fixture():
    ann = json.loads(fixture_path("coco_keypoints", "test_coco.json").read_text())
    images = {im["id"]: im for im in ann["images"]}
    ious = []
    for img_id, im in images.items():
        b = np.array([a["bbox"] for a in ann["annotations"] if a["image_id"] == img_id], float).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        rgb = decode_image((fixture_path("coco_keypoints") / im["file_name"]).read_bytes())
        v = make_view("c", "coco", "x", rgb, 512, "crop",
                      segments=np.zeros(rgb.shape[:2], np.int32),
                      segments_info=[{"id": 0, "category_id": 1, "isthing": 1, "bbox": bb.tolist()} for bb in b])
        # make_view keeps only segments present in the map; use the resize directly for boxes.
        out, keep = v.resize.boxes(b)
        img, drawn = render_boxes(out[keep], np.ones(keep.sum(), int), v.size)
        dec, _ = decode_boxes(png_roundtrip(img))
        ious.append(matched_iou(out[keep][drawn], dec))
    assert np.mean(ious) >= 0.95, ious


def test_edges_on_real_photo():
    p = sorted(fixture_path("photos").glob("*.jpg"))[0]
    rgb = decode_image(p.read_bytes())
    v = make_view("p", "photos", "x", rgb, 256, "crop")
    e = canny_edges(v.image, 80, 160)
    assert 0.01 < e.mean() < 0.5
    assert np.array_equal(decode_edges(png_roundtrip(render_edges(e))), e)


def test_boxes_decoder_in_heavy_clutter():
    """Random overlapping boxes of 3 classes: recall stays high; phantoms stay few.

    Same-coloured boxes with nearly collinear sides are genuinely ambiguous, so a few
    extra rectangles are expected here (measured: mean 7 per image at 3-12 boxes).
    """
    rng = np.random.default_rng(0)
    ious, extra = [], []
    for _ in range(60):
        n = rng.integers(3, 12)
        xy, wh = rng.uniform(8, 200, (n, 2)), rng.uniform(10, 100, (n, 2))
        b = np.concatenate([xy, np.minimum(xy + wh, 240)], 1)
        img, drawn = render_boxes(b, rng.integers(1, 4, n), (256, 256))
        dec, _ = decode_boxes(img)
        ious.append(matched_iou(b[drawn], dec))
        extra.append(len(dec) - drawn.sum())
    assert np.mean(ious) >= 0.93
    assert np.mean(extra) <= 10


def test_normals_decoding_marks_black_and_mid_grey_invalid():
    """One normals codec for renderings (8-bit), label sidecars (16-bit) and GT files: black
    and vectors too short to be encoded unit normals (mid-grey) are invalid, i.e. 0."""
    n = np.array([[[0.0, 0.6, 0.8], [0, 0, 0], [0, 0, 0]]], np.float32)
    for dtype in (np.uint8, np.uint16):
        img = render_normals(n, dtype=dtype)
        top = np.iinfo(dtype).max
        img[0, 2] = (top + 1) // 2  # mid-grey: the encoding of the zero vector
        got, valid = decode_normals(img)
        assert valid.tolist() == [[True, False, False]]
        assert np.allclose(got[0, 0], n[0, 0], atol=2.0 / top) and not got[0, 1:].any()
        assert img[0, 1].tolist() == [0, 0, 0]
