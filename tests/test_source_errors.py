"""Clear errors for broken sources, on data the tests make: a source that plans nothing
(empty folder, wrong layout) is refused naming the source, its kind, where it looked and
the layout expected; a COCO skeleton that does not fit its keypoints is refused before any
work; a malformed box or keypoint list fails only its own image, named by annotation id;
skip reasons say what emptied an item, with a code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from lavin_data.shards import index_path
from lavin_data.sources import (
    SkipItem,
    SourceError,
    coco_reader,
    davis_reader,
    flow_reader,
    image_folder_reader,
    nyu_reader,
    planned_problem,
    sav_reader,
    video_folder_reader,
    youtube_vis_reader,
)
from lavin_data.spec import parse_spec
from pipelines.build import build, main
from pipelines.layout import base_tar, pair_tar
from tests.conftest import ROOT

quiet = dict(echo=lambda *_: None)

# COCO's person keypoints and its 1-based skeleton (as in person_keypoints_*.json).
COCO_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"]
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
                 [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# CrowdPose's 14 keypoints, shipped with COCO's 17-point skeleton above.
CROWDPOSE_KEYPOINTS = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                       "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]


def _jpeg(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def _spec_dict(out: Path, src: dict, task: str) -> dict:
    return {"name": "errs", "output": str(out), "resolution": 64, "shard_size": 8, "max_failure_fraction": 1.0,
            "sources": [dict(name="s", **src)], "tasks": [{"task": task, "source": "s"}]}


def _source(src: dict, task: str = "object_detection"):
    return parse_spec(_spec_dict(Path("/tmp/unused"), src, task)).sources[0]


def _person(aid: int, iid: int, bbox=(8.0, 6.0, 30.0, 30.0), keypoints=None) -> dict:
    x, y, w, h = bbox if len(bbox) == 4 else (8.0, 6.0, 30.0, 30.0)
    if keypoints is None:  # all 17 labelled, inside the box
        keypoints = [v for k in range(17) for v in (x + 1 + k, y + 1 + k, 2)]
    return {"id": aid, "image_id": iid, "category_id": 1, "iscrowd": 0, "area": 900.0, "bbox": list(bbox),
            "segmentation": [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]], "keypoints": keypoints,
            "num_keypoints": len(keypoints) // 3}


def _coco(tmp: Path, anns: list[dict], n_images: int = 3, categories=None, name: str = "kp.json") -> Path:
    """A COCO keypoints file over ``n_images`` tiny JPEGs (ids 1..n, 64x48) written to tmp."""
    images = []
    for i in range(1, n_images + 1):
        _jpeg(tmp / "images" / f"{i:04d}.jpg", seed=i)
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "width": 64, "height": 48})
    cats = categories or [{"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_KEYPOINTS,
                           "skeleton": COCO_SKELETON}]
    path = tmp / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


# --------------------------------------------------------------------------- empty plans


def _empty(tmp: Path) -> dict:
    (tmp / "data").mkdir()
    return {}


def _not_images(tmp: Path) -> dict:
    (tmp / "data" / "docs").mkdir(parents=True)
    (tmp / "data" / "docs" / "readme.txt").write_text("no images here")
    (tmp / "data" / "clip.mp4").write_bytes(b"\x00" * 64)
    return {}


def _images_not_videos(tmp: Path) -> dict:
    for i in range(3):
        _jpeg(tmp / "data" / "seq" / f"{i:05d}.jpg", seed=i)
    return {}


def _davis_flat_without_sequences(tmp: Path) -> dict:
    (tmp / "data" / "images").mkdir(parents=True)
    (tmp / "data" / "masks").mkdir(parents=True)
    return {}


def _nyu_without_rgb_names(tmp: Path) -> dict:
    _jpeg(tmp / "data" / "kitchen" / "image_00001.jpg")
    Image.fromarray(np.zeros((48, 64), np.uint16)).save(tmp / "data" / "kitchen" / "depth_00001.png")
    return {}


def _flow_other_names(tmp: Path) -> dict:
    _jpeg(tmp / "data" / "a.png")
    _jpeg(tmp / "data" / "b.png")
    (tmp / "data" / "a_to_b.flo").write_bytes(b"PIEH" + b"\x00" * 16)
    return {}


EMPTY_CASES = [  # (kind, task, make the data folder, the reader, a word of its layout)
    ("image_folder", "colorization", _empty, image_folder_reader, ".jpg"),
    ("image_folder", "colorization", _not_images, image_folder_reader, "root/<class>/<name>.jpg"),
    ("video_folder", "frame_prediction", _images_not_videos, video_folder_reader, "root/<name>.mp4"),
    ("davis", "video_instance_segmentation", _davis_flat_without_sequences, davis_reader, "JPEGImages/<resolution>"),
    ("nyu", "depth_estimation", _nyu_without_rgb_names, nyu_reader, "sync_depth_<id>.png"),
    ("flow", "optical_flow", _flow_other_names, flow_reader, "<id>_img1.ppm"),
    ("sav", "video_instance_segmentation", _empty, sav_reader, "_manual.json"),
]


@pytest.mark.parametrize("kind, task, make, reader, layout_word", EMPTY_CASES,
                         ids=[f"{c[0]}-{c[2].__name__.strip('_')}" for c in EMPTY_CASES])
def test_a_source_that_plans_nothing_is_refused_naming_source_root_and_layout(tmp_path, capsys, kind, task, make,
                                                                            reader, layout_word):
    make(tmp_path)
    root = tmp_path / "data"
    spec_file = tmp_path / "spec.yaml"
    src = {"kind": kind, "root": str(root)} | ({"clip_frames": 21} if task == "frame_prediction" else {})
    spec_file.write_text(yaml.safe_dump(_spec_dict(tmp_path / "out", src, task)))
    assert main(["--spec", str(spec_file), "--num-cpus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"source 's' (kind {kind}): no items found in root {root}" in err
    assert f"Expected layout: {reader.LAYOUT}" in err and layout_word in reader.LAYOUT
    assert not list((tmp_path / "out").rglob("*.parquet"))  # no plan, no shard


def test_an_empty_coco_file_and_an_empty_youtube_vis_file_name_their_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    spec = parse_spec(_spec_dict(tmp_path / "out", {"kind": "coco", "images": str(images), "instances": str(ann)},
                                 "object_detection"))
    with pytest.raises(SourceError) as e:
        build(spec, **quiet)
    assert str(e.value) == (f"source 's' (kind coco): no items found in images {images}, instances {ann}. "
                            f"Expected layout: {coco_reader.LAYOUT}")
    vis = tmp_path / "vis.json"
    vis.write_text(json.dumps({"videos": [], "annotations": [], "categories": []}))
    spec = parse_spec(_spec_dict(tmp_path / "out2", {"kind": "youtube_vis", "images": str(images),
                                                     "annotations": str(vis)}, "video_instance_segmentation"))
    with pytest.raises(SourceError) as e:
        build(spec, **quiet)
    assert f"source 's' (kind youtube_vis): no items found in images {images}, annotations {vis}" in str(e.value)
    assert youtube_vis_reader.LAYOUT in str(e.value)


def test_a_file_list_that_names_nothing_says_so(tmp_path):
    _jpeg(tmp_path / "data" / "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("\n\n")
    spec = parse_spec(_spec_dict(tmp_path / "out", {"kind": "image_folder", "root": str(tmp_path / "data"),
                                                    "file_list": str(listing)}, "colorization"))
    with pytest.raises(SourceError, match=rf"no items found in root {tmp_path / 'data'} \(with file_list "
                                          rf"'{listing}'\)\. Expected layout"):
        build(spec, **quiet)


def test_a_davis_folder_of_the_wrong_layout_is_refused_before_any_work(tmp_path, capsys):
    _images_not_videos(tmp_path)  # data/seq/00000.jpg: sequences straight under root
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_dict(tmp_path / "out", {"kind": "davis", "root": str(tmp_path / "data")},
                                                   "video_instance_segmentation")))
    assert main(["--spec", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (f"source 's': {tmp_path / 'data'}: not a DAVIS folder (no JPEGImages/ or images/ inside). "
            f"Expected layout: {davis_reader.LAYOUT}") in err
    assert not (tmp_path / "out").exists()


def test_the_cli_exits_2_without_a_traceback_on_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_dict(tmp_path / "o", {"kind": "image_folder",
                                                                    "root": str(tmp_path / "empty")}, "colorization")))
    r = subprocess.run([sys.executable, "-m", "pipelines.build", "--spec", str(spec_file), "--output",
                        str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "pyarrow" not in r.stderr
    assert r.stderr.strip() == (f"error: source 's' (kind image_folder): no items found in root {tmp_path / 'empty'}. "
                                f"Expected layout: {image_folder_reader.LAYOUT}")


# --------------------------------------------------------------------------- COCO skeleton


def test_a_crowdpose_style_skeleton_is_refused_at_plan_time_naming_the_file(tmp_path, capsys):
    cats = [{"id": 1, "name": "person", "keypoints": CROWDPOSE_KEYPOINTS, "skeleton": COCO_SKELETON}]
    kps = [v for k in range(14) for v in (10 + k, 10 + k, 2)]
    ann = _coco(tmp_path, [_person(1, 1, keypoints=kps)], n_images=1, categories=cats, name="crowdpose_train.json")
    edge = next(e for e in COCO_SKELETON if max(e) > len(CROWDPOSE_KEYPOINTS))  # [16, 14]
    want = (f"{ann}: keypoints annotation file: category 1 ('person'): skeleton edge {edge} refers to keypoint "
            f"{max(edge)}, but the category has 14 keypoints (skeleton indices are 1-based, 1..14)")
    src = _source({"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(ann)}, "pose_estimation")
    with pytest.raises(SourceError) as e:
        coco_reader.plan(src)
    assert str(e.value) == want
    with pytest.raises(SourceError):
        coco_reader.check(src)
    spec_file = tmp_path / "spec.yaml"
    spec = _spec_dict(tmp_path / "out", {"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(ann)},
                      "pose_estimation")
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["--spec", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"source 's': {want}" in err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("skeleton, words", [
    ([[1, 2, 3]], "skeleton edge [1, 2, 3] is not a pair of ints"),
    ([[1, "2"]], "skeleton edge [1, '2'] is not a pair of ints"),
    ([[1.0, 2.0]], "skeleton edge [1.0, 2.0] is not a pair of ints"),
    ([[0, 1]], "skeleton edge [0, 1] refers to keypoint 0, but the category has 17 keypoints"),
    ("1-2,2-3", "skeleton is a str, not a list of [a, b] pairs"),
])
def test_a_skeleton_that_is_not_pairs_of_keypoint_indices_is_refused(tmp_path, skeleton, words):
    cats = [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINTS, "skeleton": skeleton}]
    ann = _coco(tmp_path, [_person(1, 1)], n_images=1, categories=cats)
    src = _source({"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(ann)})
    with pytest.raises(SourceError) as e:
        coco_reader.check(src)
    assert str(e.value) == f"{ann}: keypoints annotation file: category 1 ('person'): {words}" + (
        " (skeleton indices are 1-based, 1..17)" if "refers to" in words else "")


def test_a_record_without_the_fields_the_plan_needs_is_refused_naming_it(tmp_path):
    ann = _coco(tmp_path, [_person(1, 1), {"id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}], n_images=1)
    src = _source({"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(ann)})
    with pytest.raises(SourceError, match=rf"^{ann}: keypoints annotation file: annotations\[1\] has no 'image_id'$"):
        coco_reader.check(src)


# --------------------------------------------------------------------------- per-annotation problems


def _plan_one(tmp: Path, ann: dict, **extra) -> dict:
    path = _coco(tmp, [ann], n_images=1)
    src = _source(dict({"kind": "coco", "images": str(tmp / "images"), "keypoints": str(path)}, **extra))
    (item,) = coco_reader.plan(src)
    return item


@pytest.mark.parametrize("bbox, words", [
    ([5.0, 5.0, -4.0, 10.0], "bbox [5.0, 5.0, -4.0, 10.0] has width -4.0 <= 0"),
    ([5, 5, 10, 0], "bbox [5, 5, 10, 0] has height 0 <= 0"),
    ([5, 5, 10], "bbox [5, 5, 10] is not 4 numbers [x, y, width, height]"),
    ([5, 5, "10", 10], "bbox [5, 5, '10', 10] is not 4 numbers [x, y, width, height]"),
    ([5, 5, float("nan"), 10], "bbox [5, 5, nan, 10] holds a non-finite value"),
    ([5, 5, float("inf"), 10], "bbox [5, 5, inf, 10] holds a non-finite value"),
])
def test_a_malformed_box_fails_its_image_naming_the_annotation(tmp_path, bbox, words):
    item = _plan_one(tmp_path, _person(77, 1, bbox=bbox))
    assert item["error"] == f"annotation 77 (image 1): {words} ({tmp_path / 'kp.json'})"
    with pytest.raises(ValueError, match=r"^annotation 77 \(image 1\)"):
        planned_problem(item)


def test_a_box_partly_outside_its_image_is_normal(tmp_path):
    item = _plan_one(tmp_path, _person(5, 1, bbox=[-10.0, 40.0, 100.0, 30.0]))  # the image is 64x48
    assert item["error"] == "" and len(json.loads(item["anns"])) == 1


@pytest.mark.parametrize("keypoints, words", [
    ([1.0] * 50, "keypoints has 50 values, expected 3 x 17 = 51"),
    ([1.0] * 54, "keypoints has 54 values, expected 3 x 17 = 51"),
    ([1.0] * 50 + ["x"], "keypoints holds a non-number at position 50: 'x'"),
    ([1.0] * 3 + [None] + [1.0] * 47, "keypoints holds a non-number at position 3: None"),
    ([1.0] * 50 + [float("nan")], "keypoints holds a non-finite value at position 50: nan"),
    ({"nose": [1, 2, 2]}, "keypoints is a dict, not a list of numbers"),
])
def test_malformed_keypoints_fail_their_image_naming_the_annotation(tmp_path, keypoints, words):
    item = _plan_one(tmp_path, _person(123, 1, keypoints=keypoints))
    assert item["error"] == f"annotation 123 (image 1): {words} ({tmp_path / 'kp.json'})"


def test_a_broken_annotation_of_a_category_left_out_does_not_fail_the_image(tmp_path):
    cats = [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINTS, "skeleton": COCO_SKELETON},
            {"id": 2, "name": "ball", "keypoints": [], "skeleton": []}]
    ball = dict(_person(9, 1, bbox=[1.0, 1.0, 0.0, 4.0]), category_id=2)
    path = _coco(tmp_path, [_person(8, 1), ball], n_images=1, categories=cats)
    src = _source({"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(path),
                   "categories": ["person"]})
    (item,) = coco_reader.plan(src)
    assert item["error"] == "" and [a["id"] for a in json.loads(item["anns"])] == [8]
    src = _source({"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(path)})
    (item,) = coco_reader.plan(src)
    assert item["error"].startswith("annotation 9 (image 1): bbox [1.0, 1.0, 0.0, 4.0] has width 0.0 <= 0")


def test_broken_annotations_fail_only_their_images_in_a_build(ray_session, tmp_path):
    anns = [_person(11, 1),
            _person(123, 2, keypoints=[5.0] * 50),  # one value short
            _person(456, 3, bbox=[5.0, 5.0, -4.0, 10.0]),  # negative width
            _person(12, 5)]  # image 4 has no annotation
    path = _coco(tmp_path, anns, n_images=5)
    spec = parse_spec(dict(_spec_dict(tmp_path / "out", {"kind": "coco", "images": str(tmp_path / "images"),
                                                         "keypoints": str(path)}, "object_detection"),
                           tasks=[{"task": "object_detection", "source": "s"},
                                  {"task": "pose_estimation", "source": "s"}]))
    build(spec, num_cpus=2, **quiet)  # per-sample problems only: the build goes on
    base = {r["key"]: r for r in pq.read_table(index_path(base_tar(spec.output, "s", 0))).to_pylist()}
    assert base["s_000000000002"]["status"] == "error"
    assert base["s_000000000002"]["error"] == (
        f"ValueError: annotation 123 (image 2): keypoints has 50 values, expected 3 x 17 = 51 ({path})")
    assert base["s_000000000003"]["status"] == "error"
    assert base["s_000000000003"]["error"] == (
        f"ValueError: annotation 456 (image 3): bbox [5.0, 5.0, -4.0, 10.0] has width -4.0 <= 0 ({path})")
    assert base["s_000000000004"]["status"] == "skipped" and base["s_000000000004"]["reason"] == "no_annotations"
    assert base["s_000000000004"]["error"] == f"image 4 has no annotations in {path} (empty_images: skip)"
    for task in ("object_detection", "pose_estimation"):
        idx = {r["key"]: r for r in pq.read_table(index_path(pair_tar(spec.output, task, "s", 0))).to_pylist()}
        assert {k: r["status"] for k, r in idx.items()} == {
            "s_000000000001": "ok", "s_000000000002": "error", "s_000000000003": "error",
            "s_000000000004": "skipped", "s_000000000005": "ok"}, task
        assert "annotation 123" in idx["s_000000000002"]["error"]
        assert "annotation 456" in idx["s_000000000003"]["error"]


# --------------------------------------------------------------------------- skip reasons


def test_coco_skip_reasons_say_which_filter_left_nothing(tmp_path):
    cats = [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINTS, "skeleton": COCO_SKELETON},
            {"id": 2, "name": "ball"}]
    small = dict(_person(21, 2), area=50.0)
    ball = dict(_person(31, 3), category_id=2, keypoints=[])
    crowd = dict(_person(41, 4), iscrowd=1)
    many = [_person(51 + k, 5) for k in range(3)]
    path = _coco(tmp_path, [small, ball, crowd, *many], n_images=5, categories=cats)
    src = _source({"kind": "coco", "images": str(tmp_path / "images"), "keypoints": str(path),
                   "categories": ["person"], "min_area": 100, "max_instances": 2})
    items = {int(i["item_id"]): i for i in coco_reader.plan(src)}
    want = {
        1: (f"image 1 has no annotations in {path} (empty_images: skip)", "no_annotations"),
        2: ("all 1 annotations of image 2 in the selected categories are smaller than min_area 100 "
            "(empty_images: skip)", "no_annotations"),
        3: ("none of image 3's 1 annotations is of the selected categories ['person'] (empty_images: skip)",
            "no_annotations"),
        4: ("", ""),  # a crowd region is kept: pixels of its class for the segmentation tasks
        5: ("3 objects > max_instances 2", "max_instances"),
    }
    assert {i: (it["skip"], it["skip_code"]) for i, it in items.items()} == want
    with pytest.raises(SkipItem) as e:
        planned_problem(items[2])
    assert e.value.code == "no_annotations" and "min_area 100" in str(e.value)


def test_clip_readers_skip_short_sequences_with_a_code(tmp_path):
    for i in range(3):  # DAVIS flat layout: a 3-frame sequence, clips of 5
        _jpeg(tmp_path / "davis" / "images" / "bike" / f"{i:05d}.jpg", seed=i)
    (item,) = davis_reader.plan(_source({"kind": "davis", "root": str(tmp_path / "davis"), "clip_frames": 5},
                                        "video_instance_segmentation"))
    assert item["skip"] == "bike: 3 frames are fewer than one clip of 5 frames 1 apart"
    assert item["skip_code"] == "shorter_than_clip"
    sintel = tmp_path / "sintel"
    for i in range(1, 4):  # a 3-frame Sintel sequence, clips of 5
        _jpeg(sintel / "clean" / "alley" / f"frame_{i:04d}.png", seed=i)
    (sintel / "flow" / "alley").mkdir(parents=True)
    (item,) = flow_reader.plan(_source({"kind": "flow", "root": str(sintel), "format": "sintel"}, "optical_flow"))
    assert item["skip"] == f"{sintel / 'clean' / 'alley'}: 3 frames, fewer than one clip of 5"
    assert item["skip_code"] == "shorter_than_clip"
    with pytest.raises(SkipItem) as e:
        planned_problem(item)
    assert e.value.code == "shorter_than_clip"
    vis = tmp_path / "vis.json"  # YouTube-VIS: a video of 3 annotated frames, clips of 5
    vis.write_text(json.dumps({"videos": [{"id": 4, "width": 64, "height": 48, "file_names": ["a.jpg"] * 3}],
                               "annotations": [], "categories": []}))
    (item,) = youtube_vis_reader.plan(_source({"kind": "youtube_vis", "images": str(tmp_path), "annotations": str(vis),
                                               "clip_frames": 5}, "video_instance_segmentation"))
    assert item["skip_code"] == "shorter_than_clip" and item["skip"].startswith("video 4: 3 annotated frames")


def test_video_folder_skips_short_videos_with_a_code(tmp_path):
    import av

    n, h, w = 3, 32, 32
    with av.open(str(tmp_path / "short.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 40 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    (item,) = video_folder_reader.plan(_source({"kind": "video_folder", "root": str(tmp_path), "clip_frames": 5},
                                               "frame_prediction"))
    assert item["skip_code"] == "shorter_than_clip" and item["skip"].startswith("short.mp4: 3 frames")
    (item,) = video_folder_reader.plan(_source({"kind": "video_folder", "root": str(tmp_path), "min_frames": 4},
                                               "frame_prediction"))
    assert item["skip"] == "short.mp4: 3 frames < min_frames 4" and item["skip_code"] == "min_frames"



def test_reader_supplies_the_defaults_a_module_leaves_out_and_delegates_the_rest(monkeypatch):
    """One place for a reader's optional parts: no caller probes a module with hasattr."""
    from types import ModuleType

    from lavin_data.sources import Reader, reader_for

    bare = ModuleType("bare")
    bare.plan = lambda src: [{"item_id": "a"}]
    r = Reader(bare)
    assert r.source_meta(None) == {} and r.own_split(None, {}) is None and r.own_split_of_all(None) is None
    assert not r.columnar and r.layout == "see the reader's documentation" and r.plan(None) == [{"item_id": "a"}]
    full = ModuleType("full")
    full.source_meta, full.own_split = (lambda src: {"k": 1}), (lambda src, item: "val")
    full.own_split_of_all, full.plan_table, full.LAYOUT = (lambda src: "val"), (lambda src: None), "root/x.jpg"
    r = Reader(full)
    assert r.source_meta(None) == {"k": 1} and r.own_split(None, {}) == "val" and r.own_split_of_all(None) == "val"
    assert r.columnar and r.layout == "root/x.jpg"
    assert reader_for("image_folder").columnar and not reader_for("coco").columnar
    monkeypatch.setattr(coco_reader, "plan", lambda src: ["patched"])  # tests patch modules: seen through it
    assert reader_for("coco").plan(None) == ["patched"]
    with pytest.raises(AttributeError):
        Reader(bare).read  # noqa: B018 - a required function a module lacks is an AttributeError
