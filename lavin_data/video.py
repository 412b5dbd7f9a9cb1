"""Frame-exact clips from video files with PyAV: probe, plan, read.

A frame's *index* is its 0-based position in presentation order, i.e. in the order
PyAV's decoder hands frames out when it decodes the whole stream from the start. Plans
and samples name frames by index (``frame_indices``) and record their time stamps
(``pts_seconds``).

- :func:`probe` demuxes the video stream's packets (no decoding) and takes their time
  stamps: sorted, they are the frames' presentation times, so frame index -> pts is exact
  for variable frame rates and B-frames. Containers whose packets carry no usable time
  stamps (AVI, where packed B-frames make them decode-order counters) are marked
  ``sequential``.
- :func:`plan_clips` picks the frame indices of clips from that metadata alone.
- :func:`read_frames` seeks to the keyframe before the first planned frame, decodes
  forward and keeps the frames whose pts are planned (``sequential`` files are decoded
  from the start, counting frames). A clip comes back whole, in order, or not at all.

- :func:`cut_segment` copies the packets a clip needs into a small MP4 without
  re-encoding (:func:`decode_segment` turns it back into the planned frames);
  :func:`cut_prefix` / :func:`decode_prefix` do the same for ``sequential`` files, whose
  frames can only be counted from the start.

Rotation side data (the display matrix) is applied, so frames are upright.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SEQUENTIAL_FORMATS = ("avi",)  # containers whose packet time stamps are not presentation times
# Packets copied past a sequential clip's last planned frame: the decoder hands a frame out
# only after the packets of the frames it reorders with (at most 16 in H.264 and MPEG-4).
SEQUENTIAL_MARGIN = 16
# A sequential clip's prefix (every packet from the start) is stored only up to this many
# packets; later clips are decoded at ingest and kept as lossless frames instead.
SEQUENTIAL_PREFIX_LIMIT = 1500


class VideoError(ValueError):
    """A video that cannot be read (missing, empty, truncated, no video stream); names the file."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    n_frames: int
    width: int  # as stored, before rotation
    height: int
    fps: float  # average frame rate (frames / second)
    time_base: float  # seconds per pts unit
    time_base_fraction: str  # the same, exactly, "num/den"
    pts: tuple[int, ...]  # presentation time stamps of frames 0..n-1 (sequential: packet order)
    sequential: bool  # decode from the start: time stamps do not identify frames
    has_audio: bool

    def seconds(self, index: int) -> float:
        return self.pts[index] * self.time_base if not self.sequential else index / self.fps


def _open(path: str):
    import av

    try:
        return av.open(str(path))
    except FileNotFoundError:
        raise VideoError(f"{path}: video file not found") from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None


def probe(path: str) -> VideoInfo:
    """Metadata of the first video stream, from the container and its packets (no decoding)."""
    import av

    with _open(path) as c:
        if not c.streams.video:
            kinds = sorted({s.type for s in c.streams}) or ["none"]
            raise VideoError(f"{path}: no video stream (streams: {', '.join(kinds)})")
        s = c.streams.video[0]
        fmt = c.format.name.split(",")
        try:
            # Packets an edit list discards are decoded (as references) but never shown: not frames.
            packets = [(p.pts, p.dts) for p in c.demux(s) if p.size and not p.is_discard]
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: cannot demux the video stream ({type(e).__name__}: {e})") from None
        if not packets:
            raise VideoError(f"{path}: the video stream has no frames")
        stamps = [p if p is not None else d for p, d in packets]
        sequential = any(f in SEQUENTIAL_FORMATS for f in fmt) or None in stamps or len(set(stamps)) < len(stamps)
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0:
            raise VideoError(f"{path}: the video stream states no frame rate")
        return VideoInfo(
            path=str(path), n_frames=len(packets), width=s.codec_context.width, height=s.codec_context.height,
            fps=fps, time_base=float(s.time_base), time_base_fraction=str(s.time_base), sequential=sequential,
            pts=tuple(range(len(packets))) if sequential else tuple(sorted(stamps)),
            has_audio=bool(c.streams.audio),
        )


def probe_cached(path: str | os.PathLike) -> VideoInfo:
    """:func:`probe`, once per file version per process: readers read several clips of one
    video, and probing demuxes the whole file."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        raise VideoError(f"{path}: video file not found") from None
    return _probe_version(str(path), mtime)


@lru_cache(maxsize=16)
def _probe_version(path: str, mtime: int) -> VideoInfo:
    return probe(path)


def plan_clips(info: VideoInfo, clip_frames: int, stride: int = 1, fps: float | None = None,
               clips_per_video: int = 1, starts: str = "even", seed: int = 0,
               start_s: float | None = None, end_s: float | None = None) -> list[list[int]]:
    """Frame indices of up to ``clips_per_video`` clips of ``clip_frames`` frames.

    Frames are ``stride`` apart, or (with ``fps``) the frames nearest to times 1/fps apart.
    Clip starts are evenly spaced over [``start_s``, ``end_s``] (``starts="even"``) or drawn
    at random with ``seed`` (``"random"``, sorted, distinct). Returns [] when the range is
    shorter than one clip.
    """
    n = info.n_frames
    times = np.array([info.seconds(i) for i in range(n)])
    times = times - times[0]  # start/end count from the first frame
    lo = 0 if start_s is None else int(np.searchsorted(times, start_s - 1e-9))
    hi = n if end_s is None else int(np.searchsorted(times, end_s - 1e-9))
    if hi - lo < clip_frames:
        return []
    if fps is not None:
        span_s = (clip_frames - 1) / fps
        candidates = [i for i in range(lo, hi) if times[i] + span_s <= times[hi - 1] + 0.5 / info.fps]

        def clip_at(i0: int) -> list[int]:
            want = times[i0] + np.arange(clip_frames) / fps
            idx = np.clip(np.searchsorted(times[:hi], want), 1, hi - 1)
            nearer_left = (want - times[idx - 1]) < (times[idx] - want)
            return [int(i) for i in np.where(nearer_left, idx - 1, idx)]
    else:
        span = (clip_frames - 1) * stride
        candidates = list(range(lo, hi - span))

        def clip_at(i0: int) -> list[int]:
            return [i0 + k * stride for k in range(clip_frames)]
    if not candidates:
        return []
    k = min(clips_per_video, len(candidates))
    if starts == "random":
        picks = np.sort(np.random.default_rng(seed).choice(len(candidates), size=k, replace=False))
    else:
        picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, k)).astype(int))
    clips = [clip_at(candidates[int(p)]) for p in picks]
    return [c for c in clips if len(set(c)) == len(c)]  # fps above the source's would repeat frames


def spaced_clips(n: int, clip_frames: int, stride: int, clips: int) -> list[list[int]]:
    """Up to ``clips`` clips of ``clip_frames`` positions ``stride`` apart in range(n), starts
    evenly spaced from the first to the last possible one (for annotated-frame lists)."""
    span = (clip_frames - 1) * stride
    if n - span <= 0:
        return []
    starts = np.unique(np.round(np.linspace(0, n - span - 1, min(clips, n - span))).astype(int))
    return [[int(s) + k * stride for k in range(clip_frames)] for s in starts]


def _upright(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, turned by its display matrix's rotation
    (counter-clockwise degrees, as PyAV's ``VideoFrame.rotation`` and FFmpeg's autorotate)."""
    img = frame.to_ndarray(format="rgb24")
    k = int(round((frame.rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(img, k=k)) if k else img


def _frames_by_count(c, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode the first video stream of the open container ``c`` from the start, keeping the
    frames whose 0-based count is in ``wanted`` (upright RGB); stops after the last of them.
    Returns them and how many frames were decoded."""
    got: dict[int, np.ndarray] = {}
    last, i = max(wanted), -1
    for i, f in enumerate(c.decode(c.streams.video[0])):
        if i in wanted:
            got[i] = _upright(f)
        if i >= last:
            break
    return got, i + 1


def read_frames(info: VideoInfo, frame_indices: list[int]) -> tuple[np.ndarray, list[float]]:
    """The planned frames -> ((T, H, W, 3) uint8 RGB upright, their pts in seconds).

    Raises :class:`VideoError` naming the file if any planned frame cannot be decoded
    (a truncated file, say): a clip is whole or not at all.
    """
    import av

    wanted = set(frame_indices)
    want = sorted(wanted)
    if not want or want[0] < 0 or want[-1] >= info.n_frames:
        raise VideoError(f"{info.path}: frame indices {frame_indices[:3]}... outside 0..{info.n_frames - 1}")
    got: dict[int, np.ndarray] = {}
    with _open(info.path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            if info.sequential:
                got, _ = _frames_by_count(c, wanted)
            else:
                index_of = {p: i for i, p in enumerate(info.pts)}
                c.seek(info.pts[want[0]], stream=s, backward=True, any_frame=False)
                for fr in c.decode(s):
                    if fr.pts is None:
                        continue
                    i = index_of.get(fr.pts)
                    if i is not None and i in wanted:
                        got[i] = _upright(fr)
                    if fr.pts >= info.pts[want[-1]]:
                        break
        except av.error.FFmpegError as e:
            raise VideoError(f"{info.path}: decoding failed ({type(e).__name__}: {e})") from None
    missing = [i for i in want if i not in got]
    if missing:
        raise VideoError(f"{info.path}: {len(missing)} planned frame(s) could not be decoded (first: {missing[0]}); "
                         "the file may be truncated")
    frames = np.stack([got[i] for i in frame_indices])
    return frames, [round(info.seconds(i), 6) for i in frame_indices]


def cut_segment(info: VideoInfo, frame_indices: list[int]) -> tuple[bytes, list[int]]:
    """The compressed packets a clip needs, copied without re-encoding into a small MP4.

    From the keyframe at or before the first planned frame, packets are copied in decode
    order until every planned frame's packet is in (their references come before them);
    leading pictures of an open GOP (pts before the keyframe's) are left out. Returns the
    MP4 bytes and the source pts of the copied frames in presentation order: decoding the
    MP4 yields exactly those frames, in that order (the muxer may shift time stamps, so
    frames are matched by position). Raises :class:`VideoError` for ``sequential`` files.
    """
    import io

    import av

    if info.sequential:
        raise VideoError(f"{info.path}: time stamps do not identify frames; cannot cut a segment")
    want = {info.pts[i] for i in frame_indices}
    buf = io.BytesIO()
    copied: list[int] = []
    den = str(info.time_base_fraction).split("/")[-1]
    try:
        # The source's timescale for the MP4 track, so time stamps keep their units.
        with _open(info.path) as c, av.open(buf, "w", format="mp4", options={"video_track_timescale": den}) as out:
            s = c.streams.video[0]
            o = out.add_stream_from_template(s)
            c.seek(info.pts[min(frame_indices)], stream=s, backward=True, any_frame=False)
            key_pts = None
            for pkt in c.demux(s):
                if not pkt.size or pkt.pts is None:
                    continue
                if pkt.is_discard:
                    raise VideoError(f"{info.path}: the clip starts inside an edit list's discarded frames")
                if key_pts is None:
                    if not pkt.is_keyframe:
                        raise VideoError(f"{info.path}: seeking did not land on a keyframe")
                    key_pts = pkt.pts
                if pkt.pts < key_pts:
                    continue  # a leading picture of an open GOP: not decodable from here
                pts = pkt.pts
                pkt.stream = o
                out.mux(pkt)
                copied.append(pts)
                want.discard(pts)
                if not want:
                    break
    except av.error.FFmpegError as e:
        raise VideoError(f"{info.path}: cannot copy the clip's packets ({type(e).__name__}: {e})") from None
    if want:
        raise VideoError(f"{info.path}: {len(want)} planned frame(s) have no packet (truncated file?)")
    return buf.getvalue(), sorted(copied)


def decode_segment(data: bytes, segment_pts: list[int], wanted_pts: list[int], time_base: str,
                   what: str = "segment") -> np.ndarray:
    """Frames of a :func:`cut_segment` MP4 -> (T, H, W, 3) uint8 RGB, upright, for
    ``wanted_pts`` (source pts in the source's ``time_base`` "num/den", in that order)."""
    import io
    from fractions import Fraction

    import av

    src_tb = Fraction(time_base)
    wanted = set(wanted_pts)
    got: dict[int, np.ndarray] = {}
    n = 0
    try:
        with av.open(io.BytesIO(data)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            shift, to_source = None, Fraction(s.time_base) / src_tb
            for n, f in enumerate(c.decode(s), 1):
                if n > len(segment_pts):
                    break
                pts = segment_pts[n - 1]
                # The muxer may shift every time stamp by one constant; a frame the decoder
                # dropped would change the difference, and frames would be misnamed.
                if f.pts is not None:
                    here = round(f.pts * to_source)  # in source units
                    shift = here - pts if shift is None else shift
                    if abs(here - pts - shift) > 1:
                        raise VideoError(f"{what}: frame {n} has pts {here}, expected {pts + shift}: "
                                         "the decoder dropped a frame")
                if pts in wanted:  # only the planned frames become arrays
                    got[pts] = _upright(f)
                    if len(got) == len(wanted):
                        break
    except av.error.FFmpegError as e:
        raise VideoError(f"{what}: cannot decode ({type(e).__name__}: {e})") from None
    if len(got) != len(wanted):
        raise VideoError(f"{what}: decoded {n} of the segment's {len(segment_pts)} frames; "
                         f"{len(wanted) - len(got)} planned frame(s) missing")
    return np.stack([got[p] for p in wanted_pts])


def cut_prefix(info: VideoInfo, frame_indices: list[int]) -> tuple[bytes, str]:
    """A ``sequential`` file's packets from the first to :data:`SEQUENTIAL_MARGIN` past the
    clip's last planned frame, copied without re-encoding into the same container format.

    Decoding them from the start hands out frames 0, 1, ... exactly as decoding the whole
    file does (the margin covers the decoder's reordering; frames after it may differ).
    Returns the bytes and the container format's name (``avi``, say). Raises
    :class:`VideoError` when the prefix exceeds :data:`SEQUENTIAL_PREFIX_LIMIT` packets.
    """
    import io

    import av

    last = max(frame_indices) + SEQUENTIAL_MARGIN
    if last >= SEQUENTIAL_PREFIX_LIMIT:
        raise VideoError(f"{info.path}: the clip ends {max(frame_indices)} frames into a file decoded from the start")
    buf = io.BytesIO()
    try:
        with _open(info.path) as c:
            fmt = c.format.name.split(",")[0]
            with av.open(buf, "w", format=fmt) as out:
                s = c.streams.video[0]
                o = out.add_stream_from_template(s)
                for k, pkt in enumerate(c.demux(s)):
                    if k > last:
                        break
                    if pkt.dts is None and not pkt.size:
                        continue  # the demuxer's end-of-stream marker
                    pkt.stream = o
                    out.mux(pkt)
    except av.error.FFmpegError as e:
        raise VideoError(f"{info.path}: cannot copy the clip's packets ({type(e).__name__}: {e})") from None
    return buf.getvalue(), fmt


def decode_prefix(data: bytes, frame_indices: list[int], what: str = "prefix") -> np.ndarray:
    """Frames of a :func:`cut_prefix` copy -> (T, H, W, 3) uint8 RGB, upright, for
    ``frame_indices`` (counted from the start, in that order)."""
    import io

    import av

    wanted = set(frame_indices)
    try:
        with av.open(io.BytesIO(data)) as c:
            c.streams.video[0].thread_type = "AUTO"
            got, n = _frames_by_count(c, wanted)
    except av.error.FFmpegError as e:
        raise VideoError(f"{what}: cannot decode ({type(e).__name__}: {e})") from None
    if len(got) != len(wanted):
        raise VideoError(f"{what}: decoded {n} frames, the clip needs frame {max(wanted)}")
    return np.stack([got[i] for i in frame_indices])
