"""Video in the pixel build: clip pairs readable by webdataset / Ray / HF datasets, synthetic
clips whose renderings decode to the exact ground truth, and a build over the real fixture
videos, DAVIS and flow ground truth that writes every video task frame-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from lavin_data.codecs import decode_flo, decode_image, decode_npy
from lavin_data.geometry import plan_resize
from lavin_data.render import angular_error_deg, decode_depth, decode_normals, decode_tracks
from lavin_data.render.flow import decode_flow, end_point_error
from lavin_data.shards import index_path, iter_tar_samples
from lavin_data.spec import parse_spec
from pipelines.build import QualityError, build
from pipelines.layout import base_tar, pair_tar
from tests.conftest import fixture_path

quiet = dict(echo=lambda *_: None)


def frames_of(m: dict, meta: dict, role: str) -> np.ndarray:
    return np.stack([decode_image(m[n], n) for n in meta[role]])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


# --------------------------------------------------------------------------- readers


def test_clip_pairs_read_with_webdataset_ray_and_hf_datasets(demo_build, tmp_path):
    import ray
    import webdataset as wds
    from datasets import load_dataset

    spec, _ = demo_build
    url = str(pair_tar(spec.output, "video_depth", "synthetic-video", 0))
    samples = list(wds.WebDataset(url, shardshuffle=False).decode("rgb8"))
    assert len(samples) == 4
    s = samples[0]
    assert [s[f"input_{t:03d}.jpg"].shape for t in range(9)] == [(256, 256, 3)] * 9
    assert s["target_008.png"].dtype == np.uint8 and s["target_raw.npy"].shape == (9, 256, 256)
    assert s["json"]["frame_indices"] == list(range(9))
    rows = ray.data.read_webdataset([url]).take_all()
    assert len(rows) == 4 and np.asarray(rows[0]["target_004.png"]).shape == (256, 256, 3)
    ds = load_dataset("webdataset", data_files={"train": [url]}, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 4 and np.asarray(ds[0]["input_000.jpg"]).shape == (256, 256, 3)
    assert ds[0]["json"]["task"] == "video_depth"
    # Video-frame targets are JPEG members, read alike.
    url = str(pair_tar(spec.output, "frame_prediction", "synthetic-video", 0))
    s = next(iter(wds.WebDataset(url, shardshuffle=False).decode("rgb8")))
    assert s["target_000.jpg"].shape == (256, 256, 3) and s["json"]["target_format"] == "jpeg q95 4:4:4"
    assert np.asarray(ray.data.read_webdataset([url]).take(1)[0]["target_004.jpg"]).shape == (256, 256, 3)


# --------------------------------------------------------------------------- synthetic clips


def ground_truth(spec, key: str):
    """The clip straight from the ray-caster, brought to the output size independently."""
    from lavin_data.sources import synthetic_reader

    src = spec.source("synthetic-video")
    s = synthetic_reader.read(src, {"item_id": key.rsplit("_", 1)[1]}, spec.seed, {})
    rz = plan_resize(s.frames.shape[2], s.frames.shape[1], spec.resolution, spec.resize)
    near = lambda a: np.stack([rz.image(x, "nearest") for x in a])  # noqa: E731
    flow = near(s.flow) * np.array([rz.sx, rz.sy], np.float32)
    depth, normals = near(s.depth.astype(np.float32)), near(s.normals.astype(np.float32))
    return s, depth, normals, flow, near(s.tracks.astype(np.int32))


def test_synthetic_clip_renderings_decode_to_the_exact_ground_truth(demo_build):
    spec, _ = demo_build
    out = Path(spec.output)
    pairs = {t: dict(iter_tar_samples(pair_tar(out, t, "synthetic-video", 0)))
             for t in ("video_depth", "video_normal", "optical_flow", "video_instance_segmentation")}
    for key in pairs["video_depth"]:
        s, depth, normals, flow, tracks = ground_truth(spec, key)
        # Depth: one disparity range per clip (its 2-98 percentiles, computed here); decoded grey
        # (1..255 over the range) = clipped disparity to half a grey step.
        m = pairs["video_depth"][key]
        meta = json.loads(m["json"])["params"]
        lo, hi = meta["disparity_min"], meta["disparity_max"]
        got = decode_depth(frames_of(m, json.loads(m["json"]), "target"), lo, hi)
        valid = depth > 0
        assert (lo, hi) == pytest.approx(tuple(np.percentile(1 / depth[valid].astype(np.float64), [2, 98])))
        want = np.clip(1 / depth[valid], lo, hi)
        err, step = np.abs(got[valid] - want), (hi - lo) / 254
        assert err.max() <= step * 0.51 + 1e-6
        assert (frames_of(m, json.loads(m["json"]), "target")[~valid] == 0).all()
        assert np.array_equal(decode_npy(m["target_raw.npy"]), depth)
        # Normals: (n+1)/2 in 8 bits: < 0.5 degrees.
        m = pairs["video_normal"][key]
        n, ok = decode_normals(frames_of(m, json.loads(m["json"]), "target").reshape(-1, 256, 3))
        n, ok = n.reshape(normals.shape), ok.reshape(normals.shape[:3])
        assert np.array_equal(ok, np.linalg.norm(normals, axis=-1) > 0.5)
        assert angular_error_deg(n[ok], normals[ok]).max() < 0.5
        # Flow: the colour wheel on one scale per clip; EPE against the exact flow.
        m = pairs["optical_flow"][key]
        meta = json.loads(m["json"])
        img = frames_of(m, meta, "target")
        assert img.shape[0] == 9 and (img[-1] == 255).all()  # the last frame has no next frame: white
        dec, valid = decode_flow(img[:-1], meta["params"]["max_magnitude"])
        fin = np.isfinite(flow).all(-1)
        assert np.array_equal(valid, fin)
        assert end_point_error(dec[fin], flow[fin]).mean() < 0.05 and end_point_error(dec[fin], flow[fin]).max() < 0.5
        assert np.allclose(decode_npy(m["target_raw.npy"]), flow, equal_nan=True)
        # Instances: exact ids, stable colours across frames.
        m = pairs["video_instance_segmentation"][key]
        meta = json.loads(m["json"])
        ids = [o["id"] for o in meta["params"]["objects"]]
        assert ids == [o["id"] for o in s.meta["objects"]]
        assert np.array_equal(decode_tracks(frames_of(m, meta, "target"), ids), tracks)


def test_synthetic_flow_moves_points_onto_themselves():
    """The exact flow, checked against the renderer's own next frame: a pixel moved by its
    flow lands on the same object at the depth the motion predicts (unless occluded)."""
    from lavin_data.sources.synthetic import render_clip

    c = render_clip(5, 5, 160, 120, max_objects=4, camera_speed=0.08, object_speed=0.06)
    h, w = c.depth.shape[1:]
    u0, v0 = np.meshgrid(np.arange(w), np.arange(h))
    hits = total = 0
    for t in range(4):
        f = c.flow[t]
        ok = np.isfinite(f).all(-1)
        u1, v1 = np.rint(u0 + f[..., 0]), np.rint(v0 + f[..., 1])
        inside = ok & (u1 >= 0) & (u1 < w) & (v1 >= 0) & (v1 < h)
        same = c.segments[t + 1][v1[inside].astype(int), u1[inside].astype(int)] == c.segments[t][inside]
        hits, total = hits + same.sum(), total + inside.sum()
        assert np.abs(f[ok]).max() > 0.5  # it moves
    assert hits / total > 0.97


# --------------------------------------------------------------------------- real fixtures


@pytest.fixture(scope="module")
def fixture_build(ray_session, tmp_path_factory):
    from lavin_data.testing import tiny_depth_anything

    tmp = tmp_path_factory.mktemp("videos")
    model = tmp / "da"
    tiny_depth_anything(model)
    videos, davis, flow = (str(fixture_path(p)) for p in ("videos", "davis", "flow"))
    spec = parse_spec({
        "name": "fixtures", "output": str(tmp / "out"), "resolution": 256, "resize": "crop", "shard_size": 4,
        "sources": [
            {"name": "videos", "kind": "video_folder", "root": videos, "clip_frames": 9, "frame_stride": 2,
             "clips_per_video": 2},
            {"name": "davis", "kind": "davis", "root": davis, "clip_frames": 9},
            {"name": "davis-masks", "kind": "davis", "root": davis, "clip_frames": 1, "clips_per_sequence": 8,
             "missing_annotations": "annotated_only"},
            {"name": "chairs", "kind": "flow", "root": flow},
        ],
        "labelers": [
            {"name": "da", "kind": "depth_anything_v2", "source": "videos", "model": str(model), "batch_size": 8},
            {"name": "geo", "kind": "normals_from_depth", "source": "videos", "depth_from": "da"},
            {"name": "dis", "kind": "dis_flow", "source": "videos"},
            {"name": "dis-davis", "kind": "dis_flow", "source": "davis"},
        ],
        "tasks": [
            {"task": "frame_prediction", "source": "videos", "options": {"input_frames": 5, "target_frames": 5}},
            {"task": "video_depth", "source": "videos", "labeler": "da"},
            {"task": "depth_to_video", "source": "videos", "labeler": "da"},
            {"task": "video_normal", "source": "videos", "labeler": "geo"},
            {"task": "normal_to_video", "source": "videos", "labeler": "geo"},
            {"task": "optical_flow", "source": "videos", "labeler": "dis"},
            {"task": "frame_prediction", "source": "davis", "options": {"input_frames": 5, "target_frames": 5}},
            {"task": "optical_flow", "source": "davis", "labeler": "dis-davis"},
            {"task": "video_instance_segmentation", "source": "davis-masks"},
            {"task": "video_instance_segmentation", "source": "davis"},
            {"task": "optical_flow", "source": "chairs"},
        ],
    })
    # DAVIS clips of 9 consecutive frames all lack masks on some frame: that task writes nothing,
    # and the build says so with exit code 3 once everything else is committed.
    with pytest.raises(QualityError) as e:
        build(spec, **quiet)
    assert str(e.value).endswith("video_instance_segmentation on davis: no pair written from 2 sample(s) (skipped 2: "
                                 "1 shorter_than_clip, 1 unannotated_frames)")
    return spec, json.loads((Path(spec.output) / "manifest.json").read_text())


def test_fixture_build_writes_every_video_task(fixture_build):
    spec, manifest = fixture_build
    c = manifest["counts"]
    assert set(c) == {"frame_prediction", "video_depth", "depth_to_video", "video_normal", "normal_to_video",
                      "optical_flow", "video_instance_segmentation"}
    assert c["frame_prediction"] == {"videos": 6, "davis": 1}  # 3 videos x 2 clips; judo (bike is too short)
    assert all(c[t]["videos"] == 6 for t in ("video_depth", "depth_to_video", "video_normal", "normal_to_video")), {
        t: (c[t], manifest["reasons"][t], manifest["labels"]) for t in ("video_normal", "normal_to_video")}
    assert c["optical_flow"] == {"videos": 6, "davis": 1, "chairs": 2}
    # 5 annotated frames; on two of them (judo 8 and 13: x 753-828 and 0-93 of 854) the only
    # annotated object lies outside the centre crop.
    assert c["video_instance_segmentation"] == {"davis-masks": 3, "davis": 0}
    assert manifest["skipped"]["video_instance_segmentation"]["davis-masks"] == 2
    assert sum(sum(v.values()) for v in manifest["failures"].values()) == 0
    # DAVIS clips of consecutive frames lack masks on most frames: skipped, saying which.
    idx = pq.read_table(index_path(pair_tar(spec.output, "video_instance_segmentation", "davis", 0))).to_pylist()
    assert {r["status"] for r in idx} == {"skipped"}
    judo = next(r for r in idx if r["key"].startswith("davis_judo"))
    assert "frames [1, 2, 3, 4, 6, 7] of the clip have no mask annotation" in judo["error"]
    bike = next(r for r in idx if r["key"] == "davis_bike")
    assert "bike: 4 frames are fewer than one clip of 9 frames" in bike["error"]
    # Base clips keep the source's packets: a segment of each mp4, a prefix of the AVI.
    members = {k: sorted(m) for s in range(2) for k, m in iter_tar_samples(base_tar(spec.output, "videos", s))}
    assert len(members) == 6 and all(m == ["json", "video.avi" if "-avi-" in k else "video.mp4"]
                                     for k, m in members.items()), members


def test_fixture_clips_are_pyavs_frames_in_order(fixture_build):
    """Every stored frame is PyAV's own decode of the planned frame, resized: inputs and
    targets (JPEG q95 4:4:4; benchmarks/bench_clip_storage.py: >= 42.9 dB at 256^2 on these
    videos) at >= 40 dB and closer to their own frame than to the frames next to it; counts
    and order exact."""
    spec, _ = fixture_build
    decoded: dict[str, list[np.ndarray]] = {}
    for s in range(2):
        for key, m in iter_tar_samples(pair_tar(spec.output, "frame_prediction", "videos", s)):
            meta = json.loads(m["json"])
            base = json.loads(m["json"])["base_key"]
            video = fixture_path("videos") / next(p.name for p in fixture_path("videos").iterdir()
                                                  if base.startswith("videos_" + p.name.replace(".", "-")))
            if str(video) not in decoded:
                with av.open(str(video)) as c:
                    decoded[str(video)] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            every = decoded[str(video)]
            idx = meta["frame_indices"]
            assert len(idx) == 9 and idx == sorted(idx) and np.all(np.diff(idx) == 2)
            rz = plan_resize(every[0].shape[1], every[0].shape[0], 256, "crop")
            want = [rz.image(every[i]) for i in idx]
            inp, tgt = frames_of(m, meta, "input"), frames_of(m, meta, "target")
            assert len(inp) == 5 and len(tgt) == 5
            assert meta["input_format"] == meta["target_format"] == "jpeg q95 4:4:4"
            # The target starts at the input's last frame.
            for got, first in ((inp, 0), (tgt, 4)):
                for k in range(5):
                    i = first + k
                    p_own = psnr(got[k], want[i])
                    assert p_own >= 40, (key, i, p_own)
                    for other in (i - 1, i + 1):
                        if 0 <= other < 9 and psnr(want[other], want[i]) < 60:  # the neighbour differs
                            assert p_own > psnr(got[k], want[other]), (key, i, other)


def test_flow_ground_truth_survives_the_build(fixture_build):
    """Chairs pairs: the target's first frame decodes to the .flo ground truth resized to the
    output (nearest, vectors scaled) with mean EPE <= 0.5 px; held frames have zero flow."""
    spec, _ = fixture_build
    samples = dict(iter_tar_samples(pair_tar(spec.output, "optical_flow", "chairs", 0)))
    assert len(samples) == 2
    for key, m in samples.items():
        meta = json.loads(m["json"])
        name = {"chairs_00001": "00001_flow.flo", "chairs_0000000": "0000000-flow_01.flo"}[key]
        gt = decode_flo((fixture_path("flow") / name).read_bytes())
        rz = plan_resize(50, 50, 256, "crop")
        want = rz.image(gt, "nearest") * np.array([rz.sx, rz.sy], np.float32)
        raw = decode_npy(m["target_raw.npy"])
        assert np.allclose(raw[0], want) and not raw[1:].any()
        img = frames_of(m, meta, "target")
        dec, valid = decode_flow(img[0], meta["params"]["max_magnitude"])
        assert valid.all() and end_point_error(dec, want).mean() <= 0.5
        assert json.loads(m["json"])["frame_indices"] == [0, 1, 1, 1, 1]


def test_broken_videos_are_recorded_and_the_rest_written(ray_session, tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    good = fixture_path("videos", "test.mp4").read_bytes()
    (root / "good.mp4").write_bytes(good)
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "empty.mp4").write_bytes(b"")
    with av.open(str(root / "noise.mp4"), "w") as c:  # an audio stream only
        a = c.add_stream("aac", rate=8000)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), format="fltp", layout="mono")
        af.sample_rate = 8000
        for p in list(a.encode(af)) + list(a.encode()):
            c.mux(p)
    with av.open(str(root / "short.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 9 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    spec = parse_spec({"name": "bad", "output": str(tmp_path / "out"), "resolution": 32, "shard_size": 8,
                       "max_failure_fraction": 1.0,  # broken on purpose
                       "sources": [{"name": "v", "kind": "video_folder", "root": str(root), "clip_frames": 9}],
                       "tasks": [{"task": "frame_prediction", "source": "v",
                                  "options": {"input_frames": 5, "target_frames": 5}}]})
    m = build(spec, **quiet)
    assert m["counts"]["frame_prediction"]["v"] == 1
    index = pq.read_table(index_path(pair_tar(spec.output, "frame_prediction", "v", 0))).to_pylist()
    rows = {r["key"]: r for r in index}
    assert rows["v_good-mp4-f000000"]["status"] == "ok"
    for key, status, words in (("v_truncated-mp4", "error", "truncated.mp4"),
                               ("v_empty-mp4", "error", "empty.mp4: not a readable video"),
                               ("v_noise-mp4", "error", "noise.mp4: no video stream (streams: audio)"),
                               ("v_short-mp4", "skipped", "short.mp4: 5 frames")):
        assert rows[key]["status"] == status and words in rows[key]["error"], rows[key]


def test_clips_with_nothing_measured_are_skipped_not_ok():
    """A clip whose depth, normals or flow is invalid everywhere has an empty target: the
    renderers skip it with that reason instead of writing a black pair."""
    from lavin_data.geometry.view import make_clip_view
    from lavin_data.registry import TASKS
    from lavin_data.render.tasks import NothingToRender

    t, h, w = 5, 24, 32
    view = make_clip_view("s_x", "s", "x", np.full((t, h, w, 3), 90, np.uint8), 16, "crop", list(range(t)),
                          depth=np.zeros((t, h, w), np.float32), normals=np.zeros((t, h, w, 3), np.float32),
                          flow=np.full((t - 1, h, w, 2), np.nan, np.float32))
    def defaults(task: str) -> dict:
        return TASKS[task].options().model_dump()

    for task, what in (("video_depth", "depth"), ("depth_to_video", "depth"), ("video_normal", "normals"),
                       ("normal_to_video", "normals"), ("optical_flow", "flow")):
        with pytest.raises(NothingToRender, match=f"valid {what} covers 0.00% of the view") as e:
            TASKS[task].render_fn()(view, None, defaults(task))
        assert e.value.code == "min_valid_fraction"
    view.depth[0, 3, 3], view.depth[0, 3, 4] = 2.0, 3.0  # two valid pixels are something, when the gate allows it
    with pytest.raises(NothingToRender, match="min_valid_fraction"):
        TASKS["video_depth"].render_fn()(view, None, defaults("video_depth"))
    assert TASKS["video_depth"].render_fn()(view, None, dict(defaults("video_depth"), min_valid_fraction=0))[0] \
        .target.any()


def test_the_video_fixture_build_has_no_junk_pairs(fixture_build):
    from tests.test_quality import assert_no_junk

    spec, manifest = fixture_build
    rep = assert_no_junk(Path(spec.output))
    assert {t: r["ok"] for t, r in rep.items()} == {t: sum(v.values()) for t, v in manifest["counts"].items()}
