"""The cluster path for real: a two-node Ray cluster on this machine, the build submitted
with ``ray job submit`` as the README says, and a node killed in the middle of a build.

A head (``ray start --head``) and a second node (``ray start --address``), 1 CPU each, are
started as separate ``ray start --block`` processes with their own ``--temp-dir``, free ports
and token (``RAY_AUTH_MODE=token``), so neither the tests' in-process Ray nor anybody else's
Ray on this machine can join them. The spec is ``manifests/demo.yaml`` shrunk to 64 scenes
(8 shards) and 8 clips (1 shard), all 26 tasks, to keep this module to a few minutes; the
full demo behaves the same, only slower.

1. ``ray job submit --working-dir . -- python -m pipelines.build ...`` on both nodes: every
   tar and every parquet (plans, shard indexes) equals a local build byte for byte.
2. The same job again into a fresh folder; once some shards are finished and the second
   node's pool actor is busy with one, its raylet gets SIGKILL. The build must still finish
   (Ray retries the lost actor's shards; were the job to fail, a re-submission resumes from
   the finished shards) with output byte-identical to the local build.

Teardown stops exactly the processes this module started (SIGTERM to each ``ray start
--block``, then SIGKILL to whatever still carries this cluster's marker in its environment),
never ``ray stop``, which kills every Ray process on the machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.build import build
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a Ray job server and a killed node: make test-fast leaves it out

BIN = Path(sys.executable).parent  # the environment the tests run in: `python` and `ray` for the cluster
MARK = "LAVIN_TEST_RAY_CLUSTER"  # environment variable that tags every process of our cluster
START_TIMEOUT = 300  # seconds; generous: CI machines are shared
JOB_TIMEOUT = 900
N_SCENES, N_CLIPS = 64, 8  # the demo shrunk: 8 + 1 source shards of 8 items
# Runs `ray start` with PR_SET_PDEATHSIG = SIGTERM, so that a node goes down with the test
# process even when that is killed outright and no teardown runs.
_LAUNCH = ("import ctypes, os, signal, sys\n"
           "try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
           "except (OSError, AttributeError):\n    pass\n"
           "os.execv(sys.argv[1], sys.argv[1:])")


def _require_job_server():
    """``ray job submit`` needs the job server of ray[default] (aiohttp and friends)."""
    missing = [m for m in ("aiohttp", "aiohttp_cors", "opencensus", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing or not (BIN / "ray").exists():
        msg = (f"the Ray job server needs ray[default] (missing: {', '.join(missing) or BIN / 'ray'}); "
               "run scripts/setup.sh dev")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _proc_stat(pid: int) -> tuple[str, int]:
    """(comm, ppid) from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    comm, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    return comm, int(rest[1])


def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: {pid: command line as shown (a Ray worker shows its title)}."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if _proc_stat(int(d.name))[1] == pid:
                    out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                pass
    return out


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<{path}: {e}>"


class LocalCluster:
    """A head and further nodes on this machine, each a ``ray start --block`` process."""

    def __init__(self):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc_", dir="/tmp"))  # short: unix socket paths
        self.tag = secrets.token_hex(8)
        self.token = secrets.token_hex(32)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")}
        self.env = {**env, MARK: self.tag, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                    # a SIGTERMed `ray start --block` tears its node down at once instead of draining 30 s
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"  # what `ray job submit --address` takes
        self.nodes: list[tuple[subprocess.Popen, Path]] = []

    # ----------------------------------------------------------------- nodes

    def start_node(self, head: bool) -> subprocess.Popen:
        name = "head" if head else f"node{len(self.nodes)}"
        log = self.temp_dir / f"{name}.log"
        ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]
        cmd = [sys.executable, "-c", _LAUNCH, str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
               "--num-cpus", "1",
               "--object-store-memory", str(200 * 2**20), "--temp-dir", str(self.temp_dir),
               *[x for p in ports for x in (p, str(_free_port()))]]
        if head:
            cmd += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(_free_port())]
        else:
            cmd += ["--address", f"127.0.0.1:{self.gcs_port}"]
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.nodes.append((proc, log))
        self.wait_alive(len(self.nodes))
        return proc

    def api(self, path: str, data: dict | None = None):
        req = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"},
                                     data=None if data is None else json.dumps(data).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def node_states(self) -> list[dict]:
        return self.api("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]

    def wait_alive(self, n: int):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for proc, log in self.nodes:
                if proc.poll() is not None:
                    pytest.fail(f"`ray start` exited with {proc.returncode} while the cluster started:\n{_tail(log)}")
            try:
                if sum(s["state"] == "ALIVE" for s in self.node_states()) == n:
                    return
            except (OSError, ValueError, KeyError):  # the dashboard is not up yet
                pass
            time.sleep(1)
        pytest.fail(f"the cluster did not reach {n} live nodes in {START_TIMEOUT}s:\n"
                    + "\n".join(_tail(log) for _, log in self.nodes))

    def raylet_pid(self, node: subprocess.Popen) -> int:
        pids = [pid for pid in _children(node.pid) if _proc_stat(pid)[0] == "raylet"]
        assert len(pids) == 1, f"expected one raylet under `ray start` pid {node.pid}, found {pids}"
        return pids[0]

    # ----------------------------------------------------------------- jobs

    def submit(self, submission_id: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir . -- python -m pipelines.build ARGS`` from the repository root."""
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.address, "--submission-id", submission_id,
               "--working-dir", ".", *([] if wait else ["--no-wait"]), "--", "python", "-m", "pipelines.build", *args]
        try:
            return subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"job {submission_id} did not finish in {JOB_TIMEOUT}s:\n{self.job_logs(submission_id)}")

    def job(self, submission_id: str) -> dict:
        return self.api(f"/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        try:
            return "job logs (tail):\n" + self.api(f"/api/jobs/{submission_id}/logs")["logs"][-6000:]
        except (OSError, ValueError, KeyError) as e:
            return f"<no job logs: {e}>"

    def wait_job(self, submission_id: str) -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            info = self.job(submission_id)
            if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return info
            time.sleep(2)
        pytest.fail(f"job {submission_id} did not finish in {JOB_TIMEOUT}s:\n{self.job_logs(submission_id)}")

    # ----------------------------------------------------------------- teardown

    def our_processes(self) -> list[int]:
        """Every live process started by this cluster (they inherit its marker variable)."""
        needle = f"{MARK}={self.tag}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if needle in (d / "environ").read_bytes().split(b"\0"):
                        pids.append(int(d.name))
                except OSError:
                    pass
        return pids

    def stop(self) -> list[int]:
        """SIGTERM each ``ray start --block`` (it stops its node), then SIGKILL what is left of
        ours. Returns the pids that even SIGKILL did not end (there should be none)."""
        for proc, _ in reversed(self.nodes):
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.nodes:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for pid in self.our_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while (left := self.our_processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder for the spec and the builds, deleted at the end (each build is ~250 MB)."""
    d = tmp_path_factory.mktemp("cluster")
    spec = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    spec["sources"][0]["num_items"] = N_SCENES
    spec["sources"][1]["num_items"] = N_CLIPS
    (d / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def local_build(ray_session, work):
    """The reference: the same spec built locally, in this process."""
    from lavin_data.spec import load_spec

    spec = load_spec(str(work / "spec.yaml"), output=str(work / "local"))
    manifest = build(spec, echo=lambda *_: None)
    assert sum(sum(v.values()) for v in manifest["failures"].values()) == 0
    out = Path(spec.output)
    for idx in out.glob("pairs/*/*.parquet"):  # no error strings that could differ between machines
        assert set(pq.read_table(idx, columns=["status"]).column("status").to_pylist()) == {"ok"}, idx
    return out


@pytest.fixture(scope="module")
def cluster():
    _require_job_server()
    c = LocalCluster()
    try:
        c.start_node(head=True)
        c.start_node(head=False)
        yield c
    finally:
        left = c.stop()
        assert not left, f"processes of the test cluster survived SIGKILL: {left}"


# --------------------------------------------------------------------------- helpers


def _committed(out: Path) -> dict[str, Path]:
    """Every file of a build but the hidden ones (the output lock, temporaries of killed writers)."""
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def assert_same_build(out: Path, ref: Path) -> dict[str, int]:
    """Same file names, and every tar and parquet (plans, shard indexes) byte-identical. Stats,
    timings, manifest and spec.json are left out: they hold durations or the output path."""
    a, b = _committed(out), _committed(ref)
    assert a.keys() == b.keys(), (f"only in {out}: {sorted(a.keys() - b.keys())[:20]}; "
                                  f"only in {ref}: {sorted(b.keys() - a.keys())[:20]}")
    data = [k for k in a if k.endswith((".tar", ".parquet"))]
    differ = [k for k in data if a[k].read_bytes() != b[k].read_bytes()]
    assert not differ, f"{len(differ)} of {len(data)} files differ from the local build, e.g. {differ[:10]}"
    return {"tar": sum(k.endswith(".tar") for k in data), "parquet": sum(k.endswith(".parquet") for k in data)}


def _n_pair_shards() -> tuple[int, int]:
    """(pair shards of the whole build, pair shards of one scene shard)."""
    spec = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    scenes, clips = spec["sources"][0]["name"], spec["sources"][1]["name"]
    shards = {scenes: N_SCENES // 8, clips: N_CLIPS // 8}
    return sum(shards[t["source"]] for t in spec["tasks"]), sum(t["source"] == scenes for t in spec["tasks"])


def _done(out: Path) -> int:
    """Finished pair shards: the stats file is written last."""
    return len(list(out.glob("pairs/*/*.stats.json")))


# --------------------------------------------------------------------------- tests


def test_job_submit_on_two_nodes_matches_local_build(cluster, local_build, work):
    assert [s["is_head_node"] for s in cluster.node_states() if s["state"] == "ALIVE"].count(False) == 1
    out = work / "cluster"
    r = cluster.submit("lavin-build-1", "--spec", str(work / "spec.yaml"), "--output", str(out))
    info = cluster.job("lavin-build-1")
    assert r.returncode == 0 and info["status"] == "SUCCEEDED", (
        f"ray job submit exited {r.returncode}, job {info['status']}: {info.get('message')}\n"
        f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    assert "[build] done:" in r.stdout and ", 0 failed," in r.stdout, r.stdout[-4000:]
    counts = assert_same_build(out, local_build)
    assert counts["tar"] == _n_pair_shards()[0] + N_SCENES // 8 + N_CLIPS // 8  # pair and base shards
    print(f"cluster build == local build: {counts['tar']} tars, {counts['parquet']} parquet files byte-identical")


def test_node_killed_mid_build_still_finishes_identically(cluster, local_build, work):
    head, _ = cluster.nodes[0]
    node, node_log = cluster.nodes[1]
    raylet = cluster.raylet_pid(node)
    out, (total, per_shard) = work / "node-loss", _n_pair_shards()
    r = cluster.submit("lavin-build-2", "--spec", str(work / "spec.yaml"), "--output", str(out), wait=False)
    assert r.returncode == 0, r.stdout + r.stderr

    # Wait until some pair shards are finished and the second node's pool actor is working on one.
    deadline = time.monotonic() + JOB_TIMEOUT
    busy = None
    while True:
        done = _done(out)
        busy = [cmd for cmd in _children(raylet).values() if cmd.startswith("ray::MapWorker") and ".submit" in cmd]
        if done >= per_shard and busy:  # at least one scene shard's worth of pair shards
            break
        status = cluster.job("lavin-build-2")["status"]
        assert done < total and status in ("PENDING", "RUNNING"), (
            f"the build ended ({status}, {done}/{total} pair shards) before the node could be killed:\n"
            + cluster.job_logs("lavin-build-2"))
        if time.monotonic() > deadline:
            pytest.fail(f"no busy pool actor on the second node after {JOB_TIMEOUT}s ({done}/{total} pair "
                        f"shards done):\n{cluster.job_logs('lavin-build-2')}")
        time.sleep(0.1)
    os.kill(raylet, signal.SIGKILL)
    done_at_kill = _done(out)
    assert 0 < done_at_kill < total, (done_at_kill, total)  # the kill really happened mid-build

    # The node's `ray start --block` sees its raylet die and takes the rest of the node down.
    try:
        node.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second node's `ray start` outlived its raylet:\n{_tail(node_log)}")
    assert node.returncode != 0 and head.poll() is None

    info = cluster.wait_job("lavin-build-2")
    outcome = "retried by Ray within the job"
    if info["status"] != "SUCCEEDED":  # the job died with the node: a re-run resumes from the finished shards
        logs = cluster.job_logs("lavin-build-2")
        r = cluster.submit("lavin-build-2-resume", "--spec", str(work / "spec.yaml"), "--output", str(out))
        assert r.returncode == 0 and cluster.job("lavin-build-2-resume")["status"] == "SUCCEEDED", (
            f"the re-submitted build failed too:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}\nfirst job: {logs}")
        assert " already done, " in r.stdout and " 0 already done" not in r.stdout, r.stdout[-4000:]
        outcome = f"job {info['status']} ({info.get('message')}), re-submission resumed"
    assert _done(out) == total
    counts = assert_same_build(out, local_build)

    deadline = time.monotonic() + START_TIMEOUT  # Ray marks the node dead after missed health checks
    while (states := sorted((s["is_head_node"], s["state"]) for s in cluster.node_states())) != [
            (False, "DEAD"), (True, "ALIVE")]:
        assert time.monotonic() < deadline, f"node states after the kill: {states}"
        time.sleep(2)
    # For the record (Ray's bookkeeping, not asserted): where the driver and the pool actors ran.
    heads = {s["node_id"] for s in cluster.node_states() if s["is_head_node"]}
    actors = [(a.get("state"), "head" if a.get("node_id") in heads else "second node", a.get("num_restarts"))
              for a in cluster.api("/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
              if str(a.get("class_name", "")).startswith("MapWorker") and a.get("job_id") == info.get("job_id")]
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.is_file())
    print(f"second node's raylet (pid {raylet}) killed with {done_at_kill}/{total} pair shards done, its actor "
          f"busy ({busy[0].strip()}); {outcome}; driver on the head: {info.get('driver_node_id') in heads}; "
          f"pool actors (state, node, restarts): {actors}; {counts['tar']} tars, {counts['parquet']} parquet "
          f"files byte-identical to the local build; hidden files left: {leftovers}")
