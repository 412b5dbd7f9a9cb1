"""``python -m pipelines.report --output OUT [--per-task 4]``: the report and dataset card of a build.

From ``OUT/manifest.json`` and the shards it lists, writes:

- ``OUT/report/index.html``: a static page (no script, no external URL) with, per task,
  the counts by source (ok / failed / skipped), the failures and skips by reason code with
  example keys and messages from the shard indexes, the target statistics the manifest
  records, and a contact sheet of the first ok pairs;
- ``OUT/report/<task>.png``: those contact sheets, one cell per pair, input | target (for
  clips: the first, middle and last frames of input and of target), wrapped at 1280 px;
- ``OUT/report/all_tasks.png``: the first pair of every task, at half size;
- ``OUT/README.md``: the dataset card (what was built, sources and their licences,
  labelers with their weights and licences, counts, caveats).

Every file is a function of the build alone (no dates, no absolute paths), so one build
gives the same bytes on every run. Keys, messages and licences come from data files: they
are escaped wherever they are written.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from lavin_data.cli import HelpFormatter, fail
from lavin_data.codecs import decode_image, to_rgb_uint8
from lavin_data.registry import TASKS
from lavin_data.shards import (
    INDEX_SCHEMA,
    atomic_write,
    error_code,
    index_path,
    iter_tar_samples,
    read_stats,
    shard_done,
)
from lavin_data.spec import Spec

N_EXAMPLES = 2  # example keys shown per reason code
MAX_MESSAGE = 400  # characters of an error message shown (tracebacks can be long)
SHEET_WIDTH = 1280  # px: contact sheets wrap at this width, so that they fit the page unscaled
NEAR_BLACK_GREY = 8  # /255: the manifest's `near_black` threshold on a target's mean grey level
STATUS_LABEL = {"error": "failed", "skipped": "skipped"}
DASH = "\u2014"  # what a page shows for a value the manifest does not have
_SHARD_RE = re.compile(r"^(?P<source>.+)-(?P<shard>\d{6})\.tar$")

RESIZE_POLICY = {
    "crop": "short side scaled to the resolution, then a centre crop",
    "squash": "scaled to the square, aspect ratio not kept",
    "pad": "long side scaled to the resolution, then padded with black",
}


class ReportError(RuntimeError):
    """The build folder cannot be reported on; the message names the file and the problem."""


# --------------------------------------------------------------------------- shards and indexes


def _pair_shards(out: Path, manifest: dict) -> dict[tuple[str, str], list[Path]]:
    """(task, source) -> that pair's shard tars in shard order, from the manifest's list
    (paths outside ``out`` are ignored: the manifest is a file, not a promise)."""
    by: dict[tuple[str, str], list[Path]] = {}
    root = out.resolve()
    for rel in manifest.get("shards", {}).get("pairs", []):
        if not isinstance(rel, str):
            continue
        p = out / rel
        parts = Path(rel).parts
        m = _SHARD_RE.match(p.name)
        if m is None or len(parts) != 3 or parts[0] != "pairs" or not p.resolve().is_relative_to(root):
            continue
        by.setdefault((parts[1], m["source"]), []).append(p)
    return {k: sorted(v) for k, v in by.items()}


@dataclass
class ReasonRow:
    """The samples of one task and source that one reason code failed or skipped."""

    count: int
    examples: list[tuple[str, str]] = field(default_factory=list)  # (key, message), first in shard order


@dataclass
class Reasons:
    """Failures and skips of a build: (task, source) -> (status, code) -> count and examples;
    and the shard indexes that could not be read, as messages naming them."""

    rows: dict[tuple[str, str], dict[tuple[str, str], ReasonRow]]
    unreadable: list[str]


def _index_reasons(shards: list[Path], unreadable: list[str]) -> dict[tuple[str, str], ReasonRow]:
    """(status, code) -> counts and first examples over the indexes of ``shards`` (done ones);
    an index that cannot be read is added to ``unreadable``."""
    rows: dict[tuple[str, str], ReasonRow] = {}
    for tar in shards:
        if not shard_done(tar) or not index_path(tar).exists():
            continue
        try:
            table = pq.read_table(index_path(tar), filters=[("status", "!=", "ok")])
        except Exception as e:  # noqa: BLE001 - shown on the page: one bad index must not sink the report
            unreadable.append(f"{Path(*index_path(tar).parts[-3:])}: unreadable shard index ({type(e).__name__}: "
                              f"{str(e)[:200]})")
            continue
        cols = set(table.column_names)
        for r in table.select([c for c in ("key", "status", "error", "reason") if c in cols]).to_pylist():
            if r.get("status") not in STATUS_LABEL:
                continue
            msg = str(r.get("error") or "")
            code = r.get("reason") or error_code(msg)  # indexes before the `reason` column
            row = rows.setdefault((r["status"], str(code)), ReasonRow(0))
            row.count += 1
            if len(row.examples) < N_EXAMPLES:
                row.examples.append((str(r.get("key")), msg))
    return rows


def reason_table(out: Path, manifest: dict) -> Reasons:
    """(task, source) -> (status, code) -> count and examples. Counts come from the manifest's
    ``reasons`` where it has them, else from the shard indexes; examples always from the indexes."""
    shards = _pair_shards(out, manifest)
    unreadable: list[str] = []
    recorded = manifest.get("reasons") if isinstance(manifest.get("reasons"), dict) else None
    table: dict[tuple[str, str], dict[tuple[str, str], ReasonRow]] = {}
    for task, by_source in sorted(manifest.get("counts", {}).items()):
        for source in sorted(by_source):
            got = recorded.get(task, {}).get(source) if recorded is not None else None
            if isinstance(got, dict) and not any((got.get(status) or {}).values() for status in STATUS_LABEL):
                table[(task, source)] = {}  # nothing failed or skipped: no index to read
                continue
            from_index = _index_reasons(shards.get((task, source), []), unreadable)
            if isinstance(got, dict):
                rows = {}
                for status in STATUS_LABEL:
                    for code, n in sorted((got.get(status) or {}).items()):
                        ex = from_index.get((status, code), ReasonRow(0)).examples
                        rows[(status, str(code))] = ReasonRow(int(n), ex)
            else:
                rows = from_index
            table[(task, source)] = {k: rows[k] for k in sorted(rows) if rows[k].count > 0}
    return Reasons(table, unreadable)


# --------------------------------------------------------------------------- contact sheets


def _frames(m: dict[str, bytes], role: str) -> list[np.ndarray]:
    """The first, middle and last frames of a clip's ``role`` members, or its one image."""
    names = sorted(k for k in m if re.fullmatch(rf"{role}(_\d+)?\.(png|jpg)", k))
    if len(names) > 1:
        names = [names[0], names[len(names) // 2], names[-1]]
    return [to_rgb_uint8(decode_image(m[k], k)) for k in names]


LABEL_FONT = (cv2.FONT_HERSHEY_SIMPLEX, 0.4)  # face, scale


def _text_mask(shape: tuple[int, int], text: str, org: tuple[int, int], scale: float = LABEL_FONT[1]) -> np.ndarray:
    """(H, W) bool: where ``text`` drawn 1 px thick at ``org`` (baseline left) inks the image."""
    mask = np.zeros(shape, np.uint8)
    cv2.putText(mask, text, org, LABEL_FONT[0], scale, 255, 1, cv2.LINE_AA)
    return mask > 96


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` (H, W, 3) uint8 with ``text`` in white at its top left, outlined in black.

    The outline is the text's own mask grown by one pixel: text drawn thicker is also wider
    (OpenCV advances each glyph by the stroke width), so a thick black copy under thin white
    text ended past it and showed as a doubled last character."""
    img = img.copy()
    ink = _text_mask(img.shape[:2], text, (4, 14))
    outline = cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    img[outline] = 0
    img[ink] = 255
    return img


@dataclass
class Sheet:
    """A task's contact sheet: the image (None: no ok pair), the keys shown, and the samples
    that could not be shown, as (key, why)."""

    image: np.ndarray | None
    keys: list[str]
    problems: list[tuple[str, str]]
    first_row: np.ndarray | None = None
    clip: bool = False  # a row shows first/middle/last frames


TILE_BORDER = 128  # grey frame around every tile: a white target (a still flow frame) stays visible on the page
FRAME_GAP, ROLE_GAP = 3, 10  # px of page white between the frames of a clip / between input and target


def _tile(img: np.ndarray, tile: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (tile, tile, 3): area-resampled (nearest would drop thin lines),
    its outermost pixels replaced by a 1 px grey frame."""
    t = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
    t[[0, -1], :] = TILE_BORDER
    t[:, [0, -1]] = TILE_BORDER
    return t


def _strip(tiles: list[np.ndarray], gap: int) -> np.ndarray:
    """Equal-height tiles side by side, ``gap`` px of white between them."""
    space = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([x for t in tiles for x in (space, t)][1:], 1)


def _row(key: str, inp: list[np.ndarray], tgt: list[np.ndarray], tile: int, text: str | None) -> np.ndarray:
    """Input tiles | target tiles (a clip's frames apart by a thin gap, input and target by a
    wider one), ``text`` on the first input tile (cut at its edge, so that a long label never
    covers the target). ``text`` None: no label."""
    a = [_tile(f, tile) for f in inp]
    b = [_tile(f, tile) for f in tgt]
    if text:
        a[0] = _label(a[0], text)
    return _strip([_strip(a, FRAME_GAP), _strip(b, FRAME_GAP)], ROLE_GAP)


def _captioned(row: np.ndarray, caption: str) -> np.ndarray:
    """``row`` under a white band with ``caption`` in black, the font shrunk until the whole
    caption fits the row's width (the overview's task names are never cut)."""
    scale = LABEL_FONT[1]
    while scale > 0.25 and cv2.getTextSize(caption, LABEL_FONT[0], scale, 1)[0][0] > row.shape[1] - 4:
        scale -= 0.025
    band = np.full((18, row.shape[1], 3), 255, np.uint8)
    band[_text_mask(band.shape[:2], caption, (2, 13), scale)] = 0
    return np.concatenate([band, row], 0)


def task_sheet(shards_by_source: list[list[Path]], per_task: int, tile: int = 192, title: str = "") -> Sheet:
    """The first ``per_task`` ok pairs of a task, shared among its sources (each source's shards
    in order), as input | target cells of ``tile`` px square tiles laid out by :func:`flow`
    ((H, W, 3) uint8); and the first cell at half size, captioned ``title``, for the
    overview."""
    sources = [s for s in shards_by_source if s]
    quota = [per_task // max(len(sources), 1) + (i < per_task % max(len(sources), 1)) for i in range(len(sources))]
    rows, keys, problems, first, clip = [], [], [], None, False
    for shards, n in zip(sources, quota):
        taken = 0
        for tar in shards:
            if taken >= max(n, 1) or not shard_done(tar):
                continue
            for key, m in iter_tar_samples(tar):
                try:
                    inp, tgt = _frames(m, "input"), _frames(m, "target")
                    if not inp or not tgt:
                        raise ValueError(f"no input/target image member (members: {', '.join(sorted(m))})")
                    row = _row(key, inp, tgt, tile, key)
                    if first is None:
                        first = _captioned(_row(key, inp, tgt, tile // 2, None), title)
                except Exception as e:  # noqa: BLE001 - shown on the page, not fatal
                    problems.append((key, f"{tar.name}: {type(e).__name__}: {e}"))
                    continue
                rows.append(row)
                keys.append(key)
                clip = clip or len(inp) > 1 or len(tgt) > 1
                taken += 1
                if taken >= max(n, 1):
                    break
    if not rows:
        return Sheet(None, [], problems)
    return Sheet(flow(rows), keys, problems, first, clip)


def flow(cells: list[np.ndarray], max_width: int = SHEET_WIDTH, gap: int = 20) -> np.ndarray:
    """Lay equal-height (h, w_i, 3) uint8 cells out left to right, starting a new line where the
    next would pass ``max_width`` (a cell wider than that gets a line of its own), on white
    (the page's background: black would read as a black target)."""
    lines: list[list[np.ndarray]] = [[]]
    used = 0
    for c in cells:
        if lines[-1] and used + gap + c.shape[1] > max_width:
            lines.append([])
            used = 0
        used += (gap if lines[-1] else 0) + c.shape[1]
        lines[-1].append(c)
    h = cells[0].shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    joined = [np.concatenate([x for c in line for x in (spacer, c)][1:], 1) for line in lines]
    width = max(j.shape[1] for j in joined)
    joined = [np.pad(j, ((0, 0), (0, width - j.shape[1]), (0, 0)), constant_values=255) for j in joined]
    return np.concatenate([x for j in joined for x in (np.full((gap, width, 3), 255, np.uint8), j)][1:], 0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ReportError(f"{path}: PNG encoding failed")
    atomic_write(path, buf.tobytes())


def _tasks(manifest: dict, spec: Spec | None) -> list[str]:
    """Tasks in the spec's order (the order a reader set them in), else the manifest's."""
    if spec is not None:
        return list(dict.fromkeys(t.task for t in spec.tasks))
    return sorted(manifest.get("counts", {}))


def _sources_of(task: str, manifest: dict, spec: Spec | None) -> list[str]:
    if spec is not None:
        return [t.source for t in spec.tasks if t.task == task]
    return sorted(manifest.get("counts", {}).get(task, {}))


def _safe_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", task)


def write_sheets(out: Path, manifest: dict, spec: Spec | None = None, per_task: int = 4,
                 tile: int = 192) -> tuple[dict[str, tuple[Path | None, Sheet]], tuple[int, int] | None]:
    """Write ``report/<task>.png`` for every task with an ok pair (and ``all_tasks.png``);
    a sheet left from an earlier run of a task that now has none is removed.
    Returns task -> (the sheet's path or None, the sheet), and the overview's (H, W) or None."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    shards = _pair_shards(out, manifest)
    result, firsts = {}, []
    for task in _tasks(manifest, spec):
        sheet = task_sheet([shards.get((task, s), []) for s in _sources_of(task, manifest, spec)], per_task, tile,
                           task)
        path = report / f"{_safe_name(task)}.png"
        if sheet.image is None:
            path.unlink(missing_ok=True)
            result[task] = (None, sheet)
            continue
        _write_png(path, sheet.image)
        firsts.append(sheet.first_row)
        result[task] = (path, sheet)
    overview = report / "all_tasks.png"
    if firsts:
        grid = flow(firsts)
        _write_png(overview, grid)
        return result, grid.shape[:2]
    overview.unlink(missing_ok=True)
    return result, None


def contact_sheets(out: str | Path, per_task: int = 4, tile: int = 192) -> list[Path]:
    """``report/<task>.png`` and ``report/all_tasks.png`` for the build in ``out`` (its manifest
    names the shards); returns the files written."""
    out = Path(out)
    manifest = _read_manifest(out)
    sheets, _overview_size = write_sheets(out, manifest, None, per_task, tile)
    written = [p for p, _s in sheets.values() if p is not None]
    return written + ([out / "report" / "all_tasks.png"] if written else [])


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px 24px;color:#111;background:#fff}
h1{margin:0 0 4px}h2{margin:18px 0 6px}h3{margin:12px 0 4px;font-size:15px}
table{border-collapse:collapse;margin:4px 0 10px}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00020;font-weight:600}.muted{color:#777}
.msg{font:12px/1.3 ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
.ex{margin:2px 0}code{font-size:12px}
section{border-top:2px solid #444;margin-top:22px}
img{display:block;max-width:100%;height:auto;margin:4px 0;background:#000}
svg{display:block}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _n(x: Any) -> str:
    """A count, or an em dash where the manifest has none."""
    return _e(x) if isinstance(x, int) and not isinstance(x, bool) else DASH


def _short(msg: str) -> str:
    return msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE] + "\u2026"


def _target_stats(manifest: dict, task: str, source: str) -> dict | None:
    """The manifest's target statistics for one task and source, if present and well-formed."""
    st = (manifest.get("targets") or {}).get(task, {}).get(source) if isinstance(manifest.get("targets"), dict) \
        else None
    if not isinstance(st, dict):
        return None
    hist, n, dark = st.get("coverage_hist"), st.get("n"), st.get("near_black")
    if not (isinstance(hist, list) and len(hist) == 10 and all(_count(x) for x in (*hist, n, dark))):
        return None
    return {"coverage_hist": hist, "n": n, "near_black": dark}


def _near_black_cell(task: str, st: dict | None, share: bool = False) -> str:
    """A ``<td>`` for near-black targets: muted with "expected" for a task whose targets are
    drawn on black (boxes on black are mostly black), flagged where a photo-like target is black."""
    if st is None:
        return f'<td class="n">{DASH}</td>'
    frac = f" ({st['near_black'] / st['n']:.1%})" if share and st["n"] else ""
    text = f"{st['near_black']} / {st['n']}{frac}"
    td = TASKS.get(task)
    if td is not None and td.drawn_on_black:
        return f'<td class="n muted" title="targets drawn on black">{text} · expected, drawn on black</td>'
    return f'<td class="n{" bad" if st["near_black"] else ""}">{text}</td>'


def _splits(manifest: dict, task: str) -> tuple[int | None, int | None]:
    """(train, val) ok pairs of ``task`` from the manifest's ``splits`` (None where absent)."""
    sp = (manifest.get("splits") or {}).get(task)
    if not isinstance(sp, dict):
        return None, None
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) else None  # type: ignore[return-value]
                 for v in (sp.get("train", 0), sp.get("val", 0)))


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _hist_svg(hist: list[int]) -> str:
    """A 10-bin histogram as bars (height proportional to the count, the fullest bin 40 px)."""
    w, h, top = 16, 40, max(max(hist), 1)
    bars = []
    for i, c in enumerate(hist):
        bh = round(h * c / top)
        bars.append(f'<rect x="{i * w + 1}" y="{h - bh}" width="{w - 2}" height="{bh}" fill="#3a6ea5">'
                    f"<title>[{i / 10:.1f}, {(i + 1) / 10:.1f}{']' if i == 9 else ')'}: {c}</title></rect>")
    axis = f'<line x1="0" y1="{h + 0.5}" x2="{10 * w}" y2="{h + 0.5}" stroke="#888"/>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{10 * w}" height="{h + 2}" role="img" '
            f'aria-label="coverage histogram">{"".join(bars)}{axis}</svg>')


def _task_section(task: str, sources: list[str], manifest: dict, reasons: Reasons, sheet: tuple[Path | None, Sheet],
                  per_task: int) -> str:
    counts, fails, skips = (manifest.get(k, {}).get(task, {}) for k in ("counts", "failures", "skipped"))
    out = [f'<section id="task-{_e(_safe_name(task))}"><h2>{_e(task)}</h2>',
           '<table class="counts"><tr><th>source</th><th class="n">ok</th><th class="n">failed</th>'
           '<th class="n">skipped</th></tr>']
    for s in sources:
        f = fails.get(s)
        out.append(f'<tr data-source="{_e(s)}"><td>{_e(s)}</td><td class="n">{_n(counts.get(s))}</td>'
                   f'<td class="n{" bad" if isinstance(f, int) and f > 0 else ""}">{_n(f)}</td>'
                   f'<td class="n">{_n(skips.get(s))}</td></tr>')
    out.append("</table>")
    train, val = _splits(manifest, task)
    out.append(f'<p class="splits">split: <b>{_n(train)}</b> train pairs, <b>{_n(val)}</b> val pairs (held out '
               "by source item)</p>")

    out.append("<h3>Failures and skips by reason</h3>")
    rows = [(s, st, code, r) for s in sources for (st, code), r in reasons.rows.get((task, s), {}).items()]
    if rows:
        out.append('<table class="reasons"><tr><th>source</th><th>status</th><th>reason</th><th class="n">count</th>'
                   "<th>examples (key: message)</th></tr>")
        for s, st, code, r in rows:
            ex = "".join(f'<div class="ex"><code>{_e(k)}</code>: <span class="msg">{_e(_short(m))}</span></div>'
                         for k, m in r.examples) or '<span class="muted">no example in the shard indexes</span>'
            out.append(f'<tr class="reason" data-task="{_e(task)}" data-source="{_e(s)}" data-status="{_e(st)}" '
                       f'data-code="{_e(code)}"><td>{_e(s)}</td><td>{_e(STATUS_LABEL[st])}</td><td><code>{_e(code)}'
                       f'</code></td><td class="n">{r.count}</td><td>{ex}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="muted">none</p>')

    out.append("<h3>Targets</h3>")
    out.append('<table class="targets"><tr><th>source</th><th class="n">pairs measured</th>'
               f'<th class="n">near-black (mean grey &lt; {NEAR_BLACK_GREY}/255)</th>'
               "<th>non-black pixel fraction, 10 bins 0 \u2192 1</th></tr>")
    for s in sources:
        st = _target_stats(manifest, task, s)
        if st is None:
            out.append(f'<tr data-source="{_e(s)}"><td>{_e(s)}</td><td class="n">\u2014</td><td class="n">\u2014</td>'
                       '<td class="muted">\u2014 (not in manifest.json)</td></tr>')
            continue
        out.append(f'<tr data-source="{_e(s)}"><td>{_e(s)}</td><td class="n">{st["n"]}</td>'
                   f'{_near_black_cell(task, st, share=True)}<td>{_hist_svg(st["coverage_hist"])}'
                   f'<div class="hist-counts muted">{" ".join(str(c) for c in st["coverage_hist"])}</div></td></tr>')
    out.append("</table>")

    path, sh = sheet
    frames = ", first/middle/last frames of each" if sh.clip else ""
    out.append(f"<h3>First ok pairs (input | target{frames})</h3>")
    if path is not None:
        h, w = sh.image.shape[:2]
        out.append(f'<img src="{_e(path.name)}" width="{w}" height="{h}" alt="{_e(task)}: input | target of '
                   f'{_e(", ".join(sh.keys))}">')
    else:
        out.append(f'<p class="muted">no ok pair to show (up to {per_task} are shown)</p>')
    if sh.problems:
        out.append('<p class="bad">Samples that could not be shown:</p>')
        out.extend(f'<div class="ex"><code>{_e(k)}</code>: <span class="msg">{_e(_short(m))}</span></div>'
                   for k, m in sh.problems)
    out.append("</section>")
    return "\n".join(out)


def _total(manifest: dict, key: str) -> int:
    return sum(n for v in manifest.get(key, {}).values() for n in v.values() if isinstance(n, int))


def render_html(spec: Spec | None, manifest: dict, reasons: Reasons, sheets: dict, per_task: int,
                overview: tuple[int, int] | None) -> str:
    """The page as a string (deterministic: nothing in it depends on when or where it is made)."""
    name = manifest.get("name", spec.name if spec else "?")
    sd = manifest.get("spec") or (spec.model_dump(mode="json") if spec else {})
    tasks = _tasks(manifest, spec)
    head = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(name)} \u2014 build report</title><style>{_CSS}</style></head><body>",
        f"<header><h1>Build report: {_e(name)}</h1>",
        f'<p>spec hash <code>{_e(manifest.get("spec_hash", DASH))}</code> \u00b7 resolution '
        f'{_e(sd.get("resolution", DASH))} px \u00b7 resize {_e(sd.get("resize", DASH))} \u00b7 seed '
        f'{_e(sd.get("seed", DASH))} \u00b7 shard size {_e(sd.get("shard_size", DASH))} \u00b7 lavin_data '
        f'{_e(manifest.get("versions", {}).get("lavin_data", DASH))}</p>',
        f"<p>{_total(manifest, 'counts')} pairs ok, {_total(manifest, 'failures')} failed, "
        f"{_total(manifest, 'skipped')} skipped, in {len(tasks)} tasks. "
        'Dataset card: <a href="../README.md">README.md</a> \u00b7 counts as Markdown: '
        '<a href="counts.md">counts.md</a></p></header>',
    ]
    body = []
    if reasons.unreadable:
        body.append('<h2 class="bad">Files that could not be read</h2>')
        body.extend(f'<div class="ex msg">{_e(m)}</div>' for m in reasons.unreadable)
    if overview is not None:
        body.append("<h2>Overview: the first ok pair of every task (input | target)</h2>")
        body.append(f'<img src="all_tasks.png" width="{overview[1]}" height="{overview[0]}" '
                    'alt="the first ok pair of every task">')
    body.append('<h2>Summary</h2><table class="summary"><tr><th>task</th><th class="n">train</th>'
                '<th class="n">val</th><th>source</th><th class="n">ok</th><th class="n">failed</th>'
                '<th class="n">skipped</th><th class="n">near-black targets</th></tr>')
    for task in tasks:
        sources = _sources_of(task, manifest, spec)
        train, val = _splits(manifest, task)
        for i, s in enumerate(sources):
            st = _target_stats(manifest, task, s)
            f = manifest.get("failures", {}).get(task, {}).get(s)
            span = f' rowspan="{len(sources)}"' if len(sources) > 1 else ""
            lead = (f'<td{span}><a href="#task-{_e(_safe_name(task))}">{_e(task)}</a></td>'
                    f'<td class="n split-train"{span}>{_n(train)}</td><td class="n split-val"{span}>{_n(val)}</td>'
                    if i == 0 else "")
            body.append(f'<tr data-task="{_e(task)}">{lead}<td>{_e(s)}</td>'
                        f'<td class="n">{_n(manifest.get("counts", {}).get(task, {}).get(s))}</td>'
                        f'<td class="n{" bad" if isinstance(f, int) and f > 0 else ""}">{_n(f)}</td>'
                        f'<td class="n">{_n(manifest.get("skipped", {}).get(task, {}).get(s))}</td>'
                        f'{_near_black_cell(task, st)}</tr>')
    body.append("</table>")
    labels = manifest.get("labels") or {}
    if labels:
        body.append('<h2>Labelers</h2><table class="labels"><tr><th>labeler</th><th>source</th>'
                    '<th class="n">samples labelled</th></tr>')
        body.extend(f'<tr><td>{_e(lab)}</td><td>{_e(s)}</td><td class="n">{_n(n)}</td></tr>'
                    for lab, by in sorted(labels.items()) for s, n in sorted(by.items()))
        body.append("</table>")
    for task in tasks:
        body.append(_task_section(task, _sources_of(task, manifest, spec), manifest, reasons,
                                  sheets.get(task, (None, Sheet(None, [], []))), per_task))
    return "\n".join(head + body + ["</body></html>", ""])


def write_report(spec: Spec, manifest: dict, per_task: int = 4) -> Path:
    """Write ``OUT/report/index.html`` and its images for the build of ``spec`` (OUT =
    ``spec.output``) described by ``manifest`` (what ``write_manifest`` returns); returns the page."""
    out = Path(spec.output)
    sheets, overview = write_sheets(out, manifest, spec, per_task)
    page = render_html(spec, manifest, reason_table(out, manifest), sheets, per_task, overview)
    path = out / "report" / "index.html"
    atomic_write(path, page.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- dataset card


def _md(x: Any) -> str:
    """Data text for a Markdown table cell: no HTML, no cell breaks, one line."""
    return html.escape(" ".join(str(x).split()), quote=False).replace("|", "\\|").replace("`", "'")


def _label_stats(out: Path, labeler: str, source: str) -> list[dict]:
    """The stats files of one labeler's sidecar shards (they record model and weight hash)."""
    found = []
    for p in sorted((out / "labels" / labeler / source).glob("*.stats.json")):
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(st, dict):
            found.append(st)
    return found


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_usage(out: Path, manifest: dict) -> dict[str, int]:
    """Bytes of the committed shards (tar + index, as their stats record) the manifest lists,
    per kind (``base``, ``labels``, ``pairs``); deterministic for a build, wherever it lies."""
    used = {}
    for kind, rels in (manifest.get("shards") or {}).items():
        total = 0
        for rel in rels if isinstance(rels, list) else []:
            p = out / str(rel)
            if not p.resolve().is_relative_to(out.resolve()) or not shard_done(p):
                continue
            try:
                st = read_stats(p)
            except (OSError, ValueError):
                continue
            total += int(st.get("bytes", 0) or 0) + int(st.get("index_bytes", 0) or 0)
        used[kind] = total
    return used


LOAD_SNIPPET = """\
```python
import glob, json
# webdataset: one sample per pair, members as bytes (decode images with PIL / cv2)
import webdataset as wds
for s in wds.WebDataset(sorted(glob.glob("{root}/pairs/{task}/*.tar")), shardshuffle=False):
    meta = json.loads(s["json"])  # task, split, sizes, render parameters, ...
    break
# Hugging Face datasets
from datasets import load_dataset
ds = load_dataset("webdataset", data_files={{"train": sorted(glob.glob("{root}/pairs/{task}/*.tar"))}}, split="train")
# Ray Data
import ray
rds = ray.data.read_webdataset(sorted(glob.glob("{root}/pairs/{task}/*.tar")))
```"""


def render_card(spec: Spec, manifest: dict, reasons: Reasons) -> str:
    """The dataset card (Markdown) as a string: one function per section."""
    tasks = _tasks(manifest, spec)
    totals = tuple(_total(manifest, k) for k in ("counts", "failures", "skipped"))  # ok, failed, skipped
    sections = [_card_summary(spec, manifest, tasks, totals), _card_sources(spec, manifest),
                _card_labelers(spec, manifest), _card_contents(spec, manifest, totals),
                _card_splits_size_loading(spec, manifest, tasks),
                _card_reasons(spec, reasons), _card_format(), _card_caveats(spec)]
    return "\n".join(line for section in sections for line in section) + "\n"


def _card_summary(spec: Spec, manifest: dict, tasks: list[str], totals: tuple[int, int, int]) -> list[str]:
    versions = manifest.get("versions", {})
    n_ok, n_fail, n_skip = totals
    lines = [
        f"# {_md(spec.name)}: dataset card", "",
        f"Input/target pairs for training in-context vision generalists (LaVin-DiT style): every task is posed as "
        f"image(s) \u2192 image(s). Built by the LaVin data engine "
        f"(`lavin_data` {_md(versions.get('lavin_data', '?'))}) from the spec `{_md(spec.name)}`: "
        f"**{n_ok} pairs** in {len(tasks)} tasks from {len(spec.sources)} "
        f"source(s); {n_fail} samples failed and {n_skip} were skipped (listed in the shard indexes). "
        "The visual report is [report/index.html](report/index.html).", "",
        "| | |", "|---|---|",
        f"| spec name | `{_md(spec.name)}` |",
        f"| spec hash | `{_md(manifest.get('spec_hash', spec.spec_hash()))}` |",
        f"| resolution | {spec.resolution} \u00d7 {spec.resolution} px (every pair image) |",
        f"| resize policy | `{spec.resize}`: {RESIZE_POLICY.get(spec.resize, '')} |",
        f"| seed | {spec.seed} (every random draw derives from seed, stage, shard and key) |",
        f"| shard size | {spec.shard_size} source items per shard |",
        f"| formats | natural inputs JPEG q{spec.formats.input_jpeg_quality} 4:4:4; rendered images and targets PNG |",
        "| software | " + ", ".join(f"{_md(k)} {_md(v)}" for k, v in sorted(versions.items())) + " |",
    ]
    return lines


def _card_sources(spec: Spec, manifest: dict) -> list[str]:
    counts = manifest.get("counts", {})
    lines = ["", "## Sources", "",
             "Pairs derived from a source item are subject to that source's terms.", "",
             "| source | kind | pairs | licence |", "|---|---|---:|---|"]
    for src in spec.sources:
        n = sum(v.get(src.name, 0) for v in counts.values() if isinstance(v.get(src.name, 0), int))
        lic = _md(src.licence) if src.licence else \
            "**licence not stated** \u2014 set `licence:` on the source in the spec"
        lines.append(f"| `{_md(src.name)}` | {_md(src.kind)} | {n} | {lic} |")
    return lines


def _card_labelers(spec: Spec, manifest: dict) -> list[str]:
    from lavin_data.labelers import LabelerError, labeler_class

    out = Path(spec.output)
    lines: list[str] = []
    lines += ["", "## Labelers (pseudo-labels)", ""]
    if not spec.labelers:
        lines.append("None: every target is rendered from the sources' own annotations, measurements or procedural "
                     "ground truth.")
    else:
        lines += ["| labeler | kind | source | model | weights (hash) | model licence | samples labelled |",
                  "|---|---|---|---|---|---|---:|"]
        for lab in spec.labelers:
            stats = _label_stats(out, lab.name, lab.source)
            models = sorted({str(s["model"]) for s in stats if s.get("model")})
            hashes = sorted({str(s["weight_hash"]) for s in stats if s.get("weight_hash")})
            model = lab.model or (", ".join(models) if models else None)
            if not stats:
                wh = "not recorded (no label shard stats)"
            elif hashes:
                wh = ", ".join(f"`{_md(h)}`" for h in hashes)
                if len(hashes) > 1:
                    wh += " (**several**: the weights changed during the build)"
            else:
                wh = "none (no weights)"
            try:
                lic = labeler_class(lab.kind).model_licence(lab)
            except LabelerError:
                lic = "see the model card"
            n = (manifest.get("labels") or {}).get(lab.name, {}).get(lab.source, DASH)
            lines.append(f"| `{_md(lab.name)}` | {_md(lab.kind)} | `{_md(lab.source)}` | "
                         f"{_md(model) if model else DASH} | {wh} | {_md(lic)} | {_md(n)} |")
    return lines


def _card_contents(spec: Spec, manifest: dict, totals: tuple[int, int, int]) -> list[str]:
    n_ok, n_fail, n_skip = totals
    lines: list[str] = []
    lines += ["", "## Contents", "", "| task | source | labeler | pairs | failed | skipped |",
              "|---|---|---|---:|---:|---:|"]
    for t in spec.tasks:
        c = [manifest.get(k, {}).get(t.task, {}).get(t.source, DASH) for k in ("counts", "failures", "skipped")]
        lines.append(f"| {_md(t.task)} | `{_md(t.source)}` | {_md(t.labeler) if t.labeler else DASH} | "
                     f"{_md(c[0])} | {_md(c[1])} | {_md(c[2])} |")
    lines.append(f"| **total** | | | **{n_ok}** | **{n_fail}** | **{n_skip}** |")
    return lines


def _card_splits_size_loading(spec: Spec, manifest: dict, tasks: list[str]) -> list[str]:
    out = Path(spec.output)
    lines: list[str] = []
    lines += ["", "## Splits", "",
              "Every source item is in one split (`train` or `val`), kept by every pair made from it; the split "
              "is in each pair's json and in the shard indexes.", "",
              "| task | train pairs | val pairs |", "|---|---:|---:|"]
    for task in tasks:
        train, val = _splits(manifest, task)
        lines.append(f"| {_md(task)} | {_md(DASH if train is None else train)} | "
                     f"{_md(DASH if val is None else val)} |")

    used = disk_usage(out, manifest)
    lines += ["", "## Size on disk", "", "Committed shards with their indexes, as their stats files record:", "",
              "| part | size |", "|---|---:|"]
    lines += [f"| `{kind}/` | {_human_bytes(used[kind])} |" for kind in ("pairs", "base", "labels") if kind in used]
    lines.append(f"| **total** | **{_human_bytes(sum(used.values()))}** |")
    lines.append("")
    lines.append("`pairs/` is what training needs; `base/` (decoded source items) and `labels/` (pseudo-label "
                 "sidecars) serve re-rendering and resuming and can be deleted once the build is final.")

    counts_of = manifest.get("counts") or {}
    example = next((t for t in tasks if sum(n for n in (counts_of.get(t) or {}).values() if isinstance(n, int))),
                   tasks[0] if tasks else "TASK")
    lines += ["", "## Loading", "",
              "Plain tar shards: any WebDataset reader works. From the folder holding this card:", "",
              LOAD_SNIPPET.format(root=".", task=_md(example))]
    return lines


def _card_reasons(spec: Spec, reasons: Reasons) -> list[str]:
    lines: list[str] = []
    lines += ["", "## Failures and skips by reason", ""]
    rows = [(t.task, t.source, st, code, r.count) for t in spec.tasks
            for (st, code), r in reasons.rows.get((t.task, t.source), {}).items()]
    if rows:
        lines += ["| task | source | status | reason | samples |", "|---|---|---|---|---:|"]
        lines += [f"| {_md(t)} | `{_md(s)}` | {STATUS_LABEL[st]} | `{_md(c)}` | {n} |" for t, s, st, c, n in rows]
        lines.append("")
        lines.append("Example keys and messages per reason are in the report; every sample's status is in its "
                     f"shard's index (`<shard>.parquet`, columns `{', '.join(INDEX_SCHEMA.names)}`).")
    else:
        lines.append("None.")
    if reasons.unreadable:
        lines += ["", "**Shard indexes that could not be read** (their examples, and their counts where "
                  "`manifest.json` has no `reasons`, are missing above):", ""]
        lines += [f"- {_md(m)}" for m in reasons.unreadable]
    return lines


def _card_format() -> list[str]:
    return [
        "", "## Format", "",
        "- `pairs/<task>/<source>-NNNNNN.tar`: WebDataset shards, one sample per pair, key "
        "`<source>_<item id>[_<variant>]`. Members: `input.jpg` (natural images, degraded photos) or `input.png` "
        "(renderings), `target.png`, `json` (task, source, item id, sizes, resize transform, render parameters, "
        "licence, labeler) and, for measurable targets, `target_raw.npy`. A clip has one member per frame: "
        "`input_000.jpg` ..., `target_000.png` ... (`.jpg` where the target is video frames).",
        "- `<shard>.parquet` beside each tar: one row per planned sample, columns "
        f"`{', '.join(INDEX_SCHEMA.names)}` (status `ok`, `error` or `skipped`, with the reason; split `train` or "
        "`val`); `<shard>.stats.json`: counts, written last (a shard with it is complete).",
        "- `manifest.json`: the spec, its hash, software versions, counts per task and source, and the shard list.",
        "- The full format is documented in the lavin-data repository: `docs/format.md` (output layout, pair, "
        "base and latent samples) and `docs/spec.md` (the spec).",
    ]


def _card_caveats(spec: Spec) -> list[str]:
    lines = ["", "## Known caveats", ""]
    labelled = [t for t in spec.tasks if t.labeler]
    if labelled:
        lines.append("- **Pseudo-labels are model predictions, not ground truth.** The targets of "
                     + ", ".join(f"`{_md(t.task)}` on `{_md(t.source)}` (labeler `{_md(t.labeler)}`)"
                                 for t in labelled)
                     + " come from a model and carry its errors; relative depth (Depth-Anything V2) has an unknown "
                       "scale and shift, and normals from it are approximate.")
    else:
        lines.append("- This build uses no pseudo-labeler; where a pipeline adds one, its targets are model "
                     "predictions, not ground truth.")
    lines += [
        "- **Licences.** Each source's terms apply to the pairs derived from it; a model licence applies to the "
        "pseudo-labels it made (some are non-commercial, e.g. CC-BY-NC-4.0). A source without a stated licence "
        "must not be redistributed until its terms are known.",
        f"- **Resize policy `{spec.resize}`.** "
        + {"crop": "Content outside the centre square is cut away, with its annotations.",
           "squash": "Aspect ratios are distorted.",
           "pad": "Black borders are part of inputs and targets."}.get(spec.resize, ""),
        "- Failed and skipped samples are absent from the tars: per-task counts differ, and a skip (e.g. a "
        "quality gate, nothing to render) can bias what a task sees.",
    ]
    if any(s.kind == "synthetic" for s in spec.sources):
        lines.append("- Synthetic sources are procedurally generated ray-cast scenes: exact labels, but a domain "
                     "gap to real photographs.")
    return lines


def write_dataset_card(spec: Spec, manifest: dict) -> Path:
    """Write ``OUT/README.md``, the dataset card of the build of ``spec``; returns its path."""
    out = Path(spec.output)
    path = out / "README.md"
    atomic_write(path, render_card(spec, manifest, reason_table(out, manifest)).encode("utf-8"))
    return path


# --------------------------------------------------------------------------- CLI


def _read_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path} is missing; is {out} a finished build's output?") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("counts", {}), dict):
        raise ReportError(f"{path}: expected a JSON object with `counts`, got {type(manifest).__name__}")
    return manifest


def spec_of(out: Path, manifest: dict) -> Spec:
    """The spec the manifest records, with ``output`` set to where the build is now."""
    try:
        return Spec.model_validate(dict(manifest["spec"], output=str(out)))
    except Exception as e:  # noqa: BLE001
        raise ReportError(f"{out / 'manifest.json'}: its `spec` is not a valid spec ({type(e).__name__}: "
                          f"{str(e)[:300]})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report",
                                 description="Regenerate OUT/report/index.html (with contact sheets) and the dataset "
                                             "card OUT/README.md from OUT/manifest.json.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--output", required=True, default=argparse.SUPPRESS, help="a build's output folder")
    ap.add_argument("--per-task", type=int, default=4, help="pairs shown per task")
    args = ap.parse_args(argv)
    out = Path(args.output)
    try:
        manifest = _read_manifest(out)
        spec = spec_of(out, manifest)
        print(write_report(spec, manifest, args.per_task))
        print(write_dataset_card(spec, manifest))
    except ReportError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
