"""Reader for ``kind: video_folder``: video files cut into frame-exact clips (PyAV).

Plan (in the driver, metadata only): every video under ``root`` (or in ``file_list``, a
CSV / JSON / parquet table with a ``path`` column and optional ``start`` / ``end`` in
seconds) is probed by demuxing its packets (no decoding; :mod:`lavin_data.video`), and
``clips_per_video`` clips of ``clip_frames`` frames, ``frame_stride`` apart (or 1/``fps``
seconds apart), are planned at evenly spaced or seeded random starts. One item per clip,
its ``item_id`` the video's path with the clip's first frame index (``dir-clip-mp4-f000120``).

Base clips keep the source's own compressed packets (``video.mp4``: from the keyframe
before the clip to its last frame, copied without re-encoding; :func:`lavin_data.video.cut_segment`),
so ingest decodes nothing and a later decode yields exactly the planned frames. Containers
without presentation time stamps (AVI) keep every packet from the start to just past the
clip (``video.avi``; :func:`lavin_data.video.cut_prefix`), since their frames can only be
counted from the start; a clip ending beyond ``SEQUENTIAL_PREFIX_LIMIT`` frames, or a codec
the muxer refuses, is decoded at ingest and kept as lossless PNG frames.

A video that cannot be opened (missing, zero-length, truncated, no video stream) becomes
one failed item whose error names the file; a video shorter than one clip (or than
``min_frames``) one skipped item with the reason. The rest of the shard is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, check_pixels, item_id_from, planned_problem
from lavin_data.video import VideoError, cut_prefix, cut_segment, plan_clips, probe, probe_cached, read_frames

LAYOUT = ("video files (extensions) anywhere under root, e.g. root/<name>.mp4; with file_list, a CSV / JSON / "
          "parquet table with a path column (relative to root) and optional start / end seconds")


def check(src) -> None:
    if not Path(src.root).is_dir():
        raise SourceError(f"{src.root}: video folder not found")
    if src.file_list:
        _listed(src)


def provides(src) -> frozenset[str]:
    return frozenset()


def frames(src) -> str:
    return "video"


def _listed(src) -> list[dict]:
    """Rows {path, start, end} of ``file_list`` (CSV with a header, JSON list, or parquet)."""
    p = Path(src.file_list)
    if not p.is_file():
        raise SourceError(f"{p}: file_list not found")
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        elif p.suffix == ".json":
            rows = json.loads(p.read_text())
            rows = [{"path": r} if isinstance(r, str) else r for r in rows]
        else:
            import csv

            rows = list(csv.DictReader(p.read_text().splitlines()))
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise SourceError(f"{p}: cannot read the video list ({type(e).__name__}: {e})") from None
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not r.get("path"):
            raise SourceError(f"{p}: row {i} has no `path`")
        rel = Path(str(r["path"]))
        if rel.is_absolute() or ".." in rel.parts:
            raise SourceError(f"{p}: row {i}: path {rel} must be relative to root, inside it")
        to_f = lambda x: float(x) if x not in (None, "") else None  # noqa: E731
        out.append({"path": str(rel), "start": to_f(r.get("start")), "end": to_f(r.get("end"))})
    return out


def _videos(src) -> list[dict]:
    if src.file_list:
        return _listed(src)
    root = Path(src.root)
    exts = {e.lower() for e in src.extensions}
    return [{"path": str(p.relative_to(root)), "start": None, "end": None}
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in exts]


def _video_id(rel: str) -> str:
    return item_id_from(rel) or "video"  # with the extension: a.mp4 and a.avi differ


def plan(src) -> list[dict]:
    items = []
    for k, v in enumerate(_videos(src)):
        vid = _video_id(v["path"])
        base = {"item_id": vid, "path": v["path"], "frame_indices": "[]", "error": "", "skip": "",
                "skip_code": ""}
        try:
            info = probe(Path(src.root) / v["path"])
            check_pixels(info.width, info.height, src.max_image_pixels, f"{v['path']}: video frames")
        except (VideoError, ValueError) as e:
            items.append(dict(base, error=str(e)))
            continue
        if info.n_frames < src.min_frames:
            items.append(dict(base, skip=f"{v['path']}: {info.n_frames} frames < min_frames {src.min_frames}",
                              skip_code="min_frames"))
            continue
        clips = plan_clips(info, src.clip_frames, src.frame_stride, src.fps, src.clips_per_video, src.clip_starts,
                           seed=src.seed + k, start_s=v["start"], end_s=v["end"])
        if not clips:
            span = f"{src.clip_frames} frames " + (f"at {src.fps} fps" if src.fps else f"{src.frame_stride} apart")
            items.append(dict(base, skip=f"{v['path']}: {info.n_frames} frames ({info.n_frames / info.fps:.2f} s) "
                                         f"are shorter than one clip of {span}", skip_code="shorter_than_clip"))
            continue
        items += [dict(base, item_id=f"{vid}-f{c[0]:06d}", frame_indices=json.dumps(c)) for c in clips]
    ids = [i["item_id"] for i in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SourceError(f"{src.root}: two videos map to the item id {dup!r}; rename one")
    return items



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    info = probe_cached(Path(src.root) / item["path"])
    indices = json.loads(item["frame_indices"])
    meta = {"source": src.name, "item_id": item["item_id"], "video": item["path"], "frame_indices": indices,
            "pts_seconds": [round(info.seconds(i), 6) for i in indices], "fps": info.fps, "frames": len(indices),
            "coded_size": [info.width, info.height], "licence": src.licence}
    try:
        if info.sequential:
            prefix, fmt = cut_prefix(info, indices)
            return BaseSample(meta, video_segment=prefix, video_format=fmt)
        segment, segment_pts = cut_segment(info, indices)
        return BaseSample(dict(meta, segment_pts=segment_pts, frame_pts=[info.pts[i] for i in indices],
                               time_base=info.time_base_fraction), video_segment=segment)
    except VideoError:
        pass  # a codec the muxer does not take, or a long prefix: decode here and keep lossless frames
    clip, pts = read_frames(info, indices)
    return BaseSample(dict(meta, pts_seconds=pts), frames=clip)
