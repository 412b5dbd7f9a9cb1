"""The video sources' readers on data the tests make (with real frames where it helps):
YouTube-VIS json, SA-V masklets at 6 fps over 24 fps video, Sintel folders, .flo pairs and
video lists with start/end times."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lavin_data.codecs import encode_flo, encode_png
from lavin_data.sources import davis_reader, flow_reader, sav_reader, video_folder_reader, youtube_vis_reader
from lavin_data.spec import parse_spec
from tests.conftest import fixture_path


def source(**src):
    return parse_spec({"name": "t", "output": "/tmp/unused", "sources": [dict(name="s", **src)],
                       "tasks": [{"task": "frame_prediction", "source": "s"}]}).sources[0]


def test_youtube_vis_json_gives_per_frame_tracks(tmp_path):
    images = fixture_path("davis", "images")
    judo0 = davis_reader.read_mask(fixture_path("davis", "masks", "judo", "00000.png")) > 0  # a real mask
    h, w = judo0.shape
    names = [f"judo/{i:05d}.jpg" for i in range(10)]
    rle = mask_utils.encode(np.asfortranarray(judo0.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    poly = [[100, 100, 300, 100, 300, 250, 100, 250]]  # a rectangle, as a polygon
    ann = {"videos": [{"id": 7, "width": w, "height": h, "length": 10, "file_names": names}],
           "annotations": [{"id": 3, "video_id": 7, "category_id": 1, "iscrowd": 0,
                            "segmentations": [rle if i % 2 == 0 else None for i in range(10)]},
                           {"id": 9, "video_id": 7, "category_id": 2, "iscrowd": 0,
                            "segmentations": [poly] * 10}],
           "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "mat"}]}
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    src = source(kind="youtube_vis", images=str(images), annotations=str(tmp_path / "instances.json"),
                 clip_frames=5, clips_per_video=2)
    youtube_vis_reader.check(src)
    items = youtube_vis_reader.plan(src)
    assert [json.loads(i["frame_indices"]) for i in items] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    s = youtube_vis_reader.read(src, items[1], 0, {})
    assert [o["id"] for o in s.meta["objects"]] == [3, 9] and s.meta["objects"][1]["name"] == "mat"
    rect = np.zeros((h, w), bool)
    rect[100:250, 100:300] = True
    for t, i in enumerate(range(5, 10)):  # object 3 on even frames only; object 9 on every frame
        got = s.tracks[t]
        assert (got[judo0 & ~rect] == (3 if i % 2 == 0 else 0)).all()
        assert abs(int((got == 9).sum()) - rect.sum()) < 0.03 * rect.sum()  # polygon rasterisation
    assert len(s.frame_files) == 5 and s.frame_files[0][0] == "jpg"
    ann["videos"][0]["file_names"][0] = "../../nyu_v2/rgb/rgb_00050.jpg"  # out of the images folder
    (tmp_path / "escape.json").write_text(json.dumps(ann))
    src = source(kind="youtube_vis", images=str(images), annotations=str(tmp_path / "escape.json"), clip_frames=5)
    with pytest.raises(ValueError, match=r"escape.json: path '\.\./\.\./nyu_v2.*must be relative to .*inside it"):
        youtube_vis_reader.read(src, youtube_vis_reader.plan(src)[0], 0, {})
    (tmp_path / "bad.json").write_text('{"videos": []}')
    with pytest.raises(Exception, match="bad.json: not a YouTube-VIS file: missing or invalid 'annotations'"):
        youtube_vis_reader.check(source(kind="youtube_vis", images=str(images), annotations=str(tmp_path / "bad.json")))


def test_sav_masklets_at_6_fps_map_to_every_4th_video_frame(tmp_path):
    n, h, w = 21, 48, 64
    with av.open(str(tmp_path / "sav_000001.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=24, options={"qp": "0", "bf": "2"})
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 + 10 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    masklet = []
    for k in range(6):  # annotated frames 0, 4, ..., 20; object 0 is a column at x = 5k
        m0 = np.zeros((h, w), np.uint8)
        m0[:, 5 * k:5 * k + 4] = 1
        r = mask_utils.encode(np.asfortranarray(m0))
        masklet.append([{"size": [h, w], "counts": r["counts"].decode()}, None])
    (tmp_path / "sav_000001_manual.json").write_text(json.dumps({"masklet": masklet, "masklet_id": [0, 1]}))
    src = source(kind="sav", root=str(tmp_path), clip_frames=5, clips_per_video=2)
    items = sav_reader.plan(src)
    assert [json.loads(i["frame_indices"]) for i in items] == [[0, 4, 8, 12, 16], [4, 8, 12, 16, 20]]
    s = sav_reader.read(src, items[1], 0, {})
    assert [int(round((np.median(f) - 20) / 10)) for f in s.frames] == [4, 8, 12, 16, 20]
    for t, k in enumerate(range(1, 6)):
        cols = np.flatnonzero(s.tracks[t].any(0))
        assert cols.tolist() == list(range(5 * k, 5 * k + 4)) and set(np.unique(s.tracks[t])) == {0, 1}
    (tmp_path / "sav_000002_manual.json").write_text(json.dumps({"masklet": masklet}))
    bad = next(i for i in sav_reader.plan(src) if i["item_id"].startswith("sav-000002"))
    assert "not an SA-V manual annotation: no 'masklet_id'" in bad["error"]


def test_sintel_and_flo_pairs(tmp_path):
    rng = np.random.default_rng(0)
    seq = tmp_path / "training" / "clean" / "alley"
    (tmp_path / "training" / "flow" / "alley").mkdir(parents=True)
    seq.mkdir(parents=True)
    flows = [rng.normal(0, 3, (20, 30, 2)).astype(np.float32) for _ in range(6)]
    for i in range(1, 8):
        cv2.imwrite(str(seq / f"frame_{i:04d}.png"), np.full((20, 30, 3), 10 * i, np.uint8))
    for i in range(1, 7):
        (tmp_path / "training" / "flow" / "alley" / f"frame_{i:04d}.flo").write_bytes(encode_flo(flows[i - 1]))
    src = source(kind="flow", root=str(tmp_path / "training"), format="sintel", clip_frames=5)
    flow_reader.check(src)
    items = flow_reader.plan(src)
    assert len(items) == 1  # 7 frames: one clip of 5 (1-5); frames 6-7 are fewer than a clip
    s = flow_reader.read(src, items[0], 0, {})
    assert s.frames.shape == (5, 20, 30, 3) and [int(f[0, 0, 0]) for f in s.frames] == [10, 20, 30, 40, 50]
    assert np.array_equal(s.flow, np.stack(flows[:4])) and s.meta["held_frames"] == 0
    # .flo pairs: a good one and one whose .flo has a wrong magic number.
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for name in ("a", "b"):
        for k in (1, 2):
            (pairs / f"{name}_{k}.png").write_bytes(encode_png(np.full((8, 8, 3), 40 * k, np.uint8)))
    (pairs / "a.flo").write_bytes(encode_flo(flows[0][:8, :8]))
    (pairs / "b.flo").write_bytes(b"XXXX" + encode_flo(flows[0][:8, :8])[4:])
    src = source(kind="flow", root=str(pairs), format="flo_pairs")
    items = {i["item_id"]: i for i in flow_reader.plan(src)}
    s = flow_reader.read(src, items["a"], 0, {})
    assert s.frames.shape == (5, 8, 8, 3) and s.meta["frame_indices"] == [0, 1, 1, 1, 1]
    assert np.array_equal(s.flow[0], flows[0][:8, :8]) and not s.flow[1:].any()
    with pytest.raises(ValueError, match=r"pairs/b\.flo: not a \.flo file \(magic"):
        flow_reader.read(src, items["b"], 0, {})


def test_video_list_with_start_and_end_seconds(tmp_path):
    videos = fixture_path("videos")
    (tmp_path / "list.csv").write_text("path,start,end\ntest.mp4,2.0,4.0\ndemo.mp4,,\n")
    src = source(kind="video_folder", root=str(videos), file_list=str(tmp_path / "list.csv"), clip_frames=9,
                 clips_per_video=3)
    video_folder_reader.check(src)
    items = video_folder_reader.plan(src)
    test = [json.loads(i["frame_indices"]) for i in items if i["path"] == "test.mp4"]
    assert len(test) == 3 and test[0][0] == 60 and test[-1][-1] == 119  # 30 fps: frames 60..119
    assert {i["path"] for i in items} == {"test.mp4", "demo.mp4"}
    (tmp_path / "bad.json").write_text(json.dumps([{"path": "../etc/passwd"}]))
    with pytest.raises(Exception, match="must be relative to root, inside it"):
        video_folder_reader.check(source(kind="video_folder", root=str(videos), file_list=str(tmp_path / "bad.json")))


def test_avi_clips_keep_a_prefix_or_fall_back_to_lossless_frames(monkeypatch):
    """An AVI clip's base sample is the packets from the start (``video.avi``); a clip ending
    past SEQUENTIAL_PREFIX_LIMIT is decoded at ingest into PNG frames instead. Both decode
    to PyAV's own frames for the plan."""
    from lavin_data import video
    from lavin_data.base import base_frames, encode_base

    videos = fixture_path("videos")
    with av.open(str(videos / "test.avi")) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    src = source(kind="video_folder", root=str(videos), clip_frames=9, clips_per_video=2)
    items = [i for i in video_folder_reader.plan(src) if i["path"] == "test.avi"]
    assert len(items) == 2
    kinds = []
    for limit in (video.SEQUENTIAL_PREFIX_LIMIT, 60):
        monkeypatch.setattr(video, "SEQUENTIAL_PREFIX_LIMIT", limit)
        for it in items:
            members = encode_base(video_folder_reader.read(src, it, 0, {}))
            kinds.append(sorted(m for m in members if m != "json")[0])
            frames, meta = base_frames(it["item_id"], members)
            assert all(np.array_equal(f, every[i]) for f, i in zip(frames, meta["frame_indices"], strict=True))
    assert kinds == ["video.avi", "video.avi", "video.avi", "frame_000.png"]  # the 2nd clip ends past 60


# --------------------------------------------------------------------------- on data the test makes


def _palette_png(path: Path, ids: np.ndarray) -> None:
    """A DAVIS-2017-style palette PNG whose pixel values are the object ids."""
    from PIL import Image

    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def test_davis_reader_on_a_generated_sequence_gives_the_written_ids_frame_by_frame(tmp_path):
    """Frames 0..5 of a made-up sequence, masks on frames 0, 2 and 3 (ids 1 and 2, 255 void):
    each read clip holds exactly those ids on its annotated frames and background elsewhere."""
    rng = np.random.default_rng(0)
    h, w = 24, 32
    masks = {}
    for i in range(6):
        img = rng.integers(0, 256, (h, w, 3), np.uint8)
        p = tmp_path / "davis" / "images" / "seq" / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img)
        if i in (0, 2, 3):
            ids = np.zeros((h, w), np.uint8)
            ids[2 + i:10 + i, 3:12] = 1
            ids[14:20, 20 - i:28 - i] = 2
            ids[0, :] = 255  # void: background in the tracks
            masks[i] = ids
            _palette_png(tmp_path / "davis" / "masks" / "seq" / f"{i:05d}.png", ids)
    src = source(kind="davis", root=str(tmp_path / "davis"), clip_frames=5)
    davis_reader.check(src)
    (item,) = davis_reader.plan(src)
    assert json.loads(item["frame_indices"]) == [0, 1, 2, 3, 4] and json.loads(item["objects"]) == [1, 2]
    s = davis_reader.read(src, item, 0, {})
    assert s.tracks.shape == (5, h, w) and s.meta["annotated"] == [True, False, True, True, False]
    for t in range(5):
        want = np.where(masks[t] == 255, 0, masks[t]) if t in masks else np.zeros((h, w))
        assert np.array_equal(s.tracks[t], want), t
    assert [d for _ext, d in s.frame_files] == [(tmp_path / "davis" / "images" / "seq" / f"{i:05d}.jpg").read_bytes()
                                                 for i in range(5)]
    only = davis_reader.plan(source(kind="davis", root=str(tmp_path / "davis"), clip_frames=1,
                                    clips_per_sequence=8, missing_annotations="annotated_only"))
    assert [json.loads(i["frame_indices"]) for i in only] == [[0], [2], [3]]


def test_youtube_vis_reader_on_generated_frames_and_rle_masks(tmp_path):
    """Made-up frames and per-frame RLE masks (one object only on every third frame): the tracks equal
    the masks written, object by object."""
    rng = np.random.default_rng(1)
    h, w = 20, 28
    names = [f"v/{i:05d}.jpg" for i in range(10)]
    for n in names:
        p = tmp_path / "JPEGImages" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (h, w, 3), np.uint8))
    a = np.zeros((10, h, w), np.uint8)
    b = np.zeros((10, h, w), np.uint8)
    for i in range(10):
        a[i, 2:8, 1 + i:9 + i] = 1
        b[i, 12:18, 15:25] = 1

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": r["size"], "counts": r["counts"].decode()}

    ann = {"videos": [{"id": 1, "width": w, "height": h, "length": 10, "file_names": names}],
           "annotations": [{"id": 4, "video_id": 1, "category_id": 1, "iscrowd": 0,
                            "segmentations": [rle(a[i]) for i in range(10)]},
                           {"id": 6, "video_id": 1, "category_id": 1, "iscrowd": 0,
                            "segmentations": [rle(b[i]) if i % 3 == 0 else None for i in range(10)]}],
           "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    src = source(kind="youtube_vis", images=str(tmp_path / "JPEGImages"), annotations=str(tmp_path / "instances.json"),
                 clip_frames=5, clips_per_video=2)
    youtube_vis_reader.check(src)
    items = youtube_vis_reader.plan(src)
    assert [json.loads(i["frame_indices"]) for i in items] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    s = youtube_vis_reader.read(src, items[1], 0, {})  # the second clip: frame index != position
    assert [o["id"] for o in s.meta["objects"]] == [4, 6]
    for t, i in enumerate(range(5, 10)):
        want = np.where(b[i] & (i % 3 == 0), 6, np.where(a[i], 4, 0))
        assert np.array_equal(s.tracks[t], want), t
