"""No pickle on any path that reads files: checkpoints load with ``weights_only=True`` only,
the spec's YAML refuses alias bombs and duplicate keys, the latent loader names bad ``.npy``
members and dotted keys, and a scan of the code finds no unpickling call."""

from __future__ import annotations

import ast
import io
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from lavin_data.spec import SpecError, load_spec
from lavin_data.testing import restamp_stats, synthetic_latent_shards
from lavin_data.weights import CheckpointError, read_state_dict

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("lavin_data", "lavin_model", "pipelines", "benchmarks")


class Planted:
    """Unpickling this object opens (creates) ``path``: proof that a loader ran pickle code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# --------------------------------------------------------------------------- the code scan

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}


def _dotted(node: ast.AST) -> str:
    """``torch.serialization.load`` for the callee of a call; "" when not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<code>") -> list[str]:
    """``file:line: what`` for every call that can unpickle (or eval) what it reads.

    Parsed, not grepped line by line: docstrings that mention ``torch.load(...)`` are not
    calls, and a call split over several lines is still one call."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        where = f"{filename}:{node.lineno}"
        wo = _kw(node, "weights_only")
        if wo is not None and not _is_const(wo, True):
            hits.append(f"{where}: weights_only={ast.unparse(wo)} (only weights_only=True)")
        elif name in ("torch.load", "torch.serialization.load") and not _is_const(wo, True):
            hits.append(f"{where}: {name}( without weights_only=True")
        ap = _kw(node, "allow_pickle")
        if ap is not None and not _is_const(ap, False):
            hits.append(f"{where}: allow_pickle={ast.unparse(ap)}")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "SafeLoader" not in ast.unparse(loader):
                hits.append(f"{where}: {name}( without a SafeLoader")
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            hits.append(f"{where}: {name}(")
        if name in ("eval", "exec"):  # builtins only: model.eval() is an attribute call
            hits.append(f"{where}: {name}(")
        if "." in name and name.split(".")[0] in PICKLE_MODULES and last in ("load", "loads", "Unpickler"):
            hits.append(f"{where}: {name}(")
        if last == "read_pickle":
            hits.append(f"{where}: {name}(")
    return hits


PLANTED = {
    "torch.load(p, weights_only=False)": "weights_only=False",
    "torch.load(p)": "torch.load( without weights_only=True",
    "torch.load(\n    p,\n    map_location='cpu')": "torch.load( without weights_only=True",
    "torch.serialization.load(p, weights_only=flag)": "weights_only=flag",
    "np.load(f, allow_pickle=True)": "allow_pickle=True",
    "numpy.load(f, mmap_mode='r', allow_pickle=True)": "allow_pickle=True",
    "yaml.load(text)": "yaml.load( without a SafeLoader",
    "yaml.load(text, Loader=yaml.Loader)": "yaml.load( without a SafeLoader",
    "yaml.unsafe_load(text)": "yaml.unsafe_load(",
    "eval(text)": "eval(",
    "pickle.load(f)": "pickle.load(",
    "pickle.loads(b)": "pickle.loads(",
    "cloudpickle.loads(b)": "cloudpickle.loads(",
    "pd.read_pickle(p)": "pd.read_pickle(",
}
ALLOWED = ["torch.load(p, map_location='cpu', weights_only=True)", "np.load(f, allow_pickle=False)", "np.load(f)",
           "yaml.load(text, Loader=yaml.CSafeLoader)", "yaml.safe_load(text)", "model.eval()",
           "'''torch.load(path) in a docstring'''", "# pickle.loads(b) in a comment"]


@pytest.mark.parametrize("code,expected", sorted(PLANTED.items()))
def test_the_scan_finds_each_planted_call(code, expected):
    hits = unsafe_calls(code, "planted.py")
    assert len(hits) == 1 and hits[0].startswith("planted.py:1: ") and expected in hits[0], hits


def test_the_scan_passes_safe_calls():
    assert unsafe_calls("\n".join(ALLOWED)) == []


def test_no_unpickling_call_in_the_code():
    files = sorted(f for d in SCANNED for f in (ROOT / d).rglob("*.py"))
    assert len(files) > 30  # the scan sees the packages, not an empty glob
    hits = [h for f in files for h in unsafe_calls(f.read_text(), str(f.relative_to(ROOT)))]
    assert hits == [], "calls that can unpickle or eval what they read:\n" + "\n".join(hits)


# --------------------------------------------------------------------------- checkpoints

def _state_dict() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}


def _planted_checkpoints(tmp: Path, marker: Path) -> list[Path]:
    """Checkpoints in every layout read_state_dict reads, each carrying a Planted object."""
    evil = Planted(marker)
    plain = tmp / "released.pt"
    torch.save({"state_dict": _state_dict(), "extra": evil}, plain)
    bare = tmp / "bare.pt"
    torch.save(evil, bare)
    ds = tmp / "ds"  # a DeepSpeed checkpoint folder: latest -> tag/mp_rank_00_model_states.pt
    (ds / "global_step1").mkdir(parents=True)
    (ds / "latest").write_text("global_step1")
    torch.save({"module": _state_dict(), "ds_config": {}, "loss_scaler": evil},
               ds / "global_step1" / "mp_rank_00_model_states.pt")
    hf = tmp / "hf"  # a folder of *.bin weights
    hf.mkdir()
    torch.save({**_state_dict(), "evil": evil}, hf / "pytorch_model.bin")
    return [plain, bare, ds, hf]


def test_a_planted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    for ckpt in _planted_checkpoints(tmp_path, marker):
        with pytest.raises(CheckpointError) as err:
            read_state_dict(ckpt)
        msg = str(err.value)
        assert str(ckpt) in msg and "weights_only=True" in msg and "state_dict()" in msg, msg
        assert not marker.exists(), f"{ckpt}: loading it ran pickled code"
    ds_msg = str(pytest.raises(CheckpointError, read_state_dict, tmp_path / "ds").value)
    assert "mp_rank_00_model_states.pt" in ds_msg and "zero_to_fp32.py" in ds_msg, ds_msg


def test_unreadable_checkpoints_are_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=rf"{junk}: .*weights_only=True"):
        read_state_dict(junk)
    lst = tmp_path / "list.pt"
    torch.save([torch.ones(1)], lst)
    with pytest.raises(CheckpointError, match=rf"{lst}: expected a state dict"):
        read_state_dict(lst)


def test_deepspeed_and_plain_checkpoints_of_allowed_types_still_load(tmp_path):
    from collections import OrderedDict

    sd = _state_dict()
    ds = tmp_path / "run" / "checkpoints"
    (ds / "step00000001").mkdir(parents=True)
    (ds / "latest").write_text("step00000001\n")
    # what DeepSpeed writes besides the weights (and what our trainer adds as client state):
    # plain containers, numbers, strings, torch.Size, tensors
    torch.save({"module": OrderedDict((f"module.{k}", v) for k, v in sd.items()), "optimizer": None,
                "param_shapes": [OrderedDict(w=torch.Size([2, 3]))], "lr_scheduler": {"last_batch_iteration": 0},
                "ds_config": {"zero_optimization": {"stage": 2}}, "ds_version": "0.19", "global_steps": 1,
                "step": 1, "ranks": [{"loader": {"batches": 1, "streams": {"0": {"next": 1, "tasks": ["t"]}}},
                                      "noise": torch.zeros(5, dtype=torch.uint8)}]},
               ds / "step00000001" / "mp_rank_00_model_states.pt")
    torch.save({"state_dict": sd}, tmp_path / "released.pt")
    for path in (ds, tmp_path / "released.pt"):
        got = read_state_dict(path)
        assert sorted(got) == ["b", "w"] and all(torch.equal(got[k], sd[k]) for k in sd), path


# --------------------------------------------------------------------------- YAML


def _bomb(levels: int, width: int) -> str:
    """A spec-shaped billion laughs: the last alias expands to width**levels strings."""
    lines = ["name: bomb", "output: out", f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    from lavin_data.safe_yaml import YAMLLimitError, safe_load

    # 9**9 = 387 million strings once expanded: only ever given to the strict loader itself,
    # which refuses it from the node graph (without the check PyYAML would share the aliased
    # lists, so even a broken check cannot blow up here; load_spec would, below)
    with pytest.raises(YAMLLimitError, match=r"aliases in this document expand to more than 10000 nodes"):
        safe_load(_bomb(9, 9))
    # 10**6 strings (1,234,550 nodes with the lists): small enough that the spec loader without
    # the check survives expanding it (~250 MB, then "extra inputs" from the validator); with
    # the check, refused before any expansion
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_bomb(6, 10))
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match=rf"{spec}: not valid YAML: aliases in this document expand to more "
                                            r"than 10000 nodes \(1,234,550 beyond its own 27\)"):
            load_spec(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing the bomb"
    with pytest.raises(YAMLLimitError, match="recursive alias: the node at line 1 contains itself"):
        safe_load("a: &a [1, *a]\n")
    with pytest.raises(YAMLLimitError, match="recursive alias"):
        safe_load("a: &a {b: {c: *a}}\n")


def test_duplicate_keys_are_refused_with_key_and_line(tmp_path):
    from lavin_data.safe_yaml import safe_load

    spec = tmp_path / "dup.yaml"
    spec.write_text((ROOT / "manifests" / "demo.yaml").read_text() + "seed: 7\n")
    n = len(spec.read_text().splitlines())
    with pytest.raises(SpecError, match=rf"{spec}: not valid YAML: .*duplicate key 'seed' at line {n} "
                                        r"\(first at line \d+\)"):
        load_spec(spec)
    with pytest.raises(yaml_error(), match=r"duplicate key 'kind' at line 3 \(first at line 2\)"):
        safe_load("sources:\n  - {name: a, kind: synthetic,\n     kind: coco}\n")
    # the same key in different mappings, and 1 versus "1", are not duplicates
    assert safe_load("a: {x: 1}\nb: {x: 2}\nc: {1: int, '1': str}\n") == {"a": {"x": 1}, "b": {"x": 2},
                                                                          "c": {1: "int", "1": "str"}}


def yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError


def test_ordinary_yaml_still_loads_like_safe_load():
    import yaml

    from lavin_data.safe_yaml import safe_load

    for manifest in sorted((ROOT / "manifests").glob("*.yaml")):
        text = manifest.read_text()
        assert safe_load(text) == yaml.safe_load(text), manifest
    spec = load_spec(ROOT / "manifests" / "demo.yaml")
    assert spec.name == "demo" and len(spec.tasks) == 26
    # a few anchors and merge keys, as a hand-written spec might share options
    text = ("base: &b {sigma: 2, mode: boxes}\nuse: {<<: *b, mode: free}\nalso: *b\n"
            "list: &l [1, 2]\nlists: [*l, *l]\n")
    assert safe_load(text) == yaml.safe_load(text) == {
        "base": {"sigma": 2, "mode": "boxes"}, "use": {"sigma": 2, "mode": "free"},
        "also": {"sigma": 2, "mode": "boxes"}, "list": [1, 2], "lists": [[1, 2], [1, 2]]}
    with pytest.raises(yaml_error(), match="not a YAML mapping|expected"):
        safe_load("a: [1, 2\n")
    assert safe_load("") is None


# --------------------------------------------------------------------------- latent shards


def _rewrite(tar: Path, change) -> None:
    """Rewrite a shard tar member by member: ``change(name, data)`` -> (name, data)."""
    buf = io.BytesIO()
    with tarfile.open(tar) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for info in src:
            name, data = change(info.name, src.extractfile(info).read())
            new = tarfile.TarInfo(name)
            new.size = len(data)
            dst.addfile(new, io.BytesIO(data))
    tar.write_bytes(buf.getvalue())
    restamp_stats(tar)  # as if committed so: the loader must name the member


def _first_batches(root: Path, n: int = 10) -> None:
    from lavin_model.data import InContextBatches, InContextLoader

    ds = InContextBatches(root, batch_size=1, context=(1, 1), drop_rate=0.0, shuffle_buffer=2)
    for _, _b in zip(range(n), InContextLoader(ds, num_workers=0)):
        pass


def _object_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Planted(marker), 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _truncated_npy(_marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((32, 1, 4, 4), np.float16))
    return buf.getvalue()[:60]


BAD_NPY = {  # member bytes -> what the error says
    "object array": (_object_npy, r"is an object array \(pickled\), which is refused"),
    "raw pickle": (lambda marker: pickle.dumps(Planted(marker)), r"is not an .npy array \(a pickle, or other "
                                                                  r"bytes\), which is refused"),
    "truncated": (_truncated_npy, r"cannot be decoded as .npy: .*EOF"),
    "empty": (lambda _marker: b"", r"cannot be decoded as .npy: EOFError"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPY))
def test_a_bad_npy_member_is_named_and_never_unpickled(tmp_path, case):
    make, expected = BAD_NPY[case]
    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=1, per_shard=2, latent=4)
    tar = next(root.glob("*/*.tar"))
    marker = tmp_path / "pwned"
    bad = make(marker)
    _rewrite(tar, lambda name, data: (name, bad if name.endswith("input_moments.npy") else data))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_000[01]: input_moments.npy {expected}"):
        _first_batches(root)
    assert not marker.exists()


def test_a_key_with_an_extra_dot_is_named(tmp_path):
    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=1, per_shard=2, latent=4)
    tar = next(root.glob("*/*.tar"))
    # t0_000_0000.input_moments.npy -> t0_000_0000.v2.input_moments.npy (and the other members)
    _rewrite(tar, lambda name, data: (name.replace(".", ".v2.", 1), data))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_000[01]: member names "
                                         r"\['v2.input_moments.npy', 'v2.json', 'v2.target_moments.npy'\] "
                                         r"have a dot in the key"):
        _first_batches(root)


def test_bad_members_in_latent_json_are_named(tmp_path):
    """The trainer reads the VAE record of the first sample of each task: a dotted key or a
    missing json is named, not ``KeyError: 'json'``."""
    from lavin_model.train import recorded_vae

    root = synthetic_latent_shards(tmp_path / "lat", tasks=1, shards=1, per_shard=2, latent=4)
    tar = next(root.glob("*/*.tar"))
    info = recorded_vae(root)
    assert info == [{"task": "task0", "file": str(tar), "key": "t0_000_0000", "vae": None, "weight_hash": None,
                     "vae_config": {}, "resolution": None}]
    _rewrite(tar, lambda name, data: (name.replace(".", ".v2.", 1), data))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_0000: member names .* have a dot in the key"):
        recorded_vae(root)
    _rewrite(tar, lambda name, data: (name.replace(".v2.", ".", 1), b"[1, 2]" if name.endswith("json") else data))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_0000: json is not an object"):
        recorded_vae(root)
    _rewrite(tar, lambda name, data: (name, b"{not json" if name.endswith("json") else data))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_0000: json is not valid JSON"):
        recorded_vae(root)
    _rewrite(tar, lambda name, data: (name.replace(".json", ".txt") if name.endswith(".json") else name, data))
    with pytest.raises(ValueError, match=rf"{tar}: sample t0_000_0000 has no json \(members: "):
        recorded_vae(root)
