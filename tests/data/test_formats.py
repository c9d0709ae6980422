"""Formats users feed routinely (issue 11): compressed files, column-oriented JSON, duplicate keys.

Each accepted format must give exactly the ids the plain file gives (the plain JSONL reading is pinned by the
goldens in test_data.py); each bad row must be named as in the plain file, by file and line (or row).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import zlib
from pathlib import Path

import pytest
from conftest import arithmetic_pairs, make_tokenizer, write_jsonl

from autotrain.data.prepare import prepare_data
from autotrain.data.sources import load_split
from autotrain.errors import DataError
from autotrain.trainers.clm.params import LLMTrainingParams

COLUMNS = dict(prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected")


def _zstd(data: bytes) -> bytes:
    import zstandard

    # Two frames, as `zstd` writes for concatenated inputs and pzstd always: both must be read.
    half = len(data) // 2
    return zstandard.ZstdCompressor().compress(data[:half]) + zstandard.ZstdCompressor().compress(data[half:])


COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zstd}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def prepare(path: Path, **overrides):
    return prepare_data(LLMTrainingParams(data_path=str(path), **{**COLUMNS, **overrides}), make_tokenizer(True), 512)


def error(path: Path, **overrides) -> str:
    with pytest.raises(DataError) as info:
        prepare(path, **overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def body(kind: str, rows: list[dict]) -> bytes:
    if kind == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if kind == ".json":
        return json.dumps(rows, indent=1).encode()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


# --- Compressed files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", list(COMPRESS))
@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv"])
def test_compressed_files_give_the_plain_files_ids(tmp_path, kind, compression):
    rows = arithmetic_pairs(5)
    plain = tmp_path / f"d{kind}"
    plain.write_bytes(body(kind, rows))
    packed = tmp_path / f"d{kind}{compression}"
    packed.write_bytes(COMPRESS[compression](body(kind, rows)))
    assert prepare(packed).train.as_dict() == prepare(plain).train.as_dict()
    assert len(prepare(packed).train) == 5


@pytest.mark.parametrize("compression", list(COMPRESS))
def test_a_bad_line_in_a_compressed_file_is_named_as_in_the_plain_file(tmp_path, compression):
    lines = body(".jsonl", arithmetic_pairs(3)) + b'{"prompt": "a", "chosen": , "rejected": "b"}\n'
    path = tmp_path / f"d.jsonl{compression}"
    path.write_bytes(COMPRESS[compression](lines))
    assert error(path) == f"{path}:4: malformed JSON at column 27: Expecting value"
    csv_path = tmp_path / f"d.csv{compression}"
    csv_path.write_bytes(COMPRESS[compression](b"prompt,chosen,rejected\na,b,c\n,b,c\n"))
    assert error(csv_path) == f"{csv_path}:3, column 'prompt': empty value; every pair needs a text here"


def test_a_compressed_file_is_streamed(tmp_path):
    # The first rows are usable before the end of the file is decompressed: columns are learned from a damaged
    # file whose damage lies past them, and the damage is reported with the line reached.
    good = body(".jsonl", arithmetic_pairs(300))
    packed = gzip.compress(good)
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(packed[: len(packed) - 40])  # cut short: the end-of-stream marker and some data are gone
    split = load_split(str(path), "train", is_train=True)
    assert split.columns == ["prompt", "chosen", "rejected"]
    with pytest.raises(DataError) as info:
        list(split.rows())
    message = str(info.value)
    assert message.startswith(f"{path}:") and "the compressed data is damaged or cut short" in message
    # Every whole line the cut stream still holds was read; the error names the line after them.
    held = zlib.decompressobj(wbits=31).decompress(path.read_bytes())
    whole_lines = held.count(b"\n")
    assert message.startswith(f"{path}:{whole_lines + 1}: "), message
    assert whole_lines > 100  # past the rows read to learn the columns


def test_split_folder_with_compressed_files(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.jsonl.gz").write_bytes(gzip.compress(body(".jsonl", arithmetic_pairs(6))))
    (folder / "validation.csv.xz").write_bytes(lzma.compress(body(".csv", arithmetic_pairs(3, start=20))))
    data = prepare(folder, valid_split="validation")
    assert (len(data.train), len(data.valid)) == (6, 3)
    reference = prepare(write_jsonl(tmp_path / "v.jsonl", arithmetic_pairs(3, start=20)))
    assert data.valid.as_dict() == reference.train.as_dict()
    assert error(folder, valid_split="test") == (
        f"{folder}: no file for split 'test' (expected test.jsonl, .json, .csv or .parquet, optionally compressed: "
        ".gz, .bz2, .xz, .zst); splits present: train, validation"
    )


def test_compressed_files_that_cannot_be_read(tmp_path):
    fake = tmp_path / "d.jsonl.gz"
    fake.write_bytes(body(".jsonl", arithmetic_pairs(2)))  # not gzip at all
    assert error(fake).startswith(f"{fake}:1: the compressed data is damaged or cut short (")
    parquet = tmp_path / "d.parquet.gz"
    parquet.write_bytes(gzip.compress(b"PAR1"))
    assert error(parquet) == (
        f"{parquet}: a parquet file compresses its own columns and is read in place; decompress it "
        "(gunzip) and pass the .parquet file"
    )
    other = tmp_path / "d.txt.gz"
    other.write_bytes(gzip.compress(b"hello"))
    assert error(other) == (
        f"{other}: unsupported file type '.txt.gz'; use one of .jsonl, .json, .csv, .parquet (the first three "
        "optionally compressed: .gz, .bz2, .xz, .zst)"
    )


# --- Column-oriented JSON -----------------------------------------------------------------------------------------


def columns_of(rows: list[dict]) -> dict[str, list]:
    return {name: [r[name] for r in rows] for name in rows[0]}


def test_column_oriented_json_gives_the_row_lists_ids(tmp_path):
    rows = arithmetic_pairs(4)
    by_rows = tmp_path / "rows.json"
    by_rows.write_text(json.dumps(rows))
    by_columns = tmp_path / "columns.json"
    by_columns.write_text(json.dumps(columns_of(rows), indent=2))
    assert prepare(by_columns).train.as_dict() == prepare(by_rows).train.as_dict()
    split = load_split(str(by_columns), "train", is_train=True)
    assert [n for n, _ in split.rows()] == [1, 2, 3, 4]
    assert split.where(2) == f"{by_columns}, row 2 of 4"
    # One column only (SFT's text) is a column too, not a {"data": [...]} wrapper.
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"text": ["a b", "c d"]}))
    assert [row for _, row in load_split(str(texts), "train", is_train=True).rows()] == [
        {"text": "a b"}, {"text": "c d"}]


def test_column_oriented_json_errors_name_the_row(tmp_path):
    columns = columns_of(arithmetic_pairs(3))
    columns["chosen"][1] = None
    path = tmp_path / "d.json"
    path.write_text(json.dumps(columns, indent=2))
    assert error(path) == f"{path}, row 2 of 3, column 'chosen': null value; every pair needs a text here"
    uneven = columns_of(arithmetic_pairs(3))
    uneven["rejected"] = uneven["rejected"][:2]
    path.write_text(json.dumps(uneven, indent=2).replace('"rejected"', '\n"rejected"'))
    line = path.read_text().splitlines().index('"rejected": [') + 1
    assert error(path) == (
        f"{path}:{line}: column 'rejected' holds 2 values and column 'prompt' 3; a JSON object of columns needs "
        "one value per row in every column"
    )
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"prompt": "ok", "chosen": "c", "rejected": "r"}))
    assert error(single) == (
        f"{single}:1: expected a JSON list of objects, an object with one key holding that list "
        '({"data": [...]}) or an object of column lists ({"prompt": [...], "chosen": [...]}), but \'prompt\' holds '
        "a str; for one object per line use a .jsonl file"
    )


# --- Duplicate keys -------------------------------------------------------------------------------------------------


def test_a_duplicate_key_in_a_row_is_an_error(tmp_path):
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    path = tmp_path / "d.jsonl"
    path.write_text(good + "\n" + '{"prompt": "a", "chosen": "b", "rejected": "c", "chosen": "x"}\n')
    assert error(path) == (
        f"{path}:2: duplicate key 'chosen' in one object; JSON would keep only its last value, so remove or "
        "rename one"
    )
    listed = tmp_path / "d.json"
    listed.write_text("[\n" + good + ",\n" + '{"prompt": [{"role": "user", "role": "system", "content": "x"}], '
                      '"chosen": "b", "rejected": "c"}\n]')
    assert error(listed).startswith(f"{listed}:3: duplicate key 'role' in one object")
    columns = tmp_path / "c.json"
    columns.write_text('{"prompt": ["a"],\n "chosen": ["b"],\n "rejected": ["c"],\n "prompt": ["d"]}')
    assert error(columns).startswith(f"{columns}:4: duplicate key 'prompt' in one object")
    compressed = tmp_path / "d.jsonl.gz"
    compressed.write_bytes(gzip.compress(path.read_bytes()))
    assert error(compressed).startswith(f"{compressed}:2: duplicate key 'chosen' in one object")
