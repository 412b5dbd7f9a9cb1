"""Reader for ``kind: hf_dataset``: a local Hugging Face ``datasets`` dataset.

``path`` is a folder written by ``save_to_disk`` (loaded with ``load_from_disk``) or a
folder of parquet / arrow files (loaded with ``load_dataset`` on those local files);
nothing is fetched from a hub. Rows are items (``row`` index, in order); with ``limit``,
a ``seed``-ed random subset. The image column is read undecoded (its bytes) and
normalised like image folders (EXIF, greyscale, CMYK, 16-bit, palette).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, inside
from lavin_data.sources.image_folder_reader import load_rgb

LAYOUT = ("path: a save_to_disk folder (dataset_info.json / state.json / dataset_dict.json) or a folder of .parquet "
          "or .arrow files; one image per row in image_column")


@lru_cache(maxsize=4)
def _open(path: str, split: str, column: str):
    """The dataset with the image column undecoded; memory-mapped, once per process."""
    try:
        import datasets
    except ImportError:
        raise SourceError("kind hf_dataset needs the `datasets` package: "
                          "pip install -e .[hf] (or pip install datasets)") from None

    p = Path(path)
    try:
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise SourceError(f"{p}: no split {split!r} (has {sorted(ds)})")
                ds = ds[split]
        else:
            files = sorted(str(f) for f in p.rglob("*.parquet")) or sorted(str(f) for f in p.rglob("*.arrow"))
            if not files:
                raise SourceError(f"{p}: neither a save_to_disk folder nor parquet/arrow files")
            ds = datasets.load_dataset("parquet" if files[0].endswith(".parquet") else "arrow",
                                       data_files=files, split="train")
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"{p}: cannot open as a datasets dataset: {e}") from None
    if column not in ds.column_names:
        raise SourceError(f"{p}: no column {column!r} (columns: {ds.column_names}); set image_column")
    if isinstance(ds.features[column], datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def check(src) -> None:
    if not Path(src.path).exists():
        raise SourceError(f"{src.path}: dataset folder not found")
    _open(src.path, src.split, src.image_column)


def frames(src) -> str:
    return "image"


def own_split(src, item: dict) -> str | None:
    """A ``validation`` or ``test`` split of the dataset is held out (:mod:`lavin_data.split`)."""
    from lavin_data.split import names_val

    return "val" if names_val(src.split) else None


def provides(src) -> frozenset[str]:
    return frozenset()


def plan(src) -> list[dict]:
    n = len(_open(src.path, src.split, src.image_column))
    rows = list(range(n))
    if src.limit is not None and src.limit < n:
        rows = sorted(np.random.default_rng(src.seed).choice(n, size=src.limit, replace=False).tolist())
    return [{"item_id": f"{i:08d}", "row": i} for i in rows]


def source_meta(src) -> dict:
    return {}


def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    value = _open(src.path, src.split, src.image_column)[int(item["row"])][src.image_column]
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes", "path"}
        data = value.get("bytes") or (inside(src.path, value["path"], f"{src.path} row {item['row']}").read_bytes()
                                      if value.get("path") else None)
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        raise ValueError(f"row {item['row']}: column {src.image_column!r} holds {type(value).__name__}, not an image")
    if not data:
        raise ValueError(f"row {item['row']}: empty image")
    rgb, plain = load_rgb(data, f"{src.path} row {item['row']}", src.max_image_pixels)
    meta = {"source": src.name, "item_id": item["item_id"], "row": int(item["row"]), "width": rgb.shape[1],
            "height": rgb.shape[0], "licence": src.licence}
    return BaseSample(meta, image=rgb, image_file=("jpg", data) if plain else None)
