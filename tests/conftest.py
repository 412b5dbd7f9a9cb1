"""Shared test fixtures: one Ray session per test run, the real-data fixtures, a small demo build."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real-data samples: the redistributable ones (Apache-2.0 photos and videos) are in the repository
# under tests/fixtures; scripts/fetch_fixtures.sh fetches the others there from their public
# origin. A sibling ../shared/fixtures (a lab's mirror) and $LAVIN_FIXTURES are looked in too.
FETCH_HINT = "scripts/fetch_fixtures.sh"


def fixture_roots() -> list[Path]:
    """Where real-data samples are looked for, first match wins."""
    roots = [Path(os.environ["LAVIN_FIXTURES"])] if os.environ.get("LAVIN_FIXTURES") else []
    return roots + [ROOT / "tests" / "fixtures", ROOT.parent / "shared" / "fixtures"]


def fixture_path(first: str, *rest: str) -> Path:
    """The real-data sample ``parts`` (e.g. ``"nyu_v2", "depth"``) from the first root that has it;
    skips naming the fetch script when no root has it, but fails under CI=true."""
    parts = (first, *rest)
    for root in fixture_roots():
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    msg = (f"real-data sample {'/'.join(parts)} missing (looked in {', '.join(map(str, fixture_roots()))}); "
           f"fetch it with `{FETCH_HINT} {parts[0]}`")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def fixture_manifest_text(name: str) -> str:
    """``manifests/<name>`` with each ``${LAVIN_FIXTURES:-tests/fixtures}/<folder>`` replaced by
    the folder found by :func:`fixture_path` (skips or fails as it does)."""
    text = (ROOT / "manifests" / name).read_text()
    return re.sub(r"\$\{LAVIN_FIXTURES:-tests/fixtures\}/([A-Za-z0-9_]+)",
                  lambda m: str(fixture_path(m.group(1))), text)


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
