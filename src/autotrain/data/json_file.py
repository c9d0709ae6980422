"""Rows from a JSON file (optionally compressed): a list of objects, a wrapped list, or an object of columns."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autotrain.data.files import DECODER, DuplicateKey, FileSplit, duplicate_key
from autotrain.data.split import Advance, Row, ignore_progress
from autotrain.errors import DataError, malformed_json

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class JsonSplit(FileSplit):
    """A JSON list of objects; an object with one key holding that list ({"data": [...]}); or an object of columns
    ({"prompt": [...], "chosen": [...]}, row i made of item i of each list, as pandas' `orient="columns"` writes).

    A list is decoded item by item, so each row knows its line; a column-oriented file names rows by index
    (`file, row N of M`). The file's text is held in memory while it is read (JSON has no record boundaries), so
    large data belongs in a .jsonl file.
    """

    items: tuple[type, ...] = (dict,)  # what a list may hold (row objects), and how an error names it
    items_named = "a JSON object"

    def __init__(self, path: Path, compression: str = ""):
        super().__init__(path, compression)
        self._table_rows: int | None = None  # set while reading a column-oriented file: rows are named by index

    def where(self, number: int) -> str:
        if self._table_rows is not None:
            return f"{self.source}, row {number} of {self._table_rows}"
        return super().where(number)

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        raw = self._read_all()
        start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise self._bad_utf8(exc.start + start, raw[: exc.start + start].count(b"\n") + 1) from None
        del raw
        self._scale = self.progress_total() / max(len(text), 1)  # characters -> stored bytes, for the progress bar
        pos = _WHITESPACE.match(text).end()
        if text.startswith("[", pos):
            self._table_rows = None
            pos = yield from self._listed(text, pos, advance)
        elif text.startswith("{", pos):
            pos = yield from self._object(text, pos, advance)
        else:
            self._not_rows(text, pos)
        if _WHITESPACE.match(text, pos).end() != len(text):
            self._not_rows(text, pos)

    def _listed(self, text: str, pos: int, advance: Advance) -> Iterator[tuple[int, Row]]:
        """The rows of the list that opens at `pos`; returns the position after it."""
        pos = self._expect(text, pos, "[")
        line, counted = 1, 0
        while not text.startswith("]", pos):
            line += text.count("\n", counted, pos)
            counted = start = pos
            item, pos = self._decode(text, pos, line)
            if not isinstance(item, self.items):
                raise DataError(f"expected {self.items_named}, got {type(item).__name__}", path=self.source,
                                line=line)
            advance(int((pos - start) * self._scale))
            yield line, item
            pos = _WHITESPACE.match(text, pos).end()
            if not text.startswith("]", pos):
                pos = self._expect(text, pos, ",")
        return self._expect(text, pos, "]")

    def _object(self, text: str, pos: int, advance: Advance) -> Iterator[tuple[int, Row]]:
        """A wrapper ({"data": [{...}, ...]}: its one list of objects is streamed) or an object of columns."""
        pos = self._expect(text, pos, "{")
        columns: dict[str, list[Any]] = {}
        key_lines: dict[str, int] = {}
        while not text.startswith("}", pos):
            key_line = text.count("\n", 0, pos) + 1
            key, pos = self._decode(text, pos, key_line)
            if not isinstance(key, str):
                self._not_rows(text, pos)
            if key in key_lines:
                raise duplicate_key(key, self.source, key_line)
            pos = self._expect(text, pos, ":")
            opens_objects = text.startswith("[", pos) and text.startswith("{", _WHITESPACE.match(text, pos + 1).end())
            if not columns and opens_objects:  # the rows wrapped in an object: stream them, then the object must end
                self._table_rows = None
                pos = yield from self._listed(text, pos, advance)
                return self._expect(text, pos, "}")
            start = pos
            value, pos = self._decode(text, pos, key_line)
            if not isinstance(value, list):
                self._not_rows(text, start, f"'{key}' holds a {type(value).__name__}")
            advance(int((pos - start) * self._scale))
            columns[key], key_lines[key] = value, key_line
            pos = _WHITESPACE.match(text, pos).end()
            if not text.startswith("}", pos):
                pos = self._expect(text, pos, ",")
        pos = self._expect(text, pos, "}")
        lengths = {key: len(values) for key, values in columns.items()}
        first = next(iter(lengths), None)
        for key, length in lengths.items():
            if length != lengths[first]:
                raise DataError(
                    f"column '{key}' holds {length} values and column '{first}' {lengths[first]}; a JSON object of "
                    "columns needs one value per row in every column",
                    path=self.source,
                    line=key_lines[key],
                )
        self._table_rows = lengths[first] if first is not None else 0
        for index in range(self._table_rows):
            yield index + 1, {key: values[index] for key, values in columns.items()}
        return pos

    def _decode(self, text: str, pos: int, line: int) -> tuple[Any, int]:
        """One JSON value from `pos`: (value, position after it); `line` names the object a duplicate key is in."""
        try:
            return DECODER.raw_decode(text, pos)
        except DuplicateKey as exc:
            raise duplicate_key(exc.key, self.source, line) from None
        except json.JSONDecodeError as exc:
            message = malformed_json(exc)
            raise DataError(message, path=self.source, line=exc.lineno) from None

    def _expect(self, text: str, pos: int, char: str) -> int:
        """The position after `char` and any whitespace, where `char` must come after whitespace from `pos`."""
        pos = _WHITESPACE.match(text, pos).end()
        if not text.startswith(char, pos):
            self._not_rows(text, pos)
        return _WHITESPACE.match(text, pos + 1).end()

    def _not_rows(self, text: str, pos: int, found: str = "") -> None:
        raise DataError(
            'expected a JSON list of objects, an object with one key holding that list ({"data": [...]}) or an '
            'object of column lists ({"prompt": [...], "chosen": [...]})' + (f", but {found}" if found else "")
            + "; for one object per line use a .jsonl file",
            path=self.source,
            line=text.count("\n", 0, pos) + 1,
        )
