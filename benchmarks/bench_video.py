"""``python -m benchmarks.bench_video [--videos DIR] [--frames 17] [--resolution 256] [--clips-per-video 8]``

Clip throughput of the pixel build on one core (ingest + render for frame_prediction)
against the floor, PyAV decoding the same planned frames alone.

Clip throughput of the pixel build on one core (the process is pinned to one): the ingest
stage (the clip's packets copied without re-encoding into the base tar) then the render
stage for frame_prediction (decode, resize, JPEG encode of input and target clips, tar), both through
:mod:`pipelines.stages` as a build worker runs them, against the floor: PyAV decoding the
same planned frames alone, in a tight loop. Prints clips/s for each and the ratio, and the
worker's peak RSS. The default task splits a 17-frame clip into 9 -> 9 frames.

``--source-size 1280x720`` first re-encodes the videos (H.264, crf 18, B-frames, keyframe
every 48 frames) at that size, the resolution of typical video corpora: decoding costs more
per frame there while the 256^2 outputs cost the same, so the ratio depends on it.

The target of the ratio is a goal on an idle machine, not a test result; a ``contended: ...``
line says when the run was slowed by other work (:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter
from lavin_data.spec import parse_spec
from lavin_data.video import probe, read_frames
from pipelines.build import shard_jobs
from pipelines.stages import ingest_shard, render_shard


def upscaled_copies(videos: Path, size: tuple[int, int], out: Path) -> Path:
    """The videos re-encoded at ``size`` (w, h) into ``out`` (H.264 mp4, crf 18)."""
    import av
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(videos.iterdir()):
        if path.suffix not in (".mp4", ".avi", ".mkv", ".mov"):
            continue
        with av.open(str(path)) as src, av.open(str(out / f"{path.stem}-{path.suffix[1:]}.mp4"), "w") as dst:
            rate = src.streams.video[0].average_rate
            s = dst.add_stream("libx264", rate=rate, options={"crf": "18", "bf": "2", "g": "48"})
            s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
            for f in src.decode(video=0):
                img = cv2.resize(f.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_CUBIC)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    dst.mux(p)
            for p in s.encode():
                dst.mux(p)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_video", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--videos", default="tests/fixtures/videos", help="folder of videos")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip")
    ap.add_argument("--resolution", type=int, default=256, help="square side of the output frames")
    ap.add_argument("--clips-per-video", type=int, default=8, help="clips planned per video")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the best is printed")
    ap.add_argument("--source-size", help="WxH: re-encode the videos at this size first (e.g. 1280x720)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    import cv2

    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):  # one core, as a build worker gets: decoder threads share it
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    meter = Meter(own_cpus=1)
    half = (args.frames + 1) // 2
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(args.videos).resolve()
        if args.source_size:
            w, h = (int(x) for x in args.source_size.lower().split("x"))
            videos = upscaled_copies(videos, (w, h), Path(tmp) / "videos")
        spec = parse_spec({
            "name": "bench", "output": str(Path(tmp) / "out"), "resolution": args.resolution, "shard_size": 1000,
            "sources": [{"name": "v", "kind": "video_folder", "root": str(videos),
                         "clip_frames": args.frames, "clips_per_video": args.clips_per_video}],
            "tasks": [{"task": "frame_prediction", "source": "v",
                       "options": {"input_frames": half, "target_frames": args.frames - half + 1}}]})
        jobs, _ = shard_jobs(spec)
        items = [it for j in jobs for it in json.loads(j["items"]) if not it["error"] and not it["skip"]]
        root = Path(spec.sources[0].root)
        infos = {it["path"]: probe(root / it["path"]) for it in items}
        best_floor = best_stage = 0.0
        for _ in range(args.repeat):
            # One core for the whole process (above): its threads never run at once.
            with meter.section(single_threaded=True):
                t0 = time.perf_counter()
                for it in items:
                    read_frames(infos[it["path"]], json.loads(it["frame_indices"]))
                best_floor = max(best_floor, len(items) / (time.perf_counter() - t0))
            for d in ("base", "pairs"):
                shutil.rmtree(Path(spec.output) / d, ignore_errors=True)
            with meter.section(single_threaded=True):
                t0 = time.perf_counter()
                for j in jobs:
                    ingest_shard(spec, "v", j["shard"], json.loads(j["items"]), {})
                    render_shard(spec, "v", j["shard"], ["frame_prediction"])
                best_stage = max(best_stage, len(items) / (time.perf_counter() - t0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(items)} clips of {args.frames} frames at {args.resolution}^2 from "
          f"{args.source_size or 'the videos as they are'}, one core, best of {args.repeat}:")
    print(f"floor, PyAV decode of the planned frames alone: {best_floor:7.2f} clips/s")
    print(f"ingest + render (frame_prediction):           {best_stage:7.2f} clips/s  -> {best_stage / best_floor:.2f} "
          f"of the floor (target >= 0.7 on an idle machine; a goal, not a test)")
    print(f"peak RSS of this process: {peak:.0f} MiB")
    note = meter.note()
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
