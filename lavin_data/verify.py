"""``python -m lavin_data.verify OUT [--quick]``: check a finished build output (or an
``encode_latents`` output) end to end, reading every shard once.

Exit 0 with a one-line summary when everything checks; exit 1 with one line per problem
(each naming the file, the sample key or member, and what is wrong); exit 2 when OUT is
not an output. Run it on an output no build is writing into.

What is checked, per committed shard (a shard whose ``<shard>.stats.json`` exists):

- the tar and the index exist with the sizes and SHA-256 the stats record (stats written
  before hashes were recorded: sizes only), and the tar reads to its end;
- the index: keys unique, status ok|error|skipped, ``n_ok``/``n_error``/``n_skipped`` as in
  the stats, its ok keys exactly the tar's sample keys, each ok row's ``bytes`` the sum of
  its members' sizes;
- each sample's members, as its layout documents them: pairs (:class:`pipelines.stages.PairEncoder`:
  the json plus the input, target and raw members it names, nothing else), base samples
  (:mod:`lavin_data.base`), label sidecars (:mod:`lavin_data.sidecar`, against the base
  sample's size and frame count) and latents (:mod:`lavin_data.encode_latents`);
- images decode and have the size the json gives (and the frame count, for clips); ``.npy``
  members load without pickle, with the dtype and the shape their layout implies;
- keys are unique within a task (a source, a labeler's source) across its shards; the keys of
  a latent output are pair keys of the same task.

And for the whole output: every shard that ``manifest.json`` lists is committed (a build
output without a manifest has not finished), no tar lies there uncommitted, and no temporary
file of a killed run is left. ``--quick`` skips decoding images (hashes, indexes, members and
arrays are still checked).

A latent output is checked where it lies: ``OUT/latents/<name>/`` of a build, or given
itself as OUT (its pair keys then come from ``../../pairs`` when it lies in a build, else from
the pair shards its stats name).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lavin_data.cli import HelpFormatter, fail
from lavin_data.codecs import decode_image
from lavin_data.shards import HashingFile, ShardReader, index_path, stats_path

PROGRESS_EVERY = 25  # shards between progress lines
LATENT_MEMBERS = frozenset({"input_moments.npy", "target_moments.npy", "json"})
_NUMBERED = re.compile(r"^(?P<name>[a-z]+)_(?P<t>\d{3})\.(?P<ext>[a-z0-9]+)$")
_TEMPORARY = ".*.tmp-*"  # lavin_data.shards: atomic_write and ShardWriter name their temporaries so


class NotAnOutput(ValueError):
    """The folder is neither a build output nor an encode_latents output."""


@dataclass
class Result:
    """What :func:`check` found. ``problems``: one line each (empty = the output is good);
    ``notes``: what could not be checked, without being wrong."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    unhashed: int = 0  # shards committed before the stats recorded hashes


def verify(out: str | os.PathLike, check_images: bool = True) -> list[str]:
    """The problems of the output folder ``out`` (empty: it checks). Raises
    :class:`NotAnOutput` for a folder that is no output."""
    return check(out, check_images).problems


def check(out: str | os.PathLike, check_images: bool = True,
          progress: Callable[[str], None] | None = None) -> Result:
    """Check every shard of ``out`` (see the module docstring); ``progress`` gets a line every
    :data:`PROGRESS_EVERY` shards."""
    return _Checker(Path(out), check_images, progress).run()


# --------------------------------------------------------------------------- discovery


def _stage_of(stats_file: Path) -> str | None:
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        return None
    return stats.get("stage") if isinstance(stats, dict) else None


def is_latent_output(folder: Path) -> bool:
    """``folder`` holds ``<task>/<shard>.stats.json`` files written by encode_latents."""
    if not folder.is_dir():
        return False
    for task_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        first = next(iter(sorted(task_dir.glob("*.stats.json"))), None)
        if first is not None and _stage_of(first) == "encode_latents":
            return True
    return False


@dataclass
class _Group:
    """Shards whose sample keys share one namespace: a source's base shards, a labeler's
    shards of one source, a task's pair shards, a latent output's shards of one task."""

    kind: str  # "base" | "label" | "pair" | "latent"
    folder: Path
    name: str  # the task, for pairs and latents; the source, for base and labels
    tars: list[Path]
    base_folder: Path | None = None  # labels: the base shards they label
    latent_root: Path | None = None  # latents: the output they belong to


def _shards_in(folder: Path) -> list[Path]:
    """Every shard of a folder, committed or not: the tars and the stats files, by tar name."""
    names = {p.name for p in folder.glob("*.tar")}
    names |= {p.name.removesuffix(".stats.json") + ".tar" for p in folder.glob("*.stats.json")}
    return [folder / n for n in sorted(names)]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _latent_groups(root: Path) -> list[_Group]:
    return [_Group("latent", d, d.name, _shards_in(d), latent_root=root) for d in _subdirs(root)
            if d.name != "preview"]


def _groups(out: Path, build: bool) -> list[_Group]:
    if not build:
        return _latent_groups(out)
    groups = [_Group("base", d, d.name, _shards_in(d)) for d in _subdirs(out / "base")]
    for lab in _subdirs(out / "labels"):
        groups += [_Group("label", d, d.name, _shards_in(d), base_folder=out / "base" / d.name) for d in _subdirs(lab)]
    groups += [_Group("pair", d, d.name, _shards_in(d)) for d in _subdirs(out / "pairs")]
    for root in _subdirs(out / "latents"):
        if is_latent_output(root):
            groups += _latent_groups(root)
    return groups


# --------------------------------------------------------------------------- reading


def _sample(where: str, members: dict[str, bytes]) -> tuple[dict | None, str | None]:
    """The json member of a sample as a dict, or the problem with it."""
    if "json" not in members:
        return None, f"{where}: no json member (has {sorted(members)})"
    try:
        meta = json.loads(members["json"])
    except ValueError as e:
        return None, f"{where}.json: not JSON ({e})"
    if not isinstance(meta, dict):
        return None, f"{where}.json: expected a JSON object, got {type(meta).__name__}"
    return meta, None


def _numbered(members: dict[str, bytes], name: str) -> list[str]:
    """Members ``<name>_000.<ext>``, ``<name>_001.<ext>``, ... in frame order."""
    return sorted(m for m in members if (g := _NUMBERED.match(m)) and g["name"] == name)


def _gaps(names: list[str]) -> list[int]:
    """Frame numbers missing from ``names`` (``x_000.png`` ...) below the highest one."""
    got = {int(_NUMBERED.match(n)["t"]) for n in names}
    return sorted(set(range(max(got, default=-1) + 1)) - got)


# --------------------------------------------------------------------------- the checker


class _Checker:
    def __init__(self, out: Path, check_images: bool, progress: Callable[[str], None] | None):
        self.out, self.check_images, self.progress = out, check_images, progress
        self.result = Result()
        self.keys: dict[Path, dict[str, str]] = {}  # group folder -> sample key in its tars -> shard name

    # ------------------------------------------------------------------ helpers

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.out))
        except ValueError:
            return str(p)

    def problem(self, text: str) -> None:
        self.result.problems.append(text)

    def image(self, where: str, data: bytes) -> np.ndarray | None:
        try:
            return decode_image(data, where)
        except ValueError as e:
            self.problem(f"{where}: {e}")
            return None

    def npy(self, where: str, data: bytes) -> np.ndarray | None:
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # a pickled/object array, a cut header, short data
            self.problem(f"{where}: not a loadable .npy array ({type(e).__name__}: {e})")
            return None

    def array(self, where: str, data: bytes, dtype: str | None, shape: tuple | None) -> np.ndarray | None:
        """Load an .npy member and check its dtype and shape (None entries in ``shape`` match any size)."""
        arr = self.npy(where, data)
        if arr is None:
            return None
        if dtype is not None and arr.dtype != np.dtype(dtype):
            self.problem(f"{where}: dtype {arr.dtype}, expected {dtype}")
        if shape is not None and (arr.ndim != len(shape) or any(s is not None and a != s
                                                                 for a, s in zip(arr.shape, shape, strict=True))):
            self.problem(f"{where}: shape {arr.shape}, expected {tuple('*' if s is None else s for s in shape)}")
        return arr

    def sized(self, where: str, img: np.ndarray, hw: tuple[int, int] | None, channels: int | None,
              dtype: str) -> None:
        """An image decoded as ``(H, W[, channels])`` of ``dtype``, of size ``hw`` when given."""
        want_ndim = 2 if channels is None else 3
        if img.ndim != want_ndim or (channels is not None and img.shape[2] != channels):
            what = "single-channel" if channels is None else f"{channels}-channel"
            self.problem(f"{where}: expected a {what} image, decoded shape {img.shape}")
        elif img.dtype != np.dtype(dtype):
            self.problem(f"{where}: expected {dtype} pixels, got {img.dtype}")
        if hw is not None and tuple(img.shape[:2]) != tuple(hw):
            self.problem(f"{where}: image is {img.shape[1]}x{img.shape[0]}, the json says {hw[1]}x{hw[0]}")

    # ------------------------------------------------------------------ the run

    def run(self) -> Result:
        out = self.out
        if not out.is_dir():
            raise NotAnOutput(f"{out}: no such folder" if not out.exists() else f"{out}: not a folder")
        build = (out / "spec.json").is_file() or (out / "manifest.json").is_file()
        if not build and not is_latent_output(out):
            raise NotAnOutput(f"{out}: not a build output (no spec.json or manifest.json) and not an encode_latents "
                              "output (no <task>/<shard>.stats.json written by encode_latents)")
        reported: set[Path] = set()
        if build:
            reported = self.check_manifest()
        groups = _groups(out, build)
        total = sum(len(g.tars) for g in groups)
        done = 0
        for g in sorted(groups, key=lambda g: ("base", "label", "pair", "latent").index(g.kind)):
            self.keys.setdefault(g.folder, {})
            for tar in g.tars:
                if stats_path(tar).exists():
                    self.check_shard(g, tar)
                    self.result.shards += 1
                elif tar not in reported:
                    self.problem(f"{self.rel(tar)}: no stats file: the shard was never committed (a killed run; "
                                 "re-run the build)")
                done += 1
                if self.progress and done % PROGRESS_EVERY == 0:
                    self.progress(f"[verify] {done}/{total} shards, {self.result.samples} samples, "
                                  f"{len(self.result.problems)} problem(s)")
            if g.kind == "latent":
                self.check_latent_keys(g)
        for tmp in sorted(p for p in out.rglob(_TEMPORARY) if p.is_file()):
            self.problem(f"{self.rel(tmp)}: temporary file of a killed or failed run (the next run removes it)")
        return self.result

    def check_manifest(self) -> set[Path]:
        """Shards that manifest.json lists but that have no stats; returns those reported."""
        path = self.out / "manifest.json"
        if not path.exists():
            self.problem(f"{self.rel(path)}: missing: the build has not finished (re-run it)")
            return set()
        try:
            shards = json.loads(path.read_text())["shards"]
            listed = [self.out / p for kind in ("base", "labels", "pairs") for p in shards.get(kind, [])]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.problem(f"{self.rel(path)}: unreadable shard list ({type(e).__name__}: {e})")
            return set()
        unfinished = [p for p in listed if not stats_path(p).exists()]
        for p in unfinished:
            self.problem(f"{self.rel(p)}: listed in manifest.json but not committed (no stats file): unfinished; "
                         "re-run the build")
        return set(unfinished)

    def check_shard(self, g: _Group, tar: Path) -> None:
        sp = stats_path(tar)
        try:
            stats = json.loads(sp.read_text())
            if not isinstance(stats, dict):
                raise ValueError(f"expected a JSON object, got {type(stats).__name__}")
        except (OSError, ValueError) as e:
            self.problem(f"{self.rel(sp)}: unreadable stats ({type(e).__name__}: {e})")
            return
        if "tar_sha256" not in stats:
            self.result.unhashed += 1
        rows = self.check_index(tar, stats)
        sizes = self.read_tar(g, tar, stats)
        if rows is None or sizes is None:
            return
        ok = {r["key"]: r for r in rows if r["status"] == "ok"}
        missing = sorted(set(ok) - set(sizes))
        extra = sorted(set(sizes) - set(ok))
        if missing:
            self.problem(f"{self.rel(tar)}: {len(missing)} key(s) the index lists as ok are not in the tar: "
                         f"{_few(missing)}")
        if extra:
            self.problem(f"{self.rel(tar)}: {len(extra)} sample(s) in the tar are not ok in the index: {_few(extra)}")
        for key in sorted(set(ok) & set(sizes)):
            if "bytes" in ok[key] and ok[key]["bytes"] != sizes[key]:
                self.problem(f"{self.rel(tar)}: {key}: the index says {ok[key]['bytes']} bytes, its members hold "
                             f"{sizes[key]}")

    def check_index(self, tar: Path, stats: dict) -> list[dict] | None:
        path = index_path(tar)
        where = self.rel(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.problem(f"{where}: missing (the stats say the shard is committed)")
            return None
        if "index_bytes" in stats and len(data) != stats["index_bytes"]:
            self.problem(f"{where}: {len(data)} bytes, the stats record {stats['index_bytes']}")
        elif "index_sha256" in stats and hashlib.sha256(data).hexdigest() != stats["index_sha256"]:
            self.problem(f"{where}: SHA-256 differs from the one the stats record: the file changed after its "
                         "commit; delete the shard's tar and re-run the build")
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError) as e:
            self.problem(f"{where}: unreadable parquet ({type(e).__name__}: {e})")
            return None
        lacking = {"key", "status"} - set(table.column_names)
        if lacking:
            self.problem(f"{where}: no column(s) {sorted(lacking)}")
            return None
        rows = table.select([c for c in ("key", "status", "bytes") if c in table.column_names]).to_pylist()
        dup = sorted(k for k, n in Counter(r["key"] for r in rows).items() if n > 1)
        if dup:
            self.problem(f"{where}: {len(dup)} key(s) listed more than once: {_few(dup)}")
        bad = sorted({str(r["status"]) for r in rows} - {"ok", "error", "skipped"})
        if bad:
            self.problem(f"{where}: unknown status(es) {bad} (expected ok, error or skipped)")
        counts = Counter(r["status"] for r in rows)
        for status in ("ok", "error", "skipped"):
            recorded = stats.get(f"n_{status}")
            if recorded != counts[status]:
                self.problem(f"{where}: {counts[status]} {status} row(s), the stats record n_{status}={recorded}")
        return rows

    def read_tar(self, g: _Group, tar: Path, stats: dict) -> dict[str, int] | None:
        """Read the tar once, hashing it and checking each sample; -> key -> bytes of its members
        (None when the tar is missing)."""
        where = self.rel(tar)
        try:
            size = tar.stat().st_size
        except FileNotFoundError:
            self.problem(f"{where}: missing (the stats say the shard is committed); re-run the build")
            return None
        if "bytes" in stats and size != stats["bytes"]:
            self.problem(f"{where}: {size} bytes, the stats record {stats['bytes']} (truncated or replaced); "
                         "re-run the build")
        sizes: dict[str, int] = {}
        ctx = self.context(g, tar)
        with open(tar, "rb") as f:
            reader = HashingFile(f)
            key, members = None, {}
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tf:
                    for info in tf:
                        name = info.name
                        if not info.isfile() or "/" in name:
                            self.problem(f"{where}: member {name!r} is not a plain file at the top level")
                            continue
                        k, _, ext = name.partition(".")
                        if k != key:
                            if key is not None:
                                self.sample(g, tar, key, members, sizes, ctx)
                            if k in sizes:
                                self.problem(f"{where}: {k}: its members are not together (the key appears twice)")
                            key, members = k, {}
                        if ext in members:
                            self.problem(f"{where}: {name}: member appears twice")
                        members[ext] = tf.extractfile(info).read()
                if key is not None:
                    self.sample(g, tar, key, members, sizes, ctx)
            except (tarfile.TarError, EOFError, OSError) as e:
                self.problem(f"{where}: unreadable after {len(sizes)} complete sample(s): {type(e).__name__}: {e}")
            while reader.read(1 << 20):  # the rest (tar padding, or what a broken tar left), for the hash
                pass
        if ctx.get("base") is not None:
            ctx["base"].close()
        if "tar_sha256" in stats and size == stats.get("bytes") and reader.hexdigest() != stats["tar_sha256"]:
            self.problem(f"{where}: SHA-256 differs from the one the stats record: the file changed after its "
                         "commit; delete it and re-run the build")
        return sizes

    def context(self, g: _Group, tar: Path) -> dict:
        """What the sample checks of one shard need from other shards: labels, the base shard."""
        if g.kind == "label":
            base = g.base_folder / tar.name
            return {"base": ShardReader(base) if stats_path(base).exists() and base.exists() else None}
        return {}

    # ------------------------------------------------------------------ samples

    def sample(self, g: _Group, tar: Path, key: str, members: dict[str, bytes], sizes: dict[str, int],
               ctx: dict) -> None:
        sizes[key] = sum(len(b) for b in members.values())
        self.result.samples += 1
        seen = self.keys[g.folder]
        if key in seen and seen[key] != tar.name:
            self.problem(f"{self.rel(tar)}: {key}: key also in {seen[key]} of the same {g.kind} folder "
                         f"{self.rel(g.folder)}")
        seen.setdefault(key, tar.name)
        where = f"{self.rel(tar)}: {key}"
        meta, err = _sample(where, members)
        if err is not None:
            self.problem(err)
            return
        {"pair": self.pair, "base": self.base, "label": self.label, "latent": self.latent}[g.kind](
            g, where, key, members, meta, ctx)

    def pair(self, g: _Group, where: str, key: str, m: dict[str, bytes], meta: dict, ctx: dict) -> None:
        lacking = [f for f in ("width", "height", "frames", "input", "target", "raw") if f not in meta]
        if lacking:
            self.problem(f"{where}.json: no field(s) {lacking}")
            return
        if meta.get("task") != g.name:
            self.problem(f"{where}.json: task {meta.get('task')!r}, but the shard is in pairs/{g.name}")
        clip = isinstance(meta["input"], list)
        inputs = list(meta["input"]) if clip else [meta["input"]]
        targets = list(meta["target"]) if isinstance(meta["target"], list) else [meta["target"]]
        if not isinstance(meta["raw"], list):
            self.problem(f"{where}.json: raw {meta['raw']!r}, expected a list of member names")
            return
        raws = list(meta["raw"])
        for name in sorted({*inputs, *targets, *raws} - set(m)):
            self.problem(f"{where}: missing member {name} (the json names it)")
        for name in sorted(set(m) - {"json", *inputs, *targets, *raws}):
            self.problem(f"{where}.{name}: member not named by the json")
        frames, h, w = meta["frames"], meta["height"], meta["width"]
        if clip and len(inputs) != frames:
            self.problem(f"{where}.json: {len(inputs)} input frames named, frames={frames}")
        if not clip and frames != 1:
            self.problem(f"{where}.json: frames={frames} for a single input image")
        if "target_frames" in meta and len(targets) != meta["target_frames"]:
            self.problem(f"{where}.json: {len(targets)} target frames named, target_frames={meta['target_frames']}")
        if self.check_images:
            for name in (n for n in inputs + targets if n in m):
                img = self.image(f"{where}.{name}", m[name])
                if img is not None:
                    self.sized(f"{where}.{name}", img, (h, w), 3, "uint8")
        # Raw arrays are per pixel of the output: (H, W, ...) beside an image; beside a clip
        # (T, H, W, ...) with T the clip's frames, the input's or target's, or one less (flow).
        lengths = {frames, meta.get("target_frames", frames)}
        if meta.get("frame_indices"):
            lengths |= {len(meta["frame_indices"]), len(meta["frame_indices"]) - 1}
        for name in (n for n in raws if n in m):
            arr = self.npy(f"{where}.{name}", m[name])
            if arr is None:
                continue
            if arr.dtype.kind not in "fiub":
                self.problem(f"{where}.{name}: dtype {arr.dtype} is not numeric")
            lead = 1 if clip else 0
            if arr.ndim < 2 + lead or tuple(arr.shape[lead:lead + 2]) != (h, w) or \
                    (clip and arr.shape[0] not in lengths):
                want = f"({'/'.join(map(str, sorted(lengths)))}, {h}, {w}, ...)" if clip else f"({h}, {w}, ...)"
                self.problem(f"{where}.{name}: shape {arr.shape}, expected {want} (json width/height/frames)")

    def base(self, g: _Group, where: str, key: str, m: dict[str, bytes], meta: dict, ctx: dict) -> None:
        hw = (meta["height"], meta["width"]) if "height" in meta and "width" in meta else None
        frames, tracks = _numbered(m, "frame"), _numbered(m, "tracks")
        video = sorted(n for n in m if n.startswith("video."))
        images = [n for n in ("image.jpg", "image.png") if n in m]
        known = {"json", "depth.npy", "normals.npy", "segments.png", "flow.npy", *images, *video, *frames, *tracks}
        for name in sorted(set(m) - known):
            self.problem(f"{where}.{name}: not a base-sample member (lavin_data.base)")
        clip = bool(frames or video)
        t = None
        if not clip:
            if len(images) != 1:
                self.problem(f"{where}: expected one image member (image.jpg or image.png), has {images or 'none'}")
            elif self.check_images:
                img = self.image(f"{where}.{images[0]}", m[images[0]])
                if img is not None:
                    self.sized(f"{where}.{images[0]}", img, hw, 3, "uint8")
                    hw = hw or img.shape[:2]
        else:
            if images or (frames and video) or len(video) > 1:
                self.problem(f"{where}: a clip has either frame_NNN members or one video member, and no image; "
                             f"has {sorted(images + video)} and {len(frames)} frame(s)")
            t = len(meta["frame_indices"]) if isinstance(meta.get("frame_indices"), list) else None
            if frames:
                if gaps := _gaps(frames):
                    self.problem(f"{where}: frame member(s) {gaps} missing")
                if t is not None and len(frames) != t:
                    self.problem(f"{where}: {len(frames)} frame members, the json's frame_indices has {t}")
                t = len(frames) if t is None else t
                if self.check_images:
                    for name in frames:
                        img = self.image(f"{where}.{name}", m[name])
                        if img is not None:
                            self.sized(f"{where}.{name}", img, hw, 3, "uint8")
                            hw = hw or img.shape[:2]
            elif video and self.check_images and not images:
                self.video(where, key, m, meta, t, hw)
        h, w = hw if hw is not None else (None, None)
        lead = (t,) if clip else ()
        if "depth.npy" in m:
            self.array(f"{where}.depth.npy", m["depth.npy"], "float32", lead + (h, w))
        if "normals.npy" in m:
            self.array(f"{where}.normals.npy", m["normals.npy"], "float16", lead + (h, w, 3))
        if "flow.npy" in m:
            if not clip:
                self.problem(f"{where}.flow.npy: flow belongs to clips, and this sample is an image")
            self.array(f"{where}.flow.npy", m["flow.npy"], "float32", (None if t is None else t - 1, h, w, 2))
        if "segments.png" in m and self.check_images:
            img = self.image(f"{where}.segments.png", m["segments.png"])
            if img is not None:
                self.sized(f"{where}.segments.png", img, hw, None, "uint16")
        if tracks:
            if gaps := _gaps(tracks):
                self.problem(f"{where}: track member(s) {gaps} missing")
            if t is not None and len(tracks) != t:
                self.problem(f"{where}: {len(tracks)} track maps for {t} frames")
            if self.check_images:
                for name in tracks:
                    img = self.image(f"{where}.{name}", m[name])
                    if img is not None:
                        self.sized(f"{where}.{name}", img, hw, None, "uint16")

    def video(self, where: str, key: str, m: dict[str, bytes], meta: dict, t: int | None,
              hw: tuple[int, int] | None) -> None:
        from lavin_data.base import base_frames

        try:
            clip, _ = base_frames(key, m)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this sample's problem
            self.problem(f"{where}: video does not decode ({type(e).__name__}: {e})")
            return
        if t is not None and len(clip) != t:
            self.problem(f"{where}: video decodes to {len(clip)} frames, the json's frame_indices has {t}")
        if hw is not None and tuple(clip.shape[1:3]) != tuple(hw):
            self.problem(f"{where}: video frames are {clip.shape[2]}x{clip.shape[1]}, the json says {hw[1]}x{hw[0]}")

    def label(self, g: _Group, where: str, key: str, m: dict[str, bytes], meta: dict, ctx: dict) -> None:
        base: ShardReader | None = ctx.get("base")
        hw = t = None
        if base is not None:
            if key not in base:
                self.problem(f"{where}: no base sample {key} in {self.rel(base.path)}")
            else:
                try:
                    bm = json.loads(base[key]["json"])
                    hw = (bm["height"], bm["width"]) if "height" in bm and "width" in bm else None
                    t = len(bm["frame_indices"]) if isinstance(bm.get("frame_indices"), list) else None
                except (KeyError, ValueError, TypeError):
                    pass  # the base shard's own check reports it
        output = meta.get("output")
        if output not in ("depth", "normals", "flow"):
            self.problem(f"{where}.json: output {output!r}, expected depth, normals or flow")
            return
        if output == "flow":
            expected = {"json", "flow.npy"}
        else:
            numbered = _numbered(m, output)
            expected = {"json", *numbered} if numbered else {"json", f"{output}.png"}
            if numbered and (gaps := _gaps(numbered)):
                self.problem(f"{where}: {output} frame member(s) {gaps} missing")
            if t is not None and len(numbered) != t:
                self.problem(f"{where}: {len(numbered) or 'no'} {output} frame members for a base clip of {t} frames")
            if t is None and numbered and base is not None and key in base:
                self.problem(f"{where}: {output} frame members for a base image")
        for name in sorted(expected - set(m)):
            self.problem(f"{where}: missing member {name}")
        for name in sorted(set(m) - expected):
            self.problem(f"{where}.{name}: not a member of a {output} sidecar (lavin_data.sidecar)")
        if output == "depth" and not (isinstance(meta.get("scale"), int | float) and meta["scale"] > 0):
            self.problem(f"{where}.json: depth scale {meta.get('scale')!r}, expected a positive number")
        if output == "flow" and "flow.npy" in m:
            h, w = hw if hw is not None else (None, None)
            self.array(f"{where}.flow.npy", m["flow.npy"], "float32", (None if t is None else t - 1, h, w, 2))
        elif output != "flow" and self.check_images:
            for name in sorted(n for n in expected - {"json"} if n in m):
                img = self.image(f"{where}.{name}", m[name])
                if img is not None:
                    self.sized(f"{where}.{name}", img, hw, 3 if output == "normals" else None, "uint16")

    def latent(self, g: _Group, where: str, key: str, m: dict[str, bytes], meta: dict, ctx: dict) -> None:
        for name in sorted(LATENT_MEMBERS - set(m)):
            self.problem(f"{where}: missing member {name}")
        for name in sorted(set(m) - LATENT_MEMBERS):
            self.problem(f"{where}.{name}: not a latent-sample member (lavin_data.encode_latents)")
        res, t = meta.get("resolution"), meta.get("latent_frames")
        side = res // 8 if isinstance(res, int) else None
        shapes = {}
        for name in sorted(LATENT_MEMBERS - {"json"} & set(m)):
            arr = self.array(f"{where}.{name}", m[name], "float16", (None, t, side, side))
            if arr is not None:
                shapes[name] = arr.shape
                if arr.ndim == 4 and arr.shape[0] % 2:
                    self.problem(f"{where}.{name}: {arr.shape[0]} channels; moments are mean and log-variance "
                                 "(an even count)")
        if len(set(shapes.values())) > 1:
            self.problem(f"{where}: input and target moments differ in shape {sorted(shapes.items())}")

    # ------------------------------------------------------------------ latents

    def check_latent_keys(self, g: _Group) -> None:
        """Every latent key of a task is a pair key of that task."""
        keys = self.keys[g.folder]
        if not keys:
            return
        pair_keys, where = self.pair_keys(g)
        if pair_keys is None:
            self.result.notes.append(f"{self.rel(g.folder)}: the pair shards it was encoded from were not found "
                                     f"({where}); its keys were not compared with theirs")
            return
        strays = sorted(set(keys) - pair_keys)
        for k in strays[:20]:
            self.problem(f"{self.rel(g.folder / keys[k])}: {k}: latent key is not a pair key of task {g.name} "
                         f"({where})")
        if len(strays) > 20:
            self.problem(f"{self.rel(g.folder)}: {len(strays) - 20} more latent key(s) that are not pair keys")

    def pair_keys(self, g: _Group) -> tuple[set[str] | None, str]:
        """The sample keys of the pairs of ``g``'s task, and where they were read."""
        folders = [g.latent_root.parent.parent / "pairs" / g.name] if g.latent_root.parent.name == "latents" else []
        for tar in g.tars:
            try:
                src = json.loads(stats_path(tar).read_text()).get("source_shard")
            except (OSError, ValueError, AttributeError):
                continue
            if src:
                folders.append(Path(src).parent)
                break
        for folder in folders:
            if folder in self.keys:  # checked above, in this build
                return set(self.keys[folder]), self.rel(folder)
            if folder.is_dir():
                keys: set[str] = set()
                for tar in sorted(folder.glob("*.tar")):
                    try:
                        with tarfile.open(tar) as tf:
                            keys |= {n.partition(".")[0] for n in tf.getnames()}
                    except (tarfile.TarError, OSError):
                        continue  # that pair shard's own check reports it
                return keys, str(folder)
        return None, " or ".join(map(str, folders)) or "no source_shard in the stats"


def _few(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lavin_data.verify",
                                 description="Check a finished build output (or an encode_latents output) end to end, "
                                             "reading every shard once. Exits 0 when everything checks, 1 with one "
                                             "line per problem, 2 when OUT is not an output.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("out", help="a build's output folder (or an encode_latents output)")
    ap.add_argument("--quick", action="store_true", help="do not decode images (hashes, indexes, members still)")
    args = ap.parse_args(argv)
    try:
        res = check(args.out, check_images=not args.quick, progress=lambda line: print(line, file=sys.stderr,
                                                                                      flush=True))
    except NotAnOutput as e:
        return fail(e)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    what = f"{res.shards} shards, {res.samples} samples checked" + (" (images not decoded: --quick)"
                                                                   if args.quick else "")
    if res.unhashed:
        what += f"; {res.unhashed} shard(s) committed before hashes were recorded: sizes checked only"
    if res.problems:
        for p in res.problems:
            print(p)
        print(f"[verify] {args.out}: {len(res.problems)} problem(s); {what}")
        return 1
    print(f"[verify] {args.out}: OK: {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
