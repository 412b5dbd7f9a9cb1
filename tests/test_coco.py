"""COCO on the real fixtures: every task is built, and its renderings decode back to what
pycocotools itself decodes from the same annotations after the same resize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from benchmarks.coco_fidelity import instances_and_boxes, keypoint_errors, min_object_area, panoptic_count_errors
from lavin_data.codecs import decode_image
from lavin_data.geometry import plan_resize
from lavin_data.render import box_iou, decode_semantic, point_segment_distance
from lavin_data.render.palette import colour_index
from lavin_data.shards import index_path, iter_tar_samples
from lavin_data.spec import parse_spec
from pipelines.build import BuildError, build
from pipelines.layout import pair_tar
from tests.conftest import fixture_manifest_text, fixture_path

quiet = dict(echo=lambda *_: None)
KP = "coco_keypoints"
PAN = "coco_panoptic/sample_data"


def fixture_spec(output: Path, **source_overrides):
    text = fixture_manifest_text("coco_fixtures.yaml")
    data = yaml.safe_load(text)
    data["output"] = str(output)
    for s in data["sources"]:
        s.update(source_overrides.get(s["name"], {}))
    return parse_spec(data, "manifests/coco_fixtures.yaml")


@pytest.fixture(scope="module")
def coco_build(ray_session, tmp_path_factory):
    spec = fixture_spec(tmp_path_factory.mktemp("coco"))
    return spec, build(spec, **quiet)


def samples(spec, task, source):
    out = {}
    for key, m in iter_tar_samples(pair_tar(spec.output, task, source, 0)):
        out[key] = (json.loads(m["json"]), decode_image(m["target.png"]))
    return out


def gt_coco(path):
    from pycocotools.coco import COCO

    return COCO(str(path))


def test_every_coco_task_is_written(coco_build):
    spec, manifest = coco_build
    for t in spec.tasks:
        assert manifest["counts"][t.task][t.source] >= 1, (t.task, t.source)
        assert manifest["failures"][t.task][t.source] == 0


@pytest.mark.parametrize("source, ann_file", [
    ("coco-kp", f"{KP}/test_coco.json"),
    ("coco-pan", f"{PAN}/panoptic_coco_detection_format.json"),
])
def test_instance_masks_and_boxes_match_pycocotools(coco_build, source, ann_file):
    spec, _ = coco_build
    isthing = {c["id"]: c["isthing"] for c in json.loads(fixture_path("coco_panoptic", "panoptic_coco_categories.json")
                                                         .read_text())}
    mask_ious, box_ious = instances_and_boxes(Path(spec.output), source, fixture_path(*ann_file.split("/")), isthing,
                                              spec.resolution, spec.resize, min_object_area(spec, source))
    assert len(mask_ious) >= 10 and np.mean(mask_ious) >= 0.95, sorted(mask_ious)[:5]
    assert len(box_ious) >= 10 and np.mean(box_ious) >= 0.95, sorted(np.round(box_ious, 3))[:8]


def test_panoptic_and_semantic_pixel_counts_match_the_resized_ground_truth(coco_build):
    spec, _ = coco_build
    root = fixture_path(*PAN.split("/"))
    rel = panoptic_count_errors(Path(spec.output), "coco-pan", root / "panoptic_examples.json",
                                root / "panoptic_examples", spec.resolution, spec.resize)
    assert len(rel) >= 30 and max(rel) <= 0.01
    # semantic: the class of every pixel, and unlabeled pixels stay black
    pan = json.loads((root / "panoptic_examples.json").read_text())
    got_sem = samples(spec, "semantic_segmentation", "coco-pan")
    for ann in pan["annotations"]:
        rgb = decode_image((root / "panoptic_examples" / ann["file_name"]).read_bytes()).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        ids = plan_resize(ids.shape[1], ids.shape[0], spec.resolution, spec.resize).image(ids, "nearest")
        cls = np.zeros(ids.shape, np.int64)
        for s in ann["segments_info"]:
            cls[ids == s["id"]] = s["category_id"]
        assert np.array_equal(decode_semantic(got_sem[f"coco-pan_{ann['image_id']:012d}"][1]), cls)


def test_pose_limbs_only_between_labelled_keypoints(coco_build):
    spec, _ = coco_build
    coco = gt_coco(fixture_path(KP, "test_coco.json"))
    skeleton = [(a - 1, b - 1) for a, b in coco.loadCats([1])[0]["skeleton"]]
    got = samples(spec, "pose_estimation", "coco-kp")
    assert len(got) == 4
    checked_unlabelled = 0
    for key, (meta, target) in got.items():
        image_id = int(meta["item_id"])
        im = coco.loadImgs([image_id])[0]
        rz = plan_resize(im["width"], im["height"], spec.resolution, spec.resize)
        idx = colour_index(target)
        assert ((idx == -1) | (idx <= len(skeleton))).all()
        people = []
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            k = np.array(a["keypoints"], float).reshape(-1, 3)
            k[:, :2], _ = rz.points(k[:, :2])
            people.append(k)
        for j, (p, q) in enumerate(skeleton):
            ys, xs = np.nonzero(idx == j + 1)
            segs = [(k[p, :2], k[q, :2]) for k in people if k[p, 2] > 0 and k[q, 2] > 0]
            checked_unlabelled += sum(1 for k in people if k[p, 2] == 0 or k[q, 2] == 0)
            if not segs:
                assert len(xs) == 0, f"{key}: limb {j} drawn without two labelled keypoints"
                continue
            pts = np.stack([xs, ys], 1) + 0.5
            dist = np.min([point_segment_distance(pts, a, b) for a, b in segs], axis=0)
            assert (dist <= 2.5).all(), f"{key}: limb {j} pixels away from every labelled limb"
    assert checked_unlabelled > 0  # the fixtures do contain partly labelled people


def test_crowd_regions_are_not_objects(coco_build):
    spec, _ = coco_build
    det = samples(spec, "object_detection", "coco-pan")
    coco = gt_coco(fixture_path(*f"{PAN}/panoptic_coco_detection_format.json".split("/")))
    crowds = [a for a in coco.loadAnns(coco.getAnnIds()) if a["iscrowd"]]
    assert len(crowds) == 3
    for a in crowds:
        meta, target = det[f"coco-pan_{a['image_id']:012d}"]
        im = coco.loadImgs([a["image_id"]])[0]
        rz = plan_resize(im["width"], im["height"], spec.resolution, spec.resize)
        b, keep = rz.boxes(np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                      a["bbox"][1] + a["bbox"][3]]]))
        if keep[0] and len(meta["params"]["boxes"]):
            assert box_iou(b, np.array(meta["params"]["boxes"])).max() < 0.99


# --------------------------------------------------------------------------- bad input


def _broken_copy(tmp: Path) -> Path:
    """A copy of the keypoints fixture with one problem per image, plus an orphan annotation."""
    src = fixture_path(KP)
    dst = tmp / "coco"
    shutil.copytree(src, dst)
    data = json.loads((dst / "test_coco.json").read_text())
    ids = sorted(im["id"] for im in data["images"])
    anns = data["annotations"]
    first = lambda iid: next(a for a in anns if a["image_id"] == iid)  # noqa: E731
    first(ids[0])["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]  # degenerate polygon (2 points)
    first(ids[1])["category_id"] = 99  # not in categories
    anns.append(dict(first(ids[2]), id=999999, image_id=123456789))  # points at a missing image
    (dst / "test_coco.json").write_text(json.dumps(data))
    im3 = next(im for im in data["images"] if im["id"] == ids[3])
    p = dst / im3["file_name"]
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # truncated JPEG
    return dst


def _kp_spec(root: Path, out: Path, **extra):
    return parse_spec({
        "name": "bad", "output": str(out), "resolution": 256, "shard_size": 8,
        "max_failure_fraction": 1.0,  # broken on purpose; the failure-rate gate is tests/test_quality.py's
        "sources": [dict({"name": "c", "kind": "coco", "images": str(root), "keypoints": str(root / "test_coco.json")},
                         **extra)],
        "tasks": [{"task": "object_detection", "source": "c"}, {"task": "instance_segmentation", "source": "c"},
                  {"task": "pose_estimation", "source": "c"}],
    })


def test_bad_coco_input_is_recorded_and_good_samples_are_written(ray_session, tmp_path):
    root = _broken_copy(tmp_path)
    data = json.loads((root / "test_coco.json").read_text())
    ids = sorted(im["id"] for im in data["images"])
    spec = _kp_spec(root, tmp_path / "out")
    build(spec, **quiet)  # per-sample problems only: the build itself succeeds
    for task in ("object_detection", "instance_segmentation", "pose_estimation"):
        idx = {r["key"]: r for r in pq.read_table(index_path(pair_tar(spec.output, task, "c", 0))).to_pylist()}
        err = {k: r["error"] for k, r in idx.items() if r["status"] == "error"}
        assert "degenerate polygon" in err[f"c_{ids[0]:012d}"]
        assert "category id 99" in err[f"c_{ids[1]:012d}"]
        truncated = next(im["file_name"] for im in data["images"] if im["id"] == ids[3])
        assert "truncated" in err[f"c_{ids[3]:012d}"] and truncated in err[f"c_{ids[3]:012d}"]
        assert "image id 123456789" in err["c_000123456789"]
        assert idx[f"c_{ids[2]:012d}"]["status"] == "ok"  # the good image is written
        keys = {k for k, _ in iter_tar_samples(pair_tar(spec.output, task, "c", 0))}
        assert keys == {f"c_{ids[2]:012d}"}


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not valid JSON"),
    ('{"annotations": [], "categories": []}', "missing or invalid 'images'"),
    ("[1, 2]", "not a COCO file"),
])
def test_malformed_annotation_file_stops_before_any_work(tmp_path, content, words):
    bad = tmp_path / "ann.json"
    bad.write_text(content)
    spec = parse_spec({"name": "m", "output": str(tmp_path / "out"),
                       "sources": [{"name": "c", "kind": "coco", "images": str(tmp_path), "instances": str(bad)}],
                       "tasks": [{"task": "object_detection", "source": "c"}]})
    with pytest.raises(BuildError) as e:
        build(spec, **quiet)
    assert str(bad) in str(e.value) and words in str(e.value)
    assert not (tmp_path / "out").exists()


def test_selection_options(ray_session, tmp_path):
    spec = fixture_spec(tmp_path / "sel", **{"coco-pan": {"categories": ["person"], "min_area": 2000},
                                            "coco-kp": {"max_instances": 2}})
    build(spec, **quiet)
    for _key, (meta, _) in samples(spec, "object_detection", "coco-pan").items():
        assert set(meta["params"]["classes"]) == {1}
    coco = gt_coco(fixture_path(*f"{PAN}/panoptic_coco_detection_format.json".split("/")))
    n_big = sum(1 for a in coco.loadAnns(coco.getAnnIds(catIds=[1])) if a["area"] >= 2000 and not a["iscrowd"])
    n_inst = sum(len(m["params"]["instances"]) for m, _ in samples(spec, "instance_segmentation", "coco-pan").values())
    assert 0 < n_inst <= n_big
    idx = pq.read_table(index_path(pair_tar(spec.output, "object_detection", "coco-kp", 0))).to_pylist()
    skipped = [r for r in idx if r["status"] == "skipped"]
    assert skipped and all("max_instances 2" in r["error"] for r in skipped)
    assert {r["status"] for r in idx} == {"ok", "skipped"}


def test_unknown_category_in_selection_is_a_clear_error(tmp_path):
    spec = fixture_spec(tmp_path / "x", **{"coco-pan": {"categories": ["persn"]}})
    with pytest.raises(BuildError, match="unknown category 'persn'"):
        build(spec, **quiet)


def test_keypoints_decode_from_a_single_person_rendering():
    from lavin_data.render import COCO_SKELETON, decode_keypoints, render_pose

    people, errs = keypoint_errors(fixture_path(KP, "test_coco.json"), 512, "crop")
    assert people >= 3 and len(errs) >= 12 * people * 0.9 and np.median(errs) <= 2.0
    # Nothing is invented: keypoints without a drawn limb are not found.
    k = np.zeros((17, 3))
    k[5], k[7], k[9] = (100, 100, 2), (150, 160, 2), (200, 220, 1)  # left shoulder-elbow-wrist only
    dec = decode_keypoints(render_pose([k], COCO_SKELETON, (256, 256)), COCO_SKELETON, 17)
    assert set(np.nonzero(dec[:, 2])[0]) == {5, 7, 9}
    assert np.abs(dec[[5, 7, 9], :2] - k[[5, 7, 9], :2]).max() <= 2.0


def test_the_coco_fixture_build_has_no_junk_pairs(coco_build):
    from tests.test_quality import assert_no_junk

    spec, manifest = coco_build
    rep = assert_no_junk(Path(spec.output))
    assert {t: r["ok"] for t, r in rep.items()} == {t: sum(v.values()) for t, v in manifest["counts"].items()}
