"""``python -m lavin_data.export_templates --pairs OUT/pairs --out TEMPLATES [--tasks a,b]
[--split train|val|any] [--count 8] [--seed S] [--no-json]``

Copy a few pairs of each image task out of a build's pair shards into the template layout
that in-context inference reads (``lavin_model.infer --examples TEMPLATES/<task>``, and the
released LaVin-DiT ``inference.py``): ``TEMPLATES/<task>/<id>_input.<ext>`` +
``<id>_target.<ext>``, plus the pair's json as ``<id>.json`` (``--no-json`` leaves it out).

Which pairs: those of ``--split`` (as each pair's json records it; ``any``: both) in committed
shards (``<shard>.stats.json`` present). Without ``--seed``, the first ``--count`` in shard
order, then key order within a shard; with ``--seed S``, ``--count`` drawn uniformly from all
of the task's pairs of the split (every committed shard's json members are read), the same for
the same S, then put in shard and key order. ``--pairs`` may also be the build folder itself.

Ids: ``<position>_<key>`` (position 0000, 0001, ... in that order; the key with characters
other than letters, digits, ``_`` and ``-`` replaced by ``-``, and ``_input``/``_target``
inside it written ``-input``/``-target``), so sorted ids are the export order and the first
``--context`` pairs that inference takes are the first ones chosen. The image files are the
shard members' bytes, not re-encoded, with the members' extensions (``input.jpg`` ->
``<id>_input.jpg``, ``target.png`` -> ``<id>_target.png``).

Video tasks (clip pairs) are skipped with a note, and naming one is an error: the layout
holds single images. Member names that are not plain file names (``../x.input.png``, an
absolute name, ``a/b.json``) or not regular files skip their sample, with a note naming the
shard and the member; nothing is ever written outside ``TEMPLATES/<task>/``. A rerun
overwrites the files it writes and leaves every other file there.

Exit 0 when every asked task got pairs; 2, with a message and no traceback, for a missing
folder, an unknown or video task, a task without pairs of the split, or a shard changed after
its commit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lavin_data.cli import HelpFormatter, fail
from lavin_data.shards import build_pairs_folder, check_key, read_stats, shard_done, stats_path
from lavin_data.split import SPLITS, pair_split, split_count

IMAGE_EXTS = ("png", "jpg", "jpeg")  # what lavin_model.infer.template_pairs reads (its IMAGE_EXTS, lower case)
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FRAME = re.compile(r"(input|target)_\d+\.")  # input_000.jpg: a frame of a clip pair
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_KEY_CHARS = 120  # keeps <id>_target.jpeg far below the 255-byte file name limit


class ExportError(ValueError):
    """A user-facing error: the message names the path, task or shard and what is wrong."""


@dataclass(frozen=True)
class Member:
    """A regular file member of a shard tar: its name, where its data starts and its size."""

    name: str
    offset: int
    size: int

    @property
    def ext(self) -> str:
        """``input.jpg`` -> ``jpg``: the part after the role."""
        return self.name.partition(".")[2].partition(".")[2]


@dataclass(frozen=True)
class Candidate:
    """One image pair of a shard that may be exported."""

    shard: Path
    key: str
    split: str
    input: Member
    target: Member
    json: Member


class ClipPairs(ExportError):
    """A task whose pairs are clips (input_000.jpg, ...), which the template layout cannot hold."""


def pairs_root(path: str | os.PathLike) -> Path:
    """The pairs folder of ``path``: ``path`` itself, or ``path/pairs`` for a build folder."""
    p = Path(path)
    if not p.is_dir():
        raise ExportError(f"{p}: no such folder (expected a build's pairs/ folder, or the build folder)")
    if (pairs := build_pairs_folder(p)) is not None:
        return pairs
    if any(p.glob("*.tar")):
        raise ExportError(f"{p}: holds shards itself, so it looks like one task's folder; pass its parent "
                          f"({p.parent}) with --tasks {p.name}")
    return p


def committed_shards(task_dir: Path) -> tuple[list[Path], int]:
    """(sorted shard tars of a task folder with a stats file, how many tars have none yet).
    Whether a committed shard is still whole is checked when it is read (:func:`choose`)."""
    done, pending = [], 0
    for tar in sorted(task_dir.glob("*.tar")):
        if stats_path(tar).exists():
            done.append(tar)
        else:
            pending += 1  # a build in progress, or one that was killed
    return done, pending


def find_tasks(root: Path, note: Callable[[str], None]) -> dict[str, tuple[list[Path], int]]:
    """{task: (its committed shards, uncommitted tar count)} for every task folder of ``root``
    with at least one committed shard."""
    found = {}
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        if not _TASK_NAME.fullmatch(d.name):
            note(f"{d}: not a task folder name (letters, digits, '_', '-', '.'); left out")
            continue
        shards, pending = committed_shards(d)
        if shards:
            found[d.name] = (shards, pending)
    return found


def is_video_task(task: str) -> bool:
    from lavin_data.registry import TASKS

    return task in TASKS and TASKS[task].frames == "video"


def _plain_member(name: str) -> str | None:
    """Why a tar member name is not a plain ``<key>.<ext>`` file name, or None when it is."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "an absolute name"
    if "/" in name or "\\" in name:
        return "a path, not a file name" + (" (with '..')" if ".." in name.replace("\\", "/").split("/") else "")
    key, _, ext = name.partition(".")
    if not ext:
        return "no extension"
    try:
        check_key(key)
    except ValueError:
        return "an invalid key"
    return None


def scan_shard(tar_path: Path, split: str | None, note: Callable[[str], None]) -> list[Candidate]:
    """The image pairs of ``split`` (None: any) in one shard, sorted by key. Only headers and
    json members are read. Samples with an unsafe or irregular member are left out with a note;
    a clip pair raises :class:`ClipPairs`."""
    members: dict[str, dict[str, Member]] = {}
    metas: dict[str, bytes] = {}
    bad: dict[str, list[str]] = {}
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                why = _plain_member(info.name)
                if why is None and not info.isfile():
                    why = "not a regular file"
                # the sample a WebDataset reader would put it in: the basename up to its first dot
                key, _, ext = info.name.replace("\\", "/").rsplit("/", 1)[-1].partition(".")
                if why is None and ext in members.get(key, {}):
                    why = "a second member of that name"
                if why is not None:
                    bad.setdefault(key, []).append(f"member {info.name!r}: {why}")
                    continue
                members.setdefault(key, {})[ext] = Member(info.name, info.offset_data, info.size)
                if ext == "json":
                    metas[key] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError) as e:
        raise ExportError(f"{tar_path}: cannot be read as a tar ({type(e).__name__}: {e})") from None
    out = []
    for key in sorted(set(members) | set(bad)):
        if key in bad:
            note(f"{tar_path}: sample {key!r} left out: " + "; ".join(bad[key]))
            continue
        m = members[key]
        if key not in metas:
            note(f"{tar_path}: sample {key!r} left out: no {key}.json member")
            continue
        try:
            meta = json.loads(metas[key])
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            sample_split, _item = pair_split(key, meta)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a split that is neither train nor val
            note(f"{tar_path}: sample {key!r} left out: its json: {e}")
            continue
        if isinstance(meta.get("input"), list) or isinstance(meta.get("target"), list) \
                or any(_FRAME.match(e) for e in m):
            raise ClipPairs(f"{tar_path}: sample {key!r} is a clip pair (input_000..., not one input image)")
        if split is not None and sample_split != split:
            continue
        roles = {}
        for role in ("input", "target"):
            name = meta.get(role)
            if not isinstance(name, str):  # pairs json always names them; be lenient with hand-made ones
                names = [e for e in m if e.partition(".")[0] == role]
                name = names[0] if len(names) == 1 else f"{role}.png"
            if name not in m or name.partition(".")[2].lower() not in IMAGE_EXTS or name.partition(".")[0] != role:
                roles = None
                note(f"{tar_path}: sample {key!r} left out: no image member {key}.{name} "
                     f"(.png/.jpg/.jpeg) for its {role}")
                break
            roles[role] = m[name]
        if roles:
            out.append(Candidate(tar_path, key, sample_split, roles["input"], roles["target"], m["json"]))
    return out


def choose(task: str, shards: list[Path], split: str | None, count: int, seed: int | None,
           note: Callable[[str], None]) -> list[Candidate]:
    """``count`` pairs of ``task`` (fewer when it has fewer): the first in shard and key order, or
    with ``seed`` a uniform draw over all of them, returned in shard and key order."""
    pool: list[Candidate] = []
    for tar in shards:
        if not shard_done(tar):
            raise ExportError(f"{tar}: changed or cut short after its commit (its size or its index's differs from "
                              f"{stats_path(tar).name}); rebuild it (python -m lavin_data.verify says what differs)")
        if split_count(read_stats(tar), split) == 0:
            continue  # nothing of the split there: the stats say so without opening the tar
        pool += scan_shard(tar, split, note)
        if seed is None and len(pool) >= count:
            break
    if seed is None:
        return pool[:count]
    rng = random.Random(f"{seed}:{task}")  # str seeds are hashed with SHA-512: stable across runs and machines
    picked = set(rng.sample(range(len(pool)), min(count, len(pool))))
    return [c for i, c in enumerate(pool) if i in picked]


def template_id(position: int, key: str, width: int = 4) -> str:
    """``0003_synthetic_000017``: position first so that sorted ids are the export order; the
    key made safe for a file name and free of ``_input``/``_target``, which readers split on."""
    safe = _UNSAFE.sub("-", key)[:_KEY_CHARS].replace("_input", "-input").replace("_target", "-target")
    return f"{position:0{width}d}_{safe}"


def _read(shard: Path, m: Member) -> bytes:
    with open(shard, "rb") as f:
        f.seek(m.offset)
        data = f.read(m.size)
    if len(data) != m.size:
        raise ExportError(f"{shard}: member {m.name} is cut short ({len(data)} of {m.size} bytes)")
    return data


def _write(folder: Path, name: str, data: bytes) -> bool:
    """Write ``folder/name`` whole (a fresh temporary beside it, then a rename, so an existing
    link there is replaced, never written through); False when it already held ``data``."""
    path = folder / name
    if Path(name).name != name or path.parent != folder:  # ids and extensions are checked; this is the backstop
        raise ExportError(f"{name!r}: refusing to write outside {folder}")
    if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def write_task(cands: list[Candidate], dest: Path, with_json: bool, note: Callable[[str], None]) -> list[str]:
    """Write the chosen pairs of one task into ``dest``; returns their ids in order."""
    dest.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(cands) - 1)))
    ids = []
    for pos, c in enumerate(cands):
        tid = template_id(pos, c.key, width)
        files = {f"{tid}_input.{c.input.ext}": c.input, f"{tid}_target.{c.target.ext}": c.target}
        if with_json:
            files[f"{tid}.json"] = c.json
        for name, m in files.items():
            _write(dest, name, _read(c.shard, m))
        for role, m in (("input", c.input), ("target", c.target)):
            for p in dest.glob(f"{_glob_escape(tid)}_{role}.*"):
                if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.name != f"{tid}_{role}.{m.ext}":
                    note(f"{p}: an older {role} of the same id with another extension; template_pairs reads only "
                         "one of the two: remove it")
        ids.append(tid)
    others = {p.stem.rsplit("_", 1)[0] for p in dest.iterdir()
              if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.stem.endswith("_input")} - set(ids)
    if others:
        note(f"{dest}: {len(others)} other template pair(s) not written by this run (left there); "
             "inference reads them too")
    return ids


def _glob_escape(text: str) -> str:
    """``text`` for a glob pattern, its wildcard characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def export(pairs: str | os.PathLike, out: str | os.PathLike, tasks: list[str] | None = None, split: str = "train",
           count: int = 8, seed: int | None = None, with_json: bool = True,
           echo: Callable[[str], None] = print, note: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Export ``count`` pairs of ``split`` ("train" | "val" | "any") per task from ``pairs`` (a
    pairs folder or a build folder) into ``out/<task>/``; returns {task: ids written}. Every
    task is chosen before anything is written, so an error leaves ``out`` untouched."""
    if split not in (*SPLITS, "any"):
        raise ExportError(f"split {split!r}: expected one of {', '.join((*SPLITS, 'any'))}")
    if count < 1:
        raise ExportError(f"--count {count}: expected at least 1")
    root = pairs_root(pairs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ExportError(f"{out}: lies inside the pairs folder {root}; choose a folder outside the build's pairs")
    found = find_tasks(root, note)
    if tasks:
        unknown = [t for t in tasks if t not in found]
        if unknown:
            raise ExportError(f"{root}: no committed pair shards for task(s) {', '.join(unknown)}; "
                              f"found: {', '.join(found) or 'none'}")
        video = [t for t in tasks if is_video_task(t)]
        if video:
            raise ExportError(f"{', '.join(video)}: video task(s) (clip pairs); the template layout "
                              "<id>_input/<id>_target is for images")
        chosen_tasks = list(dict.fromkeys(tasks))
    else:
        if not found:
            raise ExportError(f"{root}: no committed pair shards (<task>/<shard>.tar with .stats.json)")
        chosen_tasks = []
        for t in found:
            if is_video_task(t):
                note(f"{t}: skipped, a video task (clip pairs); the template layout is for images")
            else:
                chosen_tasks.append(t)
    want = None if split == "any" else split
    plan: dict[str, list[Candidate]] = {}
    for t in chosen_tasks:
        shards, pending = found[t]
        if pending:
            note(f"{root / t}: {pending} uncommitted shard(s) left out (no .stats.json)")
        try:
            cands = choose(t, shards, want, count, seed, note)
        except ClipPairs as e:
            if tasks:
                raise ExportError(f"{t}: {e}; the template layout <id>_input/<id>_target is for images") from None
            note(f"{t}: skipped: {e}")
            continue
        if not cands:
            msg = f"{root / t}: no {split} pairs in its committed shards"
            if tasks:
                raise ExportError(msg)
            note(msg + "; skipped")
            continue
        if len(cands) < count:
            note(f"{t}: only {len(cands)} {split} pair(s), fewer than --count {count}")
        plan[t] = cands
    if not plan:
        raise ExportError(f"{root}: no image task with {split} pairs (tasks found: {', '.join(found) or 'none'})")
    written = {}
    for t, cands in plan.items():
        dest = out / t
        written[t] = write_task(cands, dest, with_json, note)
        echo(f"[export] {t}: {len(cands)} pair(s) ({split}) -> {dest}")
    echo(f"[export] {sum(map(len, written.values()))} pair(s) of {len(written)} task(s) -> {out}")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lavin_data.export_templates", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--pairs", required=True, help="a build's pairs/ folder (OUT/pairs), or the build folder OUT")
    ap.add_argument("--out", required=True, help="template folder to write: <out>/<task>/<id>_input.<ext> + "
                                                 "<id>_target.<ext>; other files there are left alone")
    ap.add_argument("--tasks", help="comma-separated tasks (default: every image task with committed shards)")
    ap.add_argument("--split", default="train", choices=[*SPLITS, "any"],
                    help="the pairs' split, as their json records it (any: both)")
    ap.add_argument("--count", type=int, default=8, help="pairs per task (fewer when a task has fewer)")
    ap.add_argument("--seed", type=int, default=None,
                    help="draw --count pairs uniformly with this seed "
                    "(default: the first --count pairs in shard and key order)")
    ap.add_argument("--no-json", action="store_true", help="do not write <id>.json (the pair's json) beside the images")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        export(args.pairs, args.out, tasks, args.split, args.count, args.seed, with_json=not args.no_json,
               note=lambda line: print(f"note: {line}", file=sys.stderr))
    except (ExportError, OSError) as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
