"""Every axis convention against ground truth whose orientation is known independently.

Round trips (render -> decode) pass when both sides share an axis flip; these tests
instead compare renderings with geometry built by hand (a floor seen from above, a plane
turned to the right, a pattern moved right and down, a box in a corner of a wide image)
and with the documented encodings: normals x right, y up, z towards the camera, RGB =
(n+1)/2; flow (u, v) = (dx, dy), x right, y down, Middlebury colours; boxes COCO
[x, y, w, h], x right, y down; depth near = bright.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lavin_data.geometry import make_view, plan_resize
from lavin_data.geometry.camera import normals_from_depth
from lavin_data.geometry.view import resize_flow
from lavin_data.labelers.dis_flow import dis_flow
from lavin_data.registry import task_options_model
from lavin_data.render import render_boxes, render_filled_box
from lavin_data.render.boxes import decode_boxes, decode_filled_box
from lavin_data.render.dense import decode_depth, decode_normals, render_depth, render_normals
from lavin_data.render.flow import render_flow
from lavin_data.render.tasks import (
    depth_estimation,
    object_detection,
    single_object_detection,
    surface_normal_estimation,
)
from lavin_data.sources.coco import ann_instance
from lavin_data.sources.synthetic import render_scene
from tests.conftest import fixture_path


def opts(task: str) -> dict:
    return task_options_model(task)().model_dump()


def rgb_of(v) -> np.ndarray:
    """The documented encoding written out: channel = rint((n + 1) / 2 * 255)."""
    return np.rint((np.asarray(v, np.float64) + 1) / 2 * 255).astype(np.uint8)


# --------------------------------------------------------------------------- normals


@pytest.mark.parametrize("normal, colour", [
    ((1.0, 0.0, 0.0), (255, 128, 128)),  # facing right: red
    ((0.0, 1.0, 0.0), (128, 255, 128)),  # facing up (a floor): green
    ((0.0, 0.0, 1.0), (128, 128, 255)),  # facing the camera (a wall ahead): blue
    ((-1.0, 0.0, 0.0), (0, 128, 128)),
    ((0.0, -1.0, 0.0), (128, 0, 128)),  # a ceiling
])
def test_normal_colours_are_x_right_y_up_z_to_camera(normal, colour):
    img = render_normals(np.array([[normal]], np.float32))
    assert tuple(img[0, 0]) == colour
    # A ground-truth map in this encoding (as NYU's) reads back to the same axis.
    n, valid = decode_normals(np.array([[colour]], np.uint8))
    assert valid[0, 0] and np.allclose(n[0, 0], normal, atol=0.01)


@pytest.fixture(scope="module")
def scene():
    # Seed 1: a floor, the back wall, spheres and boxes; 96 x 64 (wider than high).
    return render_scene(1, width=96, height=64)


def _scene_view(scene):
    return make_view("k", "synthetic", "1", scene.image, 64, "squash", depth=scene.depth, normals=scene.normals,
                     segments=scene.segments.astype(np.int32))


def test_floor_renders_green_and_the_wall_blue(scene):
    """The camera looks slightly down at a floor (normal up) and a wall facing it."""
    view = _scene_view(scene)
    target = surface_normal_estimation(view, np.random.default_rng(0), opts("surface_normal_estimation"))[0].target
    cats = {s["id"]: s["category_id"] for s in scene.segments_info}
    floor = np.isin(view.segments, [i for i, c in cats.items() if c == 1])
    wall = np.isin(view.segments, [i for i, c in cats.items() if c == 2])
    assert floor.sum() > 300 and wall.sum() > 100
    g, b = target[..., 1].astype(int), target[..., 2].astype(int)
    # Floor: y up (G high); pitched camera, so a little towards the camera (B > 128).
    assert (g[floor] > 240).all() and (b[floor] > 128).all()
    # Wall: faces the camera (B high).
    assert (b[wall] > 230).all()


def test_sphere_sides_face_left_and_right(scene):
    """On a sphere the pixels right of its centre face right (R > 128), those left of it face
    left, those above it face up (G > 128)."""
    view = _scene_view(scene)
    target = surface_normal_estimation(view, np.random.default_rng(0), opts("surface_normal_estimation"))[0].target
    spheres = [s["id"] for s in scene.segments_info if s["category_id"] == 3]
    sid = max(spheres, key=lambda i: (view.segments == i).sum())
    ys, xs = np.nonzero(view.segments == sid)
    assert len(xs) > 60
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    r = target[ys, xs, 0].astype(int)
    g = target[ys, xs, 1].astype(int)
    right, left, top = xs > cx + 2, xs < cx - 2, ys < cy - 2
    assert right.sum() > 5 and left.sum() > 5 and top.sum() > 5
    assert (r[right] > 128).all() and (r[left] < 128).all() and (g[top] > 128).all()


def _plane_depth(n, h: int, w: int, intr, c: float = 2.0) -> np.ndarray:
    """Depth of the plane n . P = -c (P in our camera frame, visible points z < 0), by hand:
    P = d * ((u - cx) / fx, -(v - cy) / fy, -1), so d = c / (nz - nx (u - cx) / fx + ny (v - cy) / fy)."""
    fx, fy, cx, cy = intr
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return (c / (n[2] - n[0] * (u - cx) / fx + n[1] * (v - cy) / fy)).astype(np.float32)


@pytest.mark.parametrize("normal", [(0.5, 0.0, 1.0), (-0.4, 0.3, 1.0), (0.2, -0.6, 1.0)])
def test_normals_from_depth_of_a_tilted_plane(normal):
    """A plane turned right (its right side farther) faces right: n_x > 0; one whose lower
    part is farther faces down (n_y < 0)."""
    n = np.array(normal) / np.linalg.norm(normal)
    h, w, intr = 48, 64, (60.0, 60.0, 31.5, 23.5)
    depth = _plane_depth(n, h, w, intr)
    if n[0] > 0:
        assert depth[24, -5] > depth[24, 4]  # the right side is farther
    got, ok = normals_from_depth(depth, intr, window=3, max_rel_jump=0.2)
    assert ok.mean() > 0.8
    assert np.allclose(got[ok], n, atol=2e-3)
    img = render_normals(got)
    assert np.array_equal(img[24, 32], rgb_of(n))


# --------------------------------------------------------------------------- flow


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.integers(0, 256, (120, 150, 3)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(t, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_dis_flow_of_a_pattern_moved_right_and_down():
    """Frame 2 is frame 1 moved 3 px right and 2 px down: frame2[y, x] = frame1[y - 2, x - 3],
    so the flow is u = +3, v = +2."""
    t, h, w = _texture(), 64, 96
    f1, f2 = t[10:10 + h, 10:10 + w], t[8:8 + h, 7:7 + w]
    assert np.array_equal(f2[2:, 3:], f1[:-2, :-3])
    flow = dis_flow(np.stack([f1, f2]))
    assert flow.shape == (1, h, w, 2)
    u, v = np.median(flow[0, 8:-8, 8:-8].reshape(-1, 2), axis=0)
    assert abs(u - 3) < 0.2 and abs(v - 2) < 0.2


# The Middlebury colour code (Baker et al. 2011, flowToColor): 55 colours, angle
# atan2(-v, -u); at full magnitude the colour is the wheel's. Values from the reference
# wheel: RY 15, YG 6, GC 4, CB 11, BM 13, MR 6 (entry k of a segment of n ramps floor(255 k / n)).
# Pure +u sits on the wheel's seam: atan2(-0.0, -1) = -pi gives entry 0 (255, 0, 0), as in
# the reference code; just below it (v < 0, up) is entry 54 (255, 0, 43). Both are red.
@pytest.mark.parametrize("flow, colours", [
    ((1.0, 0.0), [(255, 0, 0), (255, 0, 43)]),  # right: red
    ((0.0, 1.0), [(255, 230, 0)]),  # down: yellow-orange (between entries 13 and 14)
    ((-1.0, 0.0), [(0, 209, 255)]),  # left: cyan-blue (entry 27)
    ((0.0, -1.0), [(88, 0, 255)]),  # up: blue-violet (between entries 40 and 41)
])
def test_flow_colour_follows_the_middlebury_wheel(flow, colours):
    img, top = render_flow(np.array([[flow, (0.0, 0.0)]], np.float32), max_magnitude=1.0)
    assert top == 1.0
    assert min(np.abs(img[0, 0].astype(int) - c).max() for c in colours) <= 1, img[0, 0]
    assert tuple(img[0, 1]) == (255, 255, 255)  # no motion: white


def test_flyingchairs_gt_flow_warps_frame_two_onto_frame_one():
    """Backward warp: img1(x) ~ img2(x + flow(x)). The ground truth read by the flow reader
    explains the frames better than the same flow with u/v swapped or negated."""
    from lavin_data.sources import flow_reader
    from lavin_data.spec import parse_spec

    root = fixture_path("flow")
    src = parse_spec({"name": "t", "output": "/tmp/unused", "tasks": [{"task": "optical_flow", "source": "f"}],
                      "sources": [{"name": "f", "kind": "flow", "root": str(root)}]}).sources[0]
    # FlyingChairs proper (00001); the FlyingChairsOcc crop moves < 0.5 px almost everywhere.
    item = next(i for i in flow_reader.plan(src) if i["item_id"] == "00001")
    s = flow_reader.read(src, item, 0, {})
    a, b, f = s.frames[0].astype(np.float32), s.frames[1].astype(np.float32), s.flow[0]
    h, w = f.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

    def error(u, v):
        warped = cv2.remap(b, gx + u, gy + v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return float(np.abs(warped - a).mean())

    u, v = f[..., 0], f[..., 1]
    assert np.abs(v).mean() > 1.0  # a real motion to tell the axes apart
    gt = error(u, v)
    for name, e in {"swapped": error(v, u), "negated": error(-u, -v), "u negated": error(-u, v),
                    "v negated": error(u, -v), "zero": error(0 * u, 0 * v)}.items():
        assert gt < 0.7 * e, (name, gt, e)


def test_flow_vectors_scale_with_each_axis_of_the_resize():
    """Squash 80x40 -> 64x64: x shrinks by 0.8, y grows by 1.6; u and v follow their own axis."""
    flow = np.zeros((1, 40, 80, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    out = resize_flow(plan_resize(80, 40, 64, "squash"), flow)
    assert np.allclose(out[..., 0], 2.4) and np.allclose(out[..., 1], -3.2)


# --------------------------------------------------------------------------- boxes


def test_filled_box_lands_at_its_columns_and_rows():
    """COCO [x, y, w, h] = [85, 5, 30, 20] on a 120 wide, 60 high image: columns 85..114,
    rows 5..24 (x right, y down)."""
    x, y, bw, bh = 85, 5, 30, 20
    xyxy = np.array(ann_instance({"id": 1, "category_id": 3, "bbox": [x, y, bw, bh]}, 60, 120)["bbox"], float)
    img = render_filled_box(xyxy, (60, 120))
    assert img.shape == (60, 120, 3)
    lit = img.max(-1) > 0
    expected = np.zeros((60, 120), bool)
    expected[5:25, 85:115] = True
    assert np.array_equal(lit, expected)
    assert decode_filled_box(img).tolist() == [85, 5, 115, 25]


def test_box_outline_lands_at_its_columns_and_rows():
    img, drawn = render_boxes(np.array([[85.0, 5.0, 115.0, 25.0]]), np.array([3]), (60, 120), thickness=2)
    assert drawn.all()
    lit = img.max(-1) > 0
    assert lit[5, 85:115].all() and lit[24, 85:115].all() and lit[5:25, 85].all() and lit[5:25, 114].all()
    assert not lit[:5].any() and not lit[25:].any() and not lit[:, :85].any() and not lit[:, 115:].any()
    assert not lit[8:22, 88:112].any()  # hollow
    boxes, classes = decode_boxes(img, thickness=2)
    assert boxes.tolist() == [[85, 5, 115, 25]] and classes.tolist() == [3]


@pytest.mark.parametrize("policy, rows, cols", [
    ("squash", (10, 40), (70, 90)),  # 200x100 -> 100x100: x * 0.5, y * 1
    ("pad", (30, 45), (70, 90)),  # -> 100x50 centred: x * 0.5, y * 0.5 + 25
])
def test_coco_box_through_the_view_lands_where_computed(policy, rows, cols):
    """A COCO box [140, 10, 40, 30] in the top right of a 200x100 image, through the resize
    and the single_object_detection / object_detection renderers."""
    image = np.zeros((100, 200, 3), np.uint8)
    inst = ann_instance({"id": 7, "category_id": 3, "bbox": [140, 10, 40, 30]}, 100, 200)
    view = make_view("k", "coco", "1", image, 100, policy, instances=[inst],
                     categories=[{"id": 3, "name": "car", "isthing": 1}])
    expected = np.zeros((100, 100), bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = True
    target = single_object_detection(view, np.random.default_rng(0), opts("single_object_detection"))[0].target
    assert np.array_equal(target.max(-1) > 0, expected)
    outline = object_detection(view, np.random.default_rng(0), opts("object_detection"))[0].target
    ys, xs = np.nonzero(outline.max(-1) > 0)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (*rows, *cols)


# --------------------------------------------------------------------------- depth


def test_depth_near_is_bright_by_hand():
    depth = np.full((20, 30), 4.0, np.float32)
    depth[:, :10] = 1.0  # near on the left
    depth[:, 10:20] = 2.0
    img, meta = render_depth(depth)
    g = img[..., 0]
    assert g[0, 0] > g[0, 15] > g[0, 25] > 0
    disp = decode_depth(img, meta["disparity_min"], meta["disparity_max"])
    assert np.allclose(disp[0, [0, 15, 25]], [1.0, 0.5, 0.25], atol=0.01)


def test_depth_nearer_objects_render_brighter_in_a_scene(scene):
    """Objects stand in front of the back wall: brighter than it; and grey falls as depth grows."""
    view = _scene_view(scene)
    target = depth_estimation(view, np.random.default_rng(0), opts("depth_estimation"))[0].target[..., 0].astype(int)
    cats = {s["id"]: s["category_id"] for s in scene.segments_info}
    objects = np.isin(view.segments, [i for i, c in cats.items() if c >= 3])
    wall = np.isin(view.segments, [i for i, c in cats.items() if c == 2])
    assert np.median(view.depth[objects]) < np.median(view.depth[wall])  # the geometry
    assert target[objects].mean() > target[wall].mean() + 20
    valid = view.depth > 0
    d, g = view.depth[valid], target[valid]
    near, far = d < np.percentile(d, 20), d > np.percentile(d, 80)
    assert g[near].min() >= g[far].max()


# --------------------------------------------------------------------------- NYU invalid normals


@pytest.mark.parametrize("bits, frame", [(8, "x_right_y_up_z_camera"), (16, "x_right_y_up_z_camera"), (8, "opencv")])
def test_nyu_black_normals_stay_invalid_through_reader_base_resize_render(tmp_path, bits, frame):
    """A NYU ground-truth normal map whose left part is black (no ground truth): through the
    NYU reader, the base sample, the resize and the surface-normal renderer the black part
    stays black in the target and 0 in target_raw (not a unit vector rendered grey), and the
    rest keeps its axes: a wall ahead (blue) above, the floor (green) below."""
    from lavin_data.base import encode_base, view_from_base
    from lavin_data.sources import nyu_reader
    from lavin_data.spec import parse_spec

    h, w, dark = 60, 80, 30  # columns 0..29 black
    rng = np.random.default_rng(0)
    (tmp_path / "nyu").mkdir()
    cv2.imwrite(str(tmp_path / "nyu" / "rgb_00007.jpg"), rng.integers(0, 256, (h, w, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "nyu" / "sync_depth_00007.png"), np.full((h, w), 2500, np.uint16))
    ours = np.zeros((h, w, 3))
    ours[: h // 2] = (0.0, 0.0, 1.0)  # wall ahead
    ours[h // 2:] = (0.0, 1.0, 0.0)  # floor
    stored = ours * (np.array([1, -1, -1]) if frame == "opencv" else 1)  # opencv: y down, z forward
    top = 255 if bits == 8 else 65535
    png = np.rint((stored + 1) / 2 * top).astype(np.uint8 if bits == 8 else np.uint16)
    png[:, :dark] = 0  # black: invalid ground truth
    (tmp_path / "normals").mkdir()
    assert cv2.imwrite(str(tmp_path / "normals" / "normal_00007.png"), png[..., ::-1])  # x in R
    src = parse_spec({"name": "t", "output": str(tmp_path / "out"), "resolution": 48,
                      "tasks": [{"task": "surface_normal_estimation", "source": "nyu"}],
                      "sources": [{"name": "nyu", "kind": "nyu", "root": str(tmp_path / "nyu"),
                                   "normals": str(tmp_path / "normals"), "normals_frame": frame}]}).sources[0]
    (item,) = nyu_reader.plan(src)
    members = encode_base(nyu_reader.read(src, item, 0, {}))
    view = view_from_base("nyu_00007", members, 48, "crop")  # 80x60 -> 64x48, 8 columns cut each side
    pair = surface_normal_estimation(view, np.random.default_rng(0), opts("surface_normal_estimation"))[0]
    target, raw = pair.target, pair.raw["target_raw"].astype(np.float32)
    # Source column c lands at output column 0.8 c - 8: black source columns 0..29 -> output 0..15.
    assert (target[:, :15] == 0).all(), target[:, :15].reshape(-1, 3).max(0)
    assert (raw[:, :15] == 0).all()
    # The valid part: wall ahead above (B high), floor below (G high), as encoded by hand.
    # (+-1: 8-bit (n+1)/2 has no exact 0, 128 is +0.004, which the opencv frame's flip makes 127.)
    assert np.abs(target[:20, 17:].astype(int) - rgb_of((0, 0, 1))).max() <= 1
    assert np.abs(target[28:, 17:].astype(int) - rgb_of((0, 1, 0))).max() <= 1
    assert np.allclose(raw[28:, 17:], (0, 1, 0), atol=0.01)


def test_nyu_normals_of_another_size_than_the_image_are_an_error_naming_the_file(tmp_path):
    from lavin_data.sources import nyu_reader
    from lavin_data.spec import parse_spec

    (tmp_path / "nyu").mkdir()
    (tmp_path / "normals").mkdir()
    cv2.imwrite(str(tmp_path / "nyu" / "rgb_00001.jpg"), np.zeros((60, 80, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "nyu" / "sync_depth_00001.png"), np.full((60, 80), 2000, np.uint16))
    cv2.imwrite(str(tmp_path / "normals" / "normal_00001.png"), np.full((30, 40, 3), 200, np.uint8))
    src = parse_spec({"name": "t", "output": str(tmp_path / "out"), "resolution": 48,
                      "tasks": [{"task": "surface_normal_estimation", "source": "nyu"}],
                      "sources": [{"name": "nyu", "kind": "nyu", "root": str(tmp_path / "nyu"),
                                   "normals": str(tmp_path / "normals")}]}).sources[0]
    (item,) = nyu_reader.plan(src)
    with pytest.raises(ValueError, match=r"normal_00001.png is 40x30, its image 80x60"):
        nyu_reader.read(src, item, 0, {})
