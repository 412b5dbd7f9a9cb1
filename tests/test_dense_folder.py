"""``kind: dense_folder``: images with depth and/or normals ground truth in parallel folders.

Every file here is written by the test, with values whose meaning is known (millimetres,
KITTI's /256, normals of planes whose orientation is known), and compared with what the
reader stores in the base sample."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavin_data.base import encode_base
from lavin_data.shards import index_path, iter_tar_samples
from lavin_data.sources import SourceError, reader_for
from lavin_data.sources import dense_folder_reader as dense
from lavin_data.spec import SpecError, parse_spec
from tests.conftest import fixture_path

quiet = dict(echo=lambda *_: None)


def make_source(tmp_path: Path, task: str = "depth_estimation", **fields):
    spec = parse_spec({"name": "t", "output": str(tmp_path / "out"), "resolution": 64, "resize": "squash",
                       "shard_size": 4, "tasks": [{"task": task, "source": "dense"}],
                       "sources": [dict({"name": "dense", "kind": "dense_folder"}, **fields)]})
    return spec, spec.sources[0]


def write_rgb(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def write_png16(path: Path, raw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), raw)


def read_one(src, item_id: str | None = None):
    items = dense.plan(src)
    item = items[0] if item_id is None else next(i for i in items if i["item_id"] == item_id)
    members = encode_base(dense.read(src, item, 0, {}))
    return members, json.loads(members["json"])


def npy(members: dict, name: str) -> np.ndarray:
    return np.load(io.BytesIO(members[name]), allow_pickle=False)


# --------------------------------------------------------------------------- depth


def kinect_depth(h: int, w: int) -> tuple[np.ndarray, dict]:
    """uint16 millimetres: a room at 0.6-7.5 m, 0 holes, near-sensor outliers of 40-100 mm,
    and readings at / beyond the 8 m far limit."""
    rng = np.random.default_rng(1)
    raw = rng.integers(600, 7500, (h, w)).astype(np.uint16)
    holes = rng.random((h, w)) < 0.1
    outliers = ~holes & (rng.random((h, w)) < 0.05)
    far = ~holes & ~outliers & (rng.random((h, w)) < 0.05)
    raw[holes] = 0
    raw[outliers] = rng.integers(40, 101, outliers.sum())
    raw[far] = rng.choice([8000, 8001, 9500, 65535], far.sum())
    raw[0, 0], raw[0, 1] = 500, 499  # the near limit itself is a valid reading; just under it is not
    return raw, dict(holes=holes, outliers=outliers, far=far)


def test_kinect_millimetres_near_outliers_invalid_far_saturation_valid(tmp_path):
    h, w = 24, 32
    write_rgb(tmp_path / "images" / "a" / "f001.png", h, w)
    raw, where = kinect_depth(h, w)
    write_png16(tmp_path / "depth" / "a" / "f001.png", raw)
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"),
                         depth_scale=1000, depth_range=(0.5, 8.0), intrinsics=(30.0, 30.0, 15.5, 11.5))
    dense.check(src)
    assert dense.provides(src) == {"depth"} and dense.frames(src) == "image"
    members, meta = read_one(src)
    got = npy(members, "depth.npy")
    assert got.dtype == np.float32 and got.shape == (h, w)

    metres = raw.astype(np.float64) / 1000
    expected = np.where(metres < 0.5, 0.0, np.minimum(metres, 8.0)).astype(np.float32)
    assert np.array_equal(got, expected)
    assert where["outliers"].sum() > 10 and (got[where["outliers"]] == 0).all()
    assert (got[where["holes"]] == 0).all()
    # Saturated at the far limit: valid, at the limit (not 0, not 65.535 m).
    assert where["far"].sum() > 10 and (got[where["far"]] == np.float32(8.0)).all()
    assert got[0, 0] == np.float32(0.5) and got[0, 1] == 0
    assert meta["depth_kind"] == "depth" and meta["depth_unit"] == "m" and meta["intrinsics"] == [30, 30, 15.5, 11.5]
    assert meta["depth_file"] == "a/f001.png" and meta["item_id"] == "a-f001"

    # Without a range every nonzero reading is kept as it is.
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"), depth_scale=1000)
    members, meta = read_one(src)
    assert np.array_equal(npy(members, "depth.npy"), (raw.astype(np.float64) / 1000).astype(np.float32))
    assert "intrinsics" not in meta


def test_kitti_sparse_depth_over_256_and_npy_depth(tmp_path):
    h, w = 20, 40
    rng = np.random.default_rng(2)
    metres = rng.uniform(2, 80, (h, w))
    raw = np.where(rng.random((h, w)) < 0.06, np.rint(metres * 256), 0).astype(np.uint16)  # ~6 % LiDAR hits
    sub = Path("2011_09_26_drive_0001_sync") / "image_02"
    write_rgb(tmp_path / "images" / sub / "0000000005.png", h, w)
    write_rgb(tmp_path / "images" / sub / "0000000006.png", h, w, seed=1)
    write_png16(tmp_path / "depth" / sub / "0000000005.png", raw)
    as_npy = rng.uniform(0.5, 20, (h, w, 1)).astype(np.float32)
    as_npy[3, 4] = np.nan
    as_npy[5, 6] = -1.0
    np.save(tmp_path / "depth" / sub / "0000000006.npy", as_npy)
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"), depth_scale=256)
    assert [i["item_id"] for i in dense.plan(src)] == ["2011-09-26-drive-0001-sync-image-02-0000000005",
                                                       "2011-09-26-drive-0001-sync-image-02-0000000006"]
    members, _ = read_one(src)
    got = npy(members, "depth.npy")
    assert 0.03 < (got > 0).mean() < 0.1
    assert np.array_equal(got, raw.astype(np.float64) / 256)  # /256 is exact in float32

    # .npy depth is divided by depth_scale too; NaN and negative values become invalid.
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"), depth_scale=1)
    members, meta = read_one(src, "2011-09-26-drive-0001-sync-image-02-0000000006")
    got = npy(members, "depth.npy")
    expected = as_npy[..., 0].copy()
    expected[3, 4] = expected[5, 6] = 0
    assert np.array_equal(got, expected) and meta["depth_file"].endswith("0000000006.npy")


def test_nyu_fixture_through_dense_folder_matches_the_nyu_reader():
    from lavin_data.sources import nyu_reader

    root = fixture_path("nyu_v2")
    _, src = make_source(Path("/tmp/unused"), images=str(root / "rgb"), image_name="rgb_{key}",
                         depth=str(root / "depth"), depth_name="sync_depth_{key}", depth_scale=1000)
    nyu = parse_spec({"name": "t", "output": "/tmp/unused", "tasks": [{"task": "depth_estimation", "source": "nyu"}],
                      "sources": [{"name": "nyu", "kind": "nyu", "root": str(root)}]}).sources[0]
    items = dense.plan(src)
    assert [i["item_id"] for i in items] == ["00000", "00050", "00100"]
    nyu_items = {i["item_id"]: i for i in nyu_reader.plan(nyu)}
    for item in items:
        ours = encode_base(dense.read(src, item, 0, {}))
        theirs = encode_base(nyu_reader.read(nyu, nyu_items[item["item_id"]], 0, {}))
        assert np.array_equal(npy(ours, "depth.npy"), npy(theirs, "depth.npy"))
        assert ours["image.jpg"] == theirs["image.jpg"]  # the JPEG is kept byte for byte by both
        # And against a decoder of our own (PIL, not OpenCV): millimetres / 1000.
        mm = np.asarray(Image.open(root / "depth" / f"sync_depth_{item['item_id']}.png"), dtype=np.float64)
        assert np.array_equal(npy(ours, "depth.npy"), (mm / 1000).astype(np.float32))
        assert (mm == 0).any() and (mm > 0).mean() > 0.5


def test_missing_depth_file_is_a_recorded_failure_naming_it(tmp_path):
    from pipelines.stages import ingest_shard

    for stem in ("x1", "x2", "x3"):
        write_rgb(tmp_path / "images" / f"{stem}.jpg", 8, 8)
    for stem in ("x1", "x3"):
        write_png16(tmp_path / "depth" / f"{stem}.png", np.full((8, 8), 1234, np.uint16))
    spec, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"),
                            depth_scale=1000)
    items = dense.plan(src)
    with pytest.raises(FileNotFoundError, match=r"depth file missing: .*depth/x2\.png"):
        dense.read(src, items[1], 0, {})
    st = ingest_shard(spec, "dense", 0, items)
    assert st["n_ok"] == 2 and st["n_error"] == 1
    from pipelines.layout import base_tar

    tar = base_tar(spec.output, "dense", 0)
    idx = {r["key"]: r for r in pq.read_table(index_path(tar)).to_pylist()}
    assert idx["dense_x2"]["status"] == "error"
    assert str(tmp_path / "depth" / "x2.png") in idx["dense_x2"]["error"]
    assert {k for k, _ in iter_tar_samples(tar)} == {"dense_x1", "dense_x3"}


# --------------------------------------------------------------------------- normals

# Planes whose normals (our frame: x right, y up, z towards the camera) are known.
FACING_CAMERA = (0.0, 0.0, 1.0)
FLOOR = (0.0, 1.0, 0.0)  # seen from above: its normal points up
RIGHT_WALL = (-1.0, 0.0, 0.0)  # a wall on the right faces left
TILTED = (0.6, 0.0, 0.8)  # turned towards the right, still facing the camera
CEILING_TILTED = (0.0, -0.6, 0.8)


def known_normals(h: int, w: int, block: int = 1) -> np.ndarray:
    """(h, w, 3) float64 in our frame: one known normal per region, a black (invalid) region."""
    n = np.zeros((h, w, 3))
    hb, wb = h // block, w // block
    grid = np.zeros((hb, wb, 3))
    grid[: hb // 2, : wb // 3] = FACING_CAMERA
    grid[: hb // 2, wb // 3: 2 * wb // 3] = TILTED
    grid[: hb // 2, 2 * wb // 3:] = RIGHT_WALL
    grid[hb // 2:, : wb // 2] = FLOOR
    grid[hb // 2:, wb // 2: 3 * wb // 4] = CEILING_TILTED
    # grid[hb // 2:, 3 * wb // 4:] stays 0: invalid
    n[:] = np.repeat(np.repeat(grid, block, axis=0), block, axis=1)
    return n


def encode_unit(v: np.ndarray, bits: int) -> np.ndarray:
    """(n+1)/2 in 8 or 16 bits; zero vectors (invalid) are written black."""
    top = 255 if bits == 8 else 65535
    out = np.rint((v + 1) / 2 * top)
    out[np.linalg.norm(v, axis=-1) == 0] = 0
    return out.astype(np.uint8 if bits == 8 else np.uint16)


@pytest.mark.parametrize("bits", [8, 16])
def test_normals_bgr_opencv_frame_decode_to_our_frame(tmp_path, bits):
    """An OpenCV-written file (cv2.imwrite of an x, y, z array: x lands in B) in the OpenCV
    camera frame (y down, z forward) decodes to the planes' normals in ours."""
    h, w = 12, 24
    truth = known_normals(h, w)
    opencv_frame = truth * np.array([1, -1, -1])
    write_rgb(tmp_path / "images" / "0007.png", h, w)
    (tmp_path / "normals").mkdir()
    assert cv2.imwrite(str(tmp_path / "normals" / "0007_normal.png"), encode_unit(opencv_frame, bits))
    _, src = make_source(tmp_path, "surface_normal_estimation", images=str(tmp_path / "images"),
                         normals=str(tmp_path / "normals"), normals_name="{key}_normal",
                         normals_channels="bgr", normals_frame="opencv")
    assert dense.provides(src) == {"normals"}
    members, meta = read_one(src)
    assert "depth.npy" not in members and meta["normals_file"] == "0007_normal.png"
    got = npy(members, "normals.npy").astype(np.float64)
    valid = np.linalg.norm(truth, axis=-1) > 0
    atol = 0.01 if bits == 8 else 2e-3  # 8-bit quantisation; float16 storage
    assert np.allclose(got[valid], truth[valid], atol=atol)
    assert (got[~valid] == 0).all() and (~valid).sum() > 10
    assert np.allclose(got[0, 0], FACING_CAMERA, atol=atol) and np.allclose(got[-1, 0], FLOOR, atol=atol)


def test_normals_rgb_in_our_frame_written_by_pil(tmp_path):
    h, w = 12, 24
    truth = known_normals(h, w)
    write_rgb(tmp_path / "images" / "s" / "0001.jpg", h, w)
    (tmp_path / "normals" / "s").mkdir(parents=True)
    Image.fromarray(encode_unit(truth, 8)).save(tmp_path / "normals" / "s" / "0001.png")  # x in R
    _, src = make_source(tmp_path, "surface_normal_estimation", images=str(tmp_path / "images"),
                         normals=str(tmp_path / "normals"))
    members, _ = read_one(src)
    got = npy(members, "normals.npy").astype(np.float64)
    valid = np.linalg.norm(truth, axis=-1) > 0
    assert np.allclose(got[valid], truth[valid], atol=0.01) and (got[~valid] == 0).all()


def test_normals_only_source_builds_surface_normal_pairs(ray_session, tmp_path):
    """A source with normals and no depth: the build accepts the normal tasks, and the
    surface-normal target_raw is the written normals at the squashed pixels."""
    from pipelines.build import build
    from pipelines.layout import pair_tar

    side = 128
    truths = {}
    for i in range(3):
        truth = known_normals(side, side, block=2)  # 2x2 blocks: any nearest pixel of a block is the same
        truth = np.roll(truth, 10 * i, axis=1)  # a different picture per item (rolled by whole blocks)
        truths[f"img{i}"] = truth
        write_rgb(tmp_path / "images" / f"img{i}.png", side, side, seed=i)
        (tmp_path / "normals").mkdir(exist_ok=True)
        # 16-bit RGB (PIL cannot write it): OpenCV writes channel 0 into B, so z, y, x puts x in R.
        assert cv2.imwrite(str(tmp_path / "normals" / f"img{i}.png"), encode_unit(truth, 16)[..., ::-1])
    spec = parse_spec({
        "name": "t", "output": str(tmp_path / "out"), "resolution": 64, "resize": "squash", "shard_size": 2,
        "sources": [{"name": "dense", "kind": "dense_folder", "images": str(tmp_path / "images"),
                     "normals": str(tmp_path / "normals")}],
        "tasks": [{"task": "surface_normal_estimation", "source": "dense"},
                  {"task": "normal_to_image", "source": "dense"}]})
    assert reader_for("dense_folder").provides(spec.sources[0]) == {"normals"}
    manifest = build(spec, **quiet)
    assert manifest["counts"]["surface_normal_estimation"]["dense"] == 3
    assert manifest["counts"]["normal_to_image"]["dense"] == 3
    seen = set()
    for shard in (0, 1):
        for key, m in iter_tar_samples(pair_tar(spec.output, "surface_normal_estimation", "dense", shard)):
            raw = np.load(io.BytesIO(m["target_raw.npy"])).astype(np.float64)
            expected = truths[key.removeprefix("dense_")][::2, ::2]
            assert raw.shape == (64, 64, 3)
            assert np.allclose(raw, expected, atol=2e-3), key
            seen.add(key)
    assert seen == {"dense_img0", "dense_img1", "dense_img2"}


# --------------------------------------------------------------------------- refusals


def test_spec_needs_depth_or_normals_and_a_scale_for_depth(tmp_path):
    with pytest.raises(SpecError, match="at least one of depth, normals"):
        make_source(tmp_path, images="/x")
    with pytest.raises(SpecError, match="depth needs depth_scale"):
        make_source(tmp_path, images="/x", depth="/y")
    with pytest.raises(SpecError, match="depth_range is in metres"):
        make_source(tmp_path, images="/x", depth="/y", depth_scale=1, depth_kind="disparity", depth_range=(0.1, 5))
    with pytest.raises(SpecError, match="need 0 <= min < max"):
        make_source(tmp_path, images="/x", depth="/y", depth_scale=1, depth_range=(5, 1))
    with pytest.raises(SpecError, match=r"\{key\} exactly once"):
        make_source(tmp_path, images="/x", depth="/y", depth_scale=1, depth_name="depth")
    with pytest.raises(SpecError, match="no folders"):
        make_source(tmp_path, images="/x", depth="/y", depth_scale=1, depth_name="../{key}")


def test_zero_images_names_the_source_folder_and_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("x")
    write_rgb(tmp_path / "images" / "depth_0001.png", 4, 4)  # not matching image_name rgb_{key}
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), image_name="rgb_{key}",
                         normals=str(tmp_path / "images"))
    dense.check(src)
    with pytest.raises(SourceError) as e:
        dense.plan(src)
    msg = str(e.value)
    assert "'dense'" in msg and str(tmp_path / "images") in msg and "rgb_{key}.jpg" in msg
    assert dense.LAYOUT in msg and "<depth>/<sub>/<depth_name>.png|.npy" in dense.LAYOUT


def test_check_refuses_missing_folders_and_an_image_that_is_its_own_depth(tmp_path):
    (tmp_path / "images").mkdir()
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "nope"), depth_scale=1000)
    with pytest.raises(SourceError, match="nope: depth folder not found"):
        dense.check(src)
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "images"), depth_scale=1000)
    with pytest.raises(SourceError, match="its own depth file"):
        dense.check(src)
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), image_name="rgb_{key}",
                         depth=str(tmp_path / "images"), depth_name="depth_{key}", depth_scale=1000)
    dense.check(src)


def test_oversized_ground_truth_is_refused_before_decoding_and_sizes_must_match(tmp_path, monkeypatch):
    write_rgb(tmp_path / "images" / "a.png", 8, 8)
    write_png16(tmp_path / "depth" / "a.png", np.ones((40, 40), np.uint16))
    (tmp_path / "normals").mkdir()
    assert cv2.imwrite(str(tmp_path / "normals" / "a.png"), np.full((40, 40, 3), 200, np.uint8))
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"),
                         depth_scale=1000, max_image_pixels=100)
    item = dense.plan(src)[0]
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    with pytest.raises(ValueError, match=r"depth file .*depth/a\.png: image is 40x40 = 1600 pixels, over "
                                         r"max_image_pixels 100"):
        dense.read(src, item, 0, {})
    assert decoded == []
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), normals=str(tmp_path / "normals"),
                         max_image_pixels=100)
    with pytest.raises(ValueError, match=r"normals file .*normals/a\.png: image is 40x40"):
        dense.read(src, dense.plan(src)[0], 0, {})
    assert decoded == []
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"), depth_scale=1000)
    with pytest.raises(ValueError, match=r"depth file .*a\.png is 40x40, its image .*a\.png 8x8"):
        dense.read(src, item, 0, {})


def test_paths_from_the_plan_stay_inside_their_folders(tmp_path):
    write_rgb(tmp_path / "images" / "a.png", 8, 8)
    write_png16(tmp_path / "depth" / "a.png", np.ones((8, 8), np.uint16))
    write_png16(tmp_path / "secret.png", np.ones((8, 8), np.uint16))
    _, src = make_source(tmp_path, images=str(tmp_path / "images"), depth=str(tmp_path / "depth"), depth_scale=1000)
    item = dense.plan(src)[0]
    with pytest.raises(ValueError, match="must be relative to"):
        dense.read(src, dict(item, depth="../secret"), 0, {})
    with pytest.raises(ValueError, match="must be relative to"):
        dense.read(src, dict(item, image="../secret.png"), 0, {})


def test_depth_and_normals_files_beside_or_below_the_images_are_not_planned_as_images(tmp_path):
    """A depth folder inside the image folder, or depth PNGs beside the images under another
    name, are never images themselves (they would fail as 'depth file missing')."""
    root = tmp_path / "scene"
    for i in range(2):
        write_rgb(root / f"{i:03d}.png", 8, 8, seed=i)
        write_png16(root / "depth" / f"{i:03d}.png", np.full((8, 8), 1000, np.uint16))
        write_png16(root / f"n_{i:03d}.png", np.full((8, 8, 3), 40000, np.uint16))
    _, src = make_source(tmp_path, images=str(root), depth=str(root / "depth"), depth_scale=1000,
                         normals=str(root), normals_name="n_{key}")
    assert [(i["item_id"], i["image"]) for i in dense.plan(src)] == [("000", "000.png"), ("001", "001.png")]
