"""``python -m benchmarks.bench_plan [--items N] [--source image_folder|hf|both] [--shard-size N] [--hf-bytes B]``

Planning at scale: wall time per phase and peak resident memory of the build's planning
path for one source of ``--items`` items (default 1,281,167: ImageNet's training set).

``image_folder``: a generated ImageNet-like ``file_list`` (1000 synsets,
``n01440764/n01440764_10026.JPEG`` style, in shuffled order) under an empty root: the files do
not exist, since planning must not open them (an audit hook counts every open or listing
under root, and the benchmark fails if there is one). ``hf``: a folder of parquet files with
an ``image`` column (an HF Image struct of ``--hf-bytes`` bytes per row, 6 by default) and a
``label`` column, written with pyarrow in chunks. The reader reads such a folder in place
with pyarrow (no ``datasets`` needed); a ``datasets`` cache, were one made, would go to the
temporary folder.

Each variant runs in a fresh process, so that its peak RSS is its own (the high-water mark
``VmHWM`` of ``/proc/self/status``; ``getrusage`` max RSS where that is missing, which on
Linux would also count the peak of the parent, inherited across fork and exec):

- ``fresh``: :func:`pipelines.build.plan_sources` (the reader's plan, keys, shards, splits),
  :func:`~pipelines.build.write_plans` (``plan/<source>.parquet``) and
  :func:`~pipelines.build.shard_jobs` (one Ray row per shard with its items as JSON);
- ``resume``: the same calls on the written plan, as a resumed build makes them (the plan is
  read back, not re-planned); its jobs must equal the fresh ones (compared by digest);
- ``check`` (hf only): the reader's preflight ``check``, which a build runs before planning
  (it opens the folder: the parquet footers; with ``datasets.load_dataset`` it was a copy of
  every file into the ``datasets`` cache, about 5 s per GB). Raise ``--hf-bytes`` to see that
  its time does not grow with the bytes.

Peak RSS is printed beside the RSS after imports (what the code costs before any planning),
and after each phase (the peak so far). The seconds depend on how busy the machine is (a
``contended: ...`` line says when it was, :mod:`benchmarks.contention`); the memory does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lavin_data.cli import HelpFormatter

IMAGENET_TRAIN = 1_281_167
SYNSETS = 1000


def write_file_list(path: Path, n: int, seed: int = 0) -> None:
    """``n`` ImageNet-like paths relative to root, one per line, shuffled: ``SYNSETS`` synsets
    ``nXXXXXXXX`` with ``n // SYNSETS`` (or one more) images ``<synset>_<number>.JPEG`` each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for k in range(SYNSETS):
        count = n // SYNSETS + (k < n % SYNSETS)
        syn = f"n{1440764 + 9973 * k:08d}"
        nums = rng.choice(max(count * 40, 1), size=count, replace=False) + 1  # ImageNet's numbers have gaps
        lines += [f"{syn}/{syn}_{x}.JPEG" for x in nums.tolist()]
    order = rng.permutation(len(lines))
    path.write_text("".join(lines[i] + "\n" for i in order.tolist()))


def write_parquet_folder(folder: Path, n: int, files: int = 64, nbytes: int = 6, chunk: int = 50_000) -> None:
    """``n`` rows over ``files`` parquet files: ``image`` (the HF Image struct {bytes, path}
    with ``nbytes`` bytes per row: a JPEG marker, the row number, zeros) and ``label``
    (int64), with the HF features metadata, in chunks of at most ``chunk`` rows (fewer for
    big rows, to keep a chunk under ~256 MB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    features = {"info": {"features": {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())], metadata={"huggingface": json.dumps(features)})
    per_file = -(-n // files)
    chunk = max(1, min(chunk, (256 << 20) // nbytes))
    pad = bytes(nbytes - 6)
    start = 0
    for f in range(files):
        stop = min(n, start + per_file)
        if stop <= start:
            break
        with pq.ParquetWriter(folder / f"train-{f:05d}-of-{files:05d}.parquet", schema) as w:
            for a in range(start, stop, chunk):
                b = min(stop, a + chunk)
                rows = range(a, b)
                image = pa.StructArray.from_arrays(
                    [pa.array([b"\xff\xd8" + i.to_bytes(4, "big") + pad for i in rows], pa.binary()),
                     pa.nulls(b - a, pa.string())], names=["bytes", "path"])
                w.write_table(pa.table({"image": image, "label": pa.array([i % SYNSETS for i in rows], pa.int64())},
                                       schema=schema))
        start = stop


def spec_for(args: dict):
    from lavin_data.spec import parse_spec

    if args["source"] == "hf":
        src = {"name": "imagenet", "kind": "hf_dataset", "path": args["data"]}
    else:
        src = {"name": "imagenet", "kind": "image_folder", "root": args["root"], "file_list": args["data"]}
    return parse_spec({"name": "bench-plan", "output": args["out"], "shard_size": args["shard_size"],
                       "sources": [src], "tasks": [{"task": "colorization", "source": "imagenet"}]},
                      "bench_plan (generated)")


def child(args: dict) -> dict:
    """One variant in this (fresh) process: phase seconds, RSS after imports and after each phase."""
    import hashlib
    import resource

    from lavin_data.sources import reader_for
    from pipelines.build import plan_sources, shard_jobs, write_plans

    def rss_mib() -> float:
        # VmHWM, not ru_maxrss, where Linux has it: ru_maxrss survives fork + exec, so a child
        # would report its parent's peak (the generated file list) when that is higher.
        try:
            with open("/proc/self/status") as f:
                return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    touched: list[str] = []
    root = args.get("root")
    if root:
        def audit(event: str, a: tuple) -> None:
            if event in ("open", "os.listdir", "os.scandir") and a and isinstance(a[0], (str, bytes, os.PathLike)):
                p = os.fsdecode(a[0])
                if p == root or p.startswith(root + os.sep):
                    touched.append(p)

        sys.addaudithook(audit)
    spec = spec_for(args)
    out = {"variant": args["variant"], "source": args["source"], "rss_imports_mib": rss_mib(), "phases": []}

    def phase(name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        out["phases"].append({"phase": name, "seconds": time.perf_counter() - t0, "rss_peak_mib": rss_mib()})
        return value

    if args["variant"] == "check":
        src = spec.sources[0]
        phase("reader check (preflight)", lambda: reader_for(src.kind).check(src))
    else:
        plans = phase("plan_sources" + (" (read plan)" if args["variant"] == "resume" else ""),
                      lambda: plan_sources(spec, write=False))
        phase("write_plans", lambda: write_plans(spec, plans))
        jobs, total = phase("shard_jobs", lambda: shard_jobs(spec, plans))
        digest = hashlib.sha256()
        n_items = 0
        for j in jobs:
            digest.update(json.dumps(j, sort_keys=True).encode())
            n_items += j["items"].count('"item_id"')
        out.update(shards=total, jobs=len(jobs), items=n_items, jobs_sha256=digest.hexdigest(),
                   items_json_mib=sum(len(j["items"]) for j in jobs) / 2**20)
    out["touched_under_root"] = len(touched)
    out["touched_examples"] = touched[:3]
    out["rss_peak_mib"] = rss_mib()
    return out


def run_child(args: dict, env: dict) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_plan", "--child", json.dumps(args)],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"variant {args['source']} {args['variant']} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def show(r: dict) -> None:
    total = sum(p["seconds"] for p in r["phases"])
    head = f"{r['source']:>12} {r['variant']:<6}"
    print(f"{head} total {total:7.2f}s, peak RSS {r['rss_peak_mib']:7.1f} MiB (after imports "
          f"{r['rss_imports_mib']:.1f} MiB)" + (f", {r['items']} items in {r['shards']} shards, items JSON "
                                               f"{r['items_json_mib']:.1f} MiB" if "items" in r else ""))
    for p in r["phases"]:
        print(f"{'':>20}{p['phase']:<28} {p['seconds']:7.2f}s  peak RSS so far {p['rss_peak_mib']:7.1f} MiB")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_plan", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--items", type=int, default=IMAGENET_TRAIN, help="items in the generated source")
    ap.add_argument("--source", choices=["image_folder", "hf", "both"], default="both",
                    help="image_folder: a generated file_list; hf: a generated folder of parquet files")
    ap.add_argument("--shard-size", type=int, default=1000, help="the spec's shard_size")
    ap.add_argument("--hf-files", type=int, default=64, help="parquet files the hf rows are spread over")
    ap.add_argument("--hf-bytes", type=int, default=6, help="bytes of each hf row's image (at least 6)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one variant, in a fresh process (internal)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.items < 1 or args.shard_size < 1 or args.hf_files < 1 or args.hf_bytes < 6:
        print("error: --items, --shard-size and --hf-files must be at least 1, --hf-bytes at least 6", file=sys.stderr)
        return 2
    from benchmarks.contention import Meter

    kinds = ["image_folder", "hf"] if args.source == "both" else [args.source]
    meter = Meter(own_cpus=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf-cache"), HF_DATASETS_OFFLINE="1")
        for kind in kinds:
            t0 = time.perf_counter()
            base = {"source": kind, "shard_size": args.shard_size, "out": str(tmp_path / f"out-{kind}")}
            if kind == "image_folder":
                root = tmp_path / "imagenet" / "train"
                root.mkdir(parents=True)
                write_file_list(tmp_path / "train_files.txt", args.items)
                base.update(root=str(root), data=str(tmp_path / "train_files.txt"))
                variants = ["fresh", "resume"]
            else:
                write_parquet_folder(tmp_path / "imagenet-hf", args.items, args.hf_files, args.hf_bytes)
                base.update(data=str(tmp_path / "imagenet-hf"))
                variants = ["check", "fresh", "resume"]
            print(f"{kind}: generated {args.items} items in {time.perf_counter() - t0:.1f}s (not timed below)",
                  flush=True)
            results = {}
            for v in variants:
                with meter.section(own_cpus=1):  # the work runs in a child: only the load average applies
                    results[v] = run_child(dict(base, variant=v), env)
                show(results[v])
                if results[v]["touched_under_root"]:
                    raise SystemExit(f"planning touched {results[v]['touched_under_root']} path(s) under the image "
                                     f"root (e.g. {results[v]['touched_examples']}); it must not open the images")
            if results["fresh"]["items"] != args.items:
                raise SystemExit(f"{kind}: the jobs hold {results['fresh']['items']} items, not {args.items}")
            if results["fresh"]["jobs_sha256"] != results["resume"]["jobs_sha256"]:
                raise SystemExit(f"{kind}: the resumed build's jobs differ from the fresh build's")
            if kind == "image_folder":
                print(f"{'':>20}no file under the image root was opened or listed; resumed jobs == fresh jobs")
            else:
                print(f"{'':>20}resumed jobs == fresh jobs")
    note = meter.note([])
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
