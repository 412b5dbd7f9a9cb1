"""The code's structure, checked: dependency direction between packages, a spec that loads
without the renderers, and every third-party import declared in pyproject.toml."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ("lavin_data", "pipelines", "lavin_model", "benchmarks")
# Which packages each may import: the library at the bottom, benchmarks on top.
ALLOWED = {"lavin_data": {"lavin_data"}, "pipelines": {"lavin_data", "pipelines"},
           "lavin_model": {"lavin_data", "lavin_model"}, "benchmarks": set(PACKAGES)}
DISTRIBUTION = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "numpy": "numpy",
                "pycocotools": "pycocotools", "h5py": "h5py", "pyarrow": "pyarrow", "pydantic": "pydantic",
                "ray": "ray", "torch": "torch", "transformers": "transformers", "diffusers": "diffusers",
                "deepspeed": "deepspeed", "safetensors": "safetensors", "webdataset": "webdataset",
                "datasets": "datasets", "accelerate": "accelerate", "av": "av", "matplotlib": "matplotlib",
                "skimage": "scikit-image"}
# Modules that exist to wrap an extra's package may import it at the top.
EXTRA_MODULES = {"lavin_data/stvae.py": {"torch", "diffusers"}}


def imports(path) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        out += [(n.split(".")[0], id(node) in top) for n in names]
    return out


def files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def test_packages_import_one_way_only():
    """lavin_data never imports pipelines, lavin_model or benchmarks (not even lazily), etc."""
    bad = [f"{f.relative_to(ROOT)} imports {name}" for pkg in PACKAGES for f in files(pkg)
           for name, _top in imports(f) if name in PACKAGES and name not in ALLOWED[pkg]]
    assert bad == []


def test_base_samples_do_not_know_their_sources():
    """Base samples carry what renderers need in a source-independent form: decoding them
    imports no reader (nor branches on one source's metadata)."""
    tree = ast.parse((ROOT / "lavin_data" / "base.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith("lavin_data.sources") for m in modules), modules
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "coco"]


def test_third_party_imports_are_declared_where_they_are_used():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs}

    core = names(project["dependencies"])
    declared = core | set().union(*(names(v) for v in project["optional-dependencies"].values()))
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for pkg in PACKAGES:
        for f in files(pkg):
            rel = str(f.relative_to(ROOT))
            for name, top in imports(f):
                if name in stdlib or name in PACKAGES or name == "tests":
                    continue
                dist = DISTRIBUTION.get(name)
                if dist is None or dist not in declared:
                    problems.append(f"{rel}: imports {name}, which no dependency list of pyproject.toml declares")
                elif top and pkg in ("lavin_data", "pipelines") and dist not in core \
                        and name not in EXTRA_MODULES.get(rel, set()):
                    problems.append(f"{rel}: imports {name} (an extra) at module level; the pixel build "
                                    "must import without extras")
    assert problems == []


def test_loading_a_spec_imports_no_renderer_and_no_opencv():
    code = ("import sys; from lavin_data.spec import load_spec; s = load_spec('manifests/demo.yaml'); "
            "assert len(s.tasks) == 26; "
            "print(sorted(m for m in sys.modules if m == 'cv2' or m.startswith(('lavin_data.render', 'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
