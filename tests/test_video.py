"""Frame-exact clips (lavin_data.video) and optical flow (.flo codec, colour-wheel rendering)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from lavin_data.codecs import decode_flo, encode_flo
from lavin_data.render.flow import WHEEL, decode_flow, end_point_error, render_flow
from lavin_data.video import VideoError, plan_clips, probe, read_frames
from tests.conftest import fixture_path

VIDEOS = ("test.mp4", "demo.mp4", "test.avi")


def pyav_frames(path) -> list[np.ndarray]:
    """Every frame in presentation order, by PyAV's own decode from the start."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("name", VIDEOS)
def test_planned_clips_are_exactly_pyavs_frames(name):
    """Seek + decode forward returns exactly the planned frames, in order (h264 with
    B-frames in mp4; MPEG-4 with packed B-frames and audio in AVI, decoded sequentially)."""
    path = fixture_path("videos", name)
    info = probe(path)
    every = pyav_frames(path)
    assert info.n_frames == len(every)
    assert info.has_audio == (name == "test.avi") and info.sequential == (name == "test.avi")
    clips = plan_clips(info, 17, stride=2, clips_per_video=4)
    assert len(clips) == 4 and clips[0][0] == 0 and clips[-1][-1] == len(every) - 1  # evenly spaced, to the end
    for clip in clips:
        frames, pts = read_frames(info, clip)
        assert frames.shape == (17, *every[0].shape) and len(pts) == 17
        for k, i in enumerate(clip):
            assert np.array_equal(frames[k], every[i]), (name, clip[0], k)
        assert pts == sorted(pts)


def write_video(path, n: int, pts_ms: list[int] | None = None, audio: bool = False, rotation: int = 0,
                size=(64, 48), fmt: str | None = None, options: dict | None = None) -> None:
    """A small h264 video (B-frames on) whose frame i is flat grey 30 + 7 i, so a decoded
    frame names its own index; ``pts_ms`` gives variable frame times."""
    w, h = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream("libx264", rate=25, options={"bf": "2", "g": "8", "qp": "0"})
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        if rotation:
            s.set_display_rotation(rotation)
        if pts_ms is not None:
            s.codec_context.time_base = s.time_base = __import__("fractions").Fraction(1, 1000)
        a = c.add_stream("aac", rate=8000) if audio else None
        for i in range(n):
            img = np.full((h, w, 3), 30 + 7 * i, np.uint8)
            img[: h // 4, : w // 4] = 255  # top-left marker: shows the rotation
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                fr.pts = pts_ms[i]
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            af = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
            af.sample_rate = 8000
            for p in a.encode(af):
                c.mux(p)
            for p in a.encode():
                c.mux(p)


def frame_number(frame: np.ndarray) -> int:
    return int(round((float(np.median(frame[..., 0])) - 30) / 7))


def test_variable_frame_rate_b_frames_audio_and_rotation(tmp_path):
    # Irregular times: frames 40 ms apart, then 120 ms apart.
    pts = [i * 40 for i in range(12)] + [440 + 120 * i for i in range(1, 13)]
    write_video(tmp_path / "vfr.mp4", 24, pts_ms=pts, audio=True, rotation=90)
    info = probe(tmp_path / "vfr.mp4")
    assert info.n_frames == 24 and info.has_audio and not info.sequential
    clip = plan_clips(info, 9, stride=2, clips_per_video=1)[0]
    frames, secs = read_frames(info, clip)
    assert [frame_number(f) for f in frames] == clip == list(range(0, 17, 2))
    assert secs == [round(pts[i] / 1000, 6) for i in clip]
    # The display matrix turns frames upright: 64x48 stored, 48 wide and 64 tall shown,
    # the top-left marker now at the bottom-left (90 degrees counter-clockwise).
    assert frames.shape[1:] == (64, 48, 3)
    assert frames[0, -4:, :4].min() > 200 and frames[0, :4, :4].max() < 200
    # fps: the frames nearest to times 1/fps apart, through the irregular part.
    clip = plan_clips(info, 5, fps=5.0, clips_per_video=1, start_s=0.4)[0]
    want = [0.4 + k * 0.2 for k in range(5)]
    assert clip == [int(np.argmin([abs(p / 1000 - t) for p in pts])) for t in want]
    frames, _ = read_frames(info, clip)
    assert [frame_number(f) for f in frames] == clip


def test_broken_videos_raise_errors_naming_the_file(tmp_path):
    real = fixture_path("videos", "test.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(real[: len(real) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    with av.open(str(tmp_path / "audio_only.m4a"), "w") as c:
        a = c.add_stream("aac", rate=8000)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), format="fltp", layout="mono")
        af.sample_rate = 8000
        for p in list(a.encode(af)) + list(a.encode()):
            c.mux(p)
    for name, msg in (("truncated.mp4", "not a readable video|could not be decoded|no frames"),
                      ("empty.mp4", "not a readable video"), ("audio_only.m4a", "no video stream"),
                      ("missing.mp4", "not found")):
        with pytest.raises(VideoError, match=msg) as e:
            read_frames(probe(tmp_path / name), [0])
        assert name in str(e.value)
    write_video(tmp_path / "short.mp4", 6)
    assert plan_clips(probe(tmp_path / "short.mp4"), 9) == []


def test_flo_ground_truth_renders_and_decodes_within_half_a_pixel():
    """The colour wheel rendering of real .flo ground truth decodes back to it (mean EPE
    <= 0.5 px; the 8-bit quantisation leaves ~0.02 px)."""
    files = sorted(fixture_path("flow").glob("*.flo"))
    assert len(files) == 3
    for f in files:
        flow = decode_flo(f.read_bytes(), str(f))
        assert flow.shape == (50, 50, 2)
        img, top = render_flow(flow)
        assert top == pytest.approx(np.linalg.norm(flow, axis=-1).max())
        back, valid = decode_flow(img, top)
        assert valid.all()
        epe = end_point_error(back, flow)
        assert epe.mean() <= 0.5 and epe.mean() < 0.03 * max(top, 1), (f.name, epe.mean())


def test_flow_rendering_is_the_middlebury_wheel():
    """Pinned to the reference: the wheel's primaries, zero flow white, and directions as in
    Baker et al.'s colour key (flow to the right is red)."""
    assert WHEEL.shape == (55, 3)
    assert WHEEL[[0, 15, 21, 25, 36, 49]].tolist() == [[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255],
                                                      [0, 0, 255], [255, 0, 255]]
    flow = np.array([[[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]]], np.float32)
    img, _ = render_flow(flow, max_magnitude=1.0)
    # Reference colours, computed as the Middlebury code does (a = atan2(-v, -u) / pi):
    # +u -> atan2(-0.0, -1) = -pi -> wheel[0]; -u -> a = 0 -> wheel[27]; +v (down) -> a = -0.5
    # -> wheel[13.5]; -v (up) -> a = 0.5 -> wheel[40.5].
    ref = [[255, 255, 255], WHEEL[0], WHEEL[27], (WHEEL[13] + WHEEL[14]) / 2, (WHEEL[40] + WHEEL[41]) / 2]
    assert np.abs(img[0].astype(float) - np.rint(ref)).max() <= 1


def test_flo_codec_rejects_bad_files():
    flow = np.random.default_rng(0).normal(size=(4, 5, 2)).astype(np.float32)
    data = encode_flo(flow)
    assert np.array_equal(decode_flo(data), flow)
    with pytest.raises(ValueError, match=r"x\.flo: not a \.flo file \(magic"):
        decode_flo(b"PIEX" + data[4:], "x.flo")
    with pytest.raises(ValueError, match=r"y\.flo: truncated \.flo file"):
        decode_flo(data[:-8], "y.flo")
    with pytest.raises(ValueError, match="shorter than its 12-byte header"):
        decode_flo(data[:7], "z.flo")


def test_cut_segments_decode_to_exactly_the_planned_frames(tmp_path):
    """Base clips keep the source's packets (stream copy into a small MP4): decoding the
    segment gives PyAV's own frames for the plan, B-frames, long GOPs, VFR and rotation
    included; AVI (no usable time stamps) is refused: it is cut as a prefix instead."""
    from lavin_data.video import cut_segment, decode_segment

    write_video(tmp_path / "vfr.mp4", 24, pts_ms=[i * 40 for i in range(12)] + [440 + 120 * i for i in range(1, 13)],
                rotation=90)
    # Matroska (time base 1/1000) and QuickTime with a 600 timescale: the MP4 keeps the units.
    write_video(tmp_path / "a.mkv", 30, fmt="matroska")
    write_video(tmp_path / "b.mov", 30, fmt="mov", options={"video_track_timescale": "600"})
    cases = [fixture_path("videos", "test.mp4"), fixture_path("videos", "demo.mp4"), tmp_path / "vfr.mp4",
             tmp_path / "a.mkv", tmp_path / "b.mov"]
    for path in cases:
        info = probe(path)
        every = pyav_frames(path)
        for clip in plan_clips(info, 9, stride=2, clips_per_video=5):
            data, segment_pts = cut_segment(info, clip)
            frames = decode_segment(data, segment_pts, [info.pts[i] for i in clip], info.time_base_fraction)
            reference, _ = read_frames(info, clip)
            assert np.array_equal(frames, reference), (path.name, clip[0])
            if path.name == "vfr.mp4":  # rotated: upright frames, PyAV's raw ones are not
                assert [frame_number(f) for f in frames] == clip and frames.shape[1:3] == (64, 48)
            else:
                assert all(np.array_equal(frames[k], every[i]) for k, i in enumerate(clip))
    with pytest.raises(VideoError, match="cannot cut a segment"):
        cut_segment(probe(fixture_path("videos", "test.avi")), [0, 1])


def test_prefix_cuts_of_sequential_files_decode_to_exactly_the_planned_frames(monkeypatch):
    """AVI (MPEG-4 ASP with B-frames and audio, one keyframe): the packets from the start to
    SEQUENTIAL_MARGIN past the clip decode to PyAV's own whole-file decode of the planned
    frames, at every start (the last frames of a cut prefix differ, which the margin
    covers); past SEQUENTIAL_PREFIX_LIMIT the cut is refused so the reader decodes instead."""
    from lavin_data import video
    from lavin_data.video import cut_prefix, decode_prefix

    path = fixture_path("videos", "test.avi")
    info = probe(path)
    every = pyav_frames(path)
    assert info.sequential and len(every) >= 150
    for start in range(0, len(every) - 16, 7):
        clip = list(range(start, start + 17))
        data, fmt = cut_prefix(info, clip)
        assert fmt == "avi" and len(data) < path.stat().st_size
        frames = decode_prefix(data, clip)
        assert all(np.array_equal(frames[k], every[i]) for k, i in enumerate(clip)), start
    # The whole file's last frames: there is no margin left, the prefix is the file.
    tail = list(range(len(every) - 9, len(every)))
    assert all(np.array_equal(f, every[i]) for f, i in zip(decode_prefix(cut_prefix(info, tail)[0], tail), tail))
    monkeypatch.setattr(video, "SEQUENTIAL_PREFIX_LIMIT", 40)
    with pytest.raises(VideoError, match="decoded from the start"):
        cut_prefix(info, list(range(20, 29)))
    with pytest.raises(VideoError, match="the clip needs frame"):
        decode_prefix(cut_prefix(info, [0, 1])[0], [0, 60], "x.video.avi")
