"""Where rows come from: a file, a folder of split files, a save_to_disk folder or a datasets id.

A split is streamed: each pass reads it one row at a time, so memory does not grow with the size of the data.
Files are read by `data/files.py` and `data/json_file.py` (formats, compression, duplicate keys); how each source
names a row in errors is described in `data/split.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from autotrain.data.files import (
    COMPRESSIONS, FORMATS, SUFFIXES, UNPACK, CsvSplit, JsonlSplit, ParquetSplit, file_kind, split_name,
)
from autotrain.data.json_file import JsonSplit
from autotrain.data.split import Advance, Location, RawSplit, Row, Split, ignore_progress
from autotrain.errors import DataError
from autotrain.params import SAMPLE_DATA

__all__ = ["DatasetSplit", "Location", "RawSplit", "Row", "Split", "load_split", "open_file", "sample_data_dir"]

_TABLE_BATCH = 1000


def sample_data_dir() -> Path:
    return Path(str(resources.files("autotrain.data") / "samples"))


def load_split(data_path: str, split: str, *, is_train: bool) -> Split:
    """Open one split and check that it holds rows. A plain file is the training split; it holds no other split."""
    if data_path == SAMPLE_DATA:
        data_path = str(sample_data_dir())
    path = Path(data_path).expanduser()
    if path.is_file():
        if not is_train:
            raise DataError(
                f"a single file holds only the training split, so split '{split}' does not exist; "
                "put train.* and validation.* files in a folder and pass the folder",
                path=data_path,
            )
        return open_file(path)
    if path.is_dir():
        return _load_folder(path, split)
    if path.exists():  # neither a file nor a folder; a FIFO (or <(...)) must not be opened: that waits for a writer
        raise DataError(f"a {_kind(path)}, not a file: the data is read more than once (checked, then tokenized), "
                        "which a pipe cannot give; write it to a file and pass that", path=data_path)
    if _looks_local(data_path):
        raise DataError("no such file or folder", path=data_path)
    return _load_hub(data_path, split)


def _kind(path: Path) -> str:
    import stat

    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    return "socket" if stat.S_ISSOCK(mode) else "device"


def _looks_local(data_path: str) -> bool:
    return (
        data_path.startswith((".", "/", "~"))
        or data_path.lower().endswith(SUFFIXES)
        or data_path.count("/") > 1
        or "\\" in data_path
    )


def _load_folder(folder: Path, split: str) -> Split:
    if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
        return _load_saved(folder, split)
    files = sorted(p for p in folder.iterdir() if p.is_file() and split_name(p) == split)
    if not files:
        present = sorted({name for p in folder.iterdir() if p.is_file() and (name := split_name(p)) is not None})
        raise DataError(
            f"no file for split '{split}' (expected {split}{', '.join(FORMATS[:-1])} or {FORMATS[-1]}, optionally "
            f"compressed: {', '.join(COMPRESSIONS)}); splits present: {', '.join(present) or 'none'}",
            path=str(folder),
        )
    if len(files) > 1:
        raise DataError(f"several files for split '{split}': {', '.join(p.name for p in files)}", path=str(folder))
    return open_file(files[0])


def _load_saved(folder: Path, split: str) -> Split:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"split '{split}' does not exist; splits: {', '.join(loaded)}", path=str(folder))
        loaded = loaded[split]
    return _checked(DatasetSplit(loaded, f"{folder}[{split}]"))


def _load_hub(name: str, split: str) -> Split:
    from autotrain import quiet

    quiet.import_quietly("datasets")  # its hub client's logs (an unreachable host, each retry) quieted, as in a run
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except ValueError as exc:  # datasets reports an unknown split as a ValueError
        raise DataError(f"cannot load split '{split}': {exc}".splitlines()[0], path=name) from exc
    except Exception as exc:  # noqa: BLE001 - no network, unknown id, ...: keep the library's reason, one line
        raise DataError(f"not a local path, and loading it as a datasets id failed: {exc}".splitlines()[0], path=name) from exc
    return _checked(DatasetSplit(loaded, f"{name}[{split}]"))


def _checked(split: Split) -> Split:
    split.require_rows()
    return split


class DatasetSplit(Split):
    """A `datasets.Dataset` (memory-mapped Arrow), read in batches."""

    def __init__(self, dataset: Any, source: str):
        super().__init__(source)
        self.dataset = dataset
        self._columns = list(dataset.column_names)

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        plain = self.dataset.with_format(None)
        for start in range(0, len(plain), _TABLE_BATCH):
            batch = plain[start : start + _TABLE_BATCH]
            for offset in range(len(next(iter(batch.values()), []))):
                advance(1)
                yield start + offset + 1, {name: values[offset] for name, values in batch.items()}

    def where(self, number: int) -> str:
        return f"{self.source}, row {number} of {len(self.dataset)}"

    def value_advice(self, column: str) -> str:
        kind = getattr(self.dataset.features.get(column), "dtype", "not text")
        return (f"the dataset's column has type {kind}: cast it to text first (dataset.cast_column('{column}', "
                "datasets.Value('string')))")

    def progress_total(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> str:
        # datasets derives it from the Arrow files and every transform applied, and stores it with save_to_disk.
        return f"dataset:{self.dataset._fingerprint}"

    def require_rows(self) -> None:
        if len(self.dataset) == 0:
            raise DataError("the split holds no rows", path=self.source)


def open_file(path: Path) -> Split:
    """The split held in one file, after checking that it holds rows (which also checks its first row)."""
    fmt, compression = file_kind(path)
    if fmt == ".parquet" and compression:
        raise DataError(
            "a parquet file compresses its own columns and is read in place; decompress it "
            f"({UNPACK[compression]}) and pass the .parquet file",
            path=str(path),
        )
    kinds = {".jsonl": JsonlSplit, ".json": JsonSplit, ".csv": CsvSplit, ".parquet": ParquetSplit}
    kind = kinds.get(fmt)
    if kind is None:
        raise DataError(
            f"unsupported file type '{fmt + compression}'; use one of {', '.join(FORMATS)} (the first three "
            f"optionally compressed: {', '.join(COMPRESSIONS)})",
            path=str(path),
        )
    if path.stat().st_size == 0:
        raise DataError("the file is empty", path=str(path))
    split = kind(path, compression)
    split.require_rows()
    return split
