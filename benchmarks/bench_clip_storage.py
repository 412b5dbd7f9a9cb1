"""``python -m benchmarks.bench_clip_storage [--resolution 256] [--frames 17] [--videos DIR]``

How to store a clip's frames in a sample, measured: bytes per clip, PSNR against the source
frames and decode time per clip of PNG, JPEG, FFV1 and H.264 storage.

How to store a clip's frames in a sample, measured: for clips of the fixture videos
(PyAV decode, crop-resize to ``--resolution``), each candidate's bytes per clip, PSNR of
the stored frames against the source frames, and decode time per clip (one core):

- PNG per frame (OpenCV, zlib level 1): lossless, one member per frame;
- JPEG per frame, quality 95 and 98, 4:4:4 (OpenCV);
- FFV1 in Matroska (PyAV): lossless video, one member per clip;
- H.264 in MP4 at crf 10 (PyAV, libx264, yuv444p): near-lossless video, one member.

A ``contended: ...`` line says when the decode times were slowed by other work
(:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter
from lavin_data.codecs import decode_image, encode_jpeg, encode_png
from lavin_data.geometry import plan_resize
from lavin_data.video import plan_clips, probe, read_frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def video_bytes(frames: np.ndarray, codec: str, fmt: str, options: dict, pix_fmt: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25, options=options)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def video_frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def images(data: list[bytes]) -> np.ndarray:
    return np.stack([decode_image(x) for x in data])


CANDIDATES = {
    "png (level 1), per frame": (lambda fr: [encode_png(f, 1) for f in fr], images),
    "jpeg q95 4:4:4, per frame": (lambda fr: [encode_jpeg(f, 95) for f in fr], images),
    "jpeg q98 4:4:4, per frame": (lambda fr: [encode_jpeg(f, 98) for f in fr], images),
    "ffv1 .mkv, one member": (lambda fr: [video_bytes(fr, "ffv1", "matroska", {}, "bgr0")],
                              lambda d: video_frames(d[0])),
    "h264 crf 10 yuv444 .mp4": (lambda fr: [video_bytes(fr, "libx264", "mp4", {"crf": "10"}, "yuv444p")],
                                lambda d: video_frames(d[0])),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_clip_storage",
                                 description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--videos", default="tests/fixtures/videos", help="folder of .mp4/.avi videos")
    ap.add_argument("--resolution", type=int, default=256, help="square side the frames are crop-resized to")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The encoders (libx264) use every CPU outside the timed decodes.
    meter = Meter(own_cpus=os.cpu_count() or 1)
    cv2.setNumThreads(1)
    clips = []
    for path in sorted(Path(args.videos).iterdir()):
        if path.suffix not in (".mp4", ".avi"):
            continue
        info = probe(path)
        for idx in plan_clips(info, args.frames, stride=2, clips_per_video=2):
            frames, _ = read_frames(info, idx)
            rz = plan_resize(frames.shape[2], frames.shape[1], args.resolution, "crop")
            clips.append(np.stack([rz.image(f) for f in frames]))
    print(f"{len(clips)} clips of {args.frames} frames at {args.resolution}^2 from {args.videos}")
    print(f"{'storage':28s} {'KiB/clip':>9s} {'PSNR dB (min)':>14s} {'decode ms/clip':>15s}")
    for name, (enc, dec) in CANDIDATES.items():
        sizes, psnrs, times = [], [], []
        for clip in clips:
            data = enc(clip)
            sizes.append(sum(map(len, data)))
            # OpenCV decodes on this thread alone; PyAV's video decoders may run threads of their own.
            with meter.section(own_cpus=1, single_threaded=dec is images):
                t0 = time.perf_counter()
                back = dec(data)
                times.append(time.perf_counter() - t0)
            assert back.shape == clip.shape, (name, back.shape)
            psnrs += [psnr(a, b) for a, b in zip(back, clip)]
        mean_psnr = np.mean([p for p in psnrs if np.isfinite(p)]) if np.isfinite(psnrs).any() else float("inf")
        print(f"{name:28s} {np.mean(sizes) / 1024:9.1f} {mean_psnr:7.1f} ({min(psnrs):5.1f}) "
              f"{np.mean(times) * 1e3:15.1f}")
    note = meter.note()
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
