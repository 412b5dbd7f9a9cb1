"""The held-out split: every source item is ``train`` or ``val``, decided once, when the
build plans the source, and kept by every later stage (pair json and index, latent json and
index), so that no source item appears in both and successive builds agree.

A source's ``holdout`` (spec) says how:

- ``auto`` (default): an item the source itself marks as held out is ``val`` (a reader's
  ``own_split``: COCO ``*val*`` annotation files, an NYU ``*test*`` split list, a Hugging
  Face ``validation``/``test`` split, a DAVIS ``val`` sequence list); every other item is
  ``val`` with probability ``val_fraction`` (default 1%), by a hash of its key;
- ``hash``: by the hash alone (the source's own split ignored);
- ``val``: every item is ``val`` (a folder kept for evaluation).

The hash depends on the item's key (``<source>_<item_id>``) only, not on the seed: an item
stays on its side when the spec's seed or other sources change.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "val"]
SPLITS: tuple[str, ...] = ("train", "val")
VAL_WORDS = ("val", "valid", "validation", "test", "testing")


def key_fraction(key: str) -> float:
    """A uniform number in [0, 1) from a key (the first 64 bits of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def names_val(name: str | None) -> bool:
    """Whether a split or file name marks a held-out split: ``val2017``, ``validation``,
    ``nyudepthv2_test_files_with_gt.txt``, ``2017/val`` (words split on non-letters)."""
    if not name:
        return False
    import re

    words = re.split(r"[^a-z]+", str(name).lower())
    return any(w in VAL_WORDS for w in words)


def assign_split(key: str, val_fraction: float, holdout: str = "auto", own: str | None = None) -> Split:
    """``train`` or ``val`` for the item ``key``; ``own``: the source's own split of it (or None)."""
    if holdout == "val":
        return "val"
    if holdout == "auto" and own == "val":
        return "val"
    return "val" if key_fraction(key) < val_fraction else "train"


def pair_split(key: str, meta: dict) -> tuple[str, str]:
    """(split, source item) of a pair from its json: ``split`` as the build assigned it
    (pairs built before splits existed count as ``train``), and the key of its source item
    (``base_key``), which the loader uses to keep a query's own item out of its context."""
    split = meta.get("split") or "train"
    if split not in SPLITS:
        raise ValueError(f"pair {key}: json split is {split!r}, expected 'train' or 'val'")
    return split, str(meta.get("base_key") or key)


def split_count(stats: dict, split: str | None) -> int:
    """Samples of ``split`` (None: all) in a committed shard, from its stats (``splits``) or,
    for shards committed before splits were recorded, all its samples when ``split`` is train."""
    n_ok = int(stats.get("n_ok", 0))
    if split is None:
        return n_ok
    if stats.get("splits"):
        return int(stats["splits"].get(split, 0))
    return n_ok if split == "train" else 0
