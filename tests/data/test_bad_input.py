"""Bad input (issue 3): every case of the list fails with one line naming the file, the line or row, and the
column; or, where the issue says so, is accepted, dropped or truncated with a count.

API cases go through `prepare_data` on real files, as a run does. A representative subset runs through the CLI:
exit 2, exactly one `error: ` line on stderr, no traceback, no project folder and no cache entry.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BOS, EOS, IM_END, IM_START, NEWLINE, arithmetic_pairs, char_ids, make_tokenizer, write_jsonl

from autotrain.data.prepare import prepare_data
from autotrain.errors import DataError
from autotrain.trainers.clm.params import LLMTrainingParams

COLUMNS = dict(prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected")
GOOD = {"prompt": "ok", "chosen": "c", "rejected": "r"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("AITRAINING_CACHE", str(folder))
    return folder


def entries(cache: Path) -> list[Path]:
    """Everything under the tokenized-data cache: a failed run must leave nothing there (no entry, no temp)."""
    root = cache / "tokenized"
    return sorted(root.iterdir()) if root.exists() else []


def prepare(path: Path, chat: bool = False, **overrides):
    params = LLMTrainingParams(data_path=str(path), **{**COLUMNS, **overrides})
    return prepare_data(params, make_tokenizer(chat), 512, paired=params.method != "sft")


def error(path: Path, chat: bool = False, **overrides) -> str:
    """The one-line message of the DataError that preparing `path` raises; nothing may be cached."""
    with pytest.raises(DataError) as info:
        prepare(path, chat, **overrides)
    message = str(info.value)
    assert "\n" not in message
    assert not entries(Path(os.environ["AITRAINING_CACHE"]))
    return message


def jsonl(tmp_path: Path, *lines: dict | str, name: str = "data.jsonl") -> Path:
    """A JSONL file; a str line is written as it is (for broken JSON)."""
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def parquet(tmp_path: Path, rows: list[dict], name: str = "data.parquet") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def plain_ids(prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Ids with the base tokenizer (no template): BOS + prompt, and answer + EOS."""
    return [BOS, *char_ids(prompt)], [*char_ids(answer), EOS]


# --- Files ----------------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert error(path) == f"{path}: no such file or folder"
    assert error(tmp_path / "no-folder" / "train") == f"{tmp_path / 'no-folder' / 'train'}: no such file or folder"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.jsonl", b"", "the file is empty"),
        ("d.csv", b"", "the file is empty"),
        ("d.jsonl", b"\n  \n\n", "the file holds no rows"),
        ("d.csv", b"prompt,chosen,rejected\n", "the file holds no rows"),
        ("d.json", b"[]", "the file holds no rows"),
    ],
)
def test_empty_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert error(path) == f"{path}: {message}"


def test_parquet_without_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    assert error(path) == f"{path}: the file holds no rows"


def test_malformed_json_line_names_the_line(tmp_path):
    path = jsonl(tmp_path, GOOD, GOOD, '{"prompt": "a", "chosen": , "rejected": "b"}')
    assert error(path) == f"{path}:3: malformed JSON at column 27: Expecting value"
    listed = tmp_path / "d.json"
    listed.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a",, }\n]')
    assert error(listed) == f"{listed}:3: malformed JSON at column 18: Expecting property name enclosed in double quotes"


def test_malformed_json_whose_reason_names_a_position_reads_whole(tmp_path):
    """Python's message for an unterminated string ends with "starting at" (the position is apart): the column is
    said there, once, not cut off."""
    from autotrain.inference import read_prompts

    row = '{"prompt": "a", "chosen": "b", "rejected": "c}'  # the string opened at column 44 never closes
    assert row.index('"c}') + 1 == 44
    path = jsonl(tmp_path, GOOD, row)
    assert error(path) == f"{path}:2: malformed JSON: Unterminated string starting at column 44"
    listed = tmp_path / "d.json"
    listed.write_text("[\n" + row + "\n]")
    # In a whole-file JSON the string runs on into the line break that follows the row, at column len(row) + 1.
    assert error(listed) == f"{listed}:2: malformed JSON: Invalid control character at column {len(row) + 1}"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "a}\n')
    with pytest.raises(DataError) as caught:
        read_prompts(str(prompts))
    assert str(caught.value) == f"{prompts}:2: malformed JSON: Unterminated string starting at column 12"
    assert error(jsonl(tmp_path, GOOD, '{"prompt": "a", "chosen": , "rejected": "b"}')).endswith(
        ":2: malformed JSON at column 27: Expecting value")  # a reason without a position keeps the column first


def test_row_that_is_not_an_object(tmp_path):
    path = jsonl(tmp_path, GOOD, '["ok", "c", "r"]')
    assert error(path) == f"{path}:2: expected a JSON object, got list"
    listed = tmp_path / "d.json"
    listed.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  "just text"\n]')
    assert error(listed) == f"{listed}:3: expected a JSON object, got str"
    single = tmp_path / "one.json"
    single.write_text(json.dumps(GOOD))  # an object, not a list of objects
    assert error(single).startswith(f"{single}:1: expected a JSON list of objects")


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.json"])
def test_invalid_utf8_names_the_line(tmp_path, name):
    lines = {
        "d.jsonl": [b'{"prompt": "a", "chosen": "b", "rejected": "c"}',
                    b'{"prompt": "\xff", "chosen": "b", "rejected": "c"}'],
        "d.csv": [b"prompt,chosen,rejected", b"a,b,c", b"a,\xfe,c"],
        "d.json": [b"[", b'{"prompt": "a", "chosen": "b", "rejected": "c"},', b'{"prompt": "\xff", "chosen": "b"}]'],
    }[name]
    content = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(content)
    bad_line = next(i for i, line in enumerate(lines, start=1) if b"\xff" in line or b"\xfe" in line)
    offset = min(i for i in (content.find(b"\xff"), content.find(b"\xfe")) if i >= 0)
    assert error(path) == f"{path}:{bad_line}: invalid UTF-8 at byte {offset}; save the file as UTF-8"


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("d.jsonl", '{"prompt": "a?", "chosen": "b", "rejected": "c"}\n'),
        ("d.csv", "prompt,chosen,rejected\na?,b,c\n"),  # with the BOM unstripped, the first column is '\ufeffprompt'
        ("d.json", '[{"prompt": "a?", "chosen": "b", "rejected": "c"}]'),
    ],
)
def test_utf8_bom_is_accepted(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    data = prepare(path)
    prompt, chosen = plain_ids("a?", "b")
    assert (data.train.prompt_ids, data.train.chosen_ids) == ([prompt], [chosen])


def test_csv_with_quoted_commas_and_embedded_newlines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected\n"a, b","line1\nline2",x\n,d,e\n')
    data_error = error(path)
    # The second record starts on line 4: the quoted newline in line 2's record takes a line.
    assert data_error == f"{path}:4, column 'prompt': empty value; every pair needs a text here"
    path.write_text('prompt,chosen,rejected\n"a, b","line1\nline2",x\nc,d,e\n')
    data = prepare(path)
    prompt, chosen = plain_ids("a, b", "line1\nline2")
    assert (data.train.prompt_ids[0], data.train.chosen_ids[0]) == (prompt, chosen)
    assert len(data.train) == 2


def test_csv_row_with_the_wrong_number_of_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\na,b\n")
    assert error(path) == f"{path}:3: 2 fields, fewer than the header's 3"
    path.write_text("prompt,chosen,rejected\na,b,c,d\n")
    assert error(path) == f"{path}:2: 4 fields, more than the header's 3"


# --- Columns and values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_missing_column_lists_the_columns(tmp_path, kind):
    rows = arithmetic_pairs(2)
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", rows)
    elif kind == "csv":
        path = tmp_path / "d.csv"
        path.write_text("prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows))
    else:
        path = parquet(tmp_path, rows)
    assert error(path, text_column="answer") == f"{path}, column 'answer': missing; columns present: prompt, chosen, rejected"


def test_no_rejected_column_and_none_named(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "c", "bad": "r"}])
    message = error(path, rejected_text_column=None)
    assert message == f"{path}: no rejected column: pass --rejected-text-column; columns present: prompt, chosen, bad"


@pytest.mark.parametrize(("column", "value", "what"), [
    *[(column, value, what) for column in ("prompt", "chosen", "rejected")
      for value, what in ((None, "null"), ([], "empty"))],
    ("prompt", "", "empty"),  # an empty answer is dropped and counted instead (test_empty_completions_are_dropped_...)
])
def test_null_or_empty_value(tmp_path, column, value, what):
    path = jsonl(tmp_path, GOOD, {**GOOD, column: value})
    assert error(path) == f"{path}:2, column '{column}': {what} value; every pair needs a text here"


def test_value_missing_from_one_row(tmp_path):
    path = jsonl(tmp_path, GOOD, {"prompt": "p", "rejected": "r"})
    assert error(path) == f"{path}:2, column 'chosen': missing from this row (it has: prompt, rejected)"


def test_null_in_a_table_names_the_row(tmp_path):
    path = parquet(tmp_path, [GOOD, {**GOOD, "chosen": None}])
    assert error(path) == f"{path}, row 2 of 2, column 'chosen': null value; every pair needs a text here"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "expected text or a list of messages, got int 5; quote it in the file to use it as text"),
        (2.5, "expected text or a list of messages, got float 2.5; quote it in the file to use it as text"),
        (True, "expected text or a list of messages, got bool True; quote it in the file to use it as text"),
        ({"a": 1}, "each message needs 'role' and 'content', got {'a': 1}"),
        ([1], "each message needs 'role' and 'content', got 1"),
    ],
)
def test_non_string_value(tmp_path, value, message):
    path = jsonl(tmp_path, GOOD, {**GOOD, "rejected": value})
    assert error(path) == f"{path}:2, column 'rejected': {message}"


def test_non_string_value_in_a_typed_table_gets_that_formats_advice(tmp_path):
    # "Quote it in the file" cannot apply to parquet or a datasets folder: their columns have types.
    path = parquet(tmp_path, [{**GOOD, "rejected": 5}, {**GOOD, "rejected": 6}])
    assert error(path) == (
        f"{path}, row 1 of 2, column 'rejected': expected text or a list of messages, got int 5; the parquet column "
        "has type int64: write it as strings (pandas: df['rejected'] = df['rejected'].astype(str)) to use it as text"
    )
    from datasets import Dataset

    saved = tmp_path / "saved"
    Dataset.from_list([{**GOOD, "rejected": 2.5}]).save_to_disk(str(saved))
    assert error(saved) == (
        f"{saved}[train], row 1 of 1, column 'rejected': expected text or a list of messages, got float 2.5; the "
        "dataset's column has type float64: cast it to text first (dataset.cast_column('rejected', "
        "datasets.Value('string')))"
    )


TEXTS_THAT_LOOK_TYPED = ["4", "True", "[1]", "null", "{}", "-0.5"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_strings_that_look_like_other_types_are_plain_text(tmp_path, kind):
    rows = [{"prompt": text, "chosen": text, "rejected": "x" + text} for text in TEXTS_THAT_LOOK_TYPED]
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", rows)
    elif kind == "csv":  # unquoted, as a spreadsheet writes them
        path = tmp_path / "d.csv"
        path.write_text("prompt,chosen,rejected\n" + "".join(f"{t},{t},x{t}\n" for t in TEXTS_THAT_LOOK_TYPED))
    else:
        path = parquet(tmp_path, rows)
    data = prepare(path)
    assert data.train.prompt_ids == [plain_ids(text, text)[0] for text in TEXTS_THAT_LOOK_TYPED]
    assert data.train.chosen_ids == [plain_ids(text, text)[1] for text in TEXTS_THAT_LOOK_TYPED]


def test_typed_strings_with_a_chat_template(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "True", "chosen": "4", "rejected": "[1]"}])
    data = prepare(path, chat=True)
    assert data.train.prompt_ids[0] == [IM_START, *char_ids("user\nTrue"), IM_END, NEWLINE, IM_START,
                                        *char_ids("assistant\n")]
    assert data.train.rejected_ids[0] == [*char_ids("[1]"), IM_END, NEWLINE]


MESSAGES = [{"role": "user", "content": "hi"}]


def test_mixed_string_and_conversational_rows(tmp_path):
    path = jsonl(tmp_path, GOOD, GOOD, {**GOOD, "prompt": MESSAGES})
    assert error(path, chat=True) == f"{path}:3: mixes plain-string and conversational rows; earlier rows are plain strings"
    path = jsonl(tmp_path, {**GOOD, "prompt": MESSAGES}, GOOD)
    assert error(path, chat=True) == f"{path}:2: mixes plain-string and conversational rows; earlier rows are conversational"


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("prompt", [{"content": "x"}], "each message needs 'role' and 'content', got {'content': 'x'}"),
        ("prompt", [{"role": "user"}], "each message needs 'role' and 'content', got {'role': 'user'}"),
        ("prompt", ["hi"], "each message needs 'role' and 'content', got 'hi'"),
        ("prompt", [{"role": "robot", "content": "x"}], "unknown role 'robot'; expected one of system, user, assistant, tool"),
        ("prompt", [{"role": "user", "content": 7}], "message content must be text, got 7"),
        ("chosen", [{"role": "bot", "content": "x"}], "unknown role 'bot'; expected one of system, user, assistant, tool"),
        ("chosen", [{"role": "user", "content": "x"}], "the answer must start with an assistant message"),
    ],
)
def test_malformed_messages(tmp_path, column, value, message):
    good = {"prompt": MESSAGES, "chosen": "c", "rejected": "r"}
    path = jsonl(tmp_path, good, {**good, column: value})
    assert error(path, chat=True) == f"{path}:2, column '{column}': {message}"


def test_conversational_rows_need_a_chat_template(tmp_path):
    path = jsonl(tmp_path, {"prompt": MESSAGES, "chosen": "c", "rejected": "r"})
    assert error(path).startswith(f"{path}:1: conversational rows need a chat template")


# --- Pairs -----------------------------------------------------------------------------------------------------


def test_equal_pairs_are_dropped_and_counted(tmp_path, caplog):
    path = jsonl(tmp_path, GOOD, {"prompt": "a", "chosen": "same", "rejected": "same"}, {**GOOD, "prompt": "b"})
    with caplog.at_level(logging.INFO, logger="autotrain"):
        data = prepare(path)
    assert len(data.train) == 2
    assert data.train.dropped == {"chosen == rejected": 1}
    assert f"{path}: dropped 1 of 3 pairs (chosen == rejected)" in caplog.messages


@pytest.mark.parametrize("chat", [False, True])
def test_whitespace_only_completions_are_dropped_and_counted(tmp_path, caplog, chat):
    blank_message = [{"role": "assistant", "content": " \n "}]
    rows = [GOOD, {**GOOD, "chosen": "  \n\t"}, {**GOOD, "rejected": " "}, {**GOOD, "prompt": "b"}]
    if chat:
        rows.append({"prompt": MESSAGES, "chosen": blank_message, "rejected": "r"})
        rows = [{**r, "prompt": MESSAGES} for r in rows]
    path = jsonl(tmp_path, *rows)
    with caplog.at_level(logging.INFO, logger="autotrain"):
        data = prepare(path, chat=chat)
    assert len(data.train) == 2
    blank = len(rows) - 2
    assert data.train.dropped == {"completion only whitespace": blank}
    assert f"{path}: dropped {blank} of {len(rows)} pairs (completion only whitespace)" in caplog.messages


def test_whitespace_only_sft_text_is_dropped_and_counted(tmp_path):
    path = jsonl(tmp_path, {"text": "a b"}, {"text": " \n"}, {"text": "c"})
    data = prepare(path, trainer="sft", prompt_text_column=None, text_column="text", rejected_text_column=None)
    assert len(data.train) == 2 and data.train.dropped == {"completion only whitespace": 1}


def test_empty_completions_are_dropped_and_counted_like_whitespace_but_an_empty_prompt_is_an_error(tmp_path):
    """"" is the commonest blank answer in a user's file: dropped and counted, as whitespace is (README)."""
    empty_prompt = jsonl(tmp_path, GOOD, {**GOOD, "prompt": ""})
    assert error(empty_prompt) == f"{empty_prompt}:2, column 'prompt': empty value; every pair needs a text here"
    path = jsonl(tmp_path, GOOD, {**GOOD, "chosen": ""}, {**GOOD, "rejected": ""}, {**GOOD, "prompt": "b"})
    data = prepare(path)
    assert len(data.train) == 2 and data.train.dropped == {"completion only whitespace": 2}
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,chosen,rejected\na,b,c\nd,,f\n")  # an empty CSV cell is ""
    data = prepare(csv_path)
    assert len(data.train) == 1 and data.train.dropped == {"completion only whitespace": 1}
    sft = jsonl(tmp_path, {"text": "a b"}, {"text": ""}, {"text": "c"})
    data = prepare(sft, trainer="sft", prompt_text_column=None, text_column="text", rejected_text_column=None)
    assert len(data.train) == 2 and data.train.dropped == {"completion only whitespace": 1}


def test_pairs_equal_after_truncation_are_dropped_and_counted(tmp_path, caplog):
    path = jsonl(tmp_path, GOOD, {"prompt": "p", "chosen": "abcX", "rejected": "abcY"})
    with caplog.at_level(logging.INFO, logger="autotrain"):
        data = prepare(path, max_completion_length=3)
    assert data.train.chosen_ids == [plain_ids("ok", "c")[1]]
    assert data.train.dropped == {"chosen == rejected after truncation": 1}
    assert f"{path}: dropped 1 of 2 pairs (chosen == rejected after truncation)" in caplog.messages


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(text_column="prompt"), "--prompt-text-column and --text-column: the prompt and the chosen answer are "
         "both column 'prompt'; name a different column for each"),
        (dict(text_column="prompt", prompt_text_column=None), "--prompt-text-column and --text-column: the prompt and "
         "the chosen answer are both column 'prompt'; name a different column for each"),
        (dict(rejected_text_column="chosen"), "--text-column and --rejected-text-column: the chosen answer and the "
         "rejected answer are both column 'chosen'; name a different column for each"),
        (dict(trainer="sft", text_column="prompt", rejected_text_column=None, prompt_text_column="prompt"),
         "--prompt-text-column and --text-column: the prompt and the completion are both column 'prompt'; name a "
         "different column for each"),
    ],
)
def test_two_roles_in_one_column_are_refused(tmp_path, overrides, message):
    from autotrain.errors import ParamsError

    path = jsonl(tmp_path, GOOD)
    with pytest.raises(ParamsError) as info:
        prepare(path, **overrides)
    assert str(info.value) == message
    assert not entries(Path(os.environ["AITRAINING_CACHE"]))


def test_every_pair_dropped_is_an_error(tmp_path):
    path = jsonl(tmp_path, {"prompt": "a", "chosen": "x", "rejected": "x"}, {"prompt": "b", "chosen": "y", "rejected": "y"})
    assert error(path) == f"{path}: every pair was dropped ({{'chosen == rejected': 2}}); nothing left to train on"


def test_long_prompt_is_truncated_and_counted(tmp_path, caplog):
    path = jsonl(tmp_path, {"prompt": "abcdefgh", "chosen": "1", "rejected": "2"},
                 {"prompt": "ab", "chosen": "1", "rejected": "2"})
    with caplog.at_level(logging.INFO, logger="autotrain"):
        data = prepare(path, max_prompt_length=4)
    assert data.train.prompt_ids == [char_ids("efgh"), [BOS, *char_ids("ab")]]  # the end is kept
    assert data.train.truncated == {"prompt > max_prompt_length": 1}
    assert f"{path}: 1 of 2 pairs truncated (prompt > max_prompt_length)" in caplog.messages


def test_completion_empty_after_truncation_is_dropped_and_counted(tmp_path, caplog):
    # With block_size 6, the first prompt (BOS + 6 characters) leaves no room for a completion.
    path = jsonl(tmp_path, {"prompt": "abcdef", "chosen": "1", "rejected": "2"},
                 {"prompt": "b", "chosen": "1", "rejected": "2"})
    with caplog.at_level(logging.INFO, logger="autotrain"):
        data = prepare(path, block_size=6)
    assert len(data.train) == 1
    assert data.train.dropped == {"completion empty after truncation": 1}
    assert f"{path}: dropped 1 of 2 pairs (completion empty after truncation)" in caplog.messages


# --- A validation split that does not exist ----------------------------------------------------------------------


def test_valid_split_that_does_not_exist_fails_before_any_tokenizing(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized before the missing split was reported")

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", no_tokenizing)
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", arithmetic_pairs(3))
    assert error(folder, valid_split="validation") == (
        f"{folder}: no file for split 'validation' (expected validation.jsonl, .json, .csv or .parquet, optionally "
        "compressed: .gz, .bz2, .xz, .zst); splits present: train"
    )
    single = write_jsonl(tmp_path / "d.jsonl", arithmetic_pairs(3))
    assert error(single, valid_split="validation").startswith(
        f"{single}: a single file holds only the training split, so split 'validation' does not exist"
    )
    from datasets import Dataset, DatasetDict

    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(arithmetic_pairs(3))}).save_to_disk(str(saved))
    assert error(saved, valid_split="validation") == f"{saved}: split 'validation' does not exist; splits: train"


def test_valid_split_needs_the_train_columns(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", arithmetic_pairs(3))
    write_jsonl(folder / "validation.jsonl", [{"prompt": "p", "answer": "c", "rejected": "r"}])
    assert error(folder, valid_split="validation") == (
        f"{folder / 'validation.jsonl'}, column 'chosen': missing; columns present: prompt, answer, rejected"
    )


# --- Through the CLI ----------------------------------------------------------------------------------------------

# name -> (data file, its bytes or None for no file, extra flags, the one line stderr must hold)
CLI_CASES = {
    "missing path": ("nope.jsonl", None, [], "error: nope.jsonl: no such file or folder"),
    "empty file": ("d.jsonl", b"", [], "error: d.jsonl: the file is empty"),
    "malformed JSON": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a",\n', [],
                       # the line ends after its 15th character
                       "error: d.jsonl:2: malformed JSON at column 16: Expecting property name enclosed in double quotes"),
    "invalid UTF-8": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff"}\n', [],
                      "error: d.jsonl:2: invalid UTF-8 at byte 60; save the file as UTF-8"),
    "missing column": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', ["--text-column", "answer"],
                       "error: d.jsonl, column 'answer': missing; columns present: prompt, chosen, rejected"),
    "non-string value": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", '
                         b'"rejected": 5}\n', [],
                         "error: d.jsonl:2, column 'rejected': expected text or a list of messages, got int 5; quote it "
                         "in the file to use it as text"),
    "unknown role": ("d.jsonl", b'{"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"}\n', [],
                     "error: d.jsonl:1, column 'prompt': unknown role 'robot'; expected one of system, user, "
                     "assistant, tool"),
    "all pairs dropped": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "b"}\n', [],
                          "error: d.jsonl: every pair was dropped ({'chosen == rejected': 1}); nothing left to train on"),
    "compressed, malformed line": ("d.jsonl.gz", gzip.compress(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                                                             b'{"prompt": "a",\n'), [],
                                   "error: d.jsonl.gz:2: malformed JSON at column 16: Expecting property name enclosed "
                                   "in double quotes"),
    "duplicate key": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c", "chosen": "d"}\n', [],
                      "error: d.jsonl:1: duplicate key 'chosen' in one object; JSON would keep only its last value, "
                      "so remove or rename one"),
    "two roles, one column": ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', ["--text-column", "prompt"],
                              "error: --prompt-text-column and --text-column: the prompt and the chosen answer are both "
                              "column 'prompt'; name a different column for each"),
    "missing valid split": ("splits/train.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n',
                            ["--valid-split", "validation"],
                            "error: splits: no file for split 'validation' (expected validation.jsonl, .json, .csv or "
                            ".parquet, optionally compressed: .gz, .bz2, .xz, .zst); splits present: train"),
}
# Accepted: gzip, a BOM, quoted commas and newlines, and text that looks like numbers, booleans or lists; a
# whitespace-only answer is dropped and counted.
GOOD_CSV = "\ufeffprompt,chosen,rejected\n" + "".join(
    f'"{a}+{b}, quickly?","{a + b}\nTrue",[{a + b + 1}]\n' for a in range(3) for b in range(2)
) + '"9+9?"," \n ",17\n'


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, chat_model) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """All CLI cases, started together: each run spends seconds importing torch and transformers."""
    started = {}
    for name, (file_name, content, flags, _) in {**CLI_CASES, "accepted CSV": ("d.csv.gz", None, [], None)}.items():
        folder = tmp_path_factory.mktemp("cli")
        data = folder / file_name
        data.parent.mkdir(parents=True, exist_ok=True)
        if name == "accepted CSV":
            data.write_bytes(gzip.compress(GOOD_CSV.encode()))
            flags = ["--max-steps", "1", "--batch-size", "2", "--gradient-accumulation", "1"]
        elif content is not None:
            data.write_bytes(content)
        data_arg = str(Path(file_name).parent) if name == "missing valid split" else file_name
        cmd = [sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(chat_model), "--data-path", data_arg,
               "--project-name", "p", "--prompt-text-column", "prompt", "--rejected-text-column", "rejected", *flags]
        if "--text-column" not in flags:
            cmd += ["--text-column", "chosen"]
        env = {**os.environ, "AITRAINING_CACHE": str(folder / "cache")}
        started[name] = (folder, subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (folder, process) in started.items():
        out, err = process.communicate(timeout=600)
        results[name] = (folder, subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_prints_one_error_line_and_exits_2(cli_runs, case):
    folder, done = cli_runs[case]
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [CLI_CASES[case][3]]
    assert "Traceback" not in done.stderr
    assert not (folder / "p").exists()
    assert not entries(folder / "cache")


def test_cli_accepts_gzip_bom_quoted_commas_newlines_and_typed_looking_text(cli_runs):
    folder, done = cli_runs["accepted CSV"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / "p" / "model.safetensors").exists()
    card = (folder / "p" / "README.md").read_text()
    assert "6 pairs" in card and "- train: 1 pair dropped (completion only whitespace)" in card
    # The tokenized data went to the cache, not into the project folder.
    assert len(entries(folder / "cache")) == 1
    assert not list((folder / "p").rglob("*.arrow"))
