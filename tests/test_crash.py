"""Crash tests: SIGKILL a build (and an ``encode_latents`` run) part-way, resume it, and
compare every tar and index byte for byte with an uninterrupted run.

Spec: a reduced copy of ``manifests/demo.yaml``, written into the test's temp folder: all
26 tasks of the demo (19 image, 7 video), but 64 scenes (8 shards) and 8 clips (1 shard)
instead of 192 and 24, so that a build takes about a third of the demo's minute on 2
cores. Runs use ``--num-cpus 2``, like CI. The latent part encodes four image tasks of the
reference build's pairs (32 shards) at 64 px with a tiny random ST-VAE saved to a file.

Each command runs as a subprocess in a session of its own (``start_new_session``). A kill
SIGKILLs every process of that session at once: the driver and Ray's gcs, raylet and agents
(the driver's process group: ``killpg``) and the Ray workers, which sit in process groups of
their own in the same session (``killpg`` alone lets them go on writing shards for a second
or two); the test then waits until none of them is left. The kills are chained on one
output folder (run, kill, resume, kill, ..., resume to the end), so later kills also hit
resumed runs; each resumed run removes the temporary files of the killed one.

Kill points are deterministic but varied (``random.Random(LAVIN_CRASH_SEED)``, default 0)
and counted in progress, not seconds, so that a slow or busy machine moves them neither
before the first shard nor past the last:

- ``write``: once a seeded fraction of all shards is committed (stats file present), wait a
  seeded delay, then kill at the next moment a shard tar is being streamed (a temporary
  ``.<shard>.tar.tmp-...`` exists);
- ``commit``: past a seeded fraction, kill at the first moment a tar has been renamed into
  place while its stats file is not written yet (``ShardWriter.commit`` between the
  ``os.replace`` of the tar and the stats file; a build commits the ~20 tars of a source
  shard one after another, so such a kill usually leaves that shard part-committed).

Every kill must land mid-way: the command killed and not finished, more shards committed
than when it started and fewer than all. After the last resume: the same set of files as
the reference, every ``.tar`` and ``.parquet`` (indexes, plans) identical, every stats file
equal but for ``seconds``, and no temporary file (``.<name>.tmp-...``) left behind. Files
that hold timings (``*.timing.json`` where written, ``manifest.json``) are compared by name only.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="kills sessions found through /proc and pidfds")]

SEED = int(os.environ.get("LAVIN_CRASH_SEED", "0"))
NUM_CPUS = "2"
RUN_TIMEOUT = 420  # seconds per command; generous for a loaded 2-core machine
TINY_VAE = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}
LATENT_TASKS = ("colorization", "denoise", "depth_estimation", "edge_to_image")


# --------------------------------------------------------------------------- processes


def _session_of(pid: int) -> tuple[str, int] | None:
    """(state, session id) of ``pid`` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
    return fields[0], int(fields[3])


def _live(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``."""
    pids = (int(d) for d in os.listdir("/proc") if d.isdigit())
    return sorted(pid for pid in pids if (st := _session_of(pid)) and st[1] == sid and st[0] not in "ZX")


class Session:
    """The processes of a session we started (``start_new_session``): the driver, Ray's gcs,
    raylet and agents (its process group) and the Ray workers (process groups of their own,
    same session). Held as pidfds, so a signal never reaches a recycled pid, and so that a
    kill needs no scan of /proc at the moment it matters."""

    def __init__(self, sid: int):
        self.sid, self.fds = sid, {}

    def refresh(self) -> None:
        for pid in _live(self.sid):
            if pid not in self.fds:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                if (st := _session_of(pid)) and st[1] == self.sid:  # still ours after opening
                    self.fds[pid] = fd
                else:
                    os.close(fd)

    def kill(self, timeout: float = 60) -> None:
        """SIGKILL all of them at once, then until none of the session lives."""
        deadline = time.monotonic() + timeout
        try:
            os.killpg(self.sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            while True:
                for fd in self.fds.values():
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.refresh()
                if not (live := _live(self.sid)):
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"processes of session {self.sid} survive SIGKILL: {live}")
                time.sleep(0.05)
        finally:
            for fd in self.fds.values():
                os.close(fd)
            self.fds = {}


def _tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


@dataclass
class Proc:
    name: str
    cmd: list[str]
    logs: Path
    popen: subprocess.Popen = field(init=False)

    def __post_init__(self):
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a local Ray of our own
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.logs / f"{self.name}.out", "wb") as out, open(self.logs / f"{self.name}.err", "wb") as err:
            self.popen = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def describe(self) -> str:
        return (f"{self.name}: {' '.join(self.cmd)}\n--- stdout tail ---\n{_tail(self.logs / f'{self.name}.out')}"
                f"\n--- stderr tail ---\n{_tail(self.logs / f'{self.name}.err')}")

    def finish(self) -> None:
        """Wait for the command to end (it must succeed), then end what its Ray left behind
        (everything is committed once the driver has exited)."""
        rc = None
        try:
            rc = self.popen.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        finally:
            Session(self.popen.pid).kill()
            self.popen.wait()
        assert rc is not None, f"timed out after {RUN_TIMEOUT}s\n{self.describe()}"
        assert rc == 0, f"exit status {rc}\n{self.describe()}"


# --------------------------------------------------------------------------- shard state


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


@dataclass
class State:
    done: int  # shards committed (stats present)
    pending: dict[str, int]  # tars renamed into place without their stats yet: path -> inode
    tmp: list[str]  # temporary files (in-flight tars, indexes, stats)


def _scan(dirs: list[Path]) -> State:
    done, pending, tmp = 0, {}, []
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            continue
        names = {e.name for e in entries}
        for e in entries:
            if _is_tmp(e.name):
                tmp.append(f"{d.name}/{e.name}")
            elif e.name.endswith(".stats.json"):
                done += 1
            elif e.name.endswith(".tar") and e.name.removesuffix(".tar") + ".stats.json" not in names:
                pending[f"{d.name}/{e.name}"] = e.inode()
    return State(done, pending, sorted(tmp))


def _shard_dirs(root: Path, build: bool) -> list[Path]:
    """The folders that hold shards: base/<source> and pairs/<task> of a build, <task> of latents."""
    parents = [root / "base", root / "pairs"] if build else [root]
    return [d for p in parents if p.is_dir() for d in sorted(p.iterdir()) if d.is_dir()]


@dataclass(frozen=True)
class KillPoint:
    kind: str  # "write": while a shard tar is being streamed | "commit": a tar renamed, its stats not yet written
    after: float  # fraction of all shards committed before the kill may happen
    delay: float = 0.0  # seconds to wait after that

    def __str__(self) -> str:
        return f"{self.kind} kill after {self.after:.0%} of the shards + {self.delay:.2f}s"


@dataclass
class Kill:
    point: KillPoint
    done_before: int  # shards committed when the killed run started
    at_kill: State  # the folder right after the kill
    total: int
    caught: str = ""  # what the kill aimed at: a temporary tar being written, or a tar renamed without its stats

    def __str__(self) -> str:
        return (f"{self.point}: {self.done_before} -> {self.at_kill.done}/{self.total} shards committed, "
                f"{len(self.at_kill.pending)} tars renamed without stats, {len(self.at_kill.tmp)} temp files; "
                f"aimed at {self.caught}")


def _run_and_kill(proc: Proc, dirs_of, total: int, point: KillPoint) -> Kill:
    """Poll the output of ``proc`` until ``point`` is reached, then SIGKILL its whole session."""
    before = _scan(dirs_of())
    threshold = max(before.done + 1, int(point.after * total))
    deadline = time.monotonic() + RUN_TIMEOUT
    session = Session(proc.popen.pid)
    refreshed, armed, caught = 0.0, False, ""
    try:
        while True:
            if proc.popen.poll() is not None:
                pytest.fail(f"kill point {point} ({threshold}/{total} shards) not reached: the command ended "
                            f"with status {proc.popen.returncode} first; choose an earlier point\n{proc.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"kill point {point} not reached in {RUN_TIMEOUT}s\n{proc.describe()}")
            if time.monotonic() - refreshed > 0.5:  # Ray starts workers as it goes
                session.refresh()
                refreshed = time.monotonic()
            st = _scan(dirs_of())
            if not armed:
                if st.done >= threshold:
                    armed = True
                    time.sleep(point.delay)
                else:
                    time.sleep(0.02)
                continue
            if point.kind == "write":
                writing = [t for t in st.tmp if ".tar.tmp-" in t]
                if writing:
                    caught = writing[0]
                    break
            else:
                fresh = [p for p, ino in st.pending.items() if before.pending.get(p) != ino]
                if fresh:
                    caught = fresh[0]
                    break
            time.sleep(0.0005)  # a commit lasts a few milliseconds
    finally:
        session.kill()
        proc.popen.wait()
    assert proc.popen.returncode == -signal.SIGKILL, \
        f"expected the kill to end the command, got status {proc.popen.returncode}\n{proc.describe()}"
    kill = Kill(point, before.done, _scan(dirs_of()), total, caught)
    assert before.done < kill.at_kill.done < total, f"kill not mid-way: {kill}\n{proc.describe()}"
    return kill


# --------------------------------------------------------------------------- comparison


def _files(root: Path) -> set[str]:
    """The files of an output, temporaries aside (the *_no_temp_files_* tests look at those)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not _is_tmp(p.name)}


def _index_diff(a: Path, b: Path) -> str:
    ra, rb = pq.read_table(a).to_pylist(), pq.read_table(b).to_pylist()
    if ra == rb:
        return "same rows (the parquet bytes differ: metadata or encoding)"
    sa = [json.dumps(r, sort_keys=True) for r in ra]
    sb = [json.dumps(r, sort_keys=True) for r in rb]
    return ("reference only:\n  " + "\n  ".join(r for r in sa if r not in sb)
            + "\nresumed only:\n  " + "\n  ".join(r for r in sb if r not in sa))


def assert_same_output(ref: Path, got: Path, kills: list[Kill]) -> int:
    """Same files; every tar and parquet byte-identical; stats equal but for timings. Returns
    the number of files compared byte for byte."""
    where = "after kills:\n  " + "\n  ".join(map(str, kills))
    fa, fb = _files(ref), _files(got)
    assert fa == fb, f"file sets differ; reference only: {sorted(fa - fb)}; resumed only: {sorted(fb - fa)}\n{where}"
    binary = sorted(f for f in fa if f.endswith((".tar", ".parquet")))
    assert any(f.endswith(".tar") for f in binary) and any(f.endswith(".parquet") for f in binary)
    differ = [f for f in binary if (ref / f).read_bytes() != (got / f).read_bytes()]
    details = [f"{f}: {_index_diff(ref / f, got / f)}" for f in differ if f.endswith(".parquet")][:4]
    assert not differ, f"{len(differ)} of {len(binary)} files differ from the uninterrupted run: {differ}\n" \
                       + "\n".join(details) + f"\n{where}"
    for f in sorted(f for f in fa if f.endswith(".stats.json")):
        a, b = json.loads((ref / f).read_text()), json.loads((got / f).read_text())
        a.pop("seconds", None), b.pop("seconds", None)
        assert a == b, f"{f}: stats differ (timings aside): {a} != {b}\n{where}"
    return len(binary)


def _leftover_tmp(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if _is_tmp(p.name))


# --------------------------------------------------------------------------- fixtures


def _kill_points(rng: random.Random, plan: list[tuple[str, float, float, float]]) -> list[KillPoint]:
    """``plan``: (kind, lowest and highest fraction of shards done, longest delay) per kill."""
    return [KillPoint(kind, round(rng.uniform(lo, hi), 3), round(rng.uniform(0, delay), 2))
            for kind, lo, hi, delay in plan]


# A build shard (one source shard, rendered for every task) takes ~1-3 s here, an encoded one ~0.2-1 s.
BUILD_KILLS = _kill_points(random.Random(SEED), [("write", 0.12, 0.3, 1.0), ("commit", 0.35, 0.5, 0.5),
                                                 ("write", 0.65, 0.85, 1.0)])
ENCODE_KILLS = _kill_points(random.Random(SEED + 1), [("write", 0.1, 0.3, 0.3), ("commit", 0.35, 0.55, 0.1)])


def _crash_and_resume(cmd_for, out: Path, logs: Path, total: int, points: list[KillPoint], build: bool) -> list[Kill]:
    kills = []
    for i, point in enumerate(points):
        proc = Proc(f"killed{i}", cmd_for(out), logs)
        kills.append(_run_and_kill(proc, lambda: _shard_dirs(out, build), total, point))
    Proc("resumed", cmd_for(out), logs).finish()
    return kills


@pytest.fixture(scope="module")
def crashed_build(tmp_path_factory):
    """(reference output, resumed output, kills) for the reduced demo spec."""
    tmp = tmp_path_factory.mktemp("crash_build")
    data = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    data["sources"][0]["num_items"] = 64  # 8 shards of 8 scenes
    data["sources"][1]["num_items"] = 8  # 1 shard of 8 clips
    spec = tmp / "demo-crash.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    n_image = sum(1 for t in data["tasks"] if t["source"] == "synthetic")
    total = 8 * (1 + n_image) + 1 * (1 + len(data["tasks"]) - n_image)  # base + pair shards

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "pipelines.build", "--spec", str(spec), "--output", str(out),
                "--num-cpus", NUM_CPUS]

    ref, out = tmp / "reference", tmp / "crashed"
    Proc("reference", cmd(ref), tmp / "logs_reference").finish()
    kills = _crash_and_resume(cmd, out, tmp / "logs_crashed", total, BUILD_KILLS, build=True)
    return ref, out, kills


@pytest.fixture(scope="module")
def crashed_latents(crashed_build, tmp_path_factory):
    """(reference latents, resumed latents, kills): encode_latents over the reference build's pairs."""
    import torch

    from lavin_data.stvae import build_stvae

    pixels = crashed_build[0] / "pairs"
    tmp = tmp_path_factory.mktemp("crash_latents")
    torch.manual_seed(0)
    vae = tmp / "stvae.pt"
    torch.save({"state_dict": build_stvae(TINY_VAE).state_dict()}, vae)
    total = sum(1 for t in LATENT_TASKS for _ in (pixels / t).glob("*.tar"))

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "lavin_data.encode_latents", "--pixels", str(pixels), "--out", str(out),
                "--resolution", "64", "--vae", str(vae), "--vae-config", json.dumps(TINY_VAE), "--batch-size", "4",
                "--tasks", ",".join(LATENT_TASKS), "--num-cpus", NUM_CPUS, "--num-actors", "2"]

    ref, out = tmp / "reference", tmp / "crashed"
    Proc("reference", cmd(ref), tmp / "logs_reference").finish()
    kills = _crash_and_resume(cmd, out, tmp / "logs_crashed", total, ENCODE_KILLS, build=False)
    return ref, out, kills


# --------------------------------------------------------------------------- tests


def _report(what: str, kills: list[Kill], n: int) -> None:
    print(f"\n[crash] {what} (seed {SEED}): {n} tars/parquets identical after\n  " + "\n  ".join(map(str, kills)))


def test_killed_build_resumes_to_the_same_bytes(crashed_build):
    ref, out, kills = crashed_build
    assert [k.point.kind for k in kills] == ["write", "commit", "write"]
    assert any(k.at_kill.tmp for k in kills), "no kill left a shard half-written"
    n = assert_same_output(ref, out, kills)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (ref, out))
    for k in ("counts", "failures", "skipped", "shards"):
        assert ma[k] == mb[k], f"manifest.json {k} differ"
    _report("build", kills, n)


def test_killed_build_leaves_no_temp_files_after_resume(crashed_build):
    ref, out, kills = crashed_build
    assert not _leftover_tmp(ref)
    left = _leftover_tmp(out)
    assert not left, f"{len(left)} temporary files of killed runs remain after the resume: {left[:10]}"


def test_killed_encode_latents_resumes_to_the_same_bytes(crashed_latents):
    ref, out, kills = crashed_latents
    assert [k.point.kind for k in kills] == ["write", "commit"]
    assert any(k.at_kill.tmp for k in kills), "no kill left a shard half-written"
    assert sorted(p.name for p in ref.iterdir() if p.is_dir()) == list(LATENT_TASKS)
    _report("encode_latents", kills, assert_same_output(ref, out, kills))


def test_killed_encode_latents_leaves_no_temp_files_after_resume(crashed_latents):
    ref, out, kills = crashed_latents
    assert not _leftover_tmp(ref)
    left = _leftover_tmp(out)
    assert not left, f"{len(left)} temporary files of killed runs remain after the resume: {left[:10]}"
