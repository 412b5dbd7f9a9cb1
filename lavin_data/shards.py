"""The shard format: a deterministic tar, a parquet index and a stats file written last.

One shard is one unit of work, of resume and of commit (DESIGN.md §2). Files are written
under a temporary name and renamed into place; the stats file comes last, so a shard
whose stats file exists is complete and a re-run skips it.

Tars are byte-reproducible: members sorted by (key, extension), mtime 0, uid/gid 0,
no user names, mode 0644.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("status", pa.string()),  # "ok", "error", or "skipped" (nothing to render, e.g. no object in view)
    ("stage", pa.string()),
    ("error", pa.string()),
    ("bytes", pa.int64()),
])


def check_key(key: str) -> str:
    """Keys end at the first dot in WebDataset: refuse dots and slashes early."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"invalid sample key {key!r}: keys may not be empty or contain '.' or '/'")
    return key


def stats_path(tar_path: str | os.PathLike) -> Path:
    p = Path(tar_path)
    return p.with_name(p.name.removesuffix(".tar") + ".stats.json")


def index_path(tar_path: str | os.PathLike) -> Path:
    p = Path(tar_path)
    return p.with_name(p.name.removesuffix(".tar") + ".parquet")


def shard_done(tar_path: str | os.PathLike) -> bool:
    return stats_path(tar_path).exists()


def read_stats(tar_path: str | os.PathLike) -> dict:
    return json.loads(stats_path(tar_path).read_text())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass
class ShardWriter:
    """Collect samples of one shard in memory, then :meth:`commit` them.

    ``add(key, {ext: bytes})`` adds a sample written to the tar; ``fail(key, stage,
    error)`` records a sample that could not be produced and ``skip(key, stage, reason)``
    one that had nothing to produce (index only).
    """

    path: Path
    stage: str
    samples: dict[str, dict[str, bytes]] = field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        check_key(key)
        if key in self.samples:
            raise ValueError(f"{self.path}: duplicate sample key {key!r}")
        self.samples[key] = members

    def fail(self, key: str, stage: str, error: str) -> None:
        self.failures[key] = (stage, error)

    def skip(self, key: str, stage: str, reason: str) -> None:
        self.skipped[key] = (stage, reason)

    def tar_bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key in sorted(self.samples):
                for ext in sorted(self.samples[key]):
                    data = self.samples[key][ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def commit(self, stats: dict) -> dict:
        """Write tar, index and (last) stats; returns the stats as written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, self.tar_bytes())
        rows = [{"key": k, "status": "ok", "stage": self.stage, "error": None,
                 "bytes": sum(len(b) for b in m.values())} for k, m in self.samples.items()]
        rows += [{"key": k, "status": "error", "stage": s, "error": e, "bytes": 0}
                 for k, (s, e) in self.failures.items()]
        rows += [{"key": k, "status": "skipped", "stage": s, "error": e, "bytes": 0}
                 for k, (s, e) in self.skipped.items()]
        rows.sort(key=lambda r: r["key"])
        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write(index_path(self.path), sink.getvalue().to_pybytes())
        stats = dict(stats, shard=self.path.name, n_ok=len(self.samples), n_error=len(self.failures),
                     n_skipped=len(self.skipped), bytes=os.path.getsize(self.path))
        _atomic_write(stats_path(self.path), (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode())
        return stats


def prefetch(items):
    """Iterate ``items`` while its next element is produced in a background thread, so the
    decoding of the next batch overlaps the model working on this one (torch, OpenCV and
    zlib release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    end = object()
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(next, it, end)
        while (item := nxt.result()) is not end:
            nxt = pool.submit(next, it, end)
            yield item


def decoded_batches(samples, decode, batch_size: int):
    """Decode ``(key, members)`` samples with ``decode(key, members)`` and group them by
    ``batch_size``: yields ``(ok, failed)``, ok = [(key, decoded)] and failed = [(key,
    "ErrorType: message")], so that a sample that cannot be decoded is recorded by the
    caller and the rest of its batch goes on."""
    ok, failed = [], []
    for key, members in samples:
        try:
            ok.append((key, decode(key, members)))
        except Exception as e:  # noqa: BLE001
            failed.append((key, f"{type(e).__name__}: {e}"))
        if len(ok) + len(failed) == batch_size:
            yield ok, failed
            ok, failed = [], []
    if ok or failed:
        yield ok, failed


def iter_tar_samples(path: str | os.PathLike):
    """Yield ``(key, {ext: bytes})`` from a shard tar in file order, grouped as WebDataset
    groups them: consecutive members sharing the basename up to its first dot.

    Deliberately not ``webdataset.tariterators``: importing the webdataset package imports
    torch when it is installed (0.8 s and hundreds of MB in every worker, measured), and
    the pixel stages need no torch. Tests read our shards with webdataset itself.
    """
    current, members = None, {}
    with tarfile.open(path, "r") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = os.path.basename(info.name).partition(".")
            if key != current:
                if current is not None:
                    yield current, members
                current, members = key, {}
            members[ext] = tar.extractfile(info).read()
    if current is not None:
        yield current, members
