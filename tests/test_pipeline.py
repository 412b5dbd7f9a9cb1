"""The README's "From zero to a prediction", run as written: ``scripts/pipeline.sh`` (what
``make pipeline`` runs) goes from nothing to a prediction and metrics through every stage,
and the README shows exactly its commands, so the documented path cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pipeline.sh"
pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # minutes: make test-fast leaves them out


def _between_markers(text: str) -> list[str]:
    """The non-comment lines between the ``--8<--`` and ``-->8--`` marker lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "--8<--" in line)
    end = next(i for i, line in enumerate(lines) if "-->8--" in line)
    return [line.strip() for line in lines[start + 1:end] if line.strip() and not line.strip().startswith("#")]


def script_commands(out: str = "out/pipeline") -> list[str]:
    """scripts/pipeline.sh's commands as a user types them: without ``step NAME``, $OUT spelled out."""
    return [re.sub(r"^step \S+ ", "", line).replace("$OUT", out) for line in _between_markers(SCRIPT.read_text())]


def test_the_readme_shows_exactly_the_pipeline_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From zero to a prediction"):]
    section = section[:section.index("\n## ", 1)]
    assert "source .venv/bin/activate" in section and "make pipeline" in section
    assert _between_markers(section) == script_commands()
    for cmd in script_commands():  # each step's time is in the README's table
        assert cmd.split()[2] in section


def test_pipeline_from_zero_to_a_prediction(tmp_path):
    out = tmp_path / "pipeline"
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, VIRTUAL_ENV=str(Path(sys.executable).parents[1]), PATH=bindir + os.pathsep +
               os.environ.get("PATH", ""), OMP_NUM_THREADS="2")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS"):
        env.pop(k, None)
    r = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    steps = re.findall(r"^\[pipeline\] (\S+): done in (\d+) s$", r.stdout, re.M)
    assert [s for s, _ in steps] == [line.split()[1] for line in _between_markers(SCRIPT.read_text())], r.stdout

    # build: the six tasks of manifests/pipeline.yaml, 48 scenes each, some held out as val
    manifest = json.loads((out / "manifest.json").read_text())
    assert {t: sum(c.values()) for t, c in manifest["counts"].items()} == {
        t: 48 for t in ("depth_estimation", "surface_normal_estimation", "semantic_segmentation",
                        "foreground_segmentation", "colorization", "denoise")}
    # encode: one latent shard per pair shard, the same keys
    pair_shards = sorted(p.relative_to(out / "pairs") for p in (out / "pairs").glob("*/*.tar"))
    latents = out / "latents" / "tiny-64"
    assert sorted(p.relative_to(latents) for p in latents.glob("*/*.tar")) == pair_shards
    for rel in pair_shards[:2]:
        with tarfile.open(out / "pairs" / rel) as a, tarfile.open(latents / rel) as b:
            assert {n.split(".")[0] for n in a.getnames()} == {n.split(".")[0] for n in b.getnames()}
    # train: the model, its record of the VAE and resolution, a validation loss
    rec = json.loads((out / "run" / "model" / "training.json").read_text())
    assert rec["resolution"] == 64 and rec["vae"]["path"] == str(out / "tiny-stvae"), rec
    assert (out / "run" / "model" / "model.safetensors").is_file() and (out / "run" / "val.jsonl").is_file()
    # templates and queries: pairs of the shards, val ones for the queries
    tpl = sorted(p.name for p in (out / "templates" / "depth_estimation").iterdir() if p.suffix != ".json")
    assert len(tpl) == 8 and sum(n.endswith(("_input.jpg", "_input.png")) for n in tpl) == 4, tpl
    queries = sorted((out / "queries" / "depth_estimation").glob("*.json"))
    assert len(queries) == 2 and all(json.loads(q.read_text())["split"] == "val" for q in queries)
    # infer: a prediction of the query's size
    query = next((out / "queries" / "depth_estimation").glob("0000_*_input.*"))
    pred = cv2.imread(str(out / "prediction.png"))
    assert pred is not None and pred.shape == cv2.imread(str(query)).shape
    # evaluate: metrics of every task on val queries
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert sorted(metrics["tasks"]) == sorted(manifest["counts"]), list(metrics)
