"""Source readers: list a source's items (metadata only, deterministic order) and read one
item into a :class:`~lavin_data.base.BaseSample`. One module per ``kind``.

A reader has:

- ``check(src)``: raise :class:`SourceError` naming the file if the source cannot be used
  at all (before any work);
- ``frames(src)``: ``"image"`` or ``"video"`` (its samples are clips);
- ``provides(src)``: the annotations its samples carry (names from
  :data:`lavin_data.registry.ANNOTATIONS`), so that the build refuses before any work a
  task that consumes something the source lacks and no labeler supplies;
- ``plan(src)`` -> list of item dicts (each with an ``item_id`` of letters, digits and
  dashes; flat JSON-able values, the same keys in every item; an item may carry an
  ``error`` or a ``skip`` reason with its ``skip_code``, see :func:`planned_problem`); an
  empty plan stops the build with :func:`no_items_error`;
- ``LAYOUT``: one or two lines saying what files and folders the reader expects, quoted
  when a source plans nothing;
- ``read(src, item, seed, source_meta)`` -> :class:`~lavin_data.base.BaseSample` (arrays
  and metadata; the ingest stage encodes them). It raises :class:`SkipItem` for an item
  that has nothing to contribute and any other exception for one that is broken;

and may have (:class:`Reader` supplies the default where it does not):

- ``source_meta(src)`` -> dict every item needs, computed once in the driver (default ``{}``);
- ``own_split(src, item)`` -> ``"val"`` where the source itself holds the item out (default None);
- ``plan_table(src)`` -> a pyarrow Table instead of ``plan``'s list, for sources of millions
  of items, with ``own_split_of_all(src)``: one split for all of them (default None).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType


class SourceError(ValueError):
    """A source that cannot be read at all (missing folder, malformed annotation file)."""


class SkipItem(Exception):
    """An item deliberately left out (e.g. no annotations); recorded as skipped, not failed,
    and counted under ``code`` (a short name of the reason, e.g. ``"no_annotations"``)."""

    def __init__(self, reason: str, code: str = "source_skip"):
        super().__init__(reason)
        self.code = code


def planned_problem(item: dict) -> None:
    """Raise what the plan found wrong with an item: its ``error`` (a failed sample) or its
    ``skip`` reason (a skipped one); nothing if it has neither."""
    if item.get("error"):
        raise ValueError(item["error"])
    if item.get("skip"):
        raise SkipItem(item["skip"], item.get("skip_code") or "source_skip")


# Spec fields that name where a reader looks, and those that narrow what it keeps: quoted by
# no_items_error so that an empty plan says where nothing was found and through which filter.
_SEARCHED_FIELDS = ("root", "path", "images", "instances", "keypoints", "panoptic", "annotations")
_FILTER_FIELDS = ("file_list", "split_file", "split", "format", "extensions", "categories")


class Reader:
    """A source kind's reader: its module's functions, and the defaults for what a module may
    leave out, so that callers never probe a module for what it has."""

    def __init__(self, module: ModuleType):
        self.module = module

    def __getattr__(self, name: str):  # check, frames, provides, plan, plan_table, read
        return getattr(self.module, name)

    @property
    def columnar(self) -> bool:
        """Whether the reader plans a pyarrow Table (``plan_table``) rather than a list."""
        return hasattr(self.module, "plan_table")

    @property
    def layout(self) -> str:
        return getattr(self.module, "LAYOUT", None) or "see the reader's documentation"

    def source_meta(self, src) -> dict:
        fn = getattr(self.module, "source_meta", None)
        return fn(src) if fn is not None else {}

    def own_split(self, src, item: dict) -> str | None:
        fn = getattr(self.module, "own_split", None)
        return fn(src, item) if fn is not None else None

    def own_split_of_all(self, src) -> str | None:
        fn = getattr(self.module, "own_split_of_all", None)
        return fn(src) if fn is not None else None


def no_items_error(src, reader: Reader) -> SourceError:
    """The error for a source whose plan is empty (wrong folder layout, empty folder, a filter
    that leaves nothing): names the source, its kind, where it looked, the filters set, and
    the layout the reader expects (its module's ``LAYOUT``)."""
    fields = src.model_dump()
    searched = [f"{f} {fields[f]}" for f in _SEARCHED_FIELDS if fields.get(f)]
    filters = [f"{f} {fields[f]!r}" for f in _FILTER_FIELDS if fields.get(f)]
    layout = reader.layout
    return SourceError(
        f"source {src.name!r} (kind {src.kind}): no items found in {', '.join(searched) or 'the source'}"
        + (f" (with {', '.join(filters)})" if filters else "") + f". Expected layout: {layout}")


def item_id_from(text: str) -> str:
    """An item id from a path or name: runs of anything but letters, digits and dashes
    become one dash (ids go into sample keys, which may not hold dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")


def inside(root: str | Path, rel: str, what: str) -> Path:
    """``root / rel`` for a path read from data, refused (naming ``what``) if it climbs out of
    ``root`` (``..``) or is absolute outside it. Lexical: a symlink a user put under root is
    theirs to follow."""
    p = Path(rel)
    if p.is_absolute():
        if ".." not in p.parts and Path(os.path.normpath(p)).is_relative_to(os.path.normpath(os.path.abspath(root))):
            return p
    elif ".." not in p.parts:
        return Path(root) / p
    raise ValueError(f"{what}: path {rel!r} must be relative to {root}, inside it")


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """Refuse (before decoding) an image over the source's ``max_image_pixels``."""
    if width * height > max_pixels:
        raise ValueError(f"{what}: image is {width}x{height} = {width * height} pixels, over max_image_pixels "
                         f"{max_pixels} (raise the source's max_image_pixels to read it)")


def reader_for(kind: str) -> Reader:
    from lavin_data.sources import (
        coco_reader,
        davis_reader,
        dense_folder_reader,
        flow_reader,
        hf_dataset_reader,
        image_folder_reader,
        nyu_reader,
        sav_reader,
        synthetic_reader,
        video_folder_reader,
        youtube_vis_reader,
    )

    readers = {"synthetic": synthetic_reader, "coco": coco_reader, "nyu": nyu_reader,
               "image_folder": image_folder_reader, "hf_dataset": hf_dataset_reader,
               "video_folder": video_folder_reader, "davis": davis_reader, "flow": flow_reader,
               "youtube_vis": youtube_vis_reader, "sav": sav_reader, "dense_folder": dense_folder_reader}
    if kind not in readers:
        raise SourceError(
            f"source kind {kind!r} is part of the spec format but its reader is not built yet "
            f"(available: {', '.join(sorted(readers))})"
        )
    return Reader(readers[kind])
