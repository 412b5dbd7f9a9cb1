"""Reader for ``kind: davis``: video object segmentation sequences cut into clips.

Layouts (detected under ``root``):

- official DAVIS 2016/2017: ``JPEGImages/<resolution>/<seq>/00000.jpg`` and
  ``Annotations/<resolution>/<seq>/00000.png``, with ``ImageSets/<split>.txt`` (``split``,
  e.g. ``2017/train``) listing the sequences;
- flat: ``images/<seq>/*.jpg`` and ``masks/<seq>/*.png`` (e.g. Cutie's examples).

Masks: DAVIS 2017 palette PNGs hold the object id per pixel (0 background, 255 "void"
border pixels are background); DAVIS 2016 binary masks (0/255, one object) are object 1.
Colours of a sequence's objects follow its sorted object ids, so they are stable across
frames and clips. A mask at most 2 px off its frame's size (seen in the wild) is padded
with background or cropped, and the json says so (``mask_fixes``); a larger mismatch
fails the clip, naming the file.

Frames whose mask is missing (DAVIS val/test publish only the first frame's; sparse
annotations) are explicit: each clip records ``annotated`` per frame. With
``missing_annotations: skip_clip`` clips are consecutive frames and the mask tasks skip
(recorded, naming the frames) a clip with an unannotated frame, while the other tasks
use it; with ``annotated_only`` clips are cut from the annotated frames alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, inside, planned_problem
from lavin_data.sources.image_folder_reader import load_rgb
from lavin_data.video import spaced_clips

LAYOUT = ("root/JPEGImages/<resolution>/<seq>/00000.jpg with root/Annotations/<resolution>/<seq>/00000.png "
          "(official DAVIS; split: root/ImageSets/<split>.txt), or root/images/<seq>/*.jpg with root/masks/<seq>/*.png")


def _dirs(src) -> tuple[Path, Path]:
    root = Path(src.root)
    if (root / "JPEGImages").is_dir():
        return root / "JPEGImages" / src.resolution, root / "Annotations" / src.resolution
    if (root / "images").is_dir():
        return root / "images", root / "masks"
    raise SourceError(f"{root}: not a DAVIS folder (no JPEGImages/ or images/ inside). Expected layout: {LAYOUT}")


def check(src) -> None:
    if not Path(src.root).is_dir():
        raise SourceError(f"{src.root}: DAVIS folder not found")
    images, _masks = _dirs(src)
    if not images.is_dir():
        raise SourceError(f"{images}: DAVIS image folder not found (resolution {src.resolution!r}?). "
                          f"Expected layout: {LAYOUT}")
    if src.split and not (Path(src.root) / "ImageSets" / f"{src.split}.txt").is_file():
        raise SourceError(f"{Path(src.root) / 'ImageSets' / (src.split + '.txt')}: split list not found")


def frames(src) -> str:
    return "video"


def own_split(src, item: dict) -> str | None:
    """Sequences listed in a val split (``ImageSets/2017/val.txt``) are held out (:mod:`lavin_data.split`)."""
    from lavin_data.split import names_val

    return "val" if names_val(src.split) else None


def provides(src) -> frozenset[str]:
    return frozenset({"tracks"})


def mask_values(path: Path) -> np.ndarray:
    """A DAVIS mask PNG's raw (H, W) values (palette indices or grey levels)."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:
        raise ValueError(f"{path}: an RGB mask; DAVIS masks are palette or grey PNGs of object ids")
    return a


def read_mask(path: Path, binary: bool | None = None) -> np.ndarray:
    """A DAVIS mask PNG -> (H, W) uint16 object ids. ``binary`` (DAVIS 2016: 255 is the one
    object) or not (2017: values are ids, 255 void -> background) is decided per sequence
    by the plan; None decides from this mask alone."""
    a = mask_values(path)
    if binary is None:
        binary = set(np.unique(a).tolist()) <= {0, 255}
    if binary:
        return (a == 255).astype(np.uint16)
    return np.where(a == 255, 0, a).astype(np.uint16)


def plan(src) -> list[dict]:
    images, masks = _dirs(src)
    if src.split:
        listing = Path(src.root) / "ImageSets" / f"{src.split}.txt"
        seqs = [s.split()[0] for s in listing.read_text().split("\n") if s.strip()]
        for seq in seqs:
            try:
                inside(images, seq, str(listing))
            except ValueError as e:
                raise SourceError(str(e)) from None
    else:
        seqs = sorted(p.name for p in images.iterdir() if p.is_dir())
    items = []
    for seq in seqs:
        names = sorted(p.stem for p in (images / seq).glob("*.jpg"))
        base = {"item_id": seq, "seq": seq, "names": "[]", "frame_indices": "[]", "annotated": "[]",
                "objects": "[]", "binary": False, "error": "", "skip": "", "skip_code": ""}
        if not names:
            items.append(dict(base, error=f"{images / seq}: no JPEG frames"))
            continue
        annotated = [(masks / seq / f"{n}.png").is_file() for n in names]
        try:
            values = set().union(*(set(np.unique(mask_values(masks / seq / f"{n}.png")).tolist())
                                   for n, a in zip(names, annotated) if a))
            binary = values <= {0, 255}  # the whole sequence: DAVIS 2016 (one object at 255) or 2017 ids
            ids = [1] if binary and 255 in values else sorted(values - {0, 255})
        except Exception as e:  # noqa: BLE001 - a broken mask fails its sequence, named
            items.append(dict(base, error=f"{masks / seq}: {type(e).__name__}: {e}"))
            continue
        pool = [i for i, a in enumerate(annotated) if a] if src.missing_annotations == "annotated_only" \
            else list(range(len(names)))
        clips = spaced_clips(len(pool), src.clip_frames, src.frame_stride, src.clips_per_sequence)
        if not clips:
            what = "annotated frames" if src.missing_annotations == "annotated_only" else "frames"
            items.append(dict(base, skip=f"{seq}: {len(pool)} {what} are fewer than one clip of "
                                         f"{src.clip_frames} frames {src.frame_stride} apart",
                              skip_code="shorter_than_clip"))
            continue
        for positions in clips:
            idx = [pool[p] for p in positions]
            items.append(dict(base, item_id=f"{seq}-f{idx[0]:05d}", names=json.dumps([names[i] for i in idx]),
                              frame_indices=json.dumps(idx), annotated=json.dumps([annotated[i] for i in idx]),
                              objects=json.dumps(ids), binary=binary))
    return items



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    images, masks = _dirs(src)
    seq, names = item["seq"], json.loads(item["names"])
    annotated = json.loads(item["annotated"])
    files, tracks, fixes = [], [], []
    for n, ann in zip(names, annotated):
        path = images / seq / f"{n}.jpg"
        data = path.read_bytes()
        rgb, plain = load_rgb(data, str(path), src.max_image_pixels)
        if not plain:
            raise ValueError(f"{path}: not a plain RGB JPEG")
        files.append(("jpg", data))
        mask = read_mask(masks / seq / f"{n}.png", item["binary"]) if ann else np.zeros(rgb.shape[:2], np.uint16)
        if mask.shape != rgb.shape[:2]:
            (h, w), (mh, mw) = rgb.shape[:2], mask.shape
            if abs(h - mh) > 2 or abs(w - mw) > 2:
                raise ValueError(f"{masks / seq / (n + '.png')}: mask {mw}x{mh} and frame {w}x{h} differ in size")
            # Masks a pixel or two off the frame size occur in the wild: pad with background / crop.
            fixed = np.zeros((h, w), np.uint16)
            fixed[:min(h, mh), :min(w, mw)] = mask[:h, :w]
            mask = fixed
            fixes.append(f"{n}.png: {mw}x{mh} padded/cropped to the frame's {w}x{h}")
        tracks.append(mask)
    meta = {"source": src.name, "item_id": item["item_id"], "sequence": seq, "frame_names": names,
            "frame_indices": json.loads(item["frame_indices"]), "pts_seconds": None, "fps": 24.0,
            "annotated": annotated, "objects": [{"id": i} for i in json.loads(item["objects"])],
            "width": int(tracks[0].shape[1]), "height": int(tracks[0].shape[0]), "licence": src.licence,
            "mask_fixes": fixes}
    return BaseSample(meta, frame_files=files, tracks=np.stack(tracks))
