"""``python -m pipelines.report --output OUT [--per-task 4]``: contact sheets of a build.

Writes ``OUT/report/<task>.png``: one row per sample, input | target, for the first
samples of each task's first shard (for clips: the first, middle and last frames of input
and target), and ``OUT/report/all_tasks.png`` with one row per task.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import cv2
import numpy as np

from lavin_data.codecs import decode_image
from lavin_data.shards import iter_tar_samples


def _frames(m: dict[str, bytes], role: str) -> list[np.ndarray]:
    """The first, middle and last frames of a clip's ``role`` members, or its one image."""
    names = sorted(k for k in m if re.fullmatch(rf"{role}(_\d+)?\.(png|jpg)", k))
    if len(names) > 1:
        names = [names[0], names[len(names) // 2], names[-1]]
    return [decode_image(m[k], k) for k in names]


def _first_samples(task_dir: Path, n: int) -> list[tuple[str, list[np.ndarray], list[np.ndarray]]]:
    out = []
    for tar in sorted(task_dir.glob("*.tar")):
        for key, m in iter_tar_samples(tar):
            out.append((key, _frames(m, "input"), _frames(m, "target")))
            if len(out) == n:
                return out
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheets(out: str | Path, per_task: int = 4, tile: int = 192) -> list[Path]:
    out = Path(out)
    written, overview = [], []
    for task_dir in sorted(p for p in (out / "pairs").iterdir() if p.is_dir()):
        rows, first = [], None
        for key, inp, tgt in _first_samples(task_dir, per_task):
            # Area resampling: nearest would drop thin lines.
            a = [cv2.resize(f, (tile, tile), interpolation=cv2.INTER_AREA) for f in inp]
            b = [cv2.resize(f, (tile, tile), interpolation=cv2.INTER_AREA) for f in tgt]
            sep = np.full((tile, 4, 3), 255, np.uint8)
            rows.append(np.concatenate([_label(a[0], key), *a[1:], sep, *b], 1))
            first = first if first is not None else np.concatenate([_label(a[0], task_dir.name), *a[1:], sep, *b], 1)
        if not rows:
            continue
        sheet = np.concatenate(rows, 0)
        path = out / "report" / f"{task_dir.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        written.append(path)
        overview.append(first)
    if overview:
        width = max(o.shape[1] for o in overview)  # clip rows are wider than image rows
        overview = [np.pad(o, ((0, 0), (0, width - o.shape[1]), (0, 0))) for o in overview]
        # Two columns of tasks so the overview stays viewable.
        half = -(-len(overview) // 2)
        left, right = overview[:half], overview[half:]
        right += [np.zeros_like(overview[0])] * (len(left) - len(right))
        grid = np.concatenate([np.concatenate(left, 0), np.full((len(left) * tile, 12, 3), 255, np.uint8),
                               np.concatenate(right, 0)], 1)
        path = out / "report" / "all_tasks.png"
        cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report")
    ap.add_argument("--output", required=True, help="a build's output folder")
    ap.add_argument("--per-task", type=int, default=4)
    args = ap.parse_args(argv)
    if not (Path(args.output) / "pairs").is_dir():
        print(f"error: {args.output} has no pairs/ folder; is it a build output?", file=sys.stderr)
        return 2
    for p in contact_sheets(args.output, args.per_task):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
