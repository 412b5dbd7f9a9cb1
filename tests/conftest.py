"""Shared test fixtures: one Ray session per test run, the real-data fixtures, a small demo build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LAVIN_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def fixture_path(*parts: str) -> Path:
    """Path into ../shared/fixtures; skips when absent, but fails under CI=true."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        msg = f"real-data fixture missing: {p}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def ray_session():
    """Ray costs seconds to start: one local session (2 CPUs) serves the whole test run."""
    from lavin_data.ray_session import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    import ray

    ray.shutdown()


def small_demo_spec(output: Path, num_items: int = 16, shard_size: int = 4):
    """The embedded demo spec, shrunk so that a build takes seconds."""
    import yaml

    from lavin_data.spec import parse_spec

    data = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    data["output"] = str(output)
    data["shard_size"] = shard_size
    data["sources"][0]["num_items"] = num_items
    for src in data["sources"][1:]:  # the clips: one shard
        src["num_items"] = min(src["num_items"], shard_size)
    return parse_spec(data, "manifests/demo.yaml (shrunk for tests)")


@pytest.fixture(scope="session")
def demo_build(ray_session, tmp_path_factory):
    """One small demo build shared by the read-back tests (which must not modify it)."""
    from pipelines.build import build

    out = tmp_path_factory.mktemp("demo")
    spec = small_demo_spec(out)
    manifest = build(spec, echo=lambda *_: None)
    return spec, manifest
