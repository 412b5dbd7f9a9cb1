"""The shard format: a deterministic tar, a parquet index and a stats file written last.

One shard is one unit of work, of resume and of commit (docs/design.md, Stages over shards). The tar is
streamed to a temporary name as samples come and renamed into place; the index, the
timing file and then the stats file follow, so a shard whose stats file exists is complete
and a re-run skips it (if its tar and index still have the sizes the stats record; the stats
also record their SHA-256 for ``python -m lavin_data.verify``). Tar, index and stats are the
same bytes on every run (error texts lose object addresses); only ``<shard>.timing.json`` differs.

Tars are byte-reproducible: members sorted by (key, extension), mtime 0, uid/gid 0,
no user names, mode 0644.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tarfile
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("status", pa.string()),  # "ok", "error", or "skipped" (a quality gate, nothing to render, ...)
    ("stage", pa.string()),
    ("error", pa.string()),  # what happened, for a person: which gate and the value, the exception
    ("reason", pa.string()),  # the same as a short code for counting: "min_valid_fraction", "ValueError"
    ("bytes", pa.int64()),
    ("split", pa.string()),  # "train" | "val" (lavin_data/split.py); null where the stage does not know it
])


def error_code(error: str) -> str:
    """The code of a failure message ``"ValueError: ..."``: its exception type."""
    head = error.split(":", 1)[0].strip()
    return head if head.isidentifier() else "error"


def check_key(key: str) -> str:
    """Keys end at the first dot in WebDataset: refuse dots and slashes early."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"invalid sample key {key!r}: keys may not be empty or contain '.' or '/'")
    return key


def stats_path(tar_path: str | os.PathLike) -> Path:
    p = Path(tar_path)
    return p.with_name(p.name.removesuffix(".tar") + ".stats.json")


def build_pairs_folder(path: str | os.PathLike) -> Path | None:
    """``path/pairs`` when ``path`` is a build's output folder (its ``pairs/`` holds task
    folders), else None: every command that reads pair shards takes the build folder for it."""
    pairs = Path(path) / "pairs"
    return pairs if pairs.is_dir() and any(d.is_dir() for d in pairs.iterdir()) else None


def timing_path(tar_path: str | os.PathLike) -> Path:
    p = Path(tar_path)
    return p.with_name(p.name.removesuffix(".tar") + ".timing.json")


def index_path(tar_path: str | os.PathLike) -> Path:
    p = Path(tar_path)
    return p.with_name(p.name.removesuffix(".tar") + ".parquet")


def shard_done(tar_path: str | os.PathLike) -> bool:
    """True if the shard is committed and its files are still whole: the stats file exists and
    the tar and the index have the sizes it records (stat calls only, no hashing: a re-run
    checks every shard). A tar deleted or truncated after its commit makes the shard not
    done, so the next run rebuilds it; ``python -m lavin_data.verify`` checks the hashes.
    Stats written before sizes and hashes were recorded for the index count as done when the
    tar is there with its recorded size."""
    try:
        stats = read_stats(tar_path)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # none, or one cut short: rebuild the shard
        return False
    if not isinstance(stats, dict):
        return False
    tar, index = Path(tar_path), index_path(tar_path)
    if not _has_size(tar, stats.get("bytes")):
        return False
    return "index_bytes" not in stats or _has_size(index, stats["index_bytes"])


def _has_size(path: Path, size: int | None) -> bool:
    """``path`` is a file of ``size`` bytes (of any size when ``size`` is None)."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return size is None or st.st_size == size


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class HashingFile:
    """A binary file that hashes (SHA-256) what goes through it, in order: the bytes written
    to a file being written front to back, or read from one read front to back. A shard's
    hash then costs no second pass over the shard (the writer hashes as it streams, verify
    as it parses)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sha.update(data)
        return data

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def read_stats(tar_path: str | os.PathLike) -> dict:
    return json.loads(stats_path(tar_path).read_text())


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary beside it, then a rename); the
    temporary is removed if the write fails (a full disk, say)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed or failed runs left under ``root`` (names
    ``.<file>.tmp-...``); call it only while holding the output's lock. Returns them."""
    gone = [p for p in Path(root).rglob(".*.tmp-*") if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def reproducible_error(text: str) -> str:
    """An error message without object addresses (``<_io.BytesIO object at 0x7f...>``), so that
    the same input gives the same index bytes on every run."""
    return _ADDRESS.sub("", text)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Write the samples of one shard as they come, then :meth:`commit` them.

    ``add(key, {ext: bytes})`` streams a sample's members (sorted by extension) straight
    into a temporary tar beside ``path``, so memory holds one sample and the per-sample
    index, never the shard. ``fail(key, stage, error)`` records a sample that could not be
    produced and ``skip(key, stage, reason)`` one that had nothing to produce (index only).

    Samples that arrive in sorted key order (the usual case: stages read sorted shards) are
    the final tar as written; otherwise :meth:`commit` rewrites the tar in sorted order,
    copying one member at a time, so the result is the same bytes either way.
    """

    def __init__(self, path: str | os.PathLike, stage: str):
        self.path, self.stage = Path(path), stage
        self.failures: dict[str, tuple[str, str, str]] = {}  # key -> (stage, message, code)
        self.skipped: dict[str, tuple[str, str, str]] = {}
        self._bytes: dict[str, int] = {}  # key -> bytes of its members, in arrival order
        self._spans: dict[str, list[tuple[str, int, int]]] = {}  # key -> [(name, data offset, size)]
        self.splits: dict[str, str] = {}  # key -> "train" | "val", where the caller gave it
        self._last: str | None = None
        self._sorted = True
        # Unique per writer (host, process, random), so two writers never share a temporary file.
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
                                        f"{uuid.uuid4().hex[:8]}")
        self._file = None
        self._tar: tarfile.TarFile | None = None
        self._committed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # nothing to do after commit; otherwise the shard was given up

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = HashingFile(open(self._tmp, "wb"))  # noqa: SIM115 - open for the writer's life
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        return self._tar

    @property
    def keys(self) -> list[str]:
        """Keys written so far, in arrival order."""
        return list(self._bytes)

    def add(self, key: str, members: dict[str, bytes], split: str | None = None) -> None:
        """Stream one sample's members (``{ext: bytes}``); ``split`` goes into the index."""
        check_key(key)
        if key in self._bytes:
            raise ValueError(f"{self.path}: duplicate sample key {key!r}")
        infos = [_tar_info(f"{key}.{ext}", len(members[ext])) for ext in sorted(members)]
        for info in infos:  # a header that cannot be written (name too long) fails before any byte is
            info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        tar = self._open()
        spans = []
        for info in infos:
            data = members[info.name[len(key) + 1:]]
            tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            spans.append((info.name, tar.offset - padded, len(data)))  # where its data starts
        self._spans[key] = spans
        self._bytes[key] = sum(len(b) for b in members.values())
        if split is not None:
            self.splits[key] = split
        if self._last is not None and key < self._last:
            self._sorted = False
        self._last = key

    def fail(self, key: str, stage: str, error: str, code: str | None = None, split: str | None = None) -> None:
        """Record a sample that could not be produced; ``code`` (default: the exception type
        that starts ``error``) is what the stats count it under."""
        self.failures[key] = (stage, reproducible_error(error), code or error_code(error))
        if split is not None:
            self.splits[key] = split

    def skip(self, key: str, stage: str, reason: str, code: str | None = None, split: str | None = None) -> None:
        """Record a sample with nothing to produce or one a quality gate refused: ``reason`` says
        what happened (the gate and the value), ``code`` names it for counting."""
        self.skipped[key] = (stage, reproducible_error(reason), code or "nothing_to_render")
        if split is not None:
            self.splits[key] = split

    def _finish_tar(self) -> str:
        """Close the streamed tar; rewrite it in sorted key order if samples came unsorted.
        Returns the final tar's SHA-256 (hashed as it was written)."""
        tar = self._open()  # an empty shard is an empty tar
        tar.close()
        self._file.close()
        if self._sorted:
            return self._file.hexdigest()
        tmp2 = self._tmp.with_name(self._tmp.name + "-sorted")
        with open(self._tmp, "rb") as src, open(tmp2, "wb") as raw:
            f = HashingFile(raw)
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as out:
                for key in sorted(self._spans):
                    for name, offset, size in self._spans[key]:
                        src.seek(offset)
                        out.addfile(_tar_info(name, size), io.BytesIO(src.read(size)))
        os.replace(tmp2, self._tmp)
        return f.hexdigest()

    def abort(self) -> None:
        """Drop the temporary tar of a shard given up before :meth:`commit` (a no-op after it)."""
        if self._tar is not None and not self._committed:
            self._tar.close()
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def commit(self, stats: dict, timing: dict | None = None) -> dict:
        """Move the tar into place, then write the index, ``timing`` (``<shard>.timing.json``:
        what differs between runs) and, last, the stats; returns the stats."""
        tar_sha256 = self._finish_tar()
        os.replace(self._tmp, self.path)
        self._committed = True
        sp = self.splits.get
        rows = [{"key": k, "status": "ok", "stage": self.stage, "error": None, "reason": None, "bytes": n,
                 "split": sp(k)} for k, n in self._bytes.items()]
        rows += [{"key": k, "status": "error", "stage": s, "error": e, "reason": c, "bytes": 0, "split": sp(k)}
                 for k, (s, e, c) in self.failures.items()]
        rows += [{"key": k, "status": "skipped", "stage": s, "error": e, "reason": c, "bytes": 0, "split": sp(k)}
                 for k, (s, e, c) in self.skipped.items()]
        rows.sort(key=lambda r: r["key"])
        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        index_data = sink.getvalue().to_pybytes()
        atomic_write(index_path(self.path), index_data)
        reasons = {status: dict(sorted(Counter(c for _s, _e, c in table.values()).items()))
                   for status, table in (("error", self.failures), ("skipped", self.skipped))}
        # Sizes let shard_done see a tar or index deleted or cut short after the commit; hashes let
        # lavin_data.verify see any changed byte. All are the same on every run of the same shard.
        stats = dict(stats, shard=self.path.name, n_ok=len(self._bytes), n_error=len(self.failures),
                     n_skipped=len(self.skipped), reasons=reasons,
                     splits=dict(sorted(Counter(self.splits[k] for k in self._bytes if k in self.splits).items())),
                     bytes=os.path.getsize(self.path),
                     tar_sha256=tar_sha256, index_bytes=len(index_data),
                     index_sha256=hashlib.sha256(index_data).hexdigest())
        if timing is not None:
            atomic_write(timing_path(self.path), (json.dumps(timing, indent=1, sort_keys=True) + "\n").encode())
        atomic_write(stats_path(self.path), (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode())
        return stats


class ShardReader:
    """Random access to the samples of a shard tar by key, holding only the member index.

    ``reader[key]`` -> {ext: bytes}; ``key in reader``; ``reader.keys()`` in file order.
    Used where a stage needs the sample of another shard with the same key (label
    sidecars beside a base shard) without loading that shard into memory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._spans: dict[str, list[tuple[str, int, int]]] = {}
        with tarfile.open(self.path, "r") as tar:
            for info in tar:
                if info.isfile():
                    key, _, ext = os.path.basename(info.name).partition(".")
                    self._spans.setdefault(key, []).append((ext, info.offset_data, info.size))
        self._file = None

    def keys(self) -> list[str]:
        return list(self._spans)

    def __contains__(self, key: str) -> bool:
        return key in self._spans

    def __getitem__(self, key: str) -> dict[str, bytes]:
        if key not in self._spans:
            raise KeyError(f"{self.path}: no sample {key!r}")
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - open until close()
        out = {}
        for ext, offset, size in self._spans[key]:
            self._file.seek(offset)
            out[ext] = self._file.read(size)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
