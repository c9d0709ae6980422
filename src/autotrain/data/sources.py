"""Rows from the user's data: a file, a folder of split files, a save_to_disk folder or a datasets id.

Local files are read here rather than through `datasets.load_dataset`, so that a bad row is reported with its
file and line instead of an Arrow error from deep inside a library. Every row keeps where it came from.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from autotrain.errors import DataError
from autotrain.trainers.clm.params import SAMPLE_DATA

logger = logging.getLogger("autotrain")

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class RawSplit:
    """The rows of one split, each with the location a user can open: `where(i)` -> 'file:line'."""

    source: str
    rows: list[dict[str, Any]]
    lines: list[int]
    unit: str = "line"  # what `lines` counts: a file line, or a row of a table

    def where(self, index: int) -> str:
        return f"{self.source}:{self.lines[index]}" if self.unit == "line" else f"{self.source} row {self.lines[index]}"

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)


def sample_data_dir() -> Path:
    return Path(str(resources.files("autotrain.data") / "samples"))


def load_split(data_path: str, split: str, *, is_train: bool) -> RawSplit:
    """Load one split. A plain file is the training split; it holds no other split."""
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
        return read_file(path)
    if path.is_dir():
        return _load_folder(path, split)
    if _looks_local(data_path):
        raise DataError("no such file or folder", path=data_path)
    return _load_hub(data_path, split)


def _looks_local(data_path: str) -> bool:
    return (
        data_path.startswith((".", "/", "~"))
        or data_path.endswith(SUFFIXES)
        or data_path.count("/") > 1
        or "\\" in data_path
    )


def _load_folder(folder: Path, split: str) -> RawSplit:
    if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
        return _load_saved(folder, split)
    files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.stem == split)
    if not files:
        present = sorted({p.stem for p in folder.iterdir() if p.suffix in SUFFIXES})
        raise DataError(
            f"no file for split '{split}' (expected {split}.jsonl, .json, .csv or .parquet); "
            f"splits present: {', '.join(present) or 'none'}",
            path=str(folder),
        )
    if len(files) > 1:
        raise DataError(f"several files for split '{split}': {', '.join(p.name for p in files)}", path=str(folder))
    return read_file(files[0])


def _load_saved(folder: Path, split: str) -> RawSplit:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"split '{split}' does not exist; splits: {', '.join(loaded)}", path=str(folder))
        loaded = loaded[split]
    return _from_dataset(loaded, f"{folder}[{split}]")


def _load_hub(name: str, split: str) -> RawSplit:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except ValueError as exc:  # datasets reports an unknown split as a ValueError
        raise DataError(f"cannot load split '{split}': {exc}".splitlines()[0], path=name) from exc
    except Exception as exc:  # noqa: BLE001 - no network, unknown id, ...: keep the library's reason, one line
        raise DataError(f"not a local path, and loading it as a datasets id failed: {exc}".splitlines()[0], path=name) from exc
    return _from_dataset(loaded, f"{name}[{split}]")


def _from_dataset(dataset: Any, source: str) -> RawSplit:
    rows = dataset.to_list()
    return RawSplit(source, rows, list(range(len(rows))), unit="row")


# --- Files ------------------------------------------------------------------------------------------------


def read_file(path: Path) -> RawSplit:
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}", path=str(path))
    split = reader(path)
    if not split.rows:
        raise DataError("the file holds no rows", path=str(path))
    return split


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark is accepted and dropped
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 (byte {exc.start})", path=str(path), line=line) from None


def _read_jsonl(path: Path) -> RawSplit:
    rows, lines = [], []
    for number, text in enumerate(_decode(path).split("\n"), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=str(path), line=number) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=str(path), line=number)
        rows.append(row)
        lines.append(number)
    return RawSplit(str(path), rows, lines)


def _read_json(path: Path) -> RawSplit:
    text = _decode(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=str(path), line=exc.lineno) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError("expected a JSON list of objects (or a .jsonl file)", path=str(path))
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"item {index} is {type(row).__name__}, expected an object", path=str(path))
    return RawSplit(str(path), data, list(range(len(data))), unit="row")


def _read_csv(path: Path) -> RawSplit:
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    rows, lines = [], []
    start = 2  # the header is line 1
    for row in reader:
        if None in row:
            raise DataError("more fields than the header has", path=str(path), line=start)
        rows.append(row)
        lines.append(start)
        start = reader.line_num + 1
    return RawSplit(str(path), rows, lines)


def _read_parquet(path: Path) -> RawSplit:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - a damaged file: report it, one line
        raise DataError(f"cannot read parquet: {exc}".splitlines()[0], path=str(path)) from None
    return RawSplit(str(path), rows, list(range(len(rows))), unit="row")
