"""``python -m benchmarks.bench_memory [--spec manifests/demo.yaml] [--shard-size N] [--resolution R] [--shards K]``

Peak resident memory of one build worker running the spec's first shard jobs, beside its
memory after imports alone.

Peak resident memory of one build worker: a fresh process runs the spec's first ``--shards``
shard jobs one after another exactly as a Ray worker of the build does
(:func:`pipelines.stages.run_shard_job`: ingest, then render for every task) and reports
its peak RSS (``getrusage`` max RSS), beside the RSS after imports alone (what the code
costs before any shard). ``--shard-size`` and ``--resolution`` override the spec, to see
how memory grows with what one shard holds. Its seconds (not its memory) depend on how busy
the machine is: a ``contended: ...`` line says when it was (:mod:`benchmarks.contention`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from benchmarks.contention import Meter
from lavin_data.cli import HelpFormatter

CHILD = r"""
import json, resource, sys, time
from lavin_data.spec import load_spec
from pipelines.build import shard_jobs
from pipelines import stages
args = json.loads(sys.argv[1])
spec = load_spec(args["spec"], output=args["out"])
spec = spec.model_copy(update={k: v for k, v in (("shard_size", args["shard_size"]),
                                                ("resolution", args["resolution"])) if v})
import cv2, pyarrow, numpy  # noqa: E401,F401  what a worker has loaded before its first shard
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
jobs, _ = shard_jobs(spec)
t0, pairs = time.perf_counter(), 0
for row in jobs[: args["shards"]]:
    out = stages.run_shard_job(spec.model_dump_json(), row)
    assert not out["error"], out["error"]
    pairs += sum(st["n_ok"] for st in json.loads(out["render"]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_imports_mib": before / 1024, "rss_peak_mib": peak / 1024,
                  "pairs": pairs, "shards": min(len(jobs), args["shards"]), "items_per_shard": spec.shard_size,
                  "resolution": spec.resolution, "seconds": round(time.perf_counter() - t0, 1)}))
"""


def measure(spec: str, shard_size: int | None, resolution: int | None, shards: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = {"spec": spec, "out": out, "shard_size": shard_size, "resolution": resolution, "shards": shards}
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr)
        return json.loads(res.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--spec", default="manifests/demo.yaml", help="build spec (YAML) whose shard jobs the worker runs")
    ap.add_argument("--shard-size", type=int, help="items per shard; unset, the spec's")
    ap.add_argument("--resolution", type=int, help="pair resolution; unset, the spec's")
    ap.add_argument("--shards", type=int, default=3, help="shard jobs the worker runs")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    meter = Meter(own_cpus=1)  # the child: one worker, one OpenCV thread
    r = measure(args.spec, args.shard_size, args.resolution, args.shards)
    print(f"one worker, {r['shards']} shards of {r['items_per_shard']} items at {r['resolution']}^2 "
          f"({r['pairs']} pairs, {r['seconds']}s): peak RSS {r['rss_peak_mib']:.0f} MiB "
          f"(after imports {r['rss_imports_mib']:.0f} MiB, "
          f"shard work {r['rss_peak_mib'] - r['rss_imports_mib']:.0f} MiB)")
    note = meter.note()
    if note:
        print(note + " (for its seconds; memory does not depend on it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
