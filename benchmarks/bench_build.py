"""``python -m benchmarks.bench_build [--spec manifests/demo.yaml] [--items N] [--stage build|render]``

``--stage build`` (default): build throughput.

Prints pairs/s of the build (ingest + render, Ray Data) with 1 and with 2 Ray CPUs, and
the single-process floor: the same per-sample work in a tight loop with no Ray, tar,
index or stats (scene generation + base encode, then decode + resize + render + encode
of every task). All figures come from one run, so they compare as ratios.

Build time is measured from the start of execution to the last shard's commit
(``ray.init`` is excluded: a cluster or a test session pays it once).

``--stage render``: the render stage alone, on one core: the spec's base shards are
ingested once, then :func:`pipelines.stages.render_shard` (decode, resize, render, encode,
tar, index, stats) runs over them ``--repeat`` times; printed as pairs/s/core and base
samples/s/core, beside the same decode + resize + render + encode in a tight loop.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from lavin_data.base import encode_base, view_from_base
from lavin_data.ray_session import ensure_ray
from lavin_data.registry import TASKS
from lavin_data.rng import sample_rng
from lavin_data.shards import iter_tar_samples
from lavin_data.sources import reader_for
from lavin_data.spec import load_spec
from pipelines.build import build, shard_jobs
from pipelines.layout import base_tar, sample_key
from pipelines.stages import PairEncoder, ingest_shard, render_shard


def floor(spec, out: Path) -> tuple[float, float, int]:
    """(full pairs/s, render-only pairs/s, pairs) of the build's work in one process, on
    one core (OpenCV single-threaded, like a build worker)."""
    import cv2

    cv2.setNumThreads(1)
    opts = {t.task: t.options for t in spec.tasks}
    tasks = [t.task for t in spec.tasks]
    render = {t: TASKS[t].render_fn() for t in tasks}
    src = spec.sources[0]
    reader = reader_for(src.kind)
    items = reader.plan(src)[: src.limit or None]
    meta = reader.source_meta(src)
    t0 = time.perf_counter()
    base = {}
    for it in items:  # ingest: what the reader does per item
        sample = reader.read(src, it, spec.seed, meta)
        base[sample_key(src.name, it["item_id"])] = encode_base(sample, spec.formats.png_compression)
    t_ingest = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for key, members in base.items():
        view = view_from_base(key, members, spec.resolution, spec.resize)
        enc = PairEncoder(spec, view)
        for task in tasks:
            for p in render[task](view, sample_rng(spec.seed, "render", task, "bench", key), opts[task]):
                enc.encode(task, key, p)
                n += 1
    t_render = time.perf_counter() - t0
    return n / (t_ingest + t_render), n / t_render, n


def timed_build(spec, num_cpus: int) -> tuple[float, int, float]:
    import ray

    ray.shutdown()
    ensure_ray(num_cpus)
    m = build(spec, echo=lambda *_: None)
    ray.shutdown()
    return m["run"]["pairs_per_second"], m["run"]["pairs_written"], m["run"]["work_seconds"]


def bench_render(spec, repeat: int) -> None:
    """Time the render stage in this process (one core) over every base shard of ``spec``."""
    import cv2

    cv2.setNumThreads(1)  # one core, as in a build worker
    jobs, _ = shard_jobs(spec)
    for j in jobs:
        ingest_shard(spec, j["source"], j["shard"], json.loads(j["items"]), json.loads(j["source_meta"]))
    # One untimed pass first: lazy imports and first-call costs would otherwise land on the
    # stage's side only (the loop below runs second).
    for j in jobs:
        render_shard(spec, j["source"], j["shard"], json.loads(j["tasks"]))
    n_pairs = n_base = 0
    t0 = time.perf_counter()
    for _ in range(repeat):
        shutil.rmtree(Path(spec.output) / "pairs", ignore_errors=True)
        for j in jobs:
            stats = render_shard(spec, j["source"], j["shard"], json.loads(j["tasks"]))
            n_pairs += sum(st["n_ok"] for st in stats)
            n_base += sum(1 for _ in iter_tar_samples(base_tar(spec.output, j["source"], j["shard"])))
    stage = time.perf_counter() - t0
    # The same work without tar/index/stats: decode + resize + render + encode.
    opts = {(t.source, t.task): t.options for t in spec.tasks}
    m = 0
    t0 = time.perf_counter()
    for _ in range(repeat):
        for j in jobs:
            for key, members in iter_tar_samples(base_tar(spec.output, j["source"], j["shard"])):
                try:
                    view = view_from_base(key, members, spec.resolution, spec.resize)
                except Exception:  # noqa: BLE001 - failed samples cost nothing in the stage either
                    continue
                enc = PairEncoder(spec, view)
                for task in json.loads(j["tasks"]):
                    for p in TASKS[task].render_fn()(view, sample_rng(spec.seed, "render", task, "b", key),
                                                opts[(j["source"], task)]):
                        enc.encode(task, key, p)
                        m += 1
    loop = time.perf_counter() - t0
    print(f"render stage, 1 core, {spec.resolution}px: {n_pairs / stage:7.1f} pairs/s/core, "
          f"{n_base / stage:6.1f} base samples/s/core ({n_pairs} pairs over {repeat} passes, {stage:.1f}s)")
    print(f"tight loop (no tar/index/stats):   {m / loop:7.1f} pairs/s/core  -> stage/loop {loop / stage:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_build")
    ap.add_argument("--spec", default="manifests/demo.yaml")
    ap.add_argument("--items", type=int, help="override the synthetic source's num_items")
    ap.add_argument("--stage", choices=["build", "render"], default="build")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the shards (--stage render)")
    args = ap.parse_args(argv)
    if args.stage == "render":
        with tempfile.TemporaryDirectory() as tmp:
            spec = load_spec(args.spec, output=tmp)
            if args.items:
                spec.sources[0].num_items = args.items
            bench_render(spec, args.repeat)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for cpus in (1, 2):
            spec = load_spec(args.spec, output=str(Path(tmp) / f"cpu{cpus}"))
            if args.items:
                spec.sources[0].num_items = args.items
            runs[cpus] = timed_build(spec, cpus)
            print(f"build, {cpus} Ray CPU{'s' if cpus > 1 else ' '}: {runs[cpus][0]:7.1f} pairs/s "
                  f"({runs[cpus][1]} pairs in {runs[cpus][2]:.1f}s)", flush=True)
        full, render_only, n = floor(spec, Path(tmp))
    r1, r2 = runs[1][0], runs[2][0]
    print(f"floor, 1 process, tight loop: {full:7.1f} pairs/s (ingest+render; render alone {render_only:.1f} pairs/s,"
          f" {n} pairs)")
    print(f"scaling 2 CPUs / 1 CPU:        {r2 / r1:5.2f}x   (target >= 1.7)")
    print(f"2 CPUs / (2 x floor):          {r2 / (2 * full):5.2f}    (target >= 0.7)")
    print(f"1 CPU  / floor:                {r1 / full:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
