"""Depth and normals: NYU ingestion, image folders, and the label stage with tiny random
models loaded through the same path as real weights."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from lavin_data.base import encode_base
from lavin_data.codecs import decode_image
from lavin_data.geometry.camera import backproject, normals_from_depth
from lavin_data.render import decode_depth
from lavin_data.shards import index_path, iter_tar_samples
from lavin_data.spec import parse_spec
from pipelines.build import BuildError, build
from pipelines.layout import base_tar, label_tar, pair_tar
from tests.conftest import fixture_path

quiet = dict(echo=lambda *_: None)
NYU_INTR = (518.8579, 519.46961, 325.58245, 253.73617)


def nyu_source():
    root = fixture_path("nyu_v2")
    return {"name": "nyu", "kind": "nyu", "root": str(root), "annotations": str(root / "test_annotations.json")}


def test_normals_from_nyu_ground_truth_point_up_on_the_floor():
    for p in sorted(fixture_path("nyu_v2", "depth").glob("*.png")):
        depth = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        n, ok = normals_from_depth(depth, NYU_INTR)
        assert ok.mean() > 0.4
        assert np.allclose(np.linalg.norm(n[ok], axis=1), 1, atol=1e-4)
        floor = ok.copy()
        floor[: int(0.85 * len(floor))] = False  # the bottom band of these frames is floor
        assert np.median(n[floor][:, 1]) > 0.85, p.name  # y up
        pts = backproject(depth, NYU_INTR)
        assert ((n[ok] * -pts[ok]).sum(1) > 0).all()  # facing the camera


def test_normals_from_depth_on_an_exact_plane():
    # A floor plane 1.5 m below a level camera: depth = 1.5 * fy / (v - cy) below the horizon.
    h, w = 120, 160
    fx = fy = 100.0
    cx, cy = 79.5, 40.0
    v = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1)
    depth = np.where(v > cy + 2, 1.5 * fy / np.maximum(v - cy, 1e-3), 0).astype(np.float32)
    n, ok = normals_from_depth(depth, (fx, fy, cx, cy), window=3, max_rel_jump=0.2)
    assert ok[60:].mean() > 0.9
    assert np.allclose(n[ok], [0, 1, 0], atol=1e-3)


@pytest.fixture(scope="module")
def nyu_build(ray_session, tmp_path_factory):
    spec = parse_spec({
        "name": "nyu", "output": str(tmp_path_factory.mktemp("nyu")), "resolution": 256, "shard_size": 2,
        "sources": [nyu_source()],
        "labelers": [{"name": "geo", "kind": "normals_from_depth", "source": "nyu"}],
        "tasks": [{"task": "depth_estimation", "source": "nyu"}, {"task": "depth_to_image", "source": "nyu"},
                  {"task": "surface_normal_estimation", "source": "nyu", "labeler": "geo"},
                  {"task": "normal_to_image", "source": "nyu", "labeler": "geo"}],
    })
    return spec, build(spec, **quiet)


def test_nyu_depth_renderings_decode_to_ground_truth(nyu_build):
    spec, manifest = nyu_build
    assert all(v["nyu"] == 3 for v in manifest["counts"].values())
    n = 0
    for shard in (0, 1):
        for key, m in iter_tar_samples(pair_tar(spec.output, "depth_estimation", "nyu", shard)):
            gt = np.load(io.BytesIO(m["target_raw.npy"]))
            params = json.loads(m["json"])["params"]
            valid = (gt > 0) & (1 / np.maximum(gt, 1e-9) >= params["disparity_min"]) & \
                (1 / np.maximum(gt, 1e-9) <= params["disparity_max"])  # not clipped by the robust range
            disp = decode_depth(decode_image(m["target.png"]))[valid]
            a = np.stack([disp, np.ones_like(disp)], 1)
            coef, *_ = np.linalg.lstsq(a, 1.0 / gt[valid], rcond=None)
            pred = 1.0 / (a @ coef)
            abs_rel = float(np.mean(np.abs(pred - gt[valid]) / gt[valid]))
            assert abs_rel <= 0.01, (key, abs_rel)
            n += 1
    assert n == 3


def test_sidecars_have_the_base_keys_and_provenance(nyu_build):
    spec, _ = nyu_build
    for shard in (0, 1):
        base = {k for k, _ in iter_tar_samples(base_tar(spec.output, "nyu", shard))}
        side = dict(iter_tar_samples(label_tar(spec.output, "geo", "nyu", shard)))
        assert set(side) == base
        for _key, m in side.items():
            meta = json.loads(m["json"])
            assert meta["labeler"] == "geo" and meta["kind"] == "normals_from_depth"
            q = cv2.imdecode(np.frombuffer(m["normals.png"], np.uint8), cv2.IMREAD_UNCHANGED)
            assert q.dtype == np.uint16 and q.shape == (480, 640, 3)
        for _key, m in iter_tar_samples(pair_tar(spec.output, "surface_normal_estimation", "nyu", shard)):
            assert json.loads(m["json"])["labeler"]["labeler"] == "geo"


# --------------------------------------------------------------------------- image folders


def _awkward_images(root: Path) -> dict[str, tuple[int, int]]:
    """Write one image per awkward mode; returns name -> expected (h, w) after EXIF rotation."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "cls_a").mkdir(parents=True)
    (root / "cls_b").mkdir()
    rgb = rng.integers(0, 255, (40, 60, 3), np.uint8)
    Image.fromarray(rgb).save(root / "cls_a" / "plain.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(root / "cls_a" / "grey.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cls_a" / "cmyk.jpg")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(root / "cls_b" / "deep16.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "cls_b" / "palette.png")
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(root / "cls_b" / "rotated.jpg", exif=exif, quality=95)
    good = (root / "cls_a" / "plain.jpg").read_bytes()
    (root / "cls_b" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return {"plain": (40, 60), "grey": (40, 60), "cmyk": (40, 60), "deep16": (40, 60), "palette": (40, 60),
            "rotated": (60, 40)}


def test_image_folder_handles_awkward_images(ray_session, tmp_path):
    expect = _awkward_images(tmp_path / "imgs")
    spec = parse_spec({"name": "f", "output": str(tmp_path / "out"), "resolution": 64, "shard_size": 16,
                       "max_failure_fraction": 1.0,  # one file is broken on purpose
                       "sources": [{"name": "f", "kind": "image_folder", "root": str(tmp_path / "imgs")}],
                       "tasks": [{"task": "colorization", "source": "f"}]})
    build(spec, **quiet)
    base = dict(iter_tar_samples(base_tar(spec.output, "f", 0)))
    got = {}
    for _key, m in base.items():
        meta = json.loads(m["json"])
        img = decode_image(m.get("image.jpg") or m["image.png"])
        assert img.dtype == np.uint8 and img.ndim == 3
        got[Path(meta["file"]).stem] = img.shape[:2]
        assert meta["class_name"] in ("cls_a", "cls_b")
    assert got == expect
    assert "image.jpg" in base["f_cls-a-plain"] and "image.png" in base["f_cls-b-rotated"]  # original bytes kept
    idx = {r["key"]: r for r in pq.read_table(index_path(pair_tar(spec.output, "colorization", "f", 0))).to_pylist()}
    assert idx["f_cls-b-truncated"]["status"] == "error" and "truncated" in idx["f_cls-b-truncated"]["error"]
    assert sum(r["status"] == "ok" for r in idx.values()) == 6


def test_image_folder_limit_is_a_seeded_subset(tmp_path):
    from lavin_data.sources import image_folder_reader

    _awkward_images(tmp_path / "imgs")
    mk = lambda seed: parse_spec({"name": "f", "output": "/tmp/x", "tasks": [{"task": "colorization", "source": "f"}],  # noqa: E731
                                  "sources": [{"name": "f", "kind": "image_folder", "root": str(tmp_path / "imgs"),
                                               "limit": 3, "seed": seed}]}).sources[0]
    a, b = image_folder_reader.plan(mk(0)), image_folder_reader.plan(mk(0))
    assert a == b and len(a) == 3 and [i["path"] for i in a] == sorted(i["path"] for i in a)
    assert any(image_folder_reader.plan(mk(s)) != a for s in range(1, 6))


# --------------------------------------------------------------------------- Depth-Anything V2


def tiny_depth_anything(path: Path) -> Path:
    pytest.importorskip("transformers") if not _ci() else None
    from lavin_data.testing import tiny_depth_anything as build_it

    return build_it(path, "tiny")


def _ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() == "true"


@pytest.mark.slow
def test_depth_anything_and_normals_label_real_photos_end_to_end(ray_session, tmp_path):
    model = tiny_depth_anything(tmp_path / "da2-tiny")
    spec = parse_spec({
        "name": "p", "output": str(tmp_path / "out"), "resolution": 128, "shard_size": 2,
        "sources": [{"name": "photos", "kind": "image_folder", "root": str(fixture_path("photos"))}],
        "labelers": [{"name": "da2", "kind": "depth_anything_v2", "source": "photos", "model": str(model),
                      "batch_size": 2},
                     {"name": "geo", "kind": "normals_from_depth", "source": "photos", "depth_from": "da2"}],
        "tasks": [{"task": "depth_estimation", "source": "photos", "labeler": "da2"},
                  {"task": "depth_to_image", "source": "photos", "labeler": "da2"},
                  {"task": "surface_normal_estimation", "source": "photos", "labeler": "geo"},
                  {"task": "normal_to_image", "source": "photos", "labeler": "geo"}],
    })
    manifest = build(spec, **quiet)
    assert all(v["photos"] == 4 for v in manifest["counts"].values()), manifest["counts"]
    assert manifest["labels"] == {"da2": {"photos": 4}, "geo": {"photos": 4}}
    assert len(manifest["shards"]["labels"]) == 4
    for shard in (0, 1):
        base = dict(iter_tar_samples(base_tar(spec.output, "photos", shard)))
        side = dict(iter_tar_samples(label_tar(spec.output, "da2", "photos", shard)))
        assert set(side) == set(base) and len(side) == 2
        for key, m in side.items():
            meta = json.loads(m["json"])
            assert meta["model"] == str(model) and len(meta["weight_hash"]) == 16
            assert meta["depth_kind"] == "disparity" and meta["scale"] > 0
            q = cv2.imdecode(np.frombuffer(m["depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
            h, w = decode_image(base[key]["image.jpg"]).shape[:2]
            assert q.dtype == np.uint16 and q.shape == (h, w)
        for _key, m in iter_tar_samples(pair_tar(spec.output, "depth_estimation", "photos", shard)):
            meta = json.loads(m["json"])
            assert meta["labeler"]["labeler"] == "da2" and meta["params"]["depth_kind"] == "disparity"
            assert decode_image(m["target.png"]).shape == (128, 128, 3)


def test_labeler_without_weights_or_package_fails_before_any_work(tmp_path, monkeypatch):
    def spec_with(model):
        return parse_spec({
            "name": "p", "output": str(tmp_path / "out"),
            "sources": [{"name": "photos", "kind": "image_folder", "root": str(fixture_path("photos"))}],
            "labelers": [{"name": "da2", "kind": "depth_anything_v2", "source": "photos", "model": model}],
            "tasks": [{"task": "depth_estimation", "source": "photos", "labeler": "da2"}],
        })

    with pytest.raises(BuildError, match=r"no weights at .*nowhere.*hf download"):
        build(spec_with(str(tmp_path / "nowhere")), **quiet)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(BuildError, match=r"needs torch and transformers.*setup.sh dev,labelers"):
        build(spec_with(str(tmp_path / "nowhere")), **quiet)
    assert not (tmp_path / "out").exists()


def test_nyu_labeled_mat_is_read_untransposed(tmp_path):
    """The labeled .mat stores frames transposed (MATLAB order); a frame must come back (H, W)."""
    import h5py

    from lavin_data.base import view_from_base
    from lavin_data.sources import nyu_reader

    rng = np.random.default_rng(0)
    h, w, n = 48, 64, 3
    images = rng.integers(0, 255, (n, h, w, 3), np.uint8)
    depths = rng.uniform(0.5, 9.0, (n, h, w)).astype(np.float32)
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # (N, 3, W, H), as in the official file
        f["depths"] = depths.transpose(0, 2, 1)  # (N, W, H)
    (tmp_path / "test.txt").write_text("2\n3\n")
    src = parse_spec({"name": "m", "output": "/tmp/x", "tasks": [{"task": "depth_estimation", "source": "nyu"}],
                      "sources": [{"name": "nyu", "kind": "nyu", "root": str(tmp_path / "nyu_depth_v2_labeled.mat"),
                                   "split_file": str(tmp_path / "test.txt")}]}).sources[0]
    nyu_reader.check(src)
    items = nyu_reader.plan(src)
    assert [i["item_id"] for i in items] == ["00002", "00003"]
    members = encode_base(nyu_reader.read(src, items[0], 0, {}))
    view = view_from_base("nyu_00002", members, 64, "squash")
    meta = json.loads(members["json"])
    assert (meta["width"], meta["height"]) == (w, h)
    assert np.array_equal(decode_image(members["image.png"]), images[1])
    assert np.array_equal(np.load(io.BytesIO(members["depth.npy"])), depths[1])
    assert view.depth.shape == (64, 64)
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, not hdf5")
    from lavin_data.sources import SourceError

    with pytest.raises(SourceError, match="bad.mat: not an HDF5"):
        nyu_reader.check(src.model_copy(update={"root": str(tmp_path / "bad.mat")}))


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hf_dataset_source(ray_session, tmp_path, layout):
    import datasets
    from PIL import Image

    photos = sorted(fixture_path("photos").glob("*.jpg"))
    imgs = [Image.open(p).reduce(8) for p in photos] + [Image.fromarray(np.zeros((20, 30), np.uint8))]  # + greyscale
    ds = datasets.Dataset.from_dict({"img": imgs, "label": list(range(len(imgs)))}).cast_column("img", datasets.Image())
    if layout == "save_to_disk":
        datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ds"))
    else:
        (tmp_path / "ds").mkdir()
        ds.to_parquet(str(tmp_path / "ds" / "part-0.parquet"))
    spec = parse_spec({"name": "h", "output": str(tmp_path / "out"), "resolution": 64,
                       "sources": [{"name": "hf", "kind": "hf_dataset", "path": str(tmp_path / "ds"),
                                    "image_column": "img", "limit": 4, "seed": 1}],
                       "tasks": [{"task": "colorization", "source": "hf"}]})
    manifest = build(spec, **quiet)
    # The all-black greyscale image is among the 4 drawn: its colorization target is black, skipped.
    assert manifest["counts"]["colorization"]["hf"] == 3
    assert manifest["reasons"]["colorization"]["hf"] == {"error": {}, "skipped": {"target_coverage": 1}}
    for _key, m in iter_tar_samples(pair_tar(spec.output, "colorization", "hf", 0)):
        assert decode_image(m["target.png"]).shape == (64, 64, 3)
    bad = parse_spec({"name": "h", "output": str(tmp_path / "o2"), "tasks": [{"task": "colorization", "source": "hf"}],
                      "sources": [{"name": "hf", "kind": "hf_dataset", "path": str(tmp_path / "ds"),
                                   "image_column": "picture"}]})
    with pytest.raises(BuildError, match="no column 'picture'"):
        build(bad, **quiet)


@pytest.mark.slow
def test_marigold_normals_label_real_photos_end_to_end(ray_session, tmp_path):
    pytest.importorskip("diffusers") if not _ci() else None
    from lavin_data.testing import tiny_marigold_normals

    model = tiny_marigold_normals(tmp_path / "marigold-tiny")
    spec = parse_spec({
        "name": "m", "output": str(tmp_path / "out"), "resolution": 64, "shard_size": 4,
        "sources": [{"name": "photos", "kind": "image_folder", "root": str(fixture_path("photos")), "limit": 2}],
        "labelers": [{"name": "mari", "kind": "marigold_normals", "source": "photos", "model": str(model),
                      "batch_size": 2, "denoising_steps": 1}],
        "tasks": [{"task": "surface_normal_estimation", "source": "photos", "labeler": "mari"},
                  {"task": "normal_to_image", "source": "photos", "labeler": "mari"}],
    })
    manifest = build(spec, **quiet)
    assert manifest["counts"]["surface_normal_estimation"]["photos"] == 2
    base = dict(iter_tar_samples(base_tar(spec.output, "photos", 0)))
    side = dict(iter_tar_samples(label_tar(spec.output, "mari", "photos", 0)))
    assert set(side) == set(base)
    for key, m in side.items():
        meta = json.loads(m["json"])
        assert meta["kind"] == "marigold_normals" and meta["model"] == str(model) and meta["weight_hash"]
        q = cv2.imdecode(np.frombuffer(m["normals.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert q.dtype == np.uint16 and q.shape == decode_image(base[key]["image.jpg"]).shape
        n = q.astype(np.float32) / 32767.5 - 1
        assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-3)
    # Seeded noise: labelling the same shard again gives the same bytes.
    first = label_tar(spec.output, "mari", "photos", 0).read_bytes()
    from lavin_data.shards import stats_path

    stats_path(label_tar(spec.output, "mari", "photos", 0)).unlink()
    build(spec, **quiet)
    assert label_tar(spec.output, "mari", "photos", 0).read_bytes() == first


def test_nyu_folder_split_file_and_ground_truth_normals(tmp_path):
    """BTS-style split lists select frames; a GT normals folder (RGB = (n+1)/2) is read into
    the base sample in our frame (opencv-frame files are converted)."""
    from lavin_data.render import render_normals
    from lavin_data.sources import nyu_reader

    root = fixture_path("nyu_v2")
    depth = cv2.imread(str(root / "depth" / "sync_depth_00050.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000
    n, _ok = normals_from_depth(depth, NYU_INTR)
    (tmp_path / "normals").mkdir()
    cv2.imwrite(str(tmp_path / "normals" / "normal_00050.png"), cv2.cvtColor(render_normals(n), cv2.COLOR_RGB2BGR))
    opencv = n * np.array([1, -1, -1], np.float32)
    (tmp_path / "normals_cv").mkdir()
    cv2.imwrite(str(tmp_path / "normals_cv" / "normal_00050.png"),
                cv2.cvtColor(render_normals(opencv, np.linalg.norm(n, axis=-1) > 0.5), cv2.COLOR_RGB2BGR))
    (tmp_path / "split.txt").write_text("rgb/rgb_00050.jpg depth/sync_depth_00050.png 518.8579\n")
    for folder, frame in (("normals", "x_right_y_up_z_camera"), ("normals_cv", "opencv")):
        src = parse_spec({"name": "s", "output": "/tmp/x", "tasks": [{"task": "depth_estimation", "source": "nyu"}],
                          "sources": [{"name": "nyu", "kind": "nyu", "root": str(root),
                                       "split_file": str(tmp_path / "split.txt"),
                                       "normals": str(tmp_path / folder), "normals_frame": frame}]}).sources[0]
        items = nyu_reader.plan(src)
        assert [i["item_id"] for i in items] == ["00050"]
        members = encode_base(nyu_reader.read(src, items[0], 0, {}))
        got = np.load(io.BytesIO(members["normals.npy"])).astype(np.float32)
        valid = np.linalg.norm(n, axis=-1) > 0.5
        cos = (got[valid] * n[valid]).sum(-1)
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).mean() < 1.0, frame


def test_marigold_without_weights_says_where_to_put_them(tmp_path):
    spec = parse_spec({
        "name": "s", "output": str(tmp_path / "out"),
        "sources": [{"name": "photos", "kind": "image_folder", "root": str(fixture_path("photos"))}],
        "labelers": [{"name": "mari", "kind": "marigold_normals", "source": "photos", "model": str(tmp_path / "m")}],
        "tasks": [{"task": "surface_normal_estimation", "source": "photos", "labeler": "mari"}],
    })
    with pytest.raises(BuildError, match=r"no Marigold pipeline at .*model_index.json missing.*hf download"):
        build(spec, **quiet)
    assert not (tmp_path / "out").exists()


def test_task_and_labeler_outputs_must_match(tmp_path):
    spec = parse_spec({
        "name": "s", "output": str(tmp_path / "out"), "sources": [nyu_source()],
        "labelers": [{"name": "geo", "kind": "normals_from_depth", "source": "nyu"}],
        "tasks": [{"task": "depth_estimation", "source": "nyu", "labeler": "geo"},
                  {"task": "colorization", "source": "nyu", "labeler": "geo"}],
    })
    with pytest.raises(BuildError) as e:
        build(spec, **quiet)
    assert "task 'depth_estimation' needs depth, but labeler 'geo' (normals_from_depth) gives normals" in str(e.value)
    assert "task 'colorization' does not use labels" in str(e.value)


def test_nyu_invalid_ground_truth_normals_stay_invalid_and_render_black(tmp_path):
    """Black pixels of a GT normal map are invalid: the base sample keeps them 0 and the
    surface-normal target renders them black (they once became (-1,-1,-1)/sqrt(3), grey)."""
    from lavin_data.base import view_from_base
    from lavin_data.registry import TASKS
    from lavin_data.render import render_normals
    from lavin_data.sources import nyu_reader

    root = fixture_path("nyu_v2")
    depth = cv2.imread(str(root / "depth" / "sync_depth_00050.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000
    n, ok = normals_from_depth(depth, NYU_INTR)
    ok[100:200, 300:420] = False  # plus a hole of our own, wherever the depth is valid
    n[~ok] = 0
    (tmp_path / "normals").mkdir()
    cv2.imwrite(str(tmp_path / "normals" / "normal_00050.png"), cv2.cvtColor(render_normals(n), cv2.COLOR_RGB2BGR))
    src = parse_spec({"name": "s", "output": "/tmp/x", "tasks": [{"task": "depth_estimation", "source": "nyu"}],
                      "sources": [{"name": "nyu", "kind": "nyu", "root": str(root),
                                   "normals": str(tmp_path / "normals")}]}).sources[0]
    item = next(i for i in nyu_reader.plan(src) if i["item_id"] == "00050")
    members = encode_base(nyu_reader.read(src, item, 0, {}))
    got = np.load(io.BytesIO(members["normals.npy"])).astype(np.float32)
    assert (~ok).sum() > 20000
    assert np.array_equal(got[~ok], np.zeros(((~ok).sum(), 3), np.float32))
    assert np.allclose(np.linalg.norm(got[ok], axis=-1), 1, atol=2e-3)
    # The rendered target: black exactly where the GT is invalid (nearest-neighbour squash).
    view = view_from_base("nyu_00050", members, 240, "squash")
    pair = TASKS["surface_normal_estimation"].render_fn()(view, None, TASKS["surface_normal_estimation"].options()
                                                          .model_dump())[0]
    invalid_out = cv2.resize((~ok).astype(np.uint8), (240, 240), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    assert (pair.target[invalid_out] == 0).all()
    assert (pair.target[~invalid_out].max(axis=-1) > 0).all()


def test_synthetic_intrinsics_back_project_to_the_synthetic_normals():
    """One pixel-centre convention (OpenCV: centres at integers, cx = (W-1)/2): normals from
    the synthetic source's depth and the intrinsics it records agree with its exact normals
    on the floor and wall to 0.05 deg (with cx = W/2 they were 0.09-0.1 deg off everywhere)."""
    from lavin_data.geometry import intrinsics_from_fov
    from lavin_data.labelers import LabelInput
    from lavin_data.labelers.normals_from_depth import NormalsFromDepth
    from lavin_data.sources import synthetic_reader

    assert intrinsics_from_fov(320, 240, 60.0)[2:] == (159.5, 119.5)
    spec = parse_spec({"name": "s", "output": "/tmp/x", "tasks": [{"task": "depth_estimation", "source": "syn"}],
                       "labelers": [{"name": "geo", "kind": "normals_from_depth", "source": "syn"}],
                       "sources": [{"name": "syn", "kind": "synthetic", "num_items": 3}]})
    src, labeler = spec.sources[0], NormalsFromDepth(spec.labelers[0])
    for item in synthetic_reader.plan(src):
        s = synthetic_reader.read(src, item, 0, {})
        n = labeler.label([LabelInput(s.image, s.depth, "depth", s.meta["intrinsics"])])[0]
        interior = np.zeros(s.segments.shape, bool)
        for sid in (1, 2):  # floor and wall: planes, away from their borders
            interior |= cv2.erode((s.segments == sid).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        sel = interior & (np.linalg.norm(n, axis=-1) > 0)
        assert sel.sum() > 30000
        err = np.degrees(np.arccos(np.clip((n[sel] * s.normals[sel]).sum(-1), -1, 1)))
        assert err.max() < 0.05, (item, err.max())
