import argparse
import re
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


# --------------------------------------------------------------------------- ${VAR} in spec files

UVD = ROOT / "manifests" / "uvd.yaml"
REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def uvd_uses() -> dict[str, set[int]]:
    """Each ${VAR} without a default in uvd.yaml outside comments -> the lines it is on, read line by line."""
    uses: dict[str, set[int]] = {}
    for n, line in enumerate(UVD.read_text().splitlines(), 1):
        code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        for var in REF_RE.findall(code):
            uses.setdefault(var, set()).add(n)
    return uses


def unset_rows(err: str) -> dict[str, set[int]]:
    """The error's table: variable -> the line numbers given for it."""
    rows = {}
    for line in err.splitlines():
        m = re.match(r"\s+\$\{(\w+)\}\s+(.*)", line)
        if m:
            rows[m.group(1)] = {int(n) for n in re.findall(r"\(line (\d+)\)", m.group(2))}
    return rows


def test_every_unset_variable_is_reported_at_once_by_the_cli(monkeypatch, capsys):
    from pipelines.build import main

    uses = uvd_uses()
    assert len(uses) >= 9 and "UVD_OUT" in uses and "COCO_ROOT" in uses
    for var in uses:
        monkeypatch.delenv(var, raising=False)
    assert main(["--spec", str(UVD)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"error: {UVD}: {len(uses)} environment variables are not set")
    assert unset_rows(err) == uses, err  # every variable, with every line it is used on
    lines = UVD.read_text().splitlines()
    images = next(n for n, line in enumerate(lines, 1) if "images: ${COCO_ROOT}/train2017" in line)
    last_model = max(n for n, line in enumerate(lines, 1) if "model: ${DEPTH_ANYTHING_DIR}" in line)
    assert f"sources[0].images (line {images})" in err and f"labelers[3].model (line {last_model})" in err, err
    assert re.search(r"export " + " ".join(f"{v}=\\.\\.\\." for v in uses), err), err  # how to set them
    assert "--output DIR" in err  # UVD_OUT is used in output:
    header = "".join(line for line in UVD.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert all(var in header for var in uses), "the comment at the top of uvd.yaml lists every variable"


def test_only_the_unset_variables_are_reported(monkeypatch):
    uses = uvd_uses()
    for var in uses:
        monkeypatch.setenv(var, f"/data/{var.lower()}")
    monkeypatch.delenv("NYU_ROOT")
    monkeypatch.delenv("DEPTH_ANYTHING_DIR")
    with pytest.raises(SpecError) as e:
        load_spec(UVD)
    assert unset_rows(str(e.value)) == {v: uses[v] for v in ("NYU_ROOT", "DEPTH_ANYTHING_DIR")}, str(e.value)
    assert "--output" not in str(e.value)  # output: is set
    # a spec given as data reports all of them too (without lines)
    with pytest.raises(SpecError, match=r"(?s)2 environment variables are not set.*\$\{NYU_ROOT\}\s+output.*"
                                        r"\$\{DEPTH_ANYTHING_DIR\}\s+sources\[0\]\.root"):
        parse_spec(minimal(output="${NYU_ROOT}", sources=[{"name": "s", "kind": "image_folder",
                                                           "root": "${DEPTH_ANYTHING_DIR}"}]))


FLOW_SPEC = """\
name: flow
output: ${FLOW_OUT:-out/flow}
sources:
  - {name: coco, kind: coco, images: ${COCO}/train2017, instances: ${COCO}/ann.json}
  - {name: pics, kind: image_folder, root: ${PICS}, licence: ${LIC:-CC0, or [the] owner's: ask}}
tasks:
  - {task: inpainting, source: pics, options: {mode: ${MODE}}}
  - {task: colorization, source: coco}
"""


def test_variables_in_flow_mappings_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("COCO", "/data/coco")
    monkeypatch.setenv("PICS", "/data/pics")
    monkeypatch.setenv("MODE", "patches")
    monkeypatch.delenv("LIC", raising=False)
    monkeypatch.delenv("FLOW_OUT", raising=False)
    p = tmp_path / "flow.yaml"
    p.write_text(FLOW_SPEC)
    spec = load_spec(p)
    assert spec.output == "out/flow"
    coco, pics = spec.sources
    assert (coco.images, coco.instances) == ("/data/coco/train2017", "/data/coco/ann.json")
    assert pics.root == "/data/pics"
    assert pics.licence == "CC0, or [the] owner's: ask"  # a default may hold flow syntax
    assert spec.tasks[0].options["mode"] == "patches"
    monkeypatch.setenv("FLOW_OUT", "")  # set, even empty: the variable wins over the default, as before
    assert load_spec(p).output == ""


def test_flow_spec_text_check():
    # the text above is not valid YAML as written: the test would prove nothing otherwise
    import yaml

    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(FLOW_SPEC)


# values a variable may hold that are YAML syntax: each must stay the one string it is put into
NASTY = ["a: b", "x # not a comment", "{kind: synthetic}", "[1, 2]", "it's \"quoted\"", "line\nnext: 1",
         "- item", "&anchor *alias", "!!python/object:os.system", "${OTHER}", "'", "\"", "}", ",", "", " "]


@pytest.mark.parametrize("value", NASTY)
def test_a_variable_value_never_becomes_yaml(monkeypatch, tmp_path, value):
    monkeypatch.setenv("V", value)
    monkeypatch.setenv("OTHER", "expanded twice")
    p = tmp_path / "s.yaml"
    p.write_text("name: t\noutput: ${V}\nsources:\n"
                 "  - {name: a, kind: image_folder, root: ${V}, licence: 'x ${V} y'}\n"
                 "  - name: b\n    kind: image_folder\n    root: \"${V}/z\"\n    licence: ${V}\n"
                 "tasks: [{task: colorization, source: a}, {task: denoise, source: b}]\n")
    spec = load_spec(p)
    a, b = spec.sources
    assert spec.output == value
    assert (a.root, a.licence, b.root, b.licence) == (value, f"x {value} y", f"{value}/z", value)
    assert [s.name for s in spec.sources] == ["a", "b"] and [t.task for t in spec.tasks] == ["colorization", "denoise"]


def test_variables_in_comments_are_not_read(monkeypatch, tmp_path):
    monkeypatch.delenv("NOT_SET", raising=False)
    p = tmp_path / "s.yaml"
    p.write_text("# output: ${NOT_SET}\nname: t\noutput: /o  # was ${NOT_SET}\n"
                 "sources: [{name: s, kind: synthetic}]  # {root: ${NOT_SET}}\n"
                 "tasks: [{task: colorization, source: s}]\n")
    assert load_spec(p).output == "/o"


def test_yaml_errors_show_the_spec_as_written(tmp_path):
    line = "output: ${X}: b"
    p = tmp_path / "s.yaml"
    p.write_text(f"name: t\n{line}\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    col = line.index("}: b") + 2  # 1-based column of the ":" YAML refuses
    assert f"line 2, column {col}" in str(e.value), str(e.value)
    p.write_text("name: t\noutput: o\nsources: [{name: s, kind: synthetic}]\n"
                 "tasks: [{task: denoise, source: s, options: {${K}: 1, ${K}: 2}}]\n")
    with pytest.raises(SpecError, match=r"duplicate key '\$\{K\}' in tasks\[0\]\.options"):
        load_spec(p)


def test_output_flag_replaces_the_output_field_and_its_variables(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("UNSET_OUT", raising=False)
    monkeypatch.delenv("UNSET_ROOT", raising=False)
    monkeypatch.setenv("HOME_ISH", "/expanded")
    p = tmp_path / "s.yaml"
    p.write_text("name: t\noutput: ${UNSET_OUT}/x\nsources: [{name: s, kind: synthetic}]\n"
                 "tasks: [{task: colorization, source: s}]\n")
    with pytest.raises(SpecError, match=r"(?s)field output: environment variable \$\{UNSET_OUT\}.*--output DIR"):
        load_spec(p)
    spec = load_spec(p, output="/tmp/o")  # the field it fills is replaced: nothing to set
    assert spec.output == "/tmp/o"
    assert load_spec(p, output="${HOME_ISH}/o").output == "${HOME_ISH}/o"  # the shell expands a flag, not us
    # a variable used elsewhere too is still needed there, and named only there
    p.write_text("name: t\noutput: ${UNSET_OUT}\nsources: [{name: s, kind: image_folder, root: ${UNSET_ROOT}}]\n"
                 "tasks: [{task: colorization, source: s}]\n")
    with pytest.raises(SpecError) as e:
        load_spec(p, output="/tmp/o")
    assert "UNSET_ROOT" in str(e.value) and "UNSET_OUT" not in str(e.value) and "--output" not in str(e.value)
    # through the CLI: the build gets --output, and says that the spec's output: is not used
    import pipelines.build as cli

    got = []
    monkeypatch.setattr(cli, "build", lambda spec, num_cpus: got.append(spec) or
                        {"counts": {}, "failures": {}, "run": {"seconds": 0.0}})
    p.write_text("name: t\noutput: ${UNSET_OUT}\nsources: [{name: s, kind: synthetic}]\n"
                 "tasks: [{task: colorization, source: s}]\n")
    assert cli.main(["--spec", str(p), "--output", str(tmp_path / "o")]) == 0
    assert [s.output for s in got] == [str(tmp_path / "o")]
    assert f"output {tmp_path / 'o'} (--output; the spec's output: field is not used)" in capsys.readouterr().out


def test_help_shows_defaults_and_the_program(capsys):
    from pipelines.build import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith("usage: python -m pipelines.build")
    assert "--output DIR output folder" in out and "(default: the spec's output:)" in out
    assert "--num-cpus N CPUs for a local Ray" in out and "(default: all of this machine's)" in out
    assert "--spec YAML build spec" in out and "(default: None)" not in out
    # the formatter shows a real default itself, and leaves None to the words in the help
    from lavin_data.cli import HelpFormatter

    ap = argparse.ArgumentParser(prog="p", formatter_class=HelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="side")
    ap.add_argument("--where", help="folder (default: here)")
    ap.add_argument("--quick", action="store_true", help="skip decoding")
    ap.add_argument("--pixels", required=True, default="x", help="pairs")
    text = " ".join(ap.format_help().split())
    assert "--size SIZE side (default: 256)" in text and "--where WHERE folder (default: here) " in text + " "
    assert "--quick skip decoding " in text + " " and "--pixels PIXELS pairs " in text + " "
    assert "None" not in text and "False" not in text and "(default: x)" not in text


def test_deep_nesting_is_refused_not_crashed(tmp_path):
    """3000 nested ``[`` used to crash libyaml's recursive composer. Whichever refuses first (our
    event-stream depth check, or libyaml >= 0.2.6's own flow-level limit), the spec is refused
    with an error naming the file, and the CLI exits 2 without a traceback."""
    import subprocess
    import sys

    p = tmp_path / "deep.yaml"
    p.write_text("name: t\noutput: o\nz: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert str(p) in str(err.value) and "YAML" in str(err.value)
    r = subprocess.run([sys.executable, "-m", "pipelines.build", "--spec", str(p)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(p) in r.stderr, r.stderr


def test_our_depth_limit_refuses_what_libyaml_would_still_compose(tmp_path):
    """150 levels: under libyaml's own limit (1000 in 0.2.6), over ours (100)."""
    p = tmp_path / "deep.yaml"
    p.write_text("name: t\noutput: o\nz: " + "[" * 150 + "]" * 150 + "\n")
    with pytest.raises(SpecError, match=r"collections nested more than 100 deep at line 3"):
        load_spec(p)
