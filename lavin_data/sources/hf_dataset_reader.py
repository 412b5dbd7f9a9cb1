"""Reader for ``kind: hf_dataset``: a local Hugging Face ``datasets`` dataset.

``path`` is a folder written by ``save_to_disk`` (loaded with ``load_from_disk``), a folder
of parquet files (read in place with pyarrow, see :class:`ParquetRows`) or a folder of arrow
files (loaded with ``load_dataset``); nothing is fetched from a hub. Rows are items (``row``
index, in order, across the sorted files); with ``limit``, a ``seed``-ed random subset. The
image column is read undecoded (its bytes) and normalised like image folders (EXIF,
greyscale, CMYK, 16-bit, palette).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, inside
from lavin_data.sources.image_folder_reader import load_rgb

LAYOUT = ("path: a save_to_disk folder (dataset_info.json / state.json / dataset_dict.json) or a folder of .parquet "
          "or .arrow files; one image per row in image_column")


class ParquetRows:
    """A folder's parquet files read in place, one row's image column at a time.

    ``datasets.load_dataset("parquet")`` first copies every file into its Arrow cache: as many
    bytes again as the dataset, at about 5 s per GB measured here (an ImageNet copy of ~150 GB:
    ~150 GB more disk and over ten minutes) before the first row, and the build's preflight
    opens the source. Here only the files' footers are read when the source is opened (row
    counts, columns); rows are numbered across the sorted files as ``load_dataset`` numbers
    them. Rows are read forward through their row group, :data:`BATCH_ROWS` at a time from
    the memory-mapped file (the rows of a shard are consecutive, so a row group is read
    about once; going back restarts it), which bounds the memory a worker holds whatever
    the row groups' size (measured on one 1 GB row group of 100 KB rows: 1.1 GB to read it
    whole, 163 MB of anonymous memory at most to read it all in batches). Values are what
    ``datasets`` gives with ``Image(decode=False)``: an image struct as ``{"bytes", "path"}``,
    binary as bytes. ``datasets`` itself is not needed."""

    BATCH_ROWS = 64

    def __init__(self, folder: Path, files: list[str], column: str):
        self.column = column
        self._groups: list[tuple[str, int]] = []
        starts, n = [], 0
        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # noqa: BLE001
                raise SourceError(f"{f}: cannot read as a parquet file: {e}") from None
            names = pf.schema_arrow.names
            if column not in names:
                raise SourceError(f"{folder}: no column {column!r} (columns: {names}"
                                  + (f", in {f}" if f != files[0] else "") + "); set image_column")
            for g in range(pf.metadata.num_row_groups):
                starts.append(n)
                self._groups.append((f, g))
                n += pf.metadata.row_group(g).num_rows
        self._starts = np.array(starts, np.int64)
        self._n = n
        self._file: tuple[str, pq.ParquetFile] | None = None
        # Where the reading stands: row group, its batches, the batch in hand and its rows [lo, hi).
        self._group = -1
        self._batches = iter(())
        self._batch: pa.Array | None = None
        self._lo = self._hi = 0

    def __len__(self) -> int:
        return self._n

    def value(self, row: int):
        """The image column of ``row`` (0-based across the files)."""
        if not 0 <= row < self._n:
            raise IndexError(f"row {row} is out of range: the parquet files hold {self._n} rows")
        k = int(np.searchsorted(self._starts, row, side="right")) - 1  # empty row groups share a start
        at = row - int(self._starts[k])
        if k != self._group or at < self._lo:
            f, g = self._groups[k]
            if self._file is None or self._file[0] != f:
                self._file = (f, pq.ParquetFile(f, memory_map=True))
            self._group, self._batch, self._lo, self._hi = k, None, 0, 0
            self._batches = self._file[1].iter_batches(batch_size=self.BATCH_ROWS, row_groups=[g],
                                                       columns=[self.column], use_threads=False)
        while at >= self._hi:
            self._batch = None  # let the last batch go before the next is read
            batch = next(self._batches)
            self._batch, self._lo, self._hi = batch.column(0), self._hi, self._hi + batch.num_rows
        return self._batch[at - self._lo].as_py()


@lru_cache(maxsize=4)
def _open(path: str, split: str, column: str):
    """The dataset with the image column undecoded (a :class:`ParquetRows` for a folder of
    parquet files, else a ``datasets`` dataset, memory-mapped); once per process."""
    p = Path(path)
    saved = (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()
    if not saved and (parquet := sorted(str(f) for f in p.rglob("*.parquet"))):
        return ParquetRows(p, parquet, column)
    try:
        import datasets
    except ImportError:
        raise SourceError("kind hf_dataset needs the `datasets` package for a save_to_disk folder or arrow files: "
                          "pip install -e .[hf] (or pip install datasets)") from None

    try:
        if saved:
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise SourceError(f"{p}: no split {split!r} (has {sorted(ds)})")
                ds = ds[split]
        else:
            files = sorted(str(f) for f in p.rglob("*.arrow"))
            if not files:
                raise SourceError(f"{p}: neither a save_to_disk folder nor parquet/arrow files")
            ds = datasets.load_dataset("arrow", data_files=files, split="train")
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
    return own_split_of_all(src)


def own_split_of_all(src) -> str | None:
    """:func:`own_split`, which is the same for every item: the planner asks once, not per row."""
    from lavin_data.split import names_val

    return "val" if names_val(src.split) else None


def provides(src) -> frozenset[str]:
    return frozenset()


def plan(src) -> list[dict]:
    return plan_table(src).to_pylist()


def plan_table(src) -> pa.Table:
    """The plan as columns: ``item_id`` (the row number, zero-padded to 8 digits, string) and
    ``row`` (int64), in row order; with ``limit``, a ``seed``-ed subset of the rows. Only the
    row count is read, never the rows."""
    n = len(_open(src.path, src.split, src.image_column))
    if src.limit is not None and src.limit < n:
        rows = np.sort(np.random.default_rng(src.seed).choice(n, size=src.limit, replace=False))
    else:
        rows = np.arange(n, dtype=np.int64)
    rows = pa.array(rows, pa.int64())
    return pa.table({"item_id": pc.utf8_lpad(pc.cast(rows, pa.string()), 8, "0"), "row": rows})



def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    ds = _open(src.path, src.split, src.image_column)
    row = int(item["row"])
    value = ds.value(row) if isinstance(ds, ParquetRows) else ds[row][src.image_column]
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
