"""Where every output of a build lives (docs/format.md)."""

from __future__ import annotations

from pathlib import Path


def shard_name(source: str, shard: int) -> str:
    return f"{source}-{shard:06d}"


def plan_path(out: str | Path, source: str) -> Path:
    return Path(out) / "plan" / f"{source}.parquet"


def base_tar(out: str | Path, source: str, shard: int) -> Path:
    return Path(out) / "base" / source / f"{shard_name(source, shard)}.tar"


def label_tar(out: str | Path, labeler: str, source: str, shard: int) -> Path:
    return Path(out) / "labels" / labeler / source / f"{shard_name(source, shard)}.tar"


def pair_tar(out: str | Path, task: str, source: str, shard: int) -> Path:
    return Path(out) / "pairs" / task / f"{shard_name(source, shard)}.tar"


def sample_key(source: str, item_id: str, variant: str | None = None) -> str:
    return f"{source}_{item_id}" + (f"_{variant}" if variant else "")
