"""Per-shard workers of the build. Each maps one input shard to output shards with the same
shard id and sample keys, commits atomically, and records per-sample failures in the
index instead of raising. They are plain functions: Ray Data calls them, and so can a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
import traceback

import numpy as np
import pyarrow.parquet as pq

from lavin_data.base import base_frames, base_image, encode_base, is_clip, view_from_base
from lavin_data.codecs import decode_npy, encode_jpeg, encode_npy, encode_png
from lavin_data.geometry.view import ClipView, View, resize_clip, resize_flow
from lavin_data.labelers import LabelInput
from lavin_data.registry import TASKS
from lavin_data.render.tasks import NothingToRender, Pair
from lavin_data.rng import sample_rng
from lavin_data.shards import (
    ShardReader,
    ShardWriter,
    decoded_batches,
    index_path,
    iter_tar_samples,
    prefetch,
    read_stats,
    shard_done,
)
from lavin_data.sidecar import decode_sidecar, encode_depth, encode_flow, encode_normals
from lavin_data.sources import SkipItem, reader_for
from lavin_data.spec import Spec
from lavin_data.split import assign_split
from pipelines.layout import base_tar, label_tar, pair_tar, plan_path, sample_key, shard_name


def limit_threads() -> None:
    """A worker that Ray gives N CPUs uses N threads: OpenCV's own pool otherwise spreads
    over every core, oversubscribing a machine that runs one worker per core (Ray already
    sets OMP_NUM_THREADS for its workers; OpenCV does not read it)."""
    import cv2

    cv2.setNumThreads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))


@functools.lru_cache(maxsize=4)
def parse_spec_json(spec_json: str) -> Spec:
    """The spec of a job row, parsed once per worker process."""
    return Spec.model_validate_json(spec_json)


def _short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _shard_error(row: dict, e: BaseException, what: str = "") -> str:
    """A failed shard's message; with the traceback unless the machine refused (a full disk,
    a permission): that is not ours to debug, and the message says all."""
    head = f"{shard_name(row['source'], int(row['shard']))}{what}: {_short_error(e)}"
    return head if isinstance(e, OSError) else f"{head}\n{traceback.format_exc()}"


def ingest_shard(spec: Spec, source: str, shard: int, items: list[dict], source_meta: dict | None = None) -> dict:
    """Read the planned items of one shard into a base shard. Skips a done shard."""
    path = base_tar(spec.output, source, shard)
    if shard_done(path):
        return dict(read_stats(path), skipped=True)
    src = spec.source(source)
    reader = reader_for(src.kind)
    if source_meta is None:
        source_meta = reader.source_meta(src)
    t0 = time.perf_counter()
    with ShardWriter(path, stage="ingest") as w:
        for item in items:
            key = sample_key(source, item["item_id"])
            try:
                w.add(key, encode_base(reader.read(src, item, spec.seed, source_meta), spec.formats.png_compression))
            except SkipItem as e:
                w.skip(key, "ingest", str(e), e.code)
            except Exception as e:  # noqa: BLE001 - a bad item is recorded, the shard goes on
                w.fail(key, "ingest", _short_error(e))
        return dict(w.commit({"stage": "ingest", "source": source, "spec_hash": spec.spec_hash()},
                             {"seconds": round(time.perf_counter() - t0, 3)}), skipped=False)


class PairEncoder:
    """Encodes the pairs of one view (image or clip). Natural images and frames are JPEG
    (``input_jpeg_quality``, 4:4:4) as inputs, and so are the video frames of a clip
    target (``Pair.target_natural``: the clip storage measured in
    ``benchmarks/bench_clip_storage.py``); renderings and image targets are PNG. A clip's
    frames are members ``input_000.jpg``, ``input_001.jpg``, ... The view's own
    image (or a clip's frames) is encoded once and reused, since most tasks of a sample
    share it as input or target."""

    def __init__(self, spec: Spec, view: View | ClipView):
        self.spec, self.view = spec, view
        self._cache: dict[tuple, bytes] = {}
        # Frames of the view's own image/clip (or slices of it) are recognised by their memory.
        own = view.frames if isinstance(view, ClipView) else view.image[None]
        self._own_layout, self._own_nbytes = (own.shape[1:], own.strides[1:], own.dtype), own.nbytes
        self._base, self._step = own.__array_interface__["data"][0], own[0].nbytes

    def _encode(self, frame: np.ndarray, jpeg: bool) -> bytes:
        offset = frame.__array_interface__["data"][0] - self._base
        shared = (frame.shape, frame.strides, frame.dtype) == self._own_layout and 0 <= offset < self._own_nbytes \
            and offset % self._step == 0
        key = (jpeg, offset // self._step) if shared else None
        if key is not None and key in self._cache:
            return self._cache[key]
        f = self.spec.formats
        data = encode_jpeg(frame, f.input_jpeg_quality) if jpeg else encode_png(frame, f.png_compression)
        if key is not None:
            self._cache[key] = data
        return data

    def _format(self, jpeg: bool) -> str:
        return f"jpeg q{self.spec.formats.input_jpeg_quality} 4:4:4" if jpeg else "png"

    def _members(self, role: str, arr: np.ndarray, jpeg: bool) -> dict[str, bytes]:
        ext = "jpg" if jpeg else "png"
        if arr.ndim == 3:
            return {f"{role}.{ext}": self._encode(arr, jpeg)}
        return {f"{role}_{t:03d}.{ext}": self._encode(frame, jpeg) for t, frame in enumerate(arr)}

    def encode(self, task: str, key: str, p: Pair, labeler: dict | None = None,
               split: str | None = None) -> dict[str, bytes]:
        v = self.view
        clip = p.input.ndim == 4
        inputs = self._members("input", p.input, p.input_natural)
        targets = self._members("target", p.target, p.target_natural and clip)
        members = {**inputs, **targets}
        for name, arr in p.raw.items():
            members[f"{name}.npy"] = encode_npy(arr)
        meta = {
            "task": task, "source": v.source, "item_id": v.item_id, "base_key": v.key, "variant": p.variant,
            "width": v.size[1], "height": v.size[0], "frames": int(p.input.shape[0]) if clip else 1,
            "resize": v.resize.as_dict(),
            "input": sorted(inputs) if clip else next(iter(inputs)),
            "target": sorted(targets) if clip else "target.png",
            "raw": sorted(f"{n}.npy" for n in p.raw),
            "input_format": self._format(p.input_natural),
            "target_format": self._format(p.target_natural and clip),
            "licence": v.licence, "labeler": labeler, "params": p.meta, "split": split,
        }
        if clip:
            meta.update(target_frames=int(p.target.shape[0]), frame_indices=v.frame_indices)
        members["json"] = json.dumps(meta, sort_keys=True).encode()
        return members


def _with_labels(view: View | ClipView, side: dict[str, bytes], key: str) -> tuple[View | ClipView, dict]:
    """The view with its depth, normals or flow replaced by a labeler's sidecar (resized alike)."""
    what, arr, meta = decode_sidecar(side, key)
    if what == "flow":
        return dataclasses.replace(view, flow=resize_flow(view.resize, arr)), meta
    if isinstance(view, ClipView):
        arr = resize_clip(view.resize, arr.astype(np.float32), "nearest")
    else:
        arr = view.resize.image(arr.astype(np.float32), "nearest")
    if what == "depth":
        return dataclasses.replace(view, depth=arr, depth_kind=meta["depth_kind"]), meta
    return dataclasses.replace(view, normals=arr), meta


def render_shard(spec: Spec, source: str, shard: int, tasks: list[str]) -> list[dict]:
    """Render one base shard into one pair shard per task (tasks already done are skipped).

    The base shard is decoded once; each sample's view serves every task. A task with a
    ``labeler`` takes its depth or normals from that labeler's sidecar shard.
    """
    todo = [t for t in tasks if not shard_done(pair_tar(spec.output, t, source, shard))]
    done = [dict(read_stats(pair_tar(spec.output, t, source, shard)), skipped=True) for t in tasks if t not in todo]
    if not todo:
        return done
    name = shard_name(source, shard)
    opts = {t.task: t.options for t in spec.tasks if t.source == source}
    task_labeler = {t.task: t.labeler for t in spec.tasks if t.source == source}
    renderers = {t: TASKS[t].render_fn() for t in todo}
    with contextlib.ExitStack() as stack:
        sidecars = {lab: stack.enter_context(ShardReader(label_tar(spec.output, lab, source, shard)))
                    for lab in sorted({task_labeler[t] for t in todo} - {None})}
        writers = {t: stack.enter_context(ShardWriter(pair_tar(spec.output, t, source, shard), stage="render"))
                   for t in todo}
        splits = planned_splits(spec, source, shard)
        return done + _render_into(spec, source, shard, name, todo, renderers, opts, task_labeler, sidecars, writers,
                                   splits)


def planned_splits(spec: Spec, source: str, shard: int) -> dict[str, str]:
    """{base key: "train" | "val"} of one shard's items, as the build planned them
    (lavin_data/split.py); empty when no plan is written (base shards written by hand, in
    tests), where :func:`item_split` falls back to the source's hash rule."""
    path = plan_path(spec.output, source)
    if not path.exists():
        return {}
    table = pq.read_table(path, filters=[("shard", "=", shard)], columns=["key", "split"])
    return dict(zip(table.column("key").to_pylist(), table.column("split").to_pylist()))


def item_split(spec: Spec, source: str, key: str, splits: dict[str, str]) -> str:
    """The planned split of a base key, or (not planned) the source's hash rule."""
    if key in splits:
        return splits[key]
    src = spec.source(source)
    return assign_split(key, src.val_fraction, src.holdout)


def coverage(img: np.ndarray) -> float:
    """Fraction of non-black pixels of a (..., H, W, 3) uint8 rendering (all frames of a clip)."""
    return float((img.max(-1) > 0).mean())


def coverage_problem(p: Pair, target_coverage: float, min_coverage: float) -> str | None:
    """Why a pair fails the ``target_coverage`` gate (its target, of :func:`coverage`
    ``target_coverage``, and its input when that is a rendering, must have at least
    ``min_coverage`` non-black pixels), or None."""
    sides = [("target", target_coverage)] + ([("input", coverage(p.input))] if not p.input_natural else [])
    for side, c in sides:
        if c == 0 or c < min_coverage:
            return (f"the {side} rendering is {'all black' if c == 0 else 'nearly black'}: {c:.3%} of its pixels "
                    f"are not black, below min_target_coverage {min_coverage:.3%}")
    return None


class TargetStats:
    """What the report shows to reveal junk: ok pairs by the fraction of non-black target
    pixels (10 bins, [0, .1) ... [.9, 1]) and how many targets are near-black (mean grey
    level under 8 of 255)."""

    def __init__(self):
        self.hist, self.near_black, self.n = [0] * 10, 0, 0

    def add(self, target: np.ndarray, target_coverage: float) -> None:
        self.hist[min(int(target_coverage * 10), 9)] += 1
        self.near_black += int(target.mean() < 8)
        self.n += 1

    def as_dict(self) -> dict:
        return {"coverage_hist": self.hist, "near_black": self.near_black, "n": self.n}


def _render_into(spec, source, shard, name, todo, renderers, opts, task_labeler, sidecars, writers,
                 splits: dict[str, str]) -> list[dict]:
    seconds = dict.fromkeys(todo, 0.0)
    targets = {t: TargetStats() for t in todo}
    base = base_tar(spec.output, source, shard)
    for key, members in iter_tar_samples(base):
        split = item_split(spec, source, key, splits)
        try:
            view = view_from_base(key, members, spec.resolution, spec.resize)
        except Exception as e:  # noqa: BLE001
            for w in writers.values():
                w.fail(key, "decode", _short_error(e), split=split)
            continue
        enc = PairEncoder(spec, view)
        labelled: dict[str, tuple[View, dict]] = {}
        for task in todo:
            t0 = time.perf_counter()
            try:
                tview, lab_meta = view, None
                lab = task_labeler[task]
                if lab is not None:
                    if key not in sidecars[lab]:
                        raise ValueError(f"labeler {lab!r} has no output for {key}")
                    if lab not in labelled:
                        labelled[lab] = _with_labels(view, sidecars[lab][key], key)
                    tview, lab_meta = labelled[lab]
                pairs = renderers[task](tview, sample_rng(spec.seed, "render", task, name, key), opts[task])
                if not pairs:
                    writers[task].skip(key, "render", f"the {task} renderer gave no pair for this view", split=split)
                # Variants in key order, so the writer's stream is usually sorted already.
                for k, p in sorted(((sample_key(source, view.item_id, p.variant), p) for p in pairs),
                                   key=lambda kp: kp[0]):
                    cov = coverage(p.target)
                    problem = coverage_problem(p, cov, opts[task]["min_target_coverage"])
                    if problem:
                        writers[task].skip(k, "render", problem, "target_coverage", split=split)
                        continue
                    writers[task].add(k, enc.encode(task, k, p, lab_meta, split), split=split)
                    targets[task].add(p.target, cov)
            except NothingToRender as e:
                writers[task].skip(key, "render", f"{task}: {e}", e.code, split=split)
            except Exception as e:  # noqa: BLE001
                writers[task].fail(key, "render", _short_error(e), split=split)
            seconds[task] += time.perf_counter() - t0
    # Samples the ingest stage failed or skipped are carried into every task's index.
    out = []
    for task, w in writers.items():
        _carry_not_ok(base, w, splits)
        out.append(dict(w.commit({"stage": "render", "task": task, "source": source, "spec_hash": spec.spec_hash(),
                                  "targets": targets[task].as_dict()},
                                 {"seconds": round(seconds[task], 3)}), skipped=False))
    return out


def _carry_not_ok(tar, w: ShardWriter, splits: dict[str, str] | None = None) -> None:
    """Record in ``w`` the samples that the shard ``tar`` (an earlier stage) failed or skipped,
    so that every stage's index accounts for every planned item (with its split, if given)."""
    for r in pq.read_table(index_path(tar), filters=[("status", "!=", "ok")]).to_pylist():
        (w.fail if r["status"] == "error" else w.skip)(r["key"], r["stage"], r["error"], r.get("reason"),
                                                       split=(splits or {}).get(r["key"]))


def run_shard_job(spec_json: str, row: dict) -> dict:
    """One Ray Data row = one source shard: ingest it, then render it for every task.

    Shard-level errors (an unreadable base shard, say) are returned in the row, not raised,
    so that the other shards finish; the driver reports them and exits non-zero.
    """
    return run_render_job(spec_json, run_ingest_job(spec_json, row))


def _label_inputs(depth_side: ShardReader | None, depth_from: str | None, per_clip: bool):
    """``decode(key, members) -> (list of LabelInput, is_clip)`` for the base samples of one
    shard: one input per image, one per frame of a clip (or one holding the whole clip for
    a ``per_clip`` labeler); depth from the ``depth_from`` labeler's sidecar when given."""

    def decode(key: str, m: dict[str, bytes]) -> tuple[list[LabelInput], bool]:
        clip = is_clip(m)
        images, meta = base_frames(key, m) if clip else base_image(key, m)
        depth = decode_npy(m["depth.npy"]) if "depth.npy" in m else None
        kind = meta.get("depth_kind", "depth")
        if depth_side is not None:
            if key not in depth_side:
                raise ValueError(f"labeler {depth_from!r} has no output for {key}")
            _what, depth, dmeta = decode_sidecar(depth_side[key], key)
            kind = dmeta["depth_kind"]
        intr = meta.get("intrinsics")
        if not clip:
            return [LabelInput(images, depth, kind, intr)], False
        if per_clip:
            return [LabelInput(images[0], None if depth is None else depth[0], kind, intr, frames=images)], True
        return [LabelInput(f, None if depth is None else depth[t], kind, intr) for t, f in enumerate(images)], True

    return decode


def _label_batch(labeler, inputs: list[LabelInput], batch_size: int) -> list:
    """Outputs for every input, ``batch_size`` per forward; a batch that fails is retried one
    input at a time, and an input that still fails gives its exception in its place."""
    outs: list = []
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i:i + batch_size]
        try:
            outs += labeler.label(chunk)
        except Exception:  # noqa: BLE001 - find the input(s) that fail
            for x in chunk:
                try:
                    outs.append(labeler.label([x])[0])
                except Exception as e1:  # noqa: BLE001
                    outs.append(e1)
    return outs


def _batch_fill(before: dict, after: dict, batch_size: int) -> dict:
    """The model forwards of a shard and how full they were: images / (forwards * batch_size)
    (1.0: every forward held a full batch). Empty for labelers that count no forwards."""
    forwards = after.get("forwards", 0) - before.get("forwards", 0)
    images = after.get("images", 0) - before.get("images", 0)
    if not forwards:
        return {}
    return {"forwards": forwards, "images_forwarded": images, "batch_fill": round(images / (forwards * batch_size), 4)}


def label_shard(spec: Spec, labeler_name: str, source: str, shard: int, labeler) -> dict:
    """Run one labeler over one base shard into its sidecar shard (same keys). The frames of
    clips are labelled like images (batched across frames and clips) and stored per clip.

    The next batch is decoded in a background thread while the model labels this one.
    """
    lab = spec.labeler(labeler_name)
    path = label_tar(spec.output, lab.name, source, shard)
    if shard_done(path):
        return dict(read_stats(path), skipped=True)
    t0 = time.perf_counter()
    info = labeler.info()
    level = spec.formats.png_compression
    before = dict(getattr(labeler, "forwards", {}))
    samples = iter_tar_samples(base_tar(spec.output, source, shard))
    with ShardWriter(path, stage="label") as w, contextlib.ExitStack() as stack:
        depth_side = stack.enter_context(ShardReader(label_tar(spec.output, lab.depth_from, source, shard))) \
            if lab.depth_from else None
        decode = _label_inputs(depth_side, lab.depth_from, labeler.per_clip)
        for ok, failed in prefetch(decoded_batches(samples, decode, lab.batch_size)):
            for key, err in failed:
                w.fail(key, "label", err)
            outs = iter(_label_batch(labeler, [x for _k, (xs, _c) in ok for x in xs], lab.batch_size))
            for key, (xs, clip) in ok:
                mine = [next(outs) for _ in xs]
                err = next((o for o in mine if isinstance(o, Exception)), None)
                if err is not None:
                    w.fail(key, "label", _short_error(err))
                    continue
                out = np.stack(mine) if clip and not labeler.per_clip else mine[0]
                if labeler.output == "depth":
                    w.add(key, encode_depth(out, labeler.depth_kind, info, level))
                elif labeler.output == "normals":
                    w.add(key, encode_normals(out, info, level))
                else:
                    w.add(key, encode_flow(out, info))
        _carry_not_ok(base_tar(spec.output, source, shard), w)
        return dict(w.commit({"stage": "label", "labeler": lab.name, "source": source, "spec_hash": spec.spec_hash(),
                              **{k: v for k, v in info.items() if k in ("model", "weight_hash", "processing")},
                              **_batch_fill(before, getattr(labeler, "forwards", {}), lab.batch_size)},
                             {"seconds": round(time.perf_counter() - t0, 3)}), skipped=False)


def run_ingest_job(spec_json: str, row: dict) -> dict:
    """Ingest only (the first operator of a build with labelers)."""
    limit_threads()
    spec = parse_spec_json(spec_json)
    # The items (for COCO, a shard's annotations) are not carried to the later operators.
    out = {k: v for k, v in row.items() if k not in ("items", "source_meta")}
    out.update(ingest="", labels="[]", render="[]", error="", pid=os.getpid(), t_start=time.time(), t_end=0.0)
    try:
        items = json.loads(row["items"])
        st = ingest_shard(spec, row["source"], int(row["shard"]), items, json.loads(row["source_meta"]))
        out["ingest"] = json.dumps(st)
    except Exception as e:  # noqa: BLE001
        out["error"] = _shard_error(row, e)
    return out


def run_label_job(spec_json: str, row: dict, labeler_name: str, labeler) -> dict:
    spec = parse_spec_json(spec_json)
    if row["error"] or spec.labeler(labeler_name).source != row["source"]:
        return row
    try:
        st = label_shard(spec, labeler_name, row["source"], int(row["shard"]), labeler)
        row["labels"] = json.dumps(json.loads(row["labels"]) + [st])
    except Exception as e:  # noqa: BLE001
        row["error"] = _shard_error(row, e, f" ({labeler_name})")
    return row


def run_render_job(spec_json: str, row: dict) -> dict:
    limit_threads()
    spec = parse_spec_json(spec_json)
    if not row["error"]:
        try:
            tasks = json.loads(row["tasks"])
            if tasks:
                row["render"] = json.dumps(render_shard(spec, row["source"], int(row["shard"]), tasks))
        except Exception as e:  # noqa: BLE001
            row["error"] = _shard_error(row, e)
    row["t_end"] = time.time()
    return row
