"""Rows from the user's data: a file, a folder of split files, a save_to_disk folder or a datasets id.

A split is streamed: each pass reads it one row at a time, so memory does not grow with the size of the data.
Local files are parsed here rather than through `datasets.load_dataset`, so that a bad row is reported with its
file and line instead of an Arrow error from deep inside a library.

How errors name a row (`Split.where`):
- JSONL, CSV and JSON lists: `file:LINE`, the line where the row starts, numbered from 1 as an editor does;
- parquet files and datasets: `file, row N of M`, rows counted from 1.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from autotrain.errors import DataError
from autotrain.trainers.clm.params import SAMPLE_DATA

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Rows read to learn the columns of a JSON file: enough to see a column that the first row happens to lack.
PEEK_ROWS = 100
_CHUNK = 1 << 20
_TABLE_BATCH = 1000

Row = dict[str, Any]
Advance = Callable[[int], object]  # called with the progress made, in `Split.progress_unit`


def _ignore(_: int) -> None:
    return None


class Location:
    """Where a row is; formatted only when an error names it, since most rows never need it."""

    __slots__ = ("split", "number")

    def __init__(self, split: Split, number: int):
        self.split, self.number = split, number

    def __str__(self) -> str:
        return self.split.where(self.number)


class Split:
    """One split of the data; `rows()` streams `(number, row)`, where `where(number)` is what a user can open."""

    progress_unit = "rows"

    def __init__(self, source: str):
        self.source = source
        self._columns: list[str] | None = None

    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        raise NotImplementedError

    def where(self, number: int) -> str:
        return f"{self.source}:{number}"

    def progress_total(self) -> int | None:
        return None

    def fingerprint(self) -> str:
        """Identifies the content: equal fingerprints mean equal rows (the tokenized-data cache's key)."""
        raise NotImplementedError

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            seen: dict[str, None] = {}
            for _, row in itertools.islice(self.rows(), PEEK_ROWS):
                seen.update(dict.fromkeys(row))
            self._columns = list(seen)
        return self._columns

    def require_rows(self) -> None:
        if next(self.rows(), None) is None:
            raise DataError("the file holds no rows", path=self.source)


class RawSplit(Split):
    """Rows already in memory, each with the line it came from: tests and small inputs."""

    def __init__(self, source: str, rows: list[Row], lines: list[int]):
        super().__init__(source)
        self._rows, self._lines = rows, lines

    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        for number, row in zip(self._lines, self._rows):
            advance(1)
            yield number, row

    def progress_total(self) -> int:
        return len(self._rows)

    def fingerprint(self) -> str:
        payload = json.dumps([self._rows, self._lines], sort_keys=True, default=repr)
        return hashlib.sha256(payload.encode()).hexdigest()


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


def _load_folder(folder: Path, split: str) -> Split:
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

    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        plain = self.dataset.with_format(None)
        for start in range(0, len(plain), _TABLE_BATCH):
            batch = plain[start : start + _TABLE_BATCH]
            for offset in range(len(next(iter(batch.values()), []))):
                advance(1)
                yield start + offset + 1, {name: values[offset] for name, values in batch.items()}

    def where(self, number: int) -> str:
        return f"{self.source}, row {number} of {len(self.dataset)}"

    def progress_total(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> str:
        # datasets derives it from the Arrow files and every transform applied, and stores it with save_to_disk.
        return f"dataset:{self.dataset._fingerprint}"

    def require_rows(self) -> None:
        if len(self.dataset) == 0:
            raise DataError("the split holds no rows", path=self.source)


# --- Files ------------------------------------------------------------------------------------------------


def open_file(path: Path) -> Split:
    """The split held in one file, after checking that it holds rows (which also checks its first row)."""
    kinds = {".jsonl": JsonlSplit, ".json": JsonSplit, ".csv": CsvSplit, ".parquet": ParquetSplit}
    kind = kinds.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}", path=str(path))
    if path.stat().st_size == 0:
        raise DataError("the file is empty", path=str(path))
    return _checked(kind(path))


class FileSplit(Split):
    progress_unit = "B"

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path
        self._fingerprint: str | None = None

    def progress_total(self) -> int:
        return self.path.stat().st_size

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # a streamed hash: a large file is never held in memory
            digest = hashlib.sha256(self.path.suffix.lower().encode() + b"\0")
            with self.path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
            self._fingerprint = f"file:{digest.hexdigest()}"
        return self._fingerprint

    def _lines(self, advance: Advance) -> Iterator[tuple[int, str]]:
        """(line number, text with its line ending), decoded line by line so that bad UTF-8 names its line."""
        offset = 0
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)  # a BOM is accepted, dropped
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    message = f"invalid UTF-8 at byte {offset + exc.start}; save the file as UTF-8"
                    raise DataError(message, path=self.source, line=number) from None
                offset += len(raw)
                advance(len(raw))
                yield number, text


class JsonlSplit(FileSplit):
    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        for number, text in self._lines(advance):
            text = text.rstrip("\r\n")  # else an error at the line's end is reported as column 1 of the next
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=self.source, line=number) from None
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}", path=self.source, line=number)
            yield number, row


class CsvSplit(FileSplit):
    """Quoted fields may hold commas and newlines; a row is named by the line where it starts."""

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            self._columns = next(self._records(_ignore), (0, []))[1]
        return self._columns

    def _records(self, advance: Advance) -> Iterator[tuple[int, list[str]]]:
        reader = csv.reader(text for _, text in self._lines(advance))
        start = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"malformed CSV: {exc}", path=self.source, line=start) from None
            if fields:  # csv yields [] for a blank line
                yield start, fields
            start = reader.line_num + 1

    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        records = self._records(advance)
        header = next(records, None)
        if header is None:
            return
        names = header[1]
        for number, fields in records:
            if len(fields) != len(names):
                more_or_fewer = "more" if len(fields) > len(names) else "fewer"
                raise DataError(
                    f"{len(fields)} fields, {more_or_fewer} than the header's {len(names)}", path=self.source, line=number
                )
            yield number, dict(zip(names, fields))


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_WRAPPER = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"(?:[^"\\]|\\.)*"[ \t\n\r]*:')  # {"data": [...]}


class JsonSplit(FileSplit):
    """A JSON list of objects, or an object with one key holding that list ({"data": [...]}).

    The list is decoded item by item, so each row knows its line; the file's text is held in memory while it is
    read (JSON has no record boundaries), so large data belongs in a .jsonl file.
    """

    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            message = f"invalid UTF-8 at byte {exc.start}; save the file as UTF-8"
            raise DataError(message, path=self.source, line=line) from None
        del raw
        scale = self.progress_total() / max(len(text), 1)  # characters -> bytes, for the progress bar
        wrapper = _WRAPPER.match(text)
        pos = self._expect(text, wrapper.end() if wrapper else 0, "[")
        line, counted = 1, 0
        while not text.startswith("]", pos):
            line += text.count("\n", counted, pos)
            counted = start = pos
            try:
                item, pos = json.JSONDecoder().raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                message = f"malformed JSON at column {exc.colno}: {exc.msg}"
                raise DataError(message, path=self.source, line=exc.lineno) from None
            if not isinstance(item, dict):
                raise DataError(f"expected a JSON object, got {type(item).__name__}", path=self.source, line=line)
            advance(int((pos - start) * scale))
            yield line, item
            pos = _WHITESPACE.match(text, pos).end()
            if not text.startswith("]", pos):
                pos = self._expect(text, pos, ",")
        pos = self._expect(text, pos, "]")
        if wrapper:
            pos = self._expect(text, pos, "}")
        if pos != len(text):
            self._not_a_list(text, pos)

    def _expect(self, text: str, pos: int, char: str) -> int:
        """The position after `char` and any whitespace, where `char` must come after whitespace from `pos`."""
        pos = _WHITESPACE.match(text, pos).end()
        if not text.startswith(char, pos):
            self._not_a_list(text, pos)
        return _WHITESPACE.match(text, pos + 1).end()

    def _not_a_list(self, text: str, pos: int) -> None:
        raise DataError(
            'expected a JSON list of objects, or an object with one key holding that list ({"data": [...]}); '
            "for one object per line use a .jsonl file",
            path=self.source,
            line=text.count("\n", 0, pos) + 1,
        )


class ParquetSplit(FileSplit):
    progress_unit = "rows"
    _num_rows: int | None = None

    def _file(self) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - a damaged file: report it, one line
            raise DataError(f"cannot read parquet: {exc}".splitlines()[0], path=self.source) from None

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            self._columns = list(self._file().schema_arrow.names)
        return self._columns

    def progress_total(self) -> int:
        if self._num_rows is None:
            self._num_rows = self._file().metadata.num_rows
        return self._num_rows

    def rows(self, advance: Advance = _ignore) -> Iterator[tuple[int, Row]]:
        batches = self._file().iter_batches(batch_size=_TABLE_BATCH)
        rows = (row for batch in batches for row in batch.to_pylist())
        try:
            for number, row in enumerate(rows, start=1):
                advance(1)
                yield number, row
        except (OSError, ValueError) as exc:  # a damaged file: pyarrow raises OSError or ArrowInvalid (ValueError)
            raise DataError(f"cannot read parquet: {exc}".splitlines()[0], path=self.source) from None

    def where(self, number: int) -> str:
        return f"{self.source}, row {number} of {self.progress_total()}"
