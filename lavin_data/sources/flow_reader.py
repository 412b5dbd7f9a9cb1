"""Reader for ``kind: flow``: optical-flow ground truth as clips.

Formats (``format``):

- ``flyingchairs``: ``<id>_img1.ppm``, ``<id>_img2.ppm``, ``<id>_flow.flo`` (FlyingChairs),
  and FlyingChairsOcc's ``<id>-img_0.png``, ``<id>-img_1.png``, ``<id>-flow_01.flo``;
  searched recursively under ``root``.
- ``sintel``: ``<root>/<pass>/<seq>/frame_0001.png`` ... and ``<root>/flow/<seq>/frame_0001.flo``
  (flow from each frame to the next; ``root`` is Sintel's ``training`` folder). Sequences
  are cut into consecutive clips of ``clip_frames`` frames, each with its exact flows.
- ``flo_pairs``: ``<id>_1.<ext>``, ``<id>_2.<ext>`` and ``<id>.flo`` anywhere under ``root``.

An image pair is a 2-frame clip; since clips have 1+4k frames (``clip_frames``, default
5), its second frame is held: frames [1, 2, 2, 2, 2], flows [ground truth, 0, 0, 0] (a
held frame does not move). The json records ``held_frames``. A ``.flo`` file with a bad
magic number or a truncated one fails its item, naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.codecs import decode_flo
from lavin_data.sources import SourceError, item_id_from, planned_problem
from lavin_data.sources.image_folder_reader import load_rgb

LAYOUT = ("format flyingchairs: root/**/<id>_img1.ppm, <id>_img2.ppm, <id>_flow.flo (or <id>-img_0.png, "
          "<id>-img_1.png, <id>-flow_01.flo); sintel: root/<pass>/<seq>/frame_0001.png with "
          "root/flow/<seq>/frame_0001.flo; flo_pairs: root/**/<id>_1.png|jpg|ppm, <id>_2.<same ext>, <id>.flo")

_PAIRS = {  # format -> [(first image glob, second image name, flow name)] per naming scheme
    "flyingchairs": [("*_img1.ppm", "{id}_img2.ppm", "{id}_flow.flo", "_img1"),
                     ("*_img1.png", "{id}_img2.png", "{id}_flow.flo", "_img1"),
                     ("*-img_0.png", "{id}-img_1.png", "{id}-flow_01.flo", "-img_0")],
    "flo_pairs": [(f"*_1.{e}", "{id}_2." + e, "{id}.flo", "_1") for e in ("png", "jpg", "ppm")],
}


def check(src) -> None:
    root = Path(src.root)
    if not root.is_dir():
        raise SourceError(f"{root}: flow folder not found")
    if src.format == "sintel" and not (root / "flow").is_dir():
        raise SourceError(f"{root}: no flow/ folder: give Sintel's training folder as root. Expected layout: {LAYOUT}")
    if src.format == "sintel" and not (root / src.pass_).is_dir():
        raise SourceError(f"{root / src.pass_}: no {src.pass_!r} pass folder in Sintel's training folder. "
                          f"Expected layout: {LAYOUT}")


def frames(src) -> str:
    return "video"


def provides(src) -> frozenset[str]:
    return frozenset({"flow"})


def plan(src) -> list[dict]:
    root = Path(src.root)
    items = []
    if src.format == "sintel":
        for seq_dir in sorted(p for p in (root / src.pass_).iterdir() if p.is_dir()):
            names = sorted(p.name for p in seq_dir.glob("frame_*.png"))
            for k in range(0, len(names) - src.clip_frames + 1, src.clip_frames):
                clip = names[k:k + src.clip_frames]
                items.append({"item_id": item_id_from(f"{seq_dir.name}-{k:04d}"),
                              "images": json.dumps([str((seq_dir / n).relative_to(root)) for n in clip]),
                              "flows": json.dumps([str(Path("flow") / seq_dir.name / n.replace(".png", ".flo"))
                                                   for n in clip[:-1]]), "skip": "", "skip_code": ""})
            if len(names) < src.clip_frames:
                items.append({"item_id": item_id_from(seq_dir.name), "images": "[]", "flows": "[]",
                              "skip": f"{seq_dir}: {len(names)} frames, fewer than one clip of {src.clip_frames}",
                              "skip_code": "shorter_than_clip"})
        return items
    seen = set()
    for first_glob, second, flo, suffix in _PAIRS[src.format]:
        for first in sorted(root.rglob(first_glob)):
            ident = first.name[: -len(first.suffix) - len(suffix)]
            rel_first = first.relative_to(root)
            folder = rel_first.parent
            item_id = item_id_from(str(folder / ident))
            if item_id in seen:
                continue
            seen.add(item_id)
            items.append({"item_id": item_id,
                          "images": json.dumps([str(rel_first), str(folder / second.format(id=ident))]),
                          "flows": json.dumps([str(folder / flo.format(id=ident))]), "skip": "", "skip_code": ""})
    return items



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    root = Path(src.root)
    images, flows = json.loads(item["images"]), json.loads(item["flows"])
    frames = []
    for rel in images:
        path = root / rel
        try:
            # grey / 16-bit / palette -> RGB uint8
            frames.append(load_rgb(path.read_bytes(), str(path), src.max_image_pixels)[0])
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None
    flow = []
    for rel in flows:
        path = root / rel
        try:
            flow.append(decode_flo(path.read_bytes(), str(path)))
        except FileNotFoundError:
            raise FileNotFoundError(f"flow file not found: {path}") from None
    h, w = frames[0].shape[:2]
    for path, a in zip(images + flows, frames + flow):
        if a.shape[:2] != (h, w):
            raise ValueError(f"{root / path}: {a.shape[1]}x{a.shape[0]}, the clip's first frame is {w}x{h}")
    held = src.clip_frames - len(frames)
    if held < 0:
        raise ValueError(f"{item['item_id']}: {len(frames)} frames, more than clip_frames {src.clip_frames}")
    frames += [frames[-1]] * held
    flow += [np.zeros((h, w, 2), np.float32)] * held
    meta = {"source": src.name, "item_id": item["item_id"], "files": images, "flow_files": flows,
            "frame_indices": list(range(len(images))) + [len(images) - 1] * held, "pts_seconds": None, "fps": None,
            "held_frames": held, "width": w, "height": h, "licence": src.licence}
    return BaseSample(meta, frames=np.stack(frames), flow=np.stack(flow))
