"""What every source of rows is: a `Split` streams `(number, row)` and says where a number is.

How errors name a row (`Split.where`):
- JSONL, CSV and JSON lists: `file:LINE`, the line where the row starts, numbered from 1 as an editor does (in a
  compressed file, the line of the decompressed text, as `zcat file | sed -n LINEp` shows it);
- parquet files, column-oriented JSON and datasets: `file, row N of M`, rows counted from 1.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from autotrain.errors import DataError

# Rows read to learn the columns of a JSON file: enough to see a column that the first row happens to lack.
PEEK_ROWS = 100

Row = dict[str, Any]
Advance = Callable[[int], object]  # called with the progress made, in `Split.progress_unit`

# What to do about a value that is not text, where the value comes from a file that has types (JSON). Sources whose
# values are typed by their schema (parquet, datasets) say what to do there instead (`Split.value_advice`).
QUOTE_IT = "quote it in the file to use it as text"


def ignore_progress(_: int) -> None:
    return None


class Location:
    """Where a row is; formatted only when an error names it, since most rows never need it."""

    __slots__ = ("split", "number")

    def __init__(self, split: Split, number: int):
        self.split, self.number = split, number

    def __str__(self) -> str:
        return self.split.where(self.number)

    def value_advice(self, column: str) -> str:
        return self.split.value_advice(column)


class Split:
    """One split of the data; `rows()` streams `(number, row)`, where `where(number)` is what a user can open."""

    progress_unit = "rows"

    def __init__(self, source: str):
        self.source = source
        self._columns: list[str] | None = None

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        raise NotImplementedError

    def where(self, number: int) -> str:
        return f"{self.source}:{number}"

    def value_advice(self, column: str) -> str:
        """How to turn a non-text value of `column` into text, in this source's own terms."""
        return QUOTE_IT

    def progress_total(self) -> int | None:
        return None

    def fingerprint(self) -> str:
        """Identifies the content: equal fingerprints mean equal rows (the tokenized-data cache's key)."""
        raise NotImplementedError

    def changed_since_fingerprint(self) -> bool:
        """Whether the content may differ now from what `fingerprint()` described (a file rewritten meanwhile):
        rows read in between may not be the ones the fingerprint names. Sources held in memory never change."""
        return False

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

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        for number, row in zip(self._lines, self._rows):
            advance(1)
            yield number, row

    def progress_total(self) -> int:
        return len(self._rows)

    def fingerprint(self) -> str:
        payload = json.dumps([self._rows, self._lines], sort_keys=True, default=repr)
        return hashlib.sha256(payload.encode()).hexdigest()


class Sampled(Split):
    """Some rows of another split, picked by their position (0-based) in it: `evenly(n)` takes every len/n-th row
    from the first (aitraining's max_samples), `first(n)` the first n. Errors still name the row in its source."""

    def __init__(self, inner: Split, positions: Callable[[int], range], label: str):
        super().__init__(inner.source)
        self.inner, self._positions, self._label = inner, positions, label
        self.progress_unit = inner.progress_unit

    @classmethod
    def evenly(cls, inner: Split, count: int) -> Sampled:
        return cls(inner, lambda total: range(0, total, max(1, total // count))[:count], f"evenly:{count}")

    @classmethod
    def first(cls, inner: Split, count: int) -> Sampled:
        return cls(inner, lambda total: range(min(count, total)), f"first:{count}")

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        keep = set(self._positions(sum(1 for _ in self.inner.rows())))  # streamed: one pass to count
        for position, (number, row) in enumerate(self.inner.rows(advance)):
            if position in keep:
                yield number, row

    def where(self, number: int) -> str:
        return self.inner.where(number)

    def value_advice(self, column: str) -> str:
        return self.inner.value_advice(column)

    def progress_total(self) -> int | None:
        return self.inner.progress_total()

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.inner.fingerprint()}|{self._label}".encode()).hexdigest()

    def changed_since_fingerprint(self) -> bool:
        return self.inner.changed_since_fingerprint()
