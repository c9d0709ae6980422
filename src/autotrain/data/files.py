"""Rows from one data file: JSONL, CSV (each optionally compressed) or parquet; JSON is in `json_file.py`.

Files are parsed here rather than through `datasets.load_dataset`, so that a bad row is reported with its file and
line instead of an Arrow error from deep inside a library. A JSONL or CSV file is streamed, one line at a time
(through the decompressor when it is compressed), so memory does not grow with the size of the data.

Compressions are the ones `datasets` reads by file name: `.gz`, `.bz2`, `.xz` and `.zst` (`d.jsonl.gz`); `.zst`
needs the `zstandard` package. A parquet file compresses its own columns and is not accepted compressed again.

JSON keys must be unique in each object: Python's json (and most readers) silently keep the last of two equal keys,
so a duplicate is reported instead of training on whichever value came last.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import io
import json
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from autotrain.data.split import Advance, Row, Split, ignore_progress
from autotrain.errors import DataError, malformed_json

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
STREAMABLE = (".jsonl", ".json", ".csv")  # the formats that may come compressed
SUFFIXES = FORMATS + tuple(f + c for f in STREAMABLE for c in COMPRESSIONS)
_CHUNK = 1 << 20
_TABLE_BATCH = 1000
# What a damaged or cut-short compressed stream raises: gzip/zlib, bz2 (OSError, EOFError) and lzma; zstandard's
# ZstdError is added by _decompress_errors where the package is installed.
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError)


def file_kind(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix or ""), lower case: `train.jsonl.gz` -> (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else ""
    return (suffixes[-1] if suffixes else ""), compression


UNPACK = {".gz": "gunzip", ".bz2": "bunzip2", ".xz": "unxz", ".zst": "unzstd"}  # the command that decompresses


def split_name(path: Path) -> str | None:
    """The split a data file holds (`train` for train.jsonl.gz), or None when it is not a data file."""
    fmt, compression = file_kind(path)
    if fmt + compression not in SUFFIXES:
        return None
    return path.name[: len(path.name) - len(fmt + compression)]


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return row


DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def duplicate_key(key: str, path: str, line: int) -> DataError:
    message = f"duplicate key '{key}' in one object; JSON would keep only its last value, so remove or rename one"
    return DataError(message, path=path, line=line)


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is rewritten in place or replaced: device, inode, size, modification and change
    times (in nanoseconds)."""
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class FileSplit(Split):
    progress_unit = "B"  # bytes of the file as stored (compressed bytes for a compressed file)

    def __init__(self, path: Path, compression: str = ""):
        super().__init__(str(path))
        self.path, self.compression = path, compression
        self._fingerprint: str | None = None
        self._identity: tuple[int, ...] = ()

    def progress_total(self) -> int:
        return self.path.stat().st_size

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            # The file's identity first: any write during or after the hash changes its ctime at least.
            self._identity = _identity(self.path)
            self._fingerprint = self._hash()
        return self._fingerprint

    def changed_since_fingerprint(self) -> bool:
        # The identity catches a rename over the file and any write; the second hash, a write within the file
        # system's timestamp resolution (a fraction of the cost of the tokenizing it guards).
        if self._fingerprint is None:
            return False
        try:
            return _identity(self.path) != self._identity or self._hash() != self._fingerprint
        except OSError:  # deleted or unreadable now: not what was hashed
            return True

    def _hash(self) -> str:
        """A streamed hash: a large file is never held in memory."""
        fmt, compression = file_kind(self.path)
        digest = hashlib.sha256((fmt + compression).encode() + b"\0")
        with self.path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return f"file:{digest.hexdigest()}"

    def _reader(self, raw: IO[bytes]) -> IO[bytes]:
        """The file's content as a binary stream: `raw` itself, or a decompressor reading from it."""
        if self.compression == ".gz":
            return gzip.GzipFile(fileobj=raw)
        if self.compression == ".bz2":
            return bz2.BZ2File(raw)
        if self.compression == ".xz":
            return lzma.LZMAFile(raw)
        if self.compression == ".zst":
            try:
                import zstandard
            except ImportError:
                raise DataError("reading .zst files needs the zstandard package: pip install zstandard",
                                path=self.source) from None
            # Files that `zstd` writes from several inputs (and every pzstd file) hold several frames: read them all.
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        return raw

    def _damaged(self, exc: BaseException, line: int | None) -> DataError:
        reason = str(exc) or type(exc).__name__
        return DataError(f"the compressed data is damaged or cut short ({reason})", path=self.source, line=line)

    def _raw_lines(self, advance: Advance) -> Iterator[tuple[int, bytes]]:
        """(line number, bytes with the line ending) of the content, through the decompressor when there is one."""
        errors = _decompress_errors() if self.compression else ()
        with self.path.open("rb") as raw:
            reader = self._reader(raw)
            number, done = 0, 0
            while True:
                try:
                    line = reader.readline()
                except errors as exc:
                    raise self._damaged(exc, number + 1) from None
                if not line:
                    return
                number += 1
                if self.compression:  # progress in stored bytes, which is what the total counts
                    position = raw.tell()
                    advance(position - done)
                    done = position
                else:
                    advance(len(line))
                yield number, line

    def _lines(self, advance: Advance) -> Iterator[tuple[int, str]]:
        """(line number, text with its line ending), decoded line by line so that bad UTF-8 names its line."""
        offset = 0
        for number, raw in self._raw_lines(advance):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)  # a BOM is accepted, dropped
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._bad_utf8(offset + exc.start, number) from None
            offset += len(raw)
            yield number, text

    def _bad_utf8(self, offset: int, line: int) -> DataError:
        where = " of the decompressed text" if self.compression else ""
        return DataError(f"invalid UTF-8 at byte {offset}{where}; save the file as UTF-8", path=self.source, line=line)

    def _read_all(self) -> bytes:
        """The whole content, decompressed; damage is reported at the line reached."""
        errors = _decompress_errors() if self.compression else ()
        chunks: list[bytes] = []
        with self.path.open("rb") as raw:
            reader = self._reader(raw)
            try:
                while chunk := reader.read(_CHUNK):
                    chunks.append(chunk)
            except errors as exc:
                raise self._damaged(exc, sum(c.count(b"\n") for c in chunks) + 1) from None
        return b"".join(chunks)


def _decompress_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return _DECOMPRESS_ERRORS
    return (*_DECOMPRESS_ERRORS, zstandard.ZstdError)


class JsonlSplit(FileSplit):
    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        for number, text in self._lines(advance):
            text = text.rstrip("\r\n")  # else an error at the line's end is reported as column 1 of the next
            if not text.strip():
                continue
            try:
                row = DECODER.decode(text)
            except DuplicateKey as exc:
                raise duplicate_key(exc.key, self.source, number) from None
            except json.JSONDecodeError as exc:
                raise DataError(malformed_json(exc), path=self.source, line=number) from None
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}", path=self.source, line=number)
            yield number, row


class CsvSplit(FileSplit):
    """Quoted fields may hold commas and newlines; a row is named by the line where it starts."""

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            self._columns = next(self._records(ignore_progress), (0, []))[1]
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

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        records = self._records(advance)
        header = next(records, None)
        if header is None:
            return
        line, names = header
        repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
        if repeated is not None:
            raise DataError(f"duplicate column name '{repeated}' in the header; rename one", path=self.source, line=line)
        for number, fields in records:
            if len(fields) != len(names):
                more_or_fewer = "more" if len(fields) > len(names) else "fewer"
                raise DataError(
                    f"{len(fields)} fields, {more_or_fewer} than the header's {len(names)}", path=self.source, line=number
                )
            yield number, dict(zip(names, fields))


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

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
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

    def value_advice(self, column: str) -> str:
        kind = self._file().schema_arrow.field(column).type
        return (f"the parquet column has type {kind}: write it as strings (pandas: df['{column}'] = "
                f"df['{column}'].astype(str)) to use it as text")
