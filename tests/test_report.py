"""The build report (OUT/report/index.html, rendered in headless Chromium) and the dataset
card (OUT/README.md), written into copies of the demo build (the shared build is not touched)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lavin_data.codecs import decode_image
from lavin_data.labelers import labeler_class
from lavin_data.shards import INDEX_SCHEMA, index_path, iter_tar_samples, stats_path
from lavin_data.spec import Spec
from pipelines.build import write_manifest
from pipelines.report import main, write_dataset_card, write_report

OVERVIEW_TILE = 96  # all_tasks.png shows each task's first pair at half the sheets' 192 px


# --------------------------------------------------------------------------- helpers


def copy_build(spec: Spec, dest: Path) -> tuple[Spec, dict]:
    """A copy of a build (without base shards, which the report does not read) and its spec/manifest."""
    shutil.copytree(spec.output, dest, ignore=shutil.ignore_patterns("base", ".lock"))
    manifest = json.loads((dest / "manifest.json").read_text())
    return spec.model_copy(update={"output": str(dest)}), manifest


@pytest.fixture
def build_copy(demo_build, tmp_path) -> tuple[Spec, dict]:
    return copy_build(demo_build[0], tmp_path / "out")


class Page(HTMLParser):
    """What the tests read from the page: images, links, scripts, reason rows, text by element."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.imgs: list[dict] = []
        self.urls: list[str] = []
        self.scripts = 0
        self.reasons: list[dict] = []  # data-* of each reason row, with its cells' text
        self.targets: list[dict] = []  # per targets-table row: source, cells, svg rect heights
        self._row: dict | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_title = False  # an SVG bar's tooltip: not part of the cell's visible text
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "title":
            self._in_title = True
        for k in ("src", "href"):
            if a.get(k) is not None:
                self.urls.append(a[k])
        if tag == "img":
            self.imgs.append(a)
        if tag == "table":
            self._table = a.get("class")
        if tag == "tr":
            self._row = dict(a, cells=[], rects=[], table=self._table)
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag == "rect" and self._row is not None:
            self._row["rects"].append(int(a["height"]))

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row.get("class") == "reason":
                self.reasons.append(self._row)
            elif self._row["table"] == "targets" and self._row["cells"]:
                self.targets.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None and not self._in_title:
            self._cell.append(data)


def image_problems(report_dir: Path, page: Page) -> list[str]:
    """Every <img> must be a relative file in the report folder that decodes, has the size the
    page gives it, and shows something: no 96-px band of it is a single colour."""
    problems = []
    if not page.imgs:
        problems.append("the page has no image")
    for img in page.imgs:
        src = img.get("src", "")
        path = report_dir / src
        if not src or "://" in src or src.startswith("/") or not path.resolve().is_relative_to(report_dir.resolve()):
            problems.append(f"{src!r}: not a file inside the report folder")
            continue
        arr = cv2.imread(str(path)) if path.is_file() else None
        if arr is None:
            problems.append(f"{src}: missing or not decodable")
            continue
        if (int(img["width"]), int(img["height"])) != (arr.shape[1], arr.shape[0]):
            problems.append(f"{src}: page says {img['width']}x{img['height']}, file is {arr.shape[1]}x{arr.shape[0]}")
        bands = [arr[y:y + OVERVIEW_TILE] for y in range(0, arr.shape[0], OVERVIEW_TILE)]
        flat = [y for y, b in zip(range(0, arr.shape[0], OVERVIEW_TILE), bands) if b.std() < 8]
        if flat:
            problems.append(f"{src}: uniform band(s) at y={flat}")
    return problems


def screenshot(page: Path, tmp: Path) -> np.ndarray:
    """The page rendered by headless Chromium (1400x2400 px), as a BGR array."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = ("chromium is not installed (scripts/install_browser.sh or `make test WITH_BROWSER=1` installs "
               "Debian's `chromium`)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp))  # fresh: no state between runs
    png = profile.with_name(profile.name + ".png")
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1400,2400",
                        page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    shot = cv2.imread(str(png))
    assert shot is not None, f"chromium wrote no screenshot (exit {r.returncode}):\n{r.stderr[-2000:]}"
    assert shot.shape[:2] == (2400, 1400)
    return shot


def first_targets(spec: Spec, n_tasks: int) -> list[tuple[str, np.ndarray]]:
    """The target of the first ok pair of the first ``n_tasks`` tasks, straight from the
    shards, at the overview's tile size less its 1 px frame (BGR, as the screenshot is)."""
    out = []
    for t in spec.tasks:
        for tar in sorted((Path(spec.output) / "pairs" / t.task).glob(f"{t.source}-[0-9]*.tar")):
            sample = next(iter_tar_samples(tar), None)
            if sample is None:
                continue
            m = sample[1]
            name = "target.png" if "target.png" in m else sorted(k for k in m if k.startswith("target_"))[0]
            tgt = cv2.resize(decode_image(m[name]), (OVERVIEW_TILE, OVERVIEW_TILE), interpolation=cv2.INTER_AREA)
            tgt = tgt[1:-1, 1:-1]  # the sheets frame each tile with a grey line: match inside it
            if tgt.std() > 8:  # a near-uniform target would match any flat area
                out.append((t.task, cv2.cvtColor(tgt, cv2.COLOR_RGB2BGR)))
            break
        if len(out) == n_tasks:
            break
    return out


def screenshot_problems(shot: np.ndarray, expected: list[tuple[str, np.ndarray]]) -> list[str]:
    """Each expected tile must appear in the screenshot (normalised correlation > 0.9), on a
    region with real contrast."""
    problems = []
    grey = cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY)  # a third of the work of matching colour
    for task, tile in expected:
        res = cv2.matchTemplate(grey, cv2.cvtColor(tile, cv2.COLOR_BGR2GRAY), cv2.TM_CCOEFF_NORMED)
        _lo, best, _l, (x, y) = cv2.minMaxLoc(res)
        region = grey[y:y + tile.shape[0], x:x + tile.shape[1]]
        if not best > 0.9 or region.std() < 8:
            problems.append(f"{task}: first target not visible in the screenshot (best match {best:.2f})")
    return problems


def index_reasons(out: Path) -> Counter:
    """(task, source, status, reason) -> samples, from every pair shard's index."""
    c: Counter = Counter()
    for p in sorted((out / "pairs").glob("*/*.parquet")):
        for r in pq.read_table(p).to_pylist():
            if r["status"] != "ok":
                c[(p.parent.name, p.name.rsplit("-", 1)[0], r["status"], r["reason"])] += 1
    return c


def plant_failures(out: Path, task: str, source: str, plants: dict[int, list[tuple[int, str, str, str, str]]]) -> None:
    """Turn index rows of shards into failures/skips: ``plants[shard] = [(row, status, reason, key,
    message)]`` (key None keeps the row's key); stats files follow (counts, reasons, and the index's
    size and hash where recorded: a shard whose index does not match is not done), so the manifest agrees."""
    for shard, edits in plants.items():
        tar = out / "pairs" / task / f"{source}-{shard:06d}.tar"
        rows = pq.read_table(index_path(tar)).to_pylist()
        for i, status, reason, key, msg in edits:
            rows[i].update(status=status, reason=reason, error=msg, bytes=0, key=key or rows[i]["key"])
        rows.sort(key=lambda r: r["key"])
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), index_path(tar))
        st = json.loads(stats_path(tar).read_text())
        for status, field in (("ok", "n_ok"), ("error", "n_error"), ("skipped", "n_skipped")):
            st[field] = sum(r["status"] == status for r in rows)
        st["reasons"] = {s: dict(sorted(Counter(r["reason"] for r in rows if r["status"] == s).items()))
                         for s in ("error", "skipped")}
        data = index_path(tar).read_bytes()
        if "index_bytes" in st:
            st.update(index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())
        stats_path(tar).write_text(json.dumps(st, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- the page in a browser


def test_page_renders_in_chromium_with_every_image_visible(build_copy, tmp_path):
    spec, manifest = build_copy
    page_path = write_report(spec, manifest)
    report = page_path.parent
    text = page_path.read_text()
    page = Page(text)
    assert page.scripts == 0 and "<script" not in text.lower()
    assert not [u for u in page.urls if "://" in u or u.startswith("//")], "the page must not fetch anything"
    # One sheet per task with an ok pair (independently: a pair tar with a sample), plus the overview.
    with_pairs = {t.task for t in spec.tasks
                  if any(next(iter_tar_samples(p), None) for p in (Path(spec.output) / "pairs" / t.task).glob("*.tar"))}
    assert {i["src"] for i in page.imgs} == {f"{t}.png" for t in with_pairs} | {"all_tasks.png"}
    assert image_problems(report, page) == []

    shot = screenshot(page_path, tmp_path)
    expected = first_targets(spec, 4)
    assert len(expected) == 4
    assert screenshot_problems(shot, expected) == []


def test_image_checks_catch_a_blank_image_and_a_broken_src(build_copy, tmp_path):
    """The checks above fail on a page whose overview is blank, or whose src points nowhere."""
    spec, manifest = build_copy
    page_path = write_report(spec, manifest, per_task=1)
    report, text = page_path.parent, page_path.read_text()
    expected = first_targets(spec, 4)

    blank = cv2.imread(str(report / "all_tasks.png"))
    cv2.imwrite(str(report / "all_tasks.png"), np.full_like(blank, 200))
    assert any("all_tasks.png: uniform" in p for p in image_problems(report, Page(text)))
    assert len(screenshot_problems(screenshot(page_path, tmp_path), expected)) == 4

    write_report(spec, manifest, per_task=1)
    broken = text.replace('src="all_tasks.png"', 'src="all_task.png"')
    page_path.write_text(broken)
    assert any("all_task.png: missing" in p for p in image_problems(report, Page(broken)))
    assert len(screenshot_problems(screenshot(page_path, tmp_path), expected)) == 4


def test_clip_sheet_shows_first_middle_and_last_frames(build_copy):
    spec, manifest = build_copy
    write_report(spec, manifest, per_task=1)
    task = next(t for t in spec.tasks if t.source == "synthetic-video")
    tar = sorted((Path(spec.output) / "pairs" / task.task).glob("*.tar"))[0]
    _key, m = next(iter_tar_samples(tar))
    tiles = []
    for role in ("input", "target"):
        names = sorted(k for k in m if k.startswith(f"{role}_"))
        assert len(names) >= 3
        for name in (names[0], names[len(names) // 2], names[-1]):
            tiles.append(cv2.resize(decode_image(m[name]), (192, 192), interpolation=cv2.INTER_AREA))
    sheet = cv2.cvtColor(cv2.imread(str(Path(spec.output) / "report" / f"{task.task}.png")), cv2.COLOR_BGR2RGB)
    # three input tiles 3 px apart, a 10 px gap, three target tiles; each tile framed in grey
    xs = [0, 195, 390, 592, 787, 982]
    assert sheet.shape[0] == 192 and sheet.shape[1] == 1174
    for i, (x, tile) in enumerate(zip(xs, tiles)):
        cell = sheet[:, x:x + 192]
        assert (cell[[0, -1]] == 128).all() and (cell[:, [0, -1]] == 128).all(), f"tile {i}: no grey frame"
        if i == 0:
            continue  # the key is written on the first input tile
        assert np.array_equal(cell[1:-1, 1:-1], tile[1:-1, 1:-1]), f"tile {i} of the {task.task} sheet"


# --------------------------------------------------------------------------- content


def test_reasons_match_the_indexes_and_data_text_is_escaped(build_copy):
    spec, _ = build_copy
    out = Path(spec.output)
    evil_key = 'synthetic_<script>alert("key")</script>'
    evil_msg = "ValueError: <script>alert('msg')</script> & <img src=x onerror=alert(1)>"
    plant_failures(out, "colorization", "synthetic", {
        0: [(0, "error", "ValueError", evil_key, evil_msg), (1, "skipped", "min_valid_fraction", None,
                                                             "valid fraction 0.10 < min_valid_fraction 0.5")],
        2: [(0, "skipped", "min_valid_fraction", None, "valid fraction 0.20 < min_valid_fraction 0.5"),
            (3, "skipped", "<b>odd-code</b>", None, "a code from a file")],
    })
    manifest = write_manifest(spec)  # the counts (and whatever else the manifest records) from the edited stats
    text = write_report(spec, manifest, per_task=1).read_text()
    page = Page(text)

    assert "<script" not in text.lower() and "<img src=x" not in text and "<b>odd" not in text
    assert page.scripts == 0 and [i["src"] for i in page.imgs if not i["src"].endswith(".png")] == []

    shown = Counter()
    for row in page.reasons:
        shown[(row["data-task"], row["data-source"], row["data-status"], row["data-code"])] += int(row["cells"][3])
    expected = index_reasons(out)
    assert expected[("colorization", "synthetic", "skipped", "min_valid_fraction")] == 2
    assert shown == expected
    # A manifest without `reasons` (older builds): the counts come from the indexes alone.
    older = Page(write_report(spec, {k: v for k, v in manifest.items() if k != "reasons"}, per_task=1).read_text())
    assert Counter({(r["data-task"], r["data-source"], r["data-status"], r["data-code"]): int(r["cells"][3])
                    for r in older.reasons}) == expected
    write_report(spec, manifest, per_task=1)

    # Examples: the first two samples of each reason (shard order, then key order), escaped.
    by = {(r["data-task"], r["data-status"], r["data-code"]): r["cells"][4] for r in page.reasons}
    assert by[("colorization", "error", "ValueError")] == f"{evil_key}: {evil_msg}"
    skip_cell = by[("colorization", "skipped", "min_valid_fraction")]
    assert "0.10 < min_valid_fraction" in skip_cell and "0.20 < min_valid_fraction" in skip_cell

    card = write_dataset_card(spec, manifest).read_text()
    assert "<script" not in card.lower() and "&lt;b&gt;odd-code&lt;/b&gt;" in card
    assert "| colorization | `synthetic` | skipped | `min_valid_fraction` | 2 |" in card


def test_an_unreadable_index_is_reported_not_fatal(build_copy):
    spec, manifest = build_copy
    out = Path(spec.output)
    plant_failures(out, "edge_detection", "synthetic", {1: [(0, "error", "ValueError", None, "ValueError: bad")]})
    manifest = write_manifest(spec)
    idx = index_path(out / "pairs" / "edge_detection" / "synthetic-000001.tar")
    idx.write_bytes(b"\0" * idx.stat().st_size)  # same size: the shard still counts as done
    text = write_report(spec, manifest, per_task=1).read_text()
    assert "pairs/edge_detection/synthetic-000001.parquet: unreadable shard index" in text
    row = next(r for r in Page(text).reasons if r["data-task"] == "edge_detection")
    assert row["cells"][3] == "1" and "no example" in row["cells"][4]  # the count from the manifest
    card = write_dataset_card(spec, manifest).read_text()
    assert "pairs/edge_detection/synthetic-000001.parquet: unreadable shard index" in card


def test_target_statistics_and_recorded_reasons_from_the_manifest(build_copy):
    spec, manifest = build_copy
    hist = [0, 1, 2, 3, 0, 0, 6, 0, 0, 4]
    m = dict(manifest, targets={"depth_estimation": {"synthetic": {"coverage_hist": hist, "near_black": 3, "n": 16}},
                                "colorization": {"synthetic": {"coverage_hist": hist[:9], "near_black": 0, "n": 16}}},
             reasons={"edge_detection": {"synthetic": {"skipped": {"no_edges": 5}, "error": {}}}})
    page = Page(write_report(spec, m, per_task=1).read_text())
    assert len(page.targets) == len(spec.tasks)  # one source per task in the demo: one row per task section
    by_task = dict(zip([t.task for t in spec.tasks], page.targets))
    depth = by_task["depth_estimation"]
    assert depth["cells"][1] == "16" and depth["cells"][2] == "3 / 16 (18.8%)"
    assert depth["rects"] == [round(40 * c / 6) for c in hist]
    assert depth["cells"][3].split() == [str(c) for c in hist]
    # Absent, or malformed (9 bins), shows a dash rather than a wrong number.
    for task in ("colorization", "object_detection"):
        assert by_task[task]["cells"][1:3] == ["\u2014", "\u2014"] and by_task[task]["rects"] == []
    # Reason counts recorded in the manifest are shown as recorded.
    assert [(r["data-task"], r["data-status"], r["data-code"], r["cells"][3]) for r in page.reasons
            if r["data-task"] == "edge_detection"] == [("edge_detection", "skipped", "no_edges", "5")]


def test_same_build_gives_the_same_bytes_wherever_it_is(build_copy, tmp_path):
    spec, manifest = build_copy

    def written(spec: Spec, manifest: dict) -> dict[str, bytes]:
        write_report(spec, manifest, per_task=1)
        write_dataset_card(spec, manifest)
        out = Path(spec.output)
        files = [out / "README.md", *sorted((out / "report").iterdir())]
        return {str(p.relative_to(out)): p.read_bytes() for p in files}

    first = written(spec, manifest)
    assert written(spec, dict(manifest, run={"seconds": 12.3, "timeline": [[1, 0.0, 1.0]]})) == first
    moved, _ = copy_build(spec, tmp_path / "elsewhere" / "out")
    assert written(moved, manifest) == first
    assert str(Path(spec.output).parent) not in first["report/index.html"].decode()


def test_cli_regenerates_the_page_and_card_from_manifest_json(build_copy, capsys):
    spec, manifest = build_copy
    out = Path(spec.output)
    want = write_report(spec, manifest, per_task=1).read_bytes(), write_dataset_card(spec, manifest).read_bytes()
    (out / "report" / "index.html").unlink()
    (out / "README.md").unlink()
    assert main(["--output", str(out), "--per-task", "1"]) == 0
    assert ((out / "report" / "index.html").read_bytes(), (out / "README.md").read_bytes()) == want
    assert main(["--output", str(out / "nowhere")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_card_states_every_licence_and_labeler(build_copy):
    spec, manifest = build_copy
    out = Path(spec.output)
    data = spec.model_dump(mode="json")
    data["sources"][0]["licence"] = None
    data["sources"][1]["licence"] = "<b>custom</b> | terms"
    da_dir = "/models/Depth-Anything-V2-Base-hf"
    data["labelers"] = [
        {"name": "da", "kind": "depth_anything_v2", "source": "synthetic", "model": da_dir},
        {"name": "nfd", "kind": "normals_from_depth", "source": "synthetic", "depth_from": "da"},
        {"name": "flow", "kind": "dis_flow", "source": "synthetic-video"},
    ]
    next(t for t in data["tasks"] if t["task"] == "depth_estimation")["labeler"] = "da"
    spec2 = Spec.model_validate(data)
    for lab, src, model, wh in (("da", "synthetic", da_dir, "0f1e2d3c4b5a"),
                                ("nfd", "synthetic", "back-projection + gradient cross product", None)):
        (out / "labels" / lab / src).mkdir(parents=True)
        (out / "labels" / lab / src / f"{src}-000000.stats.json").write_text(
            json.dumps({"model": model, "weight_hash": wh, "n_ok": 4}))
    card = write_dataset_card(spec2, manifest).read_text()
    section = card.split("## Sources")[1].split("## Labelers")[0]
    src_rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| `")}
    assert set(src_rows) == {f"`{s.name}`" for s in spec2.sources}
    assert "licence not stated" in src_rows["`synthetic`"] and "`licence:`" in src_rows["`synthetic`"]
    assert "&lt;b&gt;custom&lt;/b&gt; \\| terms" in src_rows["`synthetic-video`"]

    section = card.split("## Labelers")[1].split("## Contents")[0]
    lab_rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| `")}
    assert set(lab_rows) == {"`da`", "`nfd`", "`flow`"}
    assert "`0f1e2d3c4b5a`" in lab_rows["`da`"] and "CC-BY-NC-4.0" in lab_rows["`da`"]
    assert "no model" in lab_rows["`nfd`"] and "none (no weights)" in lab_rows["`nfd`"]
    assert "not recorded" in lab_rows["`flow`"] and "Apache-2.0" in lab_rows["`flow`"]
    assert "Pseudo-labels are model predictions, not ground truth" in card and "`depth_estimation`" in card
    for kind in ("depth_anything_v2", "stable_normal", "marigold_normals", "normals_from_depth", "dis_flow"):
        assert labeler_class(kind).LICENCE.strip()

    # The demo spec as built: both sources state their licence.
    card = write_dataset_card(spec, manifest).read_text()
    assert "licence not stated" not in card and card.count("CC0-1.0 (procedurally generated)") == 2


# --------------------------------------------------------------------------- rough edges a user saw


def test_key_label_outline_hugs_the_text_with_no_doubled_last_character():
    """The black outline ends one pixel past the white text on each side: drawn as a thicker
    copy of the text it ran 7 px past the last glyph (OpenCV widens the advance with the stroke)."""
    from pipelines.report import _label

    img = _label(np.full((40, 300, 3), 128, np.uint8), "synthetic-video_000123")
    white = np.argwhere((img == 255).all(2))
    black = np.argwhere((img == 0).all(2))
    assert len(white) > 50 and len(black) > 50
    for axis in (0, 1):
        assert black[:, axis].min() >= white[:, axis].min() - 1
        assert black[:, axis].max() <= white[:, axis].max() + 1
    # every outline pixel touches the text (8-neighbourhood): no detached shadow glyph
    ink = np.zeros(img.shape[:2], np.uint8)
    ink[tuple(white.T)] = 1
    near = cv2.dilate(ink, np.ones((3, 3), np.uint8)).astype(bool)
    assert near[tuple(black.T)].all()


def test_clip_rows_frame_every_tile_and_keep_a_white_flow_frame_visible():
    """Three all-white frames (a still flow target is white) must stay visible on the white page:
    each tile has a grey frame, the frames of a clip are apart, input and target further apart."""
    from pipelines.report import _row

    white = [np.full((50, 60, 3), 255, np.uint8)] * 3
    row = _row("k", white, white, 32, None)
    grey_cols = [x for x in range(row.shape[1]) if (row[:, x] == 128).all()]
    assert len(grey_cols) == 12  # a left and a right edge per tile, 6 tiles
    lefts, rights = grey_cols[0::2], grey_cols[1::2]
    assert all(r - l_ == 31 for l_, r in zip(lefts, rights))
    gaps = [lefts[i + 1] - rights[i] - 1 for i in range(5)]
    assert gaps[0] == gaps[1] == gaps[3] == gaps[4] > 0 and gaps[2] > gaps[0]  # frames apart, roles further
    assert (row[[0, -1]] == 128).all(2).sum() == 2 * 6 * 32  # top and bottom edges of every tile


def test_overview_captions_show_every_task_name_whole():
    """The overview's caption band holds the whole task name, however long: it used to be drawn
    on the 96-px input tile and cut at its edge (surface_normal_estimation, video_instance_...)."""
    from lavin_data.registry import TASKS
    from pipelines.report import _captioned, _row

    img = np.full((40, 40, 3), 90, np.uint8)
    for name in TASKS:
        cell = _captioned(_row("k", [img], [img], 96, None), name)
        band = cell[:18]
        ink = np.argwhere((band < 128).all(2))
        assert len(ink), name
        assert ink[:, 1].max() < cell.shape[1] - 2, f"{name}: caption runs off the cell"
        # the same text drawn alone at that size is as wide: nothing was cut off
        probe = np.full((18, 2000, 3), 255, np.uint8)
        scale = next(s / 1000 for s in range(400, 240, -25)
                     if cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, s / 1000, 1)[0][0] <= cell.shape[1] - 4)
        cv2.putText(probe, name, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        full = np.argwhere((probe < 128).all(2))
        assert ink[:, 1].max() - ink[:, 1].min() >= full[:, 1].max() - full[:, 1].min() - 1, name


def _summary_rows(page: str) -> dict[str, list[str]]:
    """task -> the cells of its first summary row (task, train, val, source, ok, failed, skipped, near-black)."""
    rows = {}
    for m in re.finditer(r'<tr data-task="([^"]+)">(.*?)</tr>', page, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", m.group(2), re.S)]
        rows.setdefault(m.group(1), cells)
    return rows


def test_near_black_reads_as_expected_for_drawings_on_black_and_flags_a_black_photo(build_copy):
    """Boxes on black are mostly black by design; a black photo or a black class map is a failure."""
    spec, manifest = build_copy
    manifest["targets"]["object_detection"]["synthetic"].update(n=10, near_black=10)
    manifest["targets"]["colorization"]["synthetic"].update(n=10, near_black=3)
    manifest["targets"]["semantic_segmentation"]["synthetic"].update(n=10, near_black=2)
    manifest["targets"]["depth_estimation"]["synthetic"].update(n=10, near_black=0)
    page = write_report(spec, manifest).read_text()
    rows = {t: re.search(rf'<tr data-task="{t}">.*?</tr>', page, re.S).group(0)
            for t in ("object_detection", "colorization", "semantic_segmentation", "depth_estimation")}
    assert rows["object_detection"].endswith(
        '<td class="n muted" title="targets drawn on black">10 / 10 \u00b7 expected, drawn on black</td></tr>')
    assert rows["colorization"].endswith('<td class="n bad">3 / 10</td></tr>')
    assert rows["semantic_segmentation"].endswith('<td class="n bad">2 / 10</td></tr>')
    assert rows["depth_estimation"].endswith('<td class="n">0 / 10</td></tr>')


def test_split_counts_on_the_page_and_the_card_match_the_shard_indexes(build_copy):
    """train/val per task, counted independently from the ok rows of every pair shard's index."""
    spec, manifest = build_copy
    out = Path(spec.output)
    want: dict[str, Counter] = {}
    for idx in sorted((out / "pairs").glob("*/*.parquet")):
        t = pq.read_table(idx).to_pylist()
        want.setdefault(idx.parent.name, Counter()).update(r["split"] for r in t if r["status"] == "ok")
    assert any(c["val"] for c in want.values()) and any(c["train"] for c in want.values())
    rows = _summary_rows(write_report(spec, manifest).read_text())
    card = write_dataset_card(spec, manifest).read_text()
    for task, c in want.items():
        assert rows[task][1:3] == [str(c["train"]), str(c["val"])], task
        assert f"| {task} | {c['train']} | {c['val']} |" in card


def test_card_states_size_on_disk_index_columns_and_no_link_outside_the_repository(build_copy):
    spec, manifest = build_copy
    out = Path(spec.output)
    card = write_dataset_card(spec, manifest).read_text()
    size = sum(p.stat().st_size for p in (out / "pairs").glob("*/*") if p.suffix in (".tar", ".parquet"))
    mib = re.search(r"\| `pairs/` \| ([\d.]+) (KiB|MiB|GiB) \|", card)
    assert mib, card
    factor = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[mib.group(2)]
    assert abs(float(mib.group(1)) * factor - size) <= 0.05 * factor
    columns = pq.read_schema(next((out / "pairs").glob("*/*.parquet"))).names
    assert "split" in columns and f"`{', '.join(columns)}`" in card
    assert "DESIGN.md" not in card
    root = Path(__file__).resolve().parents[1]
    docs = re.findall(r"`(docs/[\w./-]+)`", card)
    assert docs and all((root / d).is_file() for d in docs), docs


@pytest.mark.slow
def test_card_load_snippet_runs_and_reads_the_pairs(build_copy):
    """The card's Loading snippet, run as written from the build folder, reads the pairs with
    webdataset, Hugging Face datasets and Ray Data (each count checked against the manifest)."""
    import sys

    spec, manifest = build_copy
    out = Path(spec.output)
    card = write_dataset_card(spec, manifest).read_text()
    code = re.search(r"## Loading.*?```python\n(.*?)```", card, re.S).group(1)
    task = re.search(r'pairs/([a-z_]+)/\*\.tar', code).group(1)
    n = sum(manifest["counts"][task].values())
    check = (f"\nassert meta['task'] == {task!r}\nassert len(ds) == {n}, len(ds)\n"
             f"assert rds.count() == {n}\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code + check], cwd=out, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1"))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
