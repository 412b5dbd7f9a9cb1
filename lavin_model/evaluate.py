"""``python -m lavin_model.evaluate --checkpoint CKPT --vae stvae.pt --pairs OUT/pairs --out DIR
[--tasks a,b] [--split val] [--context 4] [--sweep 1-8] [--no-probe] [--limit 16]``

Per-task metrics of a J-DiT on held-out pair shards, predicting in context from pixels.

Queries are the pairs of ``--split`` (a pair json without ``"split"`` counts as ``train``),
at most ``--limit`` per task (a deterministic draw by ``--seed``). The context pairs of a query
come from the same task's ``train`` pairs (its other ``val`` pairs when it has none), never
from the query's own source item (same ``base_key``: another variant of the same image),
drawn by ``--seed`` per query; the first N of that draw serve a context of N pairs, so the
sweep's contexts are nested. Every image is squashed to ``--resolution`` and encoded to its
ST-VAE posterior mean; the condition [in_1, tgt_1, ..., in_N, tgt_N, query] is sampled with
``lavin_model.flow.sample`` (Euler, classifier-free guidance) exactly as
:func:`lavin_model.infer.predict` does, batched over queries; the prediction is resized back
to the pair's target size, decoded with the project's decoders and measured
(:mod:`lavin_model.metrics`) by the protocol of its task family (see :data:`FAMILIES` and the
``protocol`` of each task in the JSON). Noise: chunk k of a task's queries (``--batch-size``)
draws its noise from ``--seed`` + k, the same for every context length and probe condition.

Besides the metrics at ``--context`` pairs: (a) the sweep, the main metric for each N of
``--sweep`` (the paper's figure 7); (b) the probe, the main metric with the right task's
context, with another task's context (``--probe-task``, default the first other image task
by name, its pairs drawn the same way) and with no context (the condition is the query
frame alone). Video task folders (clips) are skipped with a note. LPIPS (colorization) is not
computed: it needs the ``lpips`` package and its pretrained AlexNet/VGG weights, which our
offline machines do not have; MSE is reported instead.

Writes DIR/metrics.json (per task: metrics, n, sweep, probe, protocol, per-query values;
the run's arguments and checkpoint) and DIR/metrics.png (sweep curves and probe bars per task).
Exits 2, naming the file, on a missing pairs folder, no pair of the split, an unreadable pair
or checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lavin_data.cli import HelpFormatter, fail
from lavin_data.codecs import decode_image, decode_npy, to_rgb_uint8
from lavin_data.registry import TASKS
from lavin_data.render import COCO_SKELETON, PALETTE, decode_depth, decode_keypoints, decode_normals, grey
from lavin_data.render.dense import to_disparity
from lavin_data.rng import sample_rng
from lavin_data.shards import ShardReader, build_pairs_folder, shard_done
from lavin_data.split import pair_split
from lavin_model import metrics as M
from lavin_model.infer import resolve_resolution, resolve_vae, squash, training_record

PCK_ALPHA = 0.05  # a keypoint is correct within 5 % of the image's longer side
RESTORATION = ("denoise", "derain", "deblur_motion", "deblur_glass", "low_light", "inpainting")
VIDEO_TASKS = frozenset(name for name, t in TASKS.items() if t.frames == "video")
LPIPS_NOTE = ("LPIPS not computed: it needs the lpips package and its pretrained AlexNet/VGG (torchvision) weights, "
              "which are not available offline here; MSE of RGB in [0, 1] is the metric")


class EvalError(Exception):
    """Bad input to the evaluation; the message names the file and the problem (exit 2)."""


@dataclass(frozen=True)
class Family:
    """How a task family is measured: its metrics' main one, its direction and the protocol."""

    name: str
    main: str
    higher_is_better: bool
    protocol: str


FAMILIES = {
    "depth": Family("depth", "abs_rel", False,
                    "AbsRel and delta1 (max ratio < 1.25) on valid ground-truth pixels, after least-squares scale and "
                    "shift alignment of the predicted disparity (decode_depth of the prediction's luma) to the "
                    "ground-truth disparity, converted to depth (clamped to the farthest valid ground-truth depth); "
                    "ground truth: target_raw (params.depth_kind), else the target decoded with the json's range"),
    "normals": Family("normals", "mean_angle_deg", False,
                      "mean/median angular error (degrees) and % of pixels under 11.25/22.5/30 degrees over valid "
                      "ground-truth pixels; prediction decoded with decode_normals (an invalid pixel counts 90 "
                      "degrees); ground truth: target_raw, else the decoded target"),
    "segmentation": Family("segmentation", "miou", True,
                           "mIoU of palette labels: the target's exact colours, the prediction's nearest of the "
                           "target's colours plus black; black counts as a class (background)"),
    "panoptic": Family("panoptic", "miou", True,
                       "mIoU of palette labels: the target's exact colours, the prediction's nearest of the target's "
                       "colours plus black; black (unlabeled) target pixels are ignored"),
    "foreground": Family("foreground", "iou", True,
                         "IoU of the prediction's mask (brightest channel > 127) and the target's (non-black)"),
    "box": Family("box", "box_iou", True,
                  "IoU of decode_filled_box of the prediction's largest bright component (brightest channel > 127) "
                  "and the target's box; 0 when no box decodes"),
    "pose": Family("pose", "pck", True,
                   f"PCK@{PCK_ALPHA:g}: keypoints decoded by decode_keypoints from the target and from the prediction "
                   "snapped to the nearest of the target's colours plus black; correct when found within "
                   f"{PCK_ALPHA:g} x the longer image side of the target's (over the target's keypoints)"),
    "restoration": Family("restoration", "psnr", True,
                          "PSNR (dB, data range 255, capped at 100) and SSIM (Gaussian 11x11, sigma 1.5) of the "
                          "prediction against the clean target"),
    "colorization": Family("colorization", "mse", False, "MSE of RGB in [0, 1] against the target. " + LPIPS_NOTE),
    "generic": Family("generic", "psnr", True,
                      "generic image metric (not the task's own protocol): PSNR (dB, capped at 100) and MSE of RGB "
                      "in [0, 1] against the target rendering"),
}


# Tasks measured by their own protocol; every other task by the generic image metric.
TASK_FAMILY = {"depth_estimation": "depth", "surface_normal_estimation": "normals",
               "panoptic_segmentation": "panoptic", "foreground_segmentation": "foreground",
               "single_object_detection": "box", "pose_estimation": "pose", "colorization": "colorization",
               **dict.fromkeys(("semantic_segmentation", "instance_segmentation"), "segmentation"),
               **dict.fromkeys(RESTORATION, "restoration")}


def task_family(task: str) -> Family:
    """The :class:`Family` that measures ``task``."""
    return FAMILIES[TASK_FAMILY.get(task, "generic")]


# --------------------------------------------------------------------------- scoring


def snap_to_palette(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 prediction -> the same with each pixel replaced by the nearest of the
    target's palette colours plus black (:func:`lavin_model.metrics.nearest_palette_labels`)."""
    return PALETTE[M.nearest_palette_labels(pred, target)[0]]


def score_prediction(task: str, pred: np.ndarray, target: np.ndarray, raw: np.ndarray | None = None,
                     meta: dict | None = None) -> dict[str, float]:
    """The metrics of one prediction by its task family's protocol (:data:`FAMILIES`).

    pred, target: (H, W, 3) uint8 RGB of one size (the pair's target size); raw: the pair's
    ``target_raw`` (depth (H, W) float32 in ``params.depth_kind``, normals (H, W, 3) float16)
    or None; meta: the pair's json. Raises ValueError on a target that cannot be measured.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    params = (meta or {}).get("params") or {}
    fam = task_family(task)
    if fam.name == "depth":
        if raw is not None:
            if raw.shape != target.shape[:2]:
                raise ValueError(f"target_raw is {raw.shape}, the target {target.shape[:2]}: not a depth map of it")
            disp, valid = to_disparity(raw, params.get("depth_kind", "depth"))
        else:
            if "disparity_min" not in params or "disparity_max" not in params:
                raise ValueError("no target_raw and no params.disparity_min/max to decode the target with")
            disp = decode_depth(target, params["disparity_min"], params["disparity_max"])
            valid = np.isfinite(disp) & (disp > 0)
        gt_depth = np.zeros(disp.shape)
        gt_depth[valid] = 1.0 / disp[valid]
        pred_disp = decode_depth(grey(pred))
        pred_disp[np.isnan(pred_disp)] = -1.0 / 254.0  # grey 0 continues the linear scale (alignment is affine)
        m = M.depth_metrics(pred_disp, gt_depth, valid)
        return {"abs_rel": m["abs_rel"], "delta1": m["delta1"]}
    if fam.name == "normals":
        pn, _ = decode_normals(pred)
        if raw is not None:
            if raw.shape != target.shape:
                raise ValueError(f"target_raw is {raw.shape}, the target {target.shape}: not a normal map of it")
            gt = raw.astype(np.float32)
        else:
            gt, _ = decode_normals(target)
        return M.normal_metrics(pn, gt)
    if fam.name in ("segmentation", "panoptic"):
        pl, gl = M.nearest_palette_labels(pred, target)
        return {"miou": M.miou(pl, gl, ignore_index=0 if fam.name == "panoptic" else None)}
    if fam.name == "foreground":
        return {"iou": M.foreground_iou(pred, target)}
    if fam.name == "box":
        return {"box_iou": M.single_box_iou(pred, target)}
    if fam.name == "pose":
        skeleton = [tuple(e) for e in params.get("skeleton") or COCO_SKELETON]
        kps = params.get("keypoints") or []
        n = len(kps[0]) if kps else 1 + max(max(e) for e in skeleton)
        gt_kp = decode_keypoints(target, skeleton, n)
        pred_kp = decode_keypoints(snap_to_palette(pred, target), skeleton, n)
        return {"pck": M.pck(pred_kp, gt_kp, PCK_ALPHA * max(target.shape[:2]))}
    if fam.name == "restoration":
        return {"psnr": M.psnr(pred, target), "ssim": M.ssim(pred, target)}
    if fam.name == "colorization":
        return {"mse": M.mse(pred, target)}
    return {"psnr": M.psnr(pred, target), "mse": M.mse(pred, target)}


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PairRef:
    """One pair sample of a committed shard: where it is and what its json says."""

    task: str
    tar: Path
    key: str
    base_key: str  # the source item: variants of one image share it
    split: str  # "train" | "val" (a json without "split" is train)
    meta: dict = field(compare=False, hash=False, repr=False)

    @property
    def id(self) -> str:
        """``<task>/<shard>.tar:<key>``: stable wherever the pairs folder lies."""
        return f"{self.task}/{self.tar.name}:{self.key}"


def _read_jsons(tar: Path) -> list[tuple[str, dict]]:
    """[(key, json)] of a shard tar, in file order."""
    out = []
    try:
        with tarfile.open(tar, "r") as tf:
            for info in tf:
                if not info.isfile() or not info.name.endswith(".json"):
                    continue
                key = Path(info.name).name.partition(".")[0]
                try:
                    meta = json.loads(tf.extractfile(info).read())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise EvalError(f"{tar}: {key}.json is not valid JSON ({e})") from None
                if not isinstance(meta, dict):
                    raise EvalError(f"{tar}: {key}.json is not a JSON object")
                out.append((key, meta))
    except (tarfile.TarError, OSError) as e:
        raise EvalError(f"{tar}: cannot read the shard ({e})") from None
    return out


def scan_pairs(root: str | Path, tasks: list[str] | None = None) -> tuple[dict[str, list[PairRef]], dict[str, str]]:
    """The pairs of the committed shards (:func:`lavin_data.shards.shard_done`) under
    ``root/<task>/*.tar`` (``root``: a pairs folder, or a build folder for its ``pairs/``), by
    task, and {task: why skipped} for video and empty folders. ``tasks`` restricts the folders
    read (each must exist)."""
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"{root}: pairs folder not found (expected OUT/pairs/<task>/<source>-NNNNNN.tar)")
    root = build_pairs_folder(root) or root
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    if tasks:
        for t in tasks:
            if t not in present:
                raise EvalError(f"{root / t}: no such task folder (task folders here: {', '.join(present) or 'none'})")
    refs: dict[str, list[PairRef]] = {}
    skipped: dict[str, str] = {}
    for task in tasks or present:
        if task in VIDEO_TASKS:
            skipped[task] = "video task (clips): not evaluated"
            continue
        tars = sorted((root / task).glob("*.tar"))
        done = [t for t in tars if shard_done(t)]
        if not done:
            skipped[task] = f"no committed shard in {root / task} ({len(tars)} uncommitted tar(s))"
            continue
        out = []
        for tar in done:
            for key, meta in _read_jsons(tar):
                if int(meta.get("frames", 1) or 1) > 1:
                    skipped[task] = (f"video task folder (clips: {tar}: {key} has {meta['frames']} frames): "
                                     "not evaluated")
                    break
                try:
                    split, base = pair_split(key, meta)
                except ValueError as e:
                    raise EvalError(f"{tar}: {e}") from None
                out.append(PairRef(task, tar, key, base, split, meta))
            if task in skipped:
                break
        if task not in skipped:
            refs[task] = out
    return refs, skipped


def select_queries(refs: list[PairRef], split: str, limit: int, seed: int) -> list[PairRef]:
    """The pairs of ``split``, at most ``limit`` of them (a draw by ``seed``), sorted by id."""
    cands = sorted((r for r in refs if r.split == split), key=lambda r: r.id)
    if len(cands) > limit:
        pick = sample_rng(seed, "queries", cands[0].task).choice(len(cands), size=limit, replace=False)
        cands = [cands[i] for i in sorted(pick.tolist())]
    return cands


def context_pool(refs: list[PairRef], split: str) -> tuple[list[PairRef], str]:
    """The pairs contexts are drawn from: the task's ``train`` pairs, or its ``split`` pairs
    when it has no train pair; and a word saying which."""
    train = [r for r in refs if r.split == "train"]
    if train:
        return train, "train"
    return [r for r in refs if r.split == split], f"{split} (the task has no train pairs)"


def choose_context(pool: list[PairRef], query: PairRef, n: int, seed: int, salt: str = "") -> list[PairRef]:
    """Up to ``n`` context pairs for ``query``: a draw by (``seed``, ``salt``, the query's id)
    from ``pool`` without the pairs of the query's own source item (same ``base_key``). The
    first k of a draw for n are the draw for k, so contexts of a sweep are nested."""
    cands = sorted((r for r in pool if r.base_key != query.base_key), key=lambda r: r.id)
    order = sample_rng(seed, "context", salt, query.id).permutation(len(cands))
    return [cands[i] for i in order[:n]]


class PairLoader:
    """Reads pair members by key from their shards (one open :class:`ShardReader` per tar)."""

    def __init__(self) -> None:
        self._readers: dict[Path, ShardReader] = {}

    def members(self, ref: PairRef) -> dict[str, bytes]:
        try:
            if ref.tar not in self._readers:
                self._readers[ref.tar] = ShardReader(ref.tar)
            return self._readers[ref.tar][ref.key]
        except (KeyError, OSError, tarfile.TarError) as e:
            raise EvalError(f"{ref.tar}: cannot read sample {ref.key} ({e})") from None

    def image(self, ref: PairRef, role: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of ``role`` ("input" | "target")."""
        m = self.members(ref)
        ext = next((e for e in (f"{role}.png", f"{role}.jpg") if e in m), None)
        if ext is None:
            raise EvalError(f"{ref.tar}: sample {ref.key} has no {role}.png or {role}.jpg (members: {sorted(m)})")
        try:
            return to_rgb_uint8(decode_image(m[ext], f"{ref.key}.{ext}"))
        except ValueError as e:
            raise EvalError(f"{ref.tar}: {e}") from None

    def raw(self, ref: PairRef) -> np.ndarray | None:
        """The pair's ``target_raw.npy``, or None."""
        m = self.members(ref)
        if "target_raw.npy" not in m:
            return None
        try:
            return decode_npy(m["target_raw.npy"])
        except (ValueError, OSError) as e:
            raise EvalError(f"{ref.tar}: {ref.key}.target_raw.npy cannot be read ({e})") from None

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()


# --------------------------------------------------------------------------- prediction


class Predictor:
    """In-context prediction over pair samples, batched over queries, with every image's
    latent encoded once (the logic of :func:`lavin_model.infer.predict`)."""

    def __init__(self, model, vae, loader: PairLoader, resolution: int, steps: int = 20, cfg_scale: float = 1.5,
                 seed: int = 0, device="cpu", batch_size: int = 8, echo: Callable = print):
        self.model, self.vae, self.loader = model, vae, loader
        self.resolution, self.steps, self.cfg_scale, self.seed = resolution, steps, cfg_scale, seed
        self.device, self.batch_size, self.echo = device, batch_size, echo
        self._latents: dict[tuple[str, str], object] = {}  # (ref id, role) -> (16, h, w) float32 tensor

    def square(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (R, R, 3) uint8, squashed as ``lavin_model.infer`` does."""
        return squash(img, self.resolution)

    def _encode(self, frames: list[tuple[PairRef, str]]) -> None:
        """Encode (on the VAE's device, in its dtype) the frames not encoded yet."""
        from lavin_data.stvae import encode_uint8, mean_latent

        todo = list(dict.fromkeys((r, role) for r, role in frames if (r.id, role) not in self._latents))
        for i in range(0, len(todo), self.batch_size):
            part = todo[i:i + self.batch_size]
            images = [self.square(self.loader.image(r, role)) for r, role in part]
            z = mean_latent(encode_uint8(self.vae, images))[:, :, 0]  # (B, 16, h, w)
            for (r, role), zi in zip(part, z):
                self._latents[(r.id, role)] = zi

    def predict(self, conds: list[list[tuple[PairRef, str]]], label: str = "") -> np.ndarray:
        """conds: per query, the condition frames [(pair, role)] in order (context pairs'
        input and target, then the query's input), the same count for every query ->
        predictions (Q, R, R, 3) uint8. Chunk k of ``batch_size`` queries samples with noise
        seeded ``seed + k``."""
        import torch

        from lavin_data.stvae import decode_to_uint8
        from lavin_model.flow import sample

        if len({len(c) for c in conds}) > 1:
            raise ValueError("every query of one predict call needs the same number of condition frames")
        self._encode([f for c in conds for f in c])
        out = []
        for k, i in enumerate(range(0, len(conds), self.batch_size)):
            part = conds[i:i + self.batch_size]
            cond = torch.stack([torch.stack([self._latents[(r.id, role)] for r, role in c], dim=1) for c in part])
            gen = torch.Generator(device=self.device).manual_seed(self.seed + k)
            z = sample(self.model, cond, (len(part), cond.shape[1], 1, *cond.shape[-2:]), self.steps, self.cfg_scale,
                       gen)
            out.append(decode_to_uint8(self.vae, z))
            self.echo(f"[evaluate] {label}: {i + len(part)}/{len(conds)} predictions", flush=True)
        return np.concatenate(out)


# --------------------------------------------------------------------------- the run


def _finite(x):
    """JSON-safe: non-finite floats become None, recursively."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _mean(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the queries, NaN values (e.g. PCK without keypoints) left out."""
    out = {}
    for k in per_query[0]:
        vals = np.array([q[k] for q in per_query], np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if vals.size else float("nan")
    return out


def condition_frames(query: PairRef, context: list[PairRef]) -> list[tuple[PairRef, str]]:
    """The condition of a query: [(c_1, "input"), (c_1, "target"), ..., (query, "input")]."""
    return [(c, role) for c in context for role in ("input", "target")] + [(query, "input")]


def evaluate_task(task: str, refs: list[PairRef], all_refs: dict[str, list[PairRef]], predictor: Predictor,
                  split: str, context: int, sweep: list[int], probe: bool, probe_task: str | None, limit: int,
                  seed: int, echo: Callable = print) -> dict:
    """Metrics, sweep and probe of one task (see the module docstring); raises EvalError
    when the task has no query or no context pair from another source item."""
    fam = task_family(task)
    queries = select_queries(refs, split, limit, seed)
    pool, pool_name = context_pool(refs, split)
    ns = sorted(set(sweep) | {context})
    orders = {q.id: choose_context(pool, q, max(ns), seed, task) for q in queries}
    avail = min(len(o) for o in orders.values())
    if avail == 0:
        raise EvalError(f"{task}: no context pair from another source item than the query "
                        f"(pool: {len(pool)} {pool_name} pair(s))")
    echo(f"[evaluate] {task}: {len(queries)} {split} queries, context from {len(pool)} {pool_name} pairs "
         f"({fam.main}, {'higher' if fam.higher_is_better else 'lower'} is better)", flush=True)

    def run(label: str, conds: list[list[tuple[PairRef, str]]]) -> list[dict[str, float]]:
        preds = predictor.predict(conds, f"{task} {label}")
        scores = []
        for q, p in zip(queries, preds):
            target = predictor.loader.image(q, "target")
            h, w = target.shape[:2]
            if (h, w) != p.shape[:2]:
                interp = cv2.INTER_NEAREST if fam.name in ("segmentation", "panoptic", "pose") else cv2.INTER_CUBIC
                p = cv2.resize(p, (w, h), interpolation=interp)
            try:
                scores.append(score_prediction(task, p, target, predictor.loader.raw(q), q.meta))
            except ValueError as e:
                raise EvalError(f"{q.tar}: {q.key}: cannot be measured ({e})") from None
        return scores

    by_n: dict[int, list[dict[str, float]]] = {}
    sweep_out: dict[str, dict] = {}
    for n in ns:
        used = min(n, avail)
        if used not in by_n:
            by_n[used] = run(f"N={used}", [condition_frames(q, orders[q.id][:used]) for q in queries])
        if n in sweep:
            sweep_out[str(n)] = {fam.main: _mean(by_n[used])[fam.main], "n_context_used": used}
    used = min(context, avail)
    main = by_n[used]
    out = {
        "family": fam.name, "protocol": fam.protocol, "main_metric": fam.main,
        "higher_is_better": fam.higher_is_better, "metrics": _mean(main), "n": len(queries),
        "context": context, "n_context_used": used, "context_pool": pool_name, "sweep": sweep_out,
        "per_query": [{"pair": q.id, "base_key": q.base_key, "context": [c.id for c in orders[q.id][:used]],
                       "metrics": s} for q, s in zip(queries, main)],
    }
    if fam.name == "colorization":
        out["lpips"] = LPIPS_NOTE
    if probe:
        others = sorted(t for t in all_refs if t != task)
        other = probe_task if probe_task and probe_task != task else (others[0] if others else None)
        res: dict = {"metric": fam.main, "right_task": out["metrics"][fam.main], "other_task_name": other}
        if other is None or other not in all_refs:
            res["other_task"] = None
            res["note"] = "no other image task among the pairs for the wrong-context condition"
        else:
            opool, _ = context_pool(all_refs[other], split)
            octx = {q.id: choose_context(opool, q, used, seed, "probe:" + other) for q in queries}
            k = min(len(c) for c in octx.values())
            if k == 0:
                res["other_task"] = None
                res["note"] = f"{other} has no pair from another source item than the queries"
            else:
                conds = [condition_frames(q, octx[q.id][:k]) for q in queries]
                res["other_task"] = _mean(run(f"probe {other} context", conds))[fam.main]
                res["other_task_n_context_used"] = k
        res["no_context"] = _mean(run("probe no context", [condition_frames(q, []) for q in queries]))[fam.main]
        out["probe"] = res
    return out


def y_limits(values: list[float | None], higher_is_better: bool = True) -> tuple[float, float] | None:
    """Y-axis limits for a metric's values: from 0 for a non-negative metric (every metric here
    but the few that can go negative) up to 1 for a score in [0, 1] (δ1, SSIM, IoU), else to
    10 % over the largest value (an error such as AbsRel or MSE: halving it stays visible);
    a metric that goes negative gets its range widened to at least 20 % of its magnitude. So a
    difference in the 5th digit never fills the plot as if it were a trend. None when no value
    is finite."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    lo, hi = min(v), max(v)
    if lo >= 0:
        if higher_is_better and hi <= 1.0:
            return 0.0, 1.0
        return 0.0, hi * 1.1 if hi > 0 else 1.0
    pad = max(hi - lo, 0.2 * max(abs(lo), abs(hi)), 1e-6) * 0.55
    mid = (lo + hi) / 2
    return mid - pad, mid + pad


def plot(results: dict[str, dict], path: Path) -> None:
    """metrics.png: per task, the sweep's main metric against N and the probe's three bars."""
    fig = figure(results)
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def figure(results: dict[str, dict]):
    """The figure of :func:`plot` (a matplotlib Figure): two axes per task, sweep then probe,
    y-axes by :func:`y_limits` and without offset notation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(results)
    fig, axes = plt.subplots(max(1, len(tasks)), 2, figsize=(9, 2.4 * max(1, len(tasks))), squeeze=False)
    for row, task in zip(axes, tasks):
        r = results[task]
        arrow = "↑" if r["higher_is_better"] else "↓"
        ax = row[0]
        ns = sorted(r["sweep"], key=int)
        if ns:
            ys = [r["sweep"][n][r["main_metric"]] for n in ns]
            ax.plot([int(n) for n in ns], [np.nan if y is None else y for y in ys], "o-")
            ax.set_xticks([int(n) for n in ns])
            ax.set_xlabel("context pairs N")
            lim = y_limits(ys, r["higher_is_better"])
            if lim is not None:
                ax.set_ylim(*lim)
            ax.ticklabel_format(axis="y", useOffset=False)
        else:
            ax.text(0.5, 0.5, "no sweep", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{task}: {r['main_metric']} {arrow}", fontsize=9)
        ax = row[1]
        p = r.get("probe")
        if p:
            names = ["right task", f"other: {p['other_task_name'] or '-'}", "no context"]
            vals = [p["right_task"], p["other_task"], p["no_context"]]
            ax.bar(range(3), [0.0 if v is None or not math.isfinite(v) else v for v in vals],
                   color=["tab:green", "tab:orange", "tab:grey"])
            ax.set_xticks(range(3), names, fontsize=7)
            ax.set_title(f"probe: {r['main_metric']} {arrow}", fontsize=9)
            lim = y_limits(vals, r["higher_is_better"])
            if lim is not None:
                ax.set_ylim(*lim)
            ax.ticklabel_format(axis="y", useOffset=False)
        else:
            ax.text(0.5, 0.5, "no probe", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def parse_sweep(text: str) -> list[int]:
    """``"1-8"`` -> [1..8]; ``"1,2,4"`` -> [1, 2, 4]; ``"none"`` or ``""`` -> []."""
    text = text.strip().lower()
    if text in ("", "none", "0"):
        return []
    out: set[int] = set()
    try:
        for part in text.split(","):
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b or a)
            if lo < 1 or hi < lo:
                raise ValueError
            out.update(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sweep: expected e.g. 1-8 or 1,2,4 (N >= 1), got {text!r}") from None
    return sorted(out)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def load_models(args, device, dtype):
    """(J-DiT, ST-VAE) from the arguments; EvalError naming the file when one cannot be loaded."""
    import torch

    from lavin_data.stvae import build_stvae
    from lavin_data.weights import CheckpointError
    from lavin_model.jdit import jdit_from_checkpoint

    try:
        model = jdit_from_checkpoint(args.checkpoint, args.size).to(device, dtype).eval()
    except CheckpointError as e:
        raise EvalError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a corrupt file raises whatever its reader raises
        raise EvalError(f"{args.checkpoint}: cannot load the J-DiT checkpoint ({type(e).__name__}: {e})") from None
    try:
        cfg = json.loads(args.vae_config) if args.vae_config else None
    except json.JSONDecodeError as e:
        raise EvalError(f"--vae-config is not valid JSON ({e})") from None
    try:
        vae = build_stvae(cfg, args.vae).to(device)
    except CheckpointError as e:
        raise EvalError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        raise EvalError(f"{args.vae or '--vae-config'}: cannot build the ST-VAE ({type(e).__name__}: {e})") from None
    if dtype != torch.float32:
        vae = vae.to(dtype)
    return model, vae


def run(args, echo: Callable = print) -> dict:
    """The whole evaluation of parsed arguments; returns what it writes to metrics.json."""
    import torch

    t0 = time.time()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    refs, skipped = scan_pairs(args.pairs, tasks)
    for task, why in skipped.items():
        echo(f"[evaluate] skip {task}: {why}", flush=True)
    with_queries = {t: r for t, r in refs.items() if any(p.split == args.split for p in r)}
    for t in sorted(set(refs) - set(with_queries)):
        skipped[t] = f"no {args.split} pairs ({len(refs[t])} pairs, none with split {args.split!r})"
        echo(f"[evaluate] skip {t}: {skipped[t]}", flush=True)
    if not with_queries:
        raise EvalError(f"{args.pairs}: no {args.split} pairs in any image task folder "
                        f"({', '.join(sorted(refs)) or 'none'}); a pair json without \"split\" counts as train")
    if args.probe_task and args.probe_task not in refs:
        raise EvalError(f"{Path(args.pairs) / args.probe_task}: --probe-task has no image pairs there")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, vae = load_models(args, device, dtype)
    loader = PairLoader()
    predictor = Predictor(model, vae, loader, args.resolution, args.steps, args.cfg_scale, args.seed, device,
                          args.batch_size, echo)
    sweep = parse_sweep(args.sweep) if isinstance(args.sweep, str) else args.sweep
    results: dict[str, dict] = {}
    try:
        for i, task in enumerate(sorted(with_queries)):
            echo(f"[evaluate] task {i + 1}/{len(with_queries)}: {task}", flush=True)
            try:
                results[task] = evaluate_task(task, refs[task], refs, predictor, args.split, args.context, sweep,
                                              args.probe, args.probe_task, args.limit, args.seed, echo)
            except EvalError as e:
                if len(with_queries) == 1:
                    raise
                skipped[task] = str(e)
                echo(f"[evaluate] skip {task}: {e}", flush=True)
                continue
            r = results[task]
            echo(f"[evaluate] {task}: {r['main_metric']} = {r['metrics'][r['main_metric']]:.4g} over {r['n']} "
                 f"queries ({time.time() - t0:.0f} s)", flush=True)
    finally:
        loader.close()
    if not results:
        why = "; ".join(f"{t}: {w}" for t, w in skipped.items())
        raise EvalError(f"{args.pairs}: no task could be evaluated: {why}")
    report = {
        "checkpoint": str(Path(args.checkpoint).resolve()), "vae": str(Path(args.vae).resolve()) if args.vae else None,
        "vae_config": json.loads(args.vae_config) if args.vae_config else None,
        "pairs": str(Path(args.pairs).resolve()), "split": args.split,
        "args": {k: v for k, v in vars(args).items()}, "sweep": sweep,
        "tasks": results, "skipped": skipped, "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_finite(report), indent=1, sort_keys=True, allow_nan=False) + "\n")
    plot(results, out / "metrics.png")
    echo(f"[evaluate] {len(results)} task(s) -> {out / 'metrics.json'}, {out / 'metrics.png'}", flush=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lavin_model.evaluate", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    # Required options have no default to show.
    ap.add_argument("--checkpoint", required=True, default=argparse.SUPPRESS,
                    help="model/ folder written by training, or the released checkpoint")
    ap.add_argument("--size", help="tiny | 0.1B | 1B | 3.4B, when the checkpoint has no config.json")
    ap.add_argument("--vae", help="the ST-VAE checkpoint (released stvae.pt)")
    ap.add_argument("--vae-config", help="JSON architecture overrides of the ST-VAE (tests)")
    ap.add_argument("--pairs", required=True, default=argparse.SUPPRESS,
                    help="OUT/pairs of a build: <task>/<source>-NNNNNN.tar")
    ap.add_argument("--out", required=True, default=argparse.SUPPRESS, help="folder for metrics.json and metrics.png")
    ap.add_argument("--tasks", help="comma-separated task folders; unset, every image task")
    ap.add_argument("--split", default="val", help="the queries' split")
    ap.add_argument("--context", type=_positive, default=4, help="context pairs of the main metrics")
    ap.add_argument("--sweep", type=parse_sweep, default="1-8", help="context lengths of the sweep, e.g. 1-8, 1,2,4 "
                    "or none")
    ap.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                    help="the context-sensitivity probe (right / other task / no context)")
    ap.add_argument("--probe-task", help="the other task of the probe; unset, the first other task by name")
    ap.add_argument("--limit", type=_positive, default=16, help="queries per task")
    ap.add_argument("--resolution", type=int, help="square side every image is squashed to, a multiple of 16 "
                    "(default: the run's training resolution from its training.json, else 256)")
    ap.add_argument("--steps", type=_positive, default=20, help="sampling steps from noise to data (>= 2)")
    ap.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale")
    ap.add_argument("--batch-size", type=_positive, default=8, help="queries per forward pass")
    ap.add_argument("--seed", type=int, default=0, help="seed of the query and context draws and of the noise")
    ap.add_argument("--device", help="torch device; unset, cuda when available")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not Path(args.checkpoint).exists():
            raise EvalError(f"--checkpoint {args.checkpoint}: no such file or folder")
        if args.resolution is not None and args.resolution < 16:
            raise EvalError(f"--resolution must be a positive multiple of 16 (VAE 8 x patch 2), got {args.resolution}")
        try:  # as infer does: the VAE and resolution the run recorded in its training.json
            record, record_file = training_record(args.checkpoint)
            cfg = resolve_vae(args, record, record_file)
            args.vae_config = json.dumps(cfg) if cfg else None
            args.resolution = resolve_resolution(args.resolution, record, record_file)
        except ValueError as e:
            raise EvalError(str(e)) from None
        if args.steps < 2:
            raise EvalError(f"--steps must be at least 2 (time points from noise to data), got {args.steps}")
        run(args)
    except (EvalError, OSError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
