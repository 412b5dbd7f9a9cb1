"""Reader for ``kind: image_folder``: ImageNet-style class folders or a flat folder, recursive.

Items are the image files under ``root`` (or those named in ``file_list``, one path
relative to root per line), sorted; with ``limit``, a ``seed``-ed random subset is kept
(then sorted again, so the plan stays in path order). The class of an image is its first
folder under root (ImageNet: the synset), recorded in the json.

Images are normalised to RGB uint8: EXIF orientation applied, greyscale and palette
images expanded, CMYK converted, 16-bit images scaled to 8 bits. A plain RGB JPEG with
no rotation keeps its original bytes; anything else is stored as PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, check_pixels, inside, item_id_from, planned_problem

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe"}

LAYOUT = ("image files (.jpg .jpeg .png .bmp .webp .tif .tiff .jpe) anywhere under root: root/<class>/<name>.jpg "
          "(ImageNet) or root/<name>.jpg; with file_list, one path relative to root per line")


def check(src) -> None:
    if not Path(src.root).is_dir():
        raise SourceError(f"{src.root}: image folder not found")
    if src.file_list and not Path(src.file_list).is_file():
        raise SourceError(f"{src.file_list}: file_list not found")


def frames(src) -> str:
    return "image"


def provides(src) -> frozenset[str]:
    return frozenset()


def plan(src) -> list[dict]:
    return plan_table(src).to_pylist()


# A path that pathlib would rewrite (absolute, ``//``, a ``.`` or ``..`` part, a trailing
# slash): planned one by one with pathlib, as the others would be (see plan_table).
_UNUSUAL = r"(?s)^/|//|/$|(^|/)\.\.?(/|$)"
_CHUNK_CHARS = 1 << 22  # the file list is split into lines this much at a time


def _listed(file_list: str) -> pa.ChunkedArray:
    """The first word of every non-blank line of ``file_list`` (``str.splitlines``), as a
    string array. The text is split a few MiB at a time, after a newline (lines end there
    whatever else ``splitlines`` also splits at), so that no list of 1.28 M lines is held."""
    text = Path(file_list).read_text()
    chunks, start = [], 0
    while start < len(text):
        stop = text.find("\n", start + _CHUNK_CHARS)
        stop = len(text) if stop < 0 else stop + 1
        chunks.append(pa.array([w[0] for ln in text[start:stop].splitlines() if (w := ln.split(None, 1))],
                               pa.string()))
        start = stop
    return pa.chunked_array(chunks, pa.string())


def _one(root: Path, rel: str, where: str) -> tuple[str, str, str | None]:
    """(item id, class, error) of one listed path, with pathlib: the definition that the
    columnar path of :func:`plan_table` reproduces for ordinary paths."""
    item_id = item_id_from(str(Path(rel).with_suffix("")))
    parts = Path(rel).parts
    try:
        inside(root, rel, where)
        error = None
    except ValueError as e:  # a listed path outside root: that item fails, the others go on
        error = str(e)
    return item_id, parts[0] if len(parts) > 1 else "", error


def plan_table(src) -> pa.Table:
    """The plan as columns ``item_id, path, class_name, error`` (strings; ``error`` of type
    null when no item has one, as ``Table.from_pylist`` of the item dicts would type it).

    Paths are de-duplicated and sorted (by code point: UTF-8 byte order is the same), and a
    ``limit`` subset is drawn as before; ids, classes and errors of ordinary paths are
    computed column by column (a path's stem without its last suffix, then runs of other
    characters than letters, digits and dashes as one dash), unusual ones with pathlib
    one by one. Nothing under root is opened: with ``file_list`` the files need not exist."""
    root = Path(src.root)
    where = str(src.file_list or root)
    if src.file_list:
        rels = _listed(src.file_list)
    else:
        found = [str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()]
        try:
            rels = pa.array(found, pa.string())
        except (UnicodeEncodeError, pa.ArrowException):  # a name os.fsdecode kept as surrogates
            bad = next((f for f in found if _not_utf8(f)), None)
            if bad is None:
                raise
            raise SourceError(f"{root}: file name {bad!r} is not valid UTF-8; rename it") from None
        del found
    rels = _sorted_unique(rels)
    if src.limit is not None and src.limit < len(rels):
        pick = np.random.default_rng(src.seed).choice(len(rels), size=src.limit, replace=False)
        rels = rels.take(pa.array(np.sort(pick)))
    n = len(rels)
    stems = pc.replace_substring_regex(rels, r"(?s)^(.*[^/])\.[^./]+$", r"\1")  # Path.with_suffix("")
    ids = pc.utf8_trim(pc.replace_substring_regex(stems, r"[^A-Za-z0-9-]+", "-"), "-")  # item_id_from
    classes = pc.if_else(pc.match_substring(rels, "/"), pc.replace_substring_regex(rels, r"(?s)/.*$", ""), "")
    errors = pa.nulls(n)
    unusual = pc.match_substring_regex(rels, _UNUSUAL)
    if pc.any(unusual).as_py():
        got = []
        for i in np.flatnonzero(unusual.to_numpy(zero_copy_only=False)).tolist():
            try:
                got.append(_one(root, rels[i].as_py(), where))
            except ValueError:  # pathlib refuses it (".": no name to take a suffix from)
                _raise_first_problem(root, rels, ids, unusual, where, stop=i)
        ids = pc.replace_with_mask(ids, unusual, pa.array([g[0] for g in got], pa.string()))
        classes = pc.replace_with_mask(classes, unusual, pa.array([g[1] for g in got], pa.string()))
        if any(g[2] is not None for g in got):
            errors = pc.replace_with_mask(pa.nulls(n, pa.string()), unusual, pa.array([g[2] for g in got],
                                                                                      pa.string()))
    if _has_repeats(ids):
        _raise_first_problem(root, rels, ids, unusual, where)
    pa.default_memory_pool().release_unused()  # the intermediate columns' memory, back to the system
    return pa.table({"item_id": ids, "path": rels, "class_name": classes, "error": errors})


def _sorted_unique(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``sorted(set(a))`` as an array: sorted (unless it already is: listings often are), then
    each string kept where it differs from the one before."""
    a = pa.chunked_array([a]) if isinstance(a, pa.Array) else a
    if len(a) > 1 and not pc.all(pc.less_equal(a[:-1], a[1:])).as_py():
        a = a.take(pc.sort_indices(a))
    a = a.combine_chunks()
    if len(a) > 1:
        a = a.filter(pa.concat_arrays([pa.array([True]), pc.not_equal(a[1:], a[:-1])]))
    return a


def _has_repeats(values: pa.Array) -> bool:
    """Whether a string appears twice in ``values`` (arrow's hash table: 1.5 s for 1.28 M)."""
    return pc.count_distinct(values).as_py() < len(values)


def _not_utf8(name: str) -> bool:
    try:
        name.encode()
        return False
    except UnicodeEncodeError:
        return True


def _raise_first_problem(root: Path, rels: pa.Array, ids: pa.Array, unusual: pa.Array, where: str,
                         stop: int | None = None) -> None:
    """Raise what planning the sorted paths one by one meets first, as :func:`plan` always
    did: a path whose item id an earlier one has (SourceError), or, at ``stop``, a path that
    pathlib refuses (its ValueError). ``ids``: the columnar ids (those of ``unusual`` paths
    are recomputed here)."""
    seen: set[str] = set()
    odd = unusual.to_numpy(zero_copy_only=False)
    end = len(ids) if stop is None else stop
    for i, (item_id, rel) in enumerate(zip(ids.slice(0, end).to_pylist(), rels.slice(0, end).to_pylist())):
        if odd[i]:
            item_id = _one(root, rel, where)[0]
        if item_id in seen:
            raise SourceError(f"{root}: two files map to the item id {item_id!r} (e.g. {rel}); rename one")
        seen.add(item_id)
    if stop is not None:
        _one(root, rels[stop].as_py(), where)  # raises pathlib's error, as planning that path alone does
    raise AssertionError("no duplicate id and no refused path to report")  # unreachable: the caller found one


def load_rgb(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Image bytes -> ((H, W, 3) uint8 RGB, whether the bytes are already a plain upright RGB JPEG).
    An image over ``max_pixels`` is refused from its header, before decoding."""
    from PIL import Image, ImageOps

    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image file {name} is unreadable: {e}") from None
    check_pixels(*im.size, max_pixels, f"image file {name}")
    try:
        im.load()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image file {name} is unreadable or truncated: {e}") from None
    orientation = im.getexif().get(0x0112, 1)
    plain = im.format == "JPEG" and im.mode == "RGB" and orientation == 1
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        g = np.clip(np.rint(a / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), False
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)  # transparent pixels become black
    return np.asarray(im.convert("RGB")), plain



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    planned_problem(item)
    path = inside(src.root, item["path"], str(src.file_list or src.root))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    rgb, plain = load_rgb(data, str(path), src.max_image_pixels)
    meta = {"source": src.name, "item_id": item["item_id"], "file": item["path"], "class_name": item["class_name"],
            "width": rgb.shape[1], "height": rgb.shape[0], "licence": src.licence}
    return BaseSample(meta, image=rgb, image_file=("jpg", data) if plain else None)
