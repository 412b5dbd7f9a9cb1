from pathlib import Path

import pytest

from lavin_data.registry import TASKS
from lavin_data.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

UVD_ENV = {v: f"/data/{v.lower()}" for v in [
    "COCO_ROOT", "NYU_ROOT", "IMAGENET_ROOT", "VIDEO_ROOT", "DAVIS_ROOT", "FLOW_ROOT", "YTVIS_ROOT", "SAV_ROOT",
    "HF_DATASET_DIR",
    "DEPTH_ANYTHING_DIR", "STABLE_NORMAL_DIR", "MARIGOLD_DIR", "UVD_OUT",
]}


def minimal(**over):
    d = {"name": "t", "output": "/tmp/x", "sources": [{"name": "syn", "kind": "synthetic", "num_items": 2}],
         "tasks": [{"task": "colorization", "source": "syn"}]}
    d.update(over)
    return d


def test_demo_spec_validates():
    spec = load_spec(ROOT / "manifests" / "demo.yaml")
    tasks = {t.task for t in spec.tasks}
    assert len(tasks) >= 19
    assert all(TASKS[t].built for t in tasks)
    assert spec.sources[0].kind == "synthetic"


def test_uvd_spec_validates_and_covers_every_task(monkeypatch):
    for k, v in UVD_ENV.items():
        monkeypatch.setenv(k, v)
    spec = load_spec(ROOT / "manifests" / "uvd.yaml")
    assert {t.task for t in spec.tasks} == set(TASKS), set(TASKS) - {t.task for t in spec.tasks}
    coco = next(s for s in spec.sources if s.kind == "coco")
    assert coco.images.startswith("/data/coco_root")
    assert {s.kind for s in spec.sources} >= {"video_folder", "davis", "youtube_vis", "sav", "flow"}
    from pipelines.build import BuildError, preflight

    with pytest.raises(BuildError) as e:  # the folders are not there; everything else holds
        preflight(spec)
    problems = str(e.value).splitlines()[1:]
    assert problems and all("not found" in p or "no weights" in p or "torchvision" in p or "no StableNormal" in p
                            or "no flow/ folder" in p for p in problems), problems


def test_output_override_and_env_default(monkeypatch):
    monkeypatch.delenv("LAVIN_OUT", raising=False)
    assert load_spec(ROOT / "manifests" / "demo.yaml").output == "out/demo"
    assert load_spec(ROOT / "manifests" / "demo.yaml", output="/tmp/o").output == "/tmp/o"


def test_spec_hash_is_stable_and_sensitive():
    a, b = parse_spec(minimal()), parse_spec(minimal())
    assert a.spec_hash() == b.spec_hash()
    assert parse_spec(minimal(seed=1)).spec_hash() != a.spec_hash()


@pytest.mark.parametrize("data, field, words", [
    (minimal(tasks=[{"task": "colourise", "source": "syn"}]), "tasks[0].task", "unknown task"),
    (minimal(tasks=[{"task": "denoise", "source": "syn", "options": {"sigmaa": [1, 2]}}]),
     "tasks[0].options", "sigmaa: Extra inputs"),
    (minimal(tasks=[{"task": "colorization", "source": "nope"}]), "<root>", "names source 'nope'"),
    (minimal(resolution="big"), "resolution", "integer"),
    (minimal(resize="stretch"), "resize", "crop"),
    (minimal(sources=[{"name": "a.b", "kind": "synthetic"}]), "sources[0].name", "pattern"),
    (minimal(sources=[{"name": "syn", "kind": "laser"}]), "sources[0]", "kind"),
    (minimal(shard_size=0), "shard_size", "greater than or equal to 1"),
])
def test_bad_spec_names_file_field_and_problem(data, field, words):
    with pytest.raises(SpecError) as e:
        parse_spec(data, "my.yaml")
    msg = str(e.value)
    assert msg.startswith("my.yaml:"), msg
    assert f"field {field}" in msg, msg
    assert words in msg, msg


def test_missing_env_var_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("NOPE_ROOT", raising=False)
    p = tmp_path / "s.yaml"
    p.write_text("name: t\noutput: ${NOPE_ROOT}/out\nsources: [{name: s, kind: synthetic}]\n"
                 "tasks: [{task: colorization, source: s}]\n")
    with pytest.raises(SpecError, match=r"s\.yaml: field output: environment variable \$\{NOPE_ROOT\} is not set"):
        load_spec(p)


def test_unreadable_and_non_yaml_spec(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(p)


def test_task_option_defaults_are_filled_when_options_are_omitted():
    spec = parse_spec(minimal(tasks=[{"task": "object_detection", "source": "syn"}]))
    assert spec.tasks[0].options == {"thickness": 2, "min_side": 4, "min_object_area": 0.001,
                                     "min_target_coverage": 0.0005}
