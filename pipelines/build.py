"""``python -m pipelines.build --spec manifests/demo.yaml [--output DIR] [--num-cpus N]``

Plan every source, then stream one row per source shard through Ray Data: ingest the
shard (base shard), render it for every task of its source (one pair shard per task),
and finally write ``manifest.json``, ``report/counts.md``, the report page
``report/index.html`` and the dataset card ``README.md``. Exit codes: 0 done; 2 a bad spec
or input, a failed shard, an output that cannot be written; 3 finished, but a task wrote
no pair or failed on more than the spec's ``max_failure_fraction`` of its samples. Done shards (stats file
present) are skipped, so a killed build resumes where it stopped. Locally Ray starts
with ``--num-cpus``; with ``RAY_ADDRESS`` set it joins that cluster instead (the output
folder must then be on storage every node sees).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lavin_data import __version__
from lavin_data.base import BASE_FORMAT
from lavin_data.cli import HelpFormatter, fail
from lavin_data.labelers import LabelerError, labeler_class
from lavin_data.output_lock import OutputLock, OutputLockError, os_problem
from lavin_data.ray_session import ensure_ray
from lavin_data.registry import TASKS, label_input
from lavin_data.shards import atomic_write, read_stats, remove_temporaries, shard_done
from lavin_data.sources import SourceError, reader_for
from lavin_data.spec import Spec, SpecError, load_spec
from lavin_data.split import assign_split
from pipelines.layout import base_tar, label_tar, pair_tar, plan_path, sample_key

log = logging.getLogger("lavin.build")


class BuildError(RuntimeError):
    """The build cannot start or did not finish; the message says why and where."""


class QualityError(BuildError):
    """The build finished (every shard committed, manifest and report written) but a task
    wrote no pair, or failed on more samples than the spec's ``max_failure_fraction``."""


# --------------------------------------------------------------------------- preflight


def preflight(spec: Spec) -> None:
    """Everything that can be checked before work: renderers, readers, source files, output."""
    problems = []
    for i, t in enumerate(spec.tasks):
        if not TASKS[t.task].built:
            problems.append(f"tasks[{i}]: task {t.task!r} is in the spec format but has no renderer yet")
    for i, lab in enumerate(spec.labelers):
        try:
            labeler_class(lab.kind).preflight(lab)
        except LabelerError as e:
            problems.append(f"labelers[{i}] ({lab.name}): {e}")
    provides: dict[str, frozenset[str]] = {}
    frames: dict[str, str] = {}
    for src in spec.sources:
        try:
            reader = reader_for(src.kind)
            provides[src.name], frames[src.name] = reader.provides(src), reader.frames(src)
            reader.check(src)
        except SourceError as e:
            problems.append(f"source {src.name!r}: {e}")
    for i, t in enumerate(spec.tasks):
        wants = label_input(t.task)
        if t.labeler is not None:
            lab = spec.labeler(t.labeler)
            try:
                out = labeler_class(lab.kind).output
            except LabelerError:
                continue  # reported above
            if wants is None:
                problems.append(f"tasks[{i}]: task {t.task!r} does not use labels; remove `labeler: {t.labeler}`")
            elif wants != out:
                problems.append(f"tasks[{i}]: task {t.task!r} needs {wants}, but labeler {t.labeler!r} "
                                f"({lab.kind}) gives {out}")
        if t.source in frames and TASKS[t.task].frames != frames[t.source]:
            what = {"image": "images", "video": "clips"}
            problems.append(f"tasks[{i}]: task {t.task!r} works on {what[TASKS[t.task].frames]}, but source "
                            f"{t.source!r} gives {what[frames[t.source]]}")
            continue
        clip = getattr(spec.source(t.source), "clip_frames", None)
        if t.task == "frame_prediction" and clip is not None:
            need = t.options["input_frames"] + t.options["target_frames"] - 1
            if clip < need:
                problems.append(f"tasks[{i}]: frame_prediction {t.options['input_frames']} -> "
                                f"{t.options['target_frames']} frames needs clips of {need} frames; source "
                                f"{t.source!r} cuts {clip} (set its clip_frames, or the task's input_frames and "
                                f"target_frames)")
        if t.source in provides:
            lacking = TASKS[t.task].consumes - provides[t.source] - ({wants} if t.labeler else set())
            if lacking:
                hint = f"; give it a `labeler:` that makes {wants}" if wants in lacking else ""
                problems.append(f"tasks[{i}]: task {t.task!r} needs {', '.join(sorted(lacking))}, which source "
                                f"{t.source!r} ({spec.source(t.source).kind}) does not provide{hint}")
    out = Path(spec.output).resolve()
    for src in spec.sources:
        for field, value in src.model_dump().items():
            if isinstance(value, str) and field != "name" and Path(value).is_dir() and \
                    out.is_relative_to(root := Path(value).resolve()):
                problems.append(f"output {out} is inside source {src.name!r} ({field} {root}): the build would read "
                                "its own files back as data; choose an output outside it")
    if problems:
        raise BuildError("cannot build this spec:\n  " + "\n  ".join(problems))


def check_output(spec: Spec) -> None:
    """Refuse an output folder that holds another spec's build (call it holding the lock)."""
    out = Path(spec.output)
    lock = out / "spec.json"
    if lock.exists():
        try:
            held = json.loads(lock.read_text())
            if not isinstance(held, dict) or not isinstance(held.get("spec_hash", ""), str):
                raise ValueError(f"expected a JSON object with a spec_hash, got {type(held).__name__}")
        except (ValueError, UnicodeDecodeError) as e:
            raise BuildError(f"{lock} is unreadable ({type(e).__name__}: {e}); it records which spec this folder "
                             "holds. Delete the folder (or just spec.json, if you know it holds this spec's "
                             "build), or use another --output.") from None
        old = held.get("spec_hash") or ""
        if held.get("base_format", 1) != BASE_FORMAT:
            raise BuildError(
                f"{out} holds a build in base-sample format {held.get('base_format', 1)}, and this version writes "
                f"format {BASE_FORMAT}; its shards cannot be resumed. Use another --output, or delete that folder.")
        if old != spec.spec_hash():
            raise BuildError(
                f"{out} holds a build of a different spec (spec hash {old[:12]}, this spec {spec.spec_hash()[:12]}); "
                "done shards would be mixed with new ones. Use another --output, or delete that folder."
            )


# A source's plan: its rows (the reader's item columns, then key, shard, split), either as a
# pyarrow Table (a plan read back, or planned by a reader's ``plan_table``) or as the list of
# row dicts of a reader that only has ``plan``; and whether it is already written.
Plan = tuple[pa.Table | list[dict], bool]
PLAN_COLUMNS = ("key", "shard", "split")  # added to the reader's item columns, in this order
_CHUNK_ROWS = 1 << 16  # keys and splits are made this many rows at a time


def plan_source(spec: Spec, source: str) -> Plan:
    """A source's planned rows and whether they are already written: a resumed build reuses
    the written plan unchanged (read as a Table); otherwise the reader lists the items
    (nothing is written).

    A reader with ``plan_table(src)`` (image_folder, hf_dataset) gives its items as columns
    (the rows of ``plan(src)``, typed as ``Table.from_pylist`` would type them), and the plan
    stays columnar: 1.28 M items plan in seconds, in a few hundred MB, where a list of dicts
    took 25 s and 1 GB (``benchmarks/bench_plan.py``). Such a reader may define
    ``own_split_of_all(src)``, its own split being the same for every item. Other readers
    keep their list of item dicts, and each row is that dict plus key, shard and split."""
    path = plan_path(spec.output, source)
    if path.exists():
        table = pq.read_table(path)
        pa.default_memory_pool().release_unused()  # the decoder's buffers
        return table, True
    src = spec.source(source)
    reader = reader_for(src.kind)
    if reader.columnar:
        return _plan_columns(spec, src, reader), False
    items = reader.plan(src)
    if not items:  # a wrong layout or an empty folder: say so here, not as an empty-table error later
        from lavin_data.sources import no_items_error

        raise no_items_error(src, reader)
    if src.limit is not None:
        items = items[: src.limit]
    rows = []
    for i, it in enumerate(items):
        key = sample_key(source, it["item_id"])
        split = assign_split(key, src.val_fraction, src.holdout, reader.own_split(src, it))
        rows.append(dict(it, key=key, shard=i // spec.shard_size, split=split))
    return rows, False


def _plan_columns(spec: Spec, src, reader) -> pa.Table:
    """:func:`plan_source` for a reader with ``plan_table``: the same rows as the list path
    (keys by :func:`sample_key`, splits by :func:`assign_split`, item by item, in chunks of
    :data:`_CHUNK_ROWS` so that no list of every key is held), as a Table."""
    import numpy as np

    items = reader.plan_table(src)
    if items.num_rows == 0:
        from lavin_data.sources import no_items_error

        raise no_items_error(src, reader)
    if src.limit is not None:
        items = items.slice(0, src.limit)
    n = items.num_rows
    # A columnar reader's own split is one for all its items (hf_dataset: the dataset's split).
    own = reader.own_split_of_all(src)
    keys, splits = [], []
    for a in range(0, n, _CHUNK_ROWS):
        ks = [sample_key(src.name, i) for i in items.column("item_id").slice(a, _CHUNK_ROWS).to_pylist()]
        splits.append(pa.array([assign_split(k, src.val_fraction, src.holdout, own) for k in ks], pa.string()))
        keys.append(pa.array(ks, pa.string()))
    items = (items.append_column("key", pa.chunked_array(keys, pa.string()))
             .append_column("shard", pa.array(np.arange(n, dtype=np.int64) // spec.shard_size, pa.int64()))
             .append_column("split", pa.chunked_array(splits, pa.string())))
    pa.default_memory_pool().release_unused()  # what the intermediate columns took, back to the system
    return items


def plan_sources(spec: Spec, write: bool = True) -> dict[str, Plan]:
    """Plan every source ({name: (rows, already written)}), then (``write``) write the plans
    not written yet. The build plans before it writes ``spec.json`` and the plans after it:
    a source that cannot be planned (no items, a broken annotation file) stops the build
    before anything is written, so the user can fix the spec and run again into the same
    output, and no plan is ever on disk without the spec it belongs to."""
    plans = {src.name: plan_source(spec, src.name) for src in spec.sources}
    if write:
        write_plans(spec, plans)
    return plans


def plan_row_group(spec: Spec) -> int:
    """Rows per row group of a written plan: whole shards, about 64 Ki rows. Readers of one
    shard's rows (``stages.planned_splits`` filters on ``shard``) then decode one row group,
    skipping the others by their statistics, instead of the whole plan."""
    return spec.shard_size * max(1, _CHUNK_ROWS // spec.shard_size)


def write_plans(spec: Spec, plans: dict[str, Plan]) -> None:
    for name, (rows, written) in plans.items():
        if not written:
            path = plan_path(spec.output, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            sink = pa.BufferOutputStream()
            table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
            pq.write_table(table, sink, row_group_size=plan_row_group(spec))
            atomic_write(path, sink.getvalue().to_pybytes())
            del sink
            pa.default_memory_pool().release_unused()  # the encoder's buffers, before the shards' JSON


def shard_items(plan: pa.Table | list[dict],
                wanted: Callable[[int], bool] = lambda shard: True) -> Iterator[tuple[int, str | None]]:
    """``(shard, items JSON)`` of a plan, by shard number: the rows of each shard in plan
    order, without key, shard and split, as ``json.dumps`` of their dicts (a row dict's own
    values for a list plan; for a Table, what ``to_pylist`` gives, one shard at a time). The
    JSON is None for a shard that ``wanted(shard)`` refuses (a done one: only its number is
    needed)."""
    if not isinstance(plan, pa.Table):
        by_shard: dict[int, list[dict]] = {}
        for row in plan:
            by_shard.setdefault(row["shard"], []).append({k: v for k, v in row.items() if k not in PLAN_COLUMNS})
        for shard, items in sorted(by_shard.items()):
            yield shard, json.dumps(items) if wanted(shard) else None
        return
    import numpy as np

    shard = plan.column("shard").to_numpy()
    if len(shard) > 1 and (np.diff(shard) < 0).any():  # not written by a build (they are in shard order)
        order = np.argsort(shard, kind="stable")
        plan, shard = plan.take(order), shard[order]
    items = plan.drop_columns([c for c in PLAN_COLUMNS if c in plan.column_names])
    bounds = [0, *(np.flatnonzero(np.diff(shard)) + 1).tolist(), len(shard)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        # one shard's rows as dicts at a time: never a dict per item of the whole plan
        yield int(shard[a]), json.dumps(items.slice(a, b - a).to_pylist()) if wanted(int(shard[a])) else None


def shard_jobs(spec: Spec, plans: dict[str, Plan] | None = None) -> tuple[list[dict], int]:
    """Rows for Ray Data, one per source shard with work left; and the total shard count.
    ``plans``: :func:`plan_sources` of the spec (planned and written here when not given)."""
    jobs, total = [], 0
    plans = plan_sources(spec) if plans is None else plans
    for src in spec.sources:
        tasks = [t.task for t in spec.tasks if t.source == src.name]
        labelers = [lab.name for lab in spec.labelers if lab.source == src.name]
        meta = None

        def todo(shard: int, src=src, tasks=tasks, labelers=labelers) -> bool:
            return not (shard_done(base_tar(spec.output, src.name, shard)) and all(
                shard_done(pair_tar(spec.output, t, src.name, shard)) for t in tasks) and all(
                shard_done(label_tar(spec.output, lab, src.name, shard)) for lab in labelers))

        for shard, items in shard_items(plans[src.name][0], todo):
            total += 1
            if items is not None:
                if meta is None:
                    meta = json.dumps(reader_for(src.kind).source_meta(src))
                jobs.append({"source": src.name, "shard": shard, "items": items, "tasks": json.dumps(tasks),
                             "source_meta": meta})
    return jobs, total


class ShardWorker:
    """A Ray Data actor running whole shard jobs (ingest, then render for every task); the
    spec is parsed once per actor (``stages.parse_spec_json`` caches it). An actor pool keeps
    a second job queued on each actor, so a worker never waits on the scheduler between
    shards (plain tasks left ~0.2 s idle per ~1 s shard on 2 cores)."""

    def __init__(self):
        from pipelines import stages  # imported once per actor, not per shard

        self.stages = stages

    def __call__(self, row: dict, spec_json: str) -> dict:
        return self.stages.run_shard_job(spec_json, row)


class LabelWorker:
    """A Ray Data actor holding one labeler's model, loaded once, labelling whole shards."""

    def __init__(self, spec_json: str, labeler_name: str):
        from pipelines import stages

        spec = Spec.model_validate_json(spec_json)
        lab = spec.labeler(labeler_name)
        self.labeler = labeler_class(lab.kind)(lab)
        self.name, self.stages = labeler_name, stages

    def __call__(self, row: dict, spec_json: str) -> dict:
        return self.stages.run_label_job(spec_json, row, self.name, self.labeler)


def _ingest(row: dict, spec_json: str) -> dict:
    from pipelines.stages import run_ingest_job

    return run_ingest_job(spec_json, row)


def _render(row: dict, spec_json: str) -> dict:
    from pipelines.stages import run_render_job

    return run_render_job(spec_json, row)


def pipeline(spec: Spec, jobs: list[dict]):
    """The Ray Data plan. Without labelers: one fused ingest+render actor pool. With
    labelers: ingest tasks -> one actor pool per labeler (its ``num_actors``, ``num_gpus``)
    -> render tasks; rows are shards, and a labeler passes other sources' rows through."""
    import ray

    sj = {"spec_json": spec.model_dump_json()}
    ds = ray.data.from_items(jobs, override_num_blocks=len(jobs))
    if not spec.labelers:
        n_workers = max(1, min(len(jobs), int(ray.cluster_resources().get("CPU", 1))))
        return ds.map(ShardWorker, fn_kwargs=sj, num_cpus=1,
                      compute=ray.data.ActorPoolStrategy(size=n_workers, max_tasks_in_flight_per_actor=2))
    ds = ds.map(_ingest, fn_kwargs=sj, num_cpus=1)
    for lab in spec.labelers:
        ds = ds.map(LabelWorker, fn_constructor_kwargs={"spec_json": sj["spec_json"], "labeler_name": lab.name},
                    fn_kwargs=sj, compute=ray.data.ActorPoolStrategy(size=lab.num_actors),
                    num_gpus=lab.num_gpus or None, num_cpus=1)
    return ds.map(_render, fn_kwargs=sj, num_cpus=1)


# --------------------------------------------------------------------------- build


def build(spec: Spec, num_cpus: int | None = None, echo=print) -> dict:
    """Run (or resume) the whole build; returns the manifest. Raises BuildError on failure,
    OSError where the output cannot be written."""
    preflight(spec)
    try:
        with OutputLock(spec.output) as lock:
            if lock.stale_holder:
                echo(f"[build] the last run into {spec.output} ({lock.stale_holder}) ended without finishing; resuming")
            return _build_locked(spec, num_cpus, echo)
    except OutputLockError as e:
        raise BuildError(str(e)) from None


def _build_locked(spec: Spec, num_cpus: int | None, echo) -> dict:
    check_output(spec)
    out = Path(spec.output)
    t0 = time.perf_counter()
    plans = plan_sources(spec, write=False)  # before spec.json: a source that cannot be planned leaves no trace
    atomic_write(out / "spec.json", (json.dumps({"spec_hash": spec.spec_hash(), "base_format": BASE_FORMAT,
                                                 "spec": spec.model_dump(mode="json")}, indent=1, sort_keys=True)
                                     + "\n").encode())
    gone = remove_temporaries(out)  # left by killed or failed runs; ours is the only writer now
    if gone:
        echo(f"[build] removed {len(gone)} temporary file(s) of an earlier run")
    write_plans(spec, plans)
    jobs, total = shard_jobs(spec, plans)
    del plans  # an ImageNet plan is ~150 MiB; the jobs hold what the run needs
    echo(f"[build] {spec.name}: {total} source shards, {total - len(jobs)} already done, {len(jobs)} to do "
         f"-> {out}")
    errors: list[str] = []
    timeline: list[tuple[int, float, float]] = []  # (worker pid, shard start, shard end) since execution start
    n_pairs = n_fail = 0
    t_work = 0.0
    if jobs:

        ensure_ray(num_cpus)
        ds = pipeline(spec, jobs)
        tw = time.perf_counter()
        t_wall0 = time.time()
        for i, row in enumerate(ds.iter_rows(), 1):
            timeline.append((row["pid"], row["t_start"] - t_wall0, row["t_end"] - t_wall0))
            if row["error"]:
                errors.append(row["error"])
                echo(f"[build] shard failed: {row['error']}")
            renders = [st for st in json.loads(row["render"]) if not st.get("skipped")]
            n_pairs += sum(st["n_ok"] for st in renders)
            n_fail += sum(st["n_error"] for st in renders)
            el = time.perf_counter() - tw
            echo(f"[build] {total - len(jobs) + i}/{total} shards | {n_pairs} pairs written, {n_fail} failed | "
                 f"{n_pairs / max(el, 1e-9):.1f} pairs/s | {el:.1f}s"
                 + (f" | ERROR in {row['source']} shard {row['shard']}" if row["error"] else ""))
        t_work = time.perf_counter() - tw
    manifest = write_manifest(spec)
    from pipelines.report import write_dataset_card, write_report

    write_report(spec, manifest)
    write_dataset_card(spec, manifest)
    echo(f"[build] report: {out / 'report' / 'index.html'}, dataset card: {out / 'README.md'}")
    manifest["run"] = {"pairs_written": n_pairs, "pairs_failed": n_fail, "work_seconds": round(t_work, 3),
                       "pairs_per_second": round(n_pairs / t_work, 2) if t_work else None,
                       "seconds": round(time.perf_counter() - t0, 3), "timeline": timeline}
    if errors:
        raise BuildError(f"{len(errors)} shard(s) failed; the others are committed and a re-run retries only "
                         "these:\n" + "\n".join(errors))
    problems = quality_problems(spec, manifest)
    if problems:
        raise QualityError(f"the build finished, but {len(problems)} task(s) did not make usable data (see "
                           f"{out / 'report' / 'counts.md'}):\n  " + "\n  ".join(problems))
    return manifest


def _top_reasons(reasons: dict[str, int], n: int = 3) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{c} {k}" for k, c in top) + (", ..." if len(reasons) > n else "")


def quality_problems(spec: Spec, manifest: dict) -> list[str]:
    """Tasks that wrote no pair, or failed on more than ``spec.max_failure_fraction`` of their
    samples: one line each, with the counts and the commonest reasons."""
    problems = []
    for t in spec.tasks:
        ok = manifest["counts"][t.task][t.source]
        failed = manifest["failures"][t.task][t.source]
        skipped = manifest["skipped"][t.task][t.source]
        reasons = manifest["reasons"][t.task][t.source]
        n = ok + failed + skipped
        detail = "; ".join(f"{what} {k}: {_top_reasons(reasons[what])}" for what, k in
                           (("error", failed), ("skipped", skipped)) if k)
        if ok == 0:
            problems.append(f"{t.task} on {t.source}: no pair written from {n} sample(s) ({detail})")
        elif failed > spec.max_failure_fraction * n:
            problems.append(f"{t.task} on {t.source}: {failed} of {n} samples failed ({failed / n:.1%}, over "
                            f"max_failure_fraction {spec.max_failure_fraction:.1%}; {detail})")
    return problems


def write_manifest(spec: Spec) -> dict:
    """``manifest.json`` (counts, shards, versions: the same bytes for the same build) and
    ``report/counts.md``, each written whole or not at all."""
    import numpy
    import ray

    out = Path(spec.output)
    counts: dict[str, dict[str, int]] = {}
    failures: dict[str, dict[str, int]] = {}
    skipped: dict[str, dict[str, int]] = {}
    reasons: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
    targets: dict[str, dict[str, dict]] = {}
    splits: dict[str, dict[str, int]] = {}  # task -> {"train": ok pairs, "val": ok pairs}
    shards: dict[str, list[str]] = {"base": [], "labels": [], "pairs": []}
    labels: dict[str, dict[str, int]] = {}
    for src in spec.sources:
        shard_col = pq.read_table(plan_path(out, src.name), columns=["shard"]).column("shard")
        n_shards = (pc.max(shard_col).as_py() + 1) if len(shard_col) else 0
        for s in range(n_shards):
            shards["base"].append(str(base_tar(out, src.name, s).relative_to(out)))
        for lab in (lab for lab in spec.labelers if lab.source == src.name):
            for s in range(n_shards):
                p = label_tar(out, lab.name, src.name, s)
                shards["labels"].append(str(p.relative_to(out)))
                labels.setdefault(lab.name, {}).setdefault(src.name, 0)
                labels[lab.name][src.name] += read_stats(p)["n_ok"] if shard_done(p) else 0
        for t in (t.task for t in spec.tasks if t.source == src.name):
            for s in range(n_shards):
                p = pair_tar(out, t, src.name, s)
                shards["pairs"].append(str(p.relative_to(out)))
                st = read_stats(p) if shard_done(p) else {}
                for table, field in ((counts, "n_ok"), (failures, "n_error"), (skipped, "n_skipped")):
                    table.setdefault(t, {}).setdefault(src.name, 0)
                    table[t][src.name] += st.get(field, 0)
                rs = reasons.setdefault(t, {}).setdefault(src.name, {"error": {}, "skipped": {}})
                for status in rs:
                    for code, n in st.get("reasons", {}).get(status, {}).items():
                        rs[status][code] = rs[status].get(code, 0) + n
                tg = targets.setdefault(t, {}).setdefault(src.name, {"coverage_hist": [0] * 10, "near_black": 0,
                                                                     "n": 0})
                got = st.get("targets", {})
                tg["coverage_hist"] = [a + b for a, b in zip(tg["coverage_hist"], got.get("coverage_hist", [0] * 10))]
                tg["near_black"] += got.get("near_black", 0)
                tg["n"] += got.get("n", 0)
                for name, n in st.get("splits", {}).items():
                    splits.setdefault(t, {"train": 0, "val": 0})
                    splits[t][name] = splits[t].get(name, 0) + n
    import cv2

    manifest = {
        "name": spec.name, "spec_hash": spec.spec_hash(), "spec": spec.model_dump(mode="json"),
        "versions": {"lavin_data": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                     "opencv": cv2.__version__, "pyarrow": pa.__version__, "ray": ray.__version__},
        "counts": counts, "failures": failures, "skipped": skipped, "labels": labels,
        "reasons": {t: {s: {k: dict(sorted(v.items())) for k, v in r.items()} for s, r in by.items()}
                    for t, by in reasons.items()},
        "targets": targets, "splits": splits,
        "shards": shards,
    }
    atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    lines = ["| task | source | pairs | failed | skipped | reasons |", "|---|---|---:|---:|---:|---|"]
    for t in sorted(counts):
        for s in sorted(counts[t]):
            why = "; ".join(f"{k}: {_top_reasons(v, 4)}" for k, v in reasons[t][s].items() if v)
            lines.append(f"| {t} | {s} | {counts[t][s]} | {failures[t][s]} | {skipped[t][s]} | {why} |")
    lines += ["", "| task | train pairs | val pairs |", "|---|---:|---:|"]
    lines += [f"| {t} | {splits[t].get('train', 0)} | {splits[t].get('val', 0)} |" for t in sorted(splits)]
    (out / "report").mkdir(exist_ok=True)
    atomic_write(out / "report" / "counts.md", ("\n".join(lines) + "\n").encode())
    return manifest



def _comma(value: str | None) -> list[str] | None:
    """``"a, b"`` -> ["a", "b"]; None when the option was not given ("" gives [], an error later)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--spec", required=True, metavar="YAML", default=argparse.SUPPRESS,
                    help="build spec; ${VAR} and ${VAR:-default} in it are taken from the environment")
    ap.add_argument("--output", metavar="DIR",
                    help="output folder, instead of the spec's output: field (whose ${VAR}s then need not be set) "
                         "(default: the spec's output:)")
    ap.add_argument("--only-sources", metavar="A,B",
                    help="build only these sources of the spec (with their tasks and labelers); variables used only "
                         "by the rest need not be set. A subset is another spec: give it its own --output")
    ap.add_argument("--only-tasks", metavar="T,U", help="build only these tasks (on the sources that have them)")
    ap.add_argument("--num-cpus", type=int, metavar="N",
                    help="CPUs for a local Ray; ignored with RAY_ADDRESS (default: all of this machine's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = None
    try:
        spec = load_spec(args.spec, output=args.output, only_sources=_comma(args.only_sources),
                         only_tasks=_comma(args.only_tasks))
        if args.output is not None:  # say so: a spec's output: may be where its author expects the build
            print(f"[build] output {args.output} (--output; the spec's output: field is not used)")
        manifest = build(spec, args.num_cpus)
    except QualityError as e:
        return fail(e, 3)
    except (SpecError, BuildError, SourceError) as e:
        return fail(e)
    except OSError as e:  # the machine said no: a full disk, a read-only or foreign folder
        return fail(os_problem(e, spec.output if spec else None))
    total = sum(sum(v.values()) for v in manifest["counts"].values())
    failed = sum(sum(v.values()) for v in manifest["failures"].values())
    print(f"[build] done: {total} pairs in {len(manifest['counts'])} tasks, {failed} failed, "
          f"{manifest['run']['seconds']:.1f}s -> {Path(spec.output) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
