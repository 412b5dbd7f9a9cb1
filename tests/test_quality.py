"""Real-data quality: robust renderings, quality gates with precise reasons, spec ranges and
exit codes. Samples are made here with the defect a real sensor or annotation file has, run
through the render stage (``render_shard``, no Ray) or a whole build, and each asserts the
exact status, reason code and message of the index, or the exit code of the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from lavin_data.base import BaseSample, encode_base
from lavin_data.codecs import decode_image, decode_npy, encode_png
from lavin_data.render import decode_depth
from lavin_data.render.flow import decode_flow
from lavin_data.shards import ShardWriter, index_path, iter_tar_samples
from lavin_data.spec import SpecError, parse_spec
from pipelines.build import QualityError, build, main
from pipelines.layout import base_tar, pair_tar, sample_key
from pipelines.stages import render_shard

ROOT = Path(__file__).resolve().parents[1]
R = 64  # output side; "squash" keeps every source pixel in a known place


def _spec(out: Path, tasks: list[dict], **extra):
    return parse_spec({"name": "q", "output": str(out), "resolution": R, "resize": "squash", "shard_size": 100,
                       "sources": [{"name": "t", "kind": "synthetic"}],
                       "tasks": [dict(t, source="t") for t in tasks], **extra})


def _sample(item_id: str, **fields) -> BaseSample:
    img = np.random.default_rng(0).integers(0, 255, (R, R, 3), dtype=np.uint8)
    meta = {"source": "t", "item_id": item_id, "width": R, "height": R,
            "categories": [{"id": 1, "name": "person", "isthing": 1}]}
    meta.update(fields.pop("meta", {}))
    return BaseSample(meta=meta, image=fields.pop("image", img), **fields)


def render(tmp_path: Path, samples: list[BaseSample], tasks: list[dict]) -> tuple[dict, dict]:
    """Write ``samples`` as base shard 0 of source "t", render ``tasks``; returns
    ({task: {key: index row}}, {task: {key: members}})."""
    spec = _spec(tmp_path / "out", tasks)
    with ShardWriter(base_tar(spec.output, "t", 0), stage="ingest") as w:
        for s in sorted(samples, key=lambda s: s.meta["item_id"]):
            w.add(sample_key("t", s.meta["item_id"]), encode_base(s))
        w.commit({})
    render_shard(spec, "t", 0, [t["task"] for t in tasks])
    rows, pairs = {}, {}
    for t in tasks:
        tar = pair_tar(spec.output, t["task"], "t", 0)
        rows[t["task"]] = {r["key"]: r for r in pq.read_table(index_path(tar)).to_pylist()}
        pairs[t["task"]] = dict(iter_tar_samples(tar))
    return rows, pairs


def plane_depth() -> np.ndarray:
    """A ramp from 2 m (top) to 4 m (bottom), float32 metres."""
    return np.repeat(np.linspace(2.0, 4.0, R, dtype=np.float32)[:, None], R, axis=1)


# --------------------------------------------------------------------------- depth


def test_near_sensor_outliers_do_not_darken_the_depth_rendering(tmp_path):
    depth = plane_depth()
    outliers = np.zeros((R, R), bool)
    outliers[np.random.default_rng(1).random((R, R)) < 0.01] = True  # 1 % Kinect readings at 4-10 cm
    depth[outliers] = np.random.default_rng(2).uniform(0.04, 0.10, outliers.sum()).astype(np.float32)
    rows, pairs = render(tmp_path, [_sample("a", depth=depth)], [{"task": "depth_estimation"}])
    row = rows["depth_estimation"]["t_a"]
    assert (row["status"], row["reason"]) == ("ok", None)
    m = pairs["depth_estimation"]["t_a"]
    params = json.loads(m["json"])["params"]
    g = decode_image(m["target.png"])[..., 0]
    disp = 1.0 / depth.astype(np.float64)
    lo, hi = np.percentile(disp, [2, 98])
    assert (params["disparity_min"], params["disparity_max"]) == pytest.approx((lo, hi))
    assert params["percentiles"] == [2.0, 98.0]
    # The plane spans the grey range: under min-max of disparity it sat below grey 10 almost everywhere.
    plane = g[~outliers]
    assert plane.min() <= 2 and plane.max() >= 250 and np.mean(plane < 10) < 0.1
    minmax = (disp - disp.min()) / (disp.max() - disp.min()) * 255  # the old rendering, for contrast
    assert np.mean(minmax[~outliers] < 10) > 0.95
    # Decoding with the recorded range gives target_raw's disparity, clipped, to half a grey level.
    raw = decode_npy(m["target_raw.npy"])
    assert np.array_equal(raw, depth)
    err = np.abs(decode_depth(decode_image(m["target.png"]), lo, hi) - np.clip(1 / raw.astype(np.float64), lo, hi))
    assert err.max() <= (hi - lo) / 254 / 2 + 1e-9
    assert (g[outliers] == 255).all()  # the outliers are clipped to the nearest grey


def test_depth_saturated_at_the_far_limit_is_not_invalid(tmp_path):
    depth = plane_depth()
    depth[:, :20] = 10.0  # the sensor's far limit: valid, the farthest
    depth[40:, 40:] = 0.0  # no reading
    rows, pairs = render(tmp_path, [_sample("a", depth=depth)], [{"task": "depth_estimation"},
                                                                 {"task": "depth_to_image"}])
    assert (rows["depth_estimation"]["t_a"]["status"], rows["depth_estimation"]["t_a"]["reason"]) == ("ok", None)
    g = decode_image(pairs["depth_estimation"]["t_a"]["target.png"])[..., 0]
    assert (g[:, :20] == 1).all()  # darkest valid grey
    assert (g[40:, 40:] == 0).all()  # invalid: black
    assert (g[depth > 0] >= 1).all()
    g_in = decode_image(pairs["depth_to_image"]["t_a"]["input.png"])[..., 0]
    assert np.array_equal(g_in, g)


def test_all_invalid_and_sparse_depth_are_skipped_by_the_valid_fraction_gate(tmp_path):
    sparse = np.zeros((R, R), np.float32)
    sparse[::6, ::6] = np.linspace(2.0, 8.0, sparse[::6, ::6].size).reshape(sparse[::6, ::6].shape)  # LiDAR-like 3 %
    samples = [_sample("a", depth=np.zeros((R, R), np.float32)), _sample("b", depth=sparse),
               _sample("c", depth=plane_depth())]
    rows, _ = render(tmp_path, samples, [{"task": "depth_estimation"}, {"task": "depth_to_image"}])
    for task in ("depth_estimation", "depth_to_image"):
        a, b, c = (rows[task][k] for k in ("t_a", "t_b", "t_c"))
        assert (a["status"], a["reason"]) == ("skipped", "min_valid_fraction")
        assert "valid depth covers 0.00% of the view, below min_valid_fraction 10.00%" in a["error"]
        frac = np.mean(sparse > 0)
        assert (b["status"], b["reason"]) == ("skipped", "min_valid_fraction")
        assert f"covers {frac:.2%}" in b["error"]
        assert c["status"] == "ok"
    # The gate is a spec option: at 2 % the sparse depth passes.
    rows, _ = render(tmp_path / "low", samples, [{"task": "depth_estimation", "options": {"min_valid_fraction": 0.02}}])
    assert rows["depth_estimation"]["t_b"]["status"] == "ok"
    assert rows["depth_estimation"]["t_a"]["reason"] == "min_valid_fraction"


def test_sparse_normals_are_skipped(tmp_path):
    n = np.zeros((R, R, 3), np.float32)
    n[10:12, 10:12] = (0, 0, 1)  # 4 of 4096 pixels
    rows, _ = render(tmp_path, [_sample("a", normals=n)], [{"task": "surface_normal_estimation"},
                                                            {"task": "normal_to_image"}])
    for task in rows:
        r = rows[task]["t_a"]
        assert (r["status"], r["reason"]) == ("skipped", "min_valid_fraction")
        assert "valid normals covers 0.10%" in r["error"]


# --------------------------------------------------------------------------- objects


def _person(i: int, bbox, mask=None, keypoints=None, category_id=1):
    from lavin_data.codecs import encode_rle

    return {"id": i, "category_id": category_id, "bbox": bbox, "iscrowd": False,
            "mask": None if mask is None else encode_rle(mask), "keypoints": keypoints}


def test_objects_without_masks_are_skipped_not_black(tmp_path):
    samples = [_sample("a", instances=[_person(1, [5, 5, 40, 40]), _person(2, [30, 30, 60, 50])])]
    rows, pairs = render(tmp_path, samples, [{"task": "instance_segmentation"}, {"task": "foreground_segmentation"},
                                             {"task": "object_detection"}])
    for task in ("instance_segmentation", "foreground_segmentation"):
        r = rows[task]["t_a"]
        assert (r["status"], r["reason"]) == ("skipped", "no_masks")
        assert r["error"] == f"{task}: the source gives no mask for the 2 object(s) in view"
        assert not pairs[task]
    assert rows["object_detection"]["t_a"]["status"] == "ok"  # boxes need no mask


def test_a_box_with_negative_width_is_never_an_ok_target(tmp_path):
    samples = [_sample("a", instances=[_person(1, [50, 10, 30, 40])]),  # x1 < x0
               _sample("b", instances=[_person(1, [50, 10, 30, 40]), _person(2, [5, 5, 30, 30])])]
    rows, pairs = render(tmp_path, samples, [{"task": "object_detection"}, {"task": "single_object_detection"}])
    for task in rows:  # the inverted box has no area: nothing is drawn for it
        a = rows[task]["t_a"]
        assert (a["status"], a["reason"], a["error"]) == ("skipped", "no_objects",
                                                         f"{task}: no object inside the view (after the resize)"), a
    # With a good box beside it, only the good box is drawn.
    meta = json.loads(pairs["object_detection"]["t_b"]["json"])["params"]
    assert meta["boxes"] == [[5.0, 5.0, 30.0, 30.0]]


def test_small_objects_are_left_out_by_min_object_area(tmp_path):
    mask_small = np.zeros((R, R), bool)
    mask_small[3:5, 3:5] = True  # 4 px = 0.1 % of the image
    samples = [_sample("a", instances=[_person(1, [3, 3, 5, 5], mask_small)])]
    tasks = [{"task": "instance_segmentation", "options": {"min_object_area": 0.002}}]
    rows, _ = render(tmp_path, samples, tasks)
    r = rows["instance_segmentation"]["t_a"]
    assert (r["status"], r["reason"]) == ("skipped", "min_object_area")
    assert "1 object mask(s) in view, none of at least min_object_area 0.002 of the image (8 px)" in r["error"]
    assert "the largest has 4 px" in r["error"]


def test_pose_skip_reasons_say_what_is_missing(tmp_path):
    kps = [[20, 20, 2], [30, 30, 2], [0, 0, 0]]
    samples = [
        _sample("a", instances=[_person(1, [5, 5, 40, 40])], meta={"skeleton": [[0, 1]]}),  # no keypoints at all
        _sample("b", instances=[_person(1, [5, 5, 40, 40], keypoints=kps)]),  # no skeleton
        _sample("c", instances=[_person(1, [5, 5, 40, 40], keypoints=[[0, 0, 0]] * 3)], meta={"skeleton": [[0, 1]]}),
        _sample("d", instances=[_person(1, [5, 5, 40, 40], keypoints=kps)], meta={"skeleton": [[0, 1]]}),
    ]
    rows, pairs = render(tmp_path, samples, [{"task": "pose_estimation"}])
    r = rows["pose_estimation"]
    assert (r["t_a"]["status"], r["t_a"]["reason"]) == ("skipped", "no_keypoints")
    assert "none of the 1 object(s) in view has keypoints in the source's annotations" in r["t_a"]["error"]
    assert (r["t_b"]["status"], r["t_b"]["reason"]) == ("skipped", "no_skeleton")
    assert (r["t_c"]["status"], r["t_c"]["reason"]) == ("skipped", "no_keypoints_in_view")
    assert r["t_d"]["status"] == "ok" and list(pairs["pose_estimation"]) == ["t_d"]


def test_a_blank_target_fails_the_coverage_gate(tmp_path):
    flat = np.full((R, R, 3), 128, np.uint8)  # no edge anywhere
    rows, _ = render(tmp_path, [_sample("a", image=flat), _sample("b")], [{"task": "edge_detection"},
                                                                         {"task": "edge_to_image"}])
    for task, side in (("edge_detection", "target"), ("edge_to_image", "input")):
        a = rows[task]["t_a"]
        assert (a["status"], a["reason"]) == ("skipped", "target_coverage")
        assert a["error"] == (f"the {side} rendering is all black: 0.000% of its pixels are not black, below "
                              "min_target_coverage 0.050%")
        assert rows[task]["t_b"]["status"] == "ok"


def test_stats_count_skips_by_reason_and_target_coverage(tmp_path):
    samples = [_sample("a", depth=np.zeros((R, R), np.float32)), _sample("b", depth=plane_depth()),
               _sample("c", depth=plane_depth())]
    render(tmp_path, samples, [{"task": "depth_estimation"}])
    st = json.loads(pair_tar(tmp_path / "out", "depth_estimation", "t", 0).with_suffix(".stats.json").read_text())
    assert st["reasons"] == {"error": {}, "skipped": {"min_valid_fraction": 1}}
    assert st["targets"] == {"coverage_hist": [0] * 9 + [2], "near_black": 0, "n": 2}


# --------------------------------------------------------------------------- flow


def test_flow_scale_is_robust_to_a_few_wild_vectors():
    from lavin_data.geometry.resize import plan_resize
    from lavin_data.geometry.view import ClipView
    from lavin_data.render.tasks import optical_flow

    rng = np.random.default_rng(0)
    flow = rng.normal(0, 2, (1, R, R, 2)).astype(np.float32)
    wild = rng.random((1, R, R)) < 0.005
    flow[wild] = 400.0  # a bad match
    view = ClipView("k", "t", "k", np.zeros((2, R, R, 3), np.uint8), plan_resize(R, R, R, "squash"), [0, 1],
                    flow=flow)
    opts = {"min_valid_fraction": 0.1, "magnitude_percentile": 99.0, "outlier_factor": 2.0}
    pair = optical_flow(view, None, opts)[0]
    mag = np.linalg.norm(flow, axis=-1)
    top = 2 * np.percentile(mag, 99)  # the wild vectors (400 px) are far beyond: capped
    assert top < 20
    assert pair.meta["max_magnitude"] == pytest.approx(top)
    assert pair.meta["saturated_fraction"] == pytest.approx(float(np.mean(mag > top)), abs=1e-6)
    dec, valid = decode_flow(pair.target[:1], top)
    ok = mag <= top
    assert valid.all()
    assert np.abs(dec[ok] - flow[ok]).max() < top / 100  # 8-bit colour: about 1 % of the scale
    # Without wild vectors nothing saturates: the scale is the exact maximum.
    flow[wild] = 1.0
    pair = optical_flow(view, None, opts)[0]
    assert pair.meta["max_magnitude"] == pytest.approx(np.linalg.norm(flow, axis=-1).max())
    assert pair.meta["saturated_fraction"] == 0


# --------------------------------------------------------------------------- spec


BASE = {"name": "q", "output": "/tmp/x", "sources": [{"name": "t", "kind": "synthetic"}]}


@pytest.mark.parametrize("options, field, words", [
    ({"task": "denoise", "options": {"sigma": [50, 10]}}, "tasks[0].options", "sigma: Value error, range [50.0, "
                                                                              "10.0] is reversed"),
    ({"task": "inpainting", "options": {"coverage": [0.1, 2.0]}}, "tasks[0].options", "values are fractions in [0, 1]"),
    ({"task": "low_light", "options": {"gain": [-0.2, 0.3]}}, "tasks[0].options", "gains are in (0, 1]"),
    ({"task": "denoise", "options": {"sigma": [-5, 10]}}, "tasks[0].options", "values must be >= 0"),
    ({"task": "deblur_glass", "options": {"sigma": [0, 1]}}, "tasks[0].options", "values must be > 0"),
    ({"task": "depth_estimation", "options": {"percentiles": [98, 2]}}, "tasks[0].options", "is reversed"),
    ({"task": "depth_estimation", "options": {"min_valid_fraction": 1.5}}, "tasks[0].options", "less than or equal"),
    ({"task": "edge_detection", "options": {"low": 200, "high": 100}}, "tasks[0].options", "high 100.0 < low 200.0"),
])
def test_impossible_option_ranges_are_refused_naming_the_field(options, field, words):
    with pytest.raises(SpecError) as e:
        parse_spec(dict(BASE, tasks=[dict(options, source="t")]), "s.yaml")
    assert f"field {field}" in str(e.value) and words in str(e.value), str(e.value)


def test_resolution_must_suit_the_vae_and_the_dit(tmp_path, capsys):
    with pytest.raises(SpecError) as e:
        parse_spec(dict(BASE, resolution=200, tasks=[{"task": "colorization", "source": "t"}]), "s.yaml")
    assert "field resolution: resolution 200 is not a multiple of 16" in str(e.value)
    assert "(use 192 or 208)" in str(e.value)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(dict(BASE, output=str(tmp_path / "o"), resolution=200,
                                        tasks=[{"task": "colorization", "source": "t"}])))
    assert main(["--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "not a multiple of 16" in err and "Traceback" not in err


# --------------------------------------------------------------------------- build outcome


def _folder(tmp_path: Path, n_good: int, n_bad: int, flat: bool = False) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        img = np.full((48, 48, 3), 90, np.uint8) if flat else rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        (root / f"g{i}.png").write_bytes(encode_png(img))
    for i in range(n_bad):
        (root / f"b{i}.png").write_bytes(b"not a png")
    return root


def _folder_spec(tmp_path: Path, root: Path, tasks: list[str], **extra) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({"name": "q", "output": str(tmp_path / "out"), "resolution": 32, "shard_size": 4,
                                 "sources": [{"name": "f", "kind": "image_folder", "root": str(root)}],
                                 "tasks": [{"task": t, "source": "f"} for t in tasks], **extra}))
    return p


def test_a_build_where_every_sample_failed_exits_3(ray_session, tmp_path, capsys):
    spec = _folder_spec(tmp_path, _folder(tmp_path, 0, 3), ["colorization"])
    assert main(["--spec", str(spec)]) == 3
    err = capsys.readouterr().err
    assert "error: the build finished, but 1 task(s) did not make usable data" in err
    assert "colorization on f: no pair written from 3 sample(s) (error 3: 3 ValueError)" in err, err
    assert "Traceback" not in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())  # written all the same
    assert manifest["reasons"]["colorization"]["f"] == {"error": {"ValueError": 3}, "skipped": {}}


@pytest.mark.slow
def test_a_task_with_only_skips_and_a_failure_rate_over_the_threshold_exit_3(ray_session, tmp_path):
    root = _folder(tmp_path, 3, 0, flat=True)
    spec = _folder_spec(tmp_path, root, ["colorization", "edge_detection"])
    from lavin_data.spec import load_spec

    with pytest.raises(QualityError) as e:
        build(load_spec(spec), echo=lambda *_: None)
    assert str(e.value).endswith("edge_detection on f: no pair written from 3 sample(s) (skipped 3: 3 target_coverage)")
    assert "colorization" not in str(e.value)
    # 1 failure in 4 samples: over the default 5 %, under a spec's 50 %.
    (root / "bad.png").write_bytes(b"junk")
    for limit, expect in ((0.05, True), (0.5, False)):
        out = tmp_path / f"o{limit}"
        s = load_spec(_folder_spec(tmp_path, root, ["colorization"], max_failure_fraction=limit), output=str(out))
        if expect:
            with pytest.raises(QualityError, match=r"colorization on f: 1 of 4 samples failed \(25.0%, over "
                                                   r"max_failure_fraction 5.0%; error 1: 1 ValueError\)"):
                build(s, echo=lambda *_: None)
        else:
            assert build(s, echo=lambda *_: None)["counts"]["colorization"]["f"] == 3


def _cli(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.build", "--spec", str(spec), "--num-cpus", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    """Through a real process: 2 for a bad spec (resolution, a reversed range), 3 for a
    build whose one task wrote nothing (every target blank), 0 once it has pairs."""
    for i, (extra, words) in enumerate(((dict(resolution=100), "multiple of 16"),
                                        (dict(tasks=[{"task": "denoise", "source": "t", "options": {"sigma": [9, 1]}}]),
                                         "range [9.0, 1.0] is reversed"))):
        bad = tmp_path / f"bad{i}.yaml"
        spec = dict(BASE, tasks=[{"task": "colorization", "source": "t"}])
        bad.write_text(yaml.safe_dump(dict(spec, **extra)))
        r = _cli(bad)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    flat = _folder_spec(tmp_path, _folder(tmp_path, 2, 0, flat=True), ["edge_detection"])
    r = _cli(flat)
    assert r.returncode == 3, r.stderr
    assert "edge_detection on f: no pair written from 2 sample(s) (skipped 2: 2 target_coverage)" in r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "out" / "report" / "index.html").exists()


# --------------------------------------------------------------------------- real data


def _fixture_manifest(name: str, out: Path):
    from tests.conftest import fixture_manifest_text

    text = fixture_manifest_text(name)
    data = yaml.safe_load(text)
    data["output"] = str(out)
    return parse_spec(data, f"manifests/{name}")


def assert_no_junk(out: Path, min_valid: float = 0.1) -> dict:
    """No ok pair of the build in ``out`` has a near-empty rendering (under 0.05 % non-black,
    measured by benchmarks.target_audit from the decoded PNGs; the default gate), nor a measured target valid
    on under ``min_valid`` of its pixels."""
    from benchmarks.target_audit import audit

    rep = audit(out, 0.0005)
    assert {t: r["near_empty"] for t, r in rep.items() if r["near_empty"]} == {}
    low = {t: r["min_valid_fraction"] for t, r in rep.items()
           if r["min_valid_fraction"] is not None and r["min_valid_fraction"] < min_valid}
    assert low == {}
    return rep


def test_the_demo_has_no_junk_pairs(demo_build):
    spec, manifest = demo_build
    rep = assert_no_junk(Path(spec.output))
    assert {t: r["ok"] for t, r in rep.items()} == {t: sum(v.values()) for t, v in manifest["counts"].items()}


def test_image_and_video_fixture_manifests_build_without_junk_pairs(ray_session, tmp_path):
    spec = _fixture_manifest("image_fixtures.yaml", tmp_path / "img")
    manifest = build(spec, echo=lambda *_: None)
    rep = assert_no_junk(Path(spec.output))
    assert rep["depth_estimation"]["ok"] == 3 and rep["colorization"]["ok"] == 4
    assert manifest["counts"]["surface_normal_estimation"]["nyu"] == 3
    spec = _fixture_manifest("video_fixtures.yaml", tmp_path / "vid")
    manifest = build(spec, echo=lambda *_: None)
    rep = assert_no_junk(Path(spec.output))
    assert {t: r["ok"] for t, r in rep.items()} == {t: sum(v.values()) for t, v in manifest["counts"].items()}
    assert rep["optical_flow"]["ok"] == 2 and rep["frame_prediction"]["ok"] > 0


def test_planting_a_black_target_is_caught_by_the_audit(tmp_path):
    """The audit itself: an ok pair whose target is black is reported."""
    from benchmarks.target_audit import audit
    from lavin_data.codecs import encode_jpeg

    tar = tmp_path / "pairs" / "depth_estimation" / "t-000000.tar"
    with ShardWriter(tar, stage="render") as w:
        w.add("t_a", {"input.jpg": encode_jpeg(np.full((8, 8, 3), 99, np.uint8)),
                      "target.png": encode_png(np.zeros((8, 8, 3), np.uint8)),
                      "json": json.dumps({"input_format": "jpeg q95 4:4:4"}).encode()})
        w.commit({})
    assert audit(tmp_path)["depth_estimation"]["near_empty"] == ["t_a"]


def test_a_source_with_no_items_stops_before_anything_is_written(ray_session, tmp_path, capsys):
    """Exit 2 naming the source, root and layout; nothing is written, so the user can fix the
    spec (a new spec hash) and run again into the same output."""
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = _folder_spec(tmp_path, empty, ["colorization"])
    assert main(["--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"source 'f' (kind image_folder): no items found in root {empty}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "spec.json").exists() and not (tmp_path / "out" / "plan").exists()
    good = _folder(tmp_path, 2, 0)
    assert main(["--spec", str(_folder_spec(tmp_path, good, ["colorization"]))]) == 0


def test_flat_depth_and_zero_disparity_are_skipped(tmp_path):
    """A wall at one distance renders every pixel at one grey, and a disparity map of zeros
    (no reading, or the border of ``resize: pad``) is no valid pixel: neither is ok."""
    zeros_disp = np.zeros((R, R), np.float32)
    zeros_disp[:, :8] = 0.5  # 12.5 % read
    samples = [_sample("a", depth=np.full((R, R), 3.0, np.float32)),
               _sample("b", depth=np.zeros((R, R), np.float32), meta={"depth_kind": "disparity"}),
               _sample("c", depth=zeros_disp, meta={"depth_kind": "disparity"})]
    rows, pairs = render(tmp_path, samples, [{"task": "depth_estimation"}])
    r = rows["depth_estimation"]
    assert (r["t_a"]["status"], r["t_a"]["reason"]) == ("skipped", "flat_depth")
    assert "the depth is flat: its 2-98 percentiles of disparity are equal (0.333333)" in r["t_a"]["error"]
    assert (r["t_b"]["status"], r["t_b"]["reason"]) == ("skipped", "min_valid_fraction")
    # 12.5 % valid, all at one disparity: flat, not a black target with every pixel "valid".
    assert (r["t_c"]["status"], r["t_c"]["reason"]) == ("skipped", "flat_depth")


def test_a_mostly_static_clip_keeps_its_movers_on_scale():
    """With a percentile cap, a clip where 99 % of the pixels do not move would get scale 0;
    the scale falls back to the largest magnitude."""
    from lavin_data.render.flow import flow_max_magnitude

    flow = np.zeros((1, R, R, 2), np.float32)
    flow[0, :4, :4] = (3.0, 4.0)  # 0.4 % of the pixels move 5 px
    assert flow_max_magnitude(flow, np.isfinite(flow).all(-1), 99.0, 2.0) == pytest.approx(5.0)
