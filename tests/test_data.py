"""Data stage: sources, rendering goldens, truncation, collation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import BOS, EOS, IM_END, IM_START, NEWLINE, arithmetic_pairs, char_ids, make_tokenizer, write_jsonl

from autotrain.data.collate import PaddedCollator
from autotrain.data.prepare import prepare_data
from autotrain.data.render import Columns, Renderer, pick_template
from autotrain.data.sources import RawSplit, load_split
from autotrain.data.tokenize import Limits, tokenize_split
from autotrain.errors import DataError
from autotrain.trainers.clm.params import LLMTrainingParams

COLS = Columns("prompt", "chosen", "rejected")
WIDE = Limits(max_prompt_length=1000, max_completion_length=None, block_size=1000)


def tokenize_rows(rows, chat=True, limits=WIDE, columns=COLS, template="own"):
    tok = make_tokenizer(chat)
    chosen_template = pick_template(tok, None) if template == "own" else template
    split = RawSplit("mem.jsonl", rows, list(range(1, len(rows) + 1)))
    return tokenize_split(split, Renderer(tok, chosen_template, columns), tok, limits)


# --- Goldens: exact ids --------------------------------------------------------------------------------------


def test_golden_strings_with_chatml_template():
    out = tokenize_rows([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    user_turn = [IM_START, *char_ids("user\n2+2?"), IM_END, NEWLINE]
    assert out.prompt_ids[0] == user_turn + [IM_START, *char_ids("assistant\n")]
    assert out.chosen_ids[0] == [*char_ids("4"), IM_END, NEWLINE]
    assert out.rejected_ids[0] == [*char_ids("5"), IM_END, NEWLINE]
    # The user turn appears exactly once in prompt + completion (the parent tool rendered it twice).
    full = out.prompt_ids[0] + out.chosen_ids[0]
    assert sum(full[i : i + len(user_turn)] == user_turn for i in range(len(full))) == 1


SYSTEM_PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
EXPECTED_SYSTEM_PROMPT = (
    [IM_START, *char_ids("system\nBe brief."), IM_END, NEWLINE]
    + [IM_START, *char_ids("user\nHi"), IM_END, NEWLINE]
    + [IM_START, *char_ids("assistant\n")]
)


def test_golden_conversational_row_with_system_message():
    row = {"prompt": SYSTEM_PROMPT, "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": "Go away."}
    out = tokenize_rows([row])
    assert out.prompt_ids[0] == EXPECTED_SYSTEM_PROMPT
    assert out.chosen_ids[0] == [*char_ids("Hello."), IM_END, NEWLINE]
    assert out.rejected_ids[0] == [*char_ids("Go away."), IM_END, NEWLINE]


def test_full_conversations_share_the_prompt_prefix():
    chosen = SYSTEM_PROMPT + [{"role": "assistant", "content": "Hello."}]
    rejected = SYSTEM_PROMPT + [{"role": "assistant", "content": "Go away."}]
    out = tokenize_rows([{"chosen": chosen, "rejected": rejected}], columns=Columns(None, "chosen", "rejected"))
    assert out.prompt_ids[0] == EXPECTED_SYSTEM_PROMPT
    assert out.chosen_ids[0] == [*char_ids("Hello."), IM_END, NEWLINE]
    # A prompt column plus full conversations that repeat it: the same ids.
    again = tokenize_rows([{"prompt": SYSTEM_PROMPT, "chosen": chosen, "rejected": rejected}])
    assert again.as_dict() == out.as_dict()


def test_golden_base_tokenizer_without_template():
    out = tokenize_rows([{"prompt": "2+2=", "chosen": "4", "rejected": "5"}], chat=False)
    assert out.prompt_ids[0] == [BOS, *char_ids("2+2=")]
    assert out.chosen_ids[0] == [*char_ids("4"), EOS]
    assert out.rejected_ids[0] == [*char_ids("5"), EOS]


def test_named_template_on_a_base_tokenizer(caplog):
    tok = make_tokenizer(chat=False)
    template = pick_template(tok, "chatml")
    assert "no single token for <|im_start|>, <|im_end|>" in caplog.text
    out = tokenize_rows([{"prompt": "Hi", "chosen": "a", "rejected": "b"}], chat=False, template=template)
    # The base tokenizer does not know the markers as tokens, so they are spelled out character by character.
    assert out.prompt_ids[0] == char_ids("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert out.chosen_ids[0] == char_ids("a<|im_end|>\n")


def test_conversational_rows_without_template_are_an_error():
    row = {"prompt": SYSTEM_PROMPT, "chosen": "a", "rejected": "b"}
    with pytest.raises(DataError, match=r"mem.jsonl:1: conversational rows need a chat template"):
        tokenize_rows([row], chat=False)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": None, "rejected": "r"}, "column 'chosen': empty or null"),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, "column 'prompt': empty or null"),
        ({"prompt": "p", "chosen": 4, "rejected": "r"}, "column 'chosen': expected text"),
        ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "c", "rejected": "r"}, "unknown role 'robot'"),
        ({"prompt": [{"content": "x"}], "chosen": "c", "rejected": "r"}, "needs 'role' and 'content'"),
    ],
)
def test_bad_values_name_the_line_and_column(row, message):
    rows = [{"prompt": "ok", "chosen": "c", "rejected": "r"}, row]
    with pytest.raises(DataError, match="mem.jsonl:2") as info:
        tokenize_rows(rows)
    assert message in str(info.value)


def test_mixed_string_and_conversational_rows():
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": SYSTEM_PROMPT, "chosen": "c", "rejected": "r"}]
    with pytest.raises(DataError, match="mem.jsonl:2: mixes plain-string and conversational"):
        tokenize_rows(rows)


def test_text_that_looks_like_other_types_is_text():
    out = tokenize_rows([{"prompt": "True", "chosen": "4", "rejected": "[1]"}], chat=False)
    assert out.rejected_ids[0] == [*char_ids("[1]"), EOS]


# --- Truncation ------------------------------------------------------------------------------------------------


def test_prompt_keeps_its_end_and_completions_are_capped():
    row = {"prompt": "abcdefgh", "chosen": "12345", "rejected": "xy"}
    out = tokenize_rows([row], chat=False, limits=Limits(4, 3, 1000))
    assert out.prompt_ids[0] == char_ids("efgh")
    assert out.chosen_ids[0] == char_ids("123")
    assert out.rejected_ids[0] == [*char_ids("xy"), EOS]
    assert sum(out.truncated.values()) == 2


def test_block_size_caps_prompt_plus_completion():
    out = tokenize_rows([{"prompt": "abc", "chosen": "12345", "rejected": "x"}], chat=False, limits=Limits(100, None, 6))
    assert len(out.prompt_ids[0]) + len(out.chosen_ids[0]) == 6
    assert out.chosen_ids[0] == char_ids("12")


def test_pairs_with_empty_completions_and_equal_pairs_are_dropped_and_counted():
    rows = [
        {"prompt": "abcdef", "chosen": "1", "rejected": "2"},  # prompt (7 with BOS) fills block_size 6
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": "b", "chosen": "1", "rejected": "2"},
    ]
    out = tokenize_rows(rows, chat=False, limits=Limits(100, None, 6))
    assert len(out) == 1
    assert out.dropped == {"completion empty after truncation": 1, "chosen == rejected": 1}


def test_every_pair_dropped_is_an_error():
    with pytest.raises(DataError, match="every pair was dropped"):
        tokenize_rows([{"prompt": "a", "chosen": "x", "rejected": "x"}])


# --- Collation -------------------------------------------------------------------------------------------------


def test_padded_collator_matches_its_documented_example():
    features = [
        {"prompt_ids": [5, 6], "chosen_ids": [8, 2], "rejected_ids": [10, 2]},
        {"prompt_ids": [7], "chosen_ids": [9, 2], "rejected_ids": [11, 12, 2]},
    ]
    batch = PaddedCollator(pad_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2], [7, 9, 2, 0], [5, 6, 10, 2], [7, 11, 12, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch["hidden_index"].tolist() == [1, 2, 4, 5, 9, 10, 12, 13, 14]
    assert batch["target_ids"].tolist() == [8, 2, 9, 2, 10, 2, 11, 12, 2]
    assert batch["target_seq"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert batch["in_completion"].all()
    assert batch["in_nll"].tolist() == [True] * 4 + [False] * 5
    # Every target is the token the hidden state's next position holds.
    flat = batch["input_ids"].reshape(-1)
    assert torch.equal(flat[batch["hidden_index"] + 1], batch["target_ids"])

    with_prompt = PaddedCollator(pad_id=0, prompt_loss=True)(features)
    assert with_prompt["hidden_index"].tolist()[:3] == [0, 1, 2]
    assert with_prompt["target_ids"].tolist()[:3] == [6, 8, 2]
    assert with_prompt["in_completion"].tolist()[:3] == [False, True, True]
    assert with_prompt["in_nll"].sum().item() == 5


# --- Sources ---------------------------------------------------------------------------------------------------


def test_jsonl_bom_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": "x"}\n\n{"a": "y"}\n')
    split = load_split(str(path), "train", is_train=True)
    assert [r["a"] for r in split.rows] == ["x", "y"]
    assert split.where(1) == f"{path}:3"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', ":2: malformed JSON at column"),
        (b'{"a": 1}\n[1, 2]\n', ":2: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": "\xff"}\n', ":2: invalid UTF-8"),
        (b"", "the file holds no rows"),
    ],
)
def test_bad_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_split(str(path), "train", is_train=True)


def test_csv_with_quoted_commas_and_newlines(tmp_path):
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerow(["a, b", "line1\nline2", "x"])
        writer.writerow(["c", "d", "e"])
    split = load_split(str(path), "train", is_train=True)
    assert split.rows[0] == {"prompt": "a, b", "chosen": "line1\nline2", "rejected": "x"}
    assert split.where(1) == f"{path}:4"


def test_folder_of_splits_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = arithmetic_pairs(3)
    (tmp_path / "train.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "validation.parquet")
    assert load_split(str(tmp_path), "train", is_train=True).rows == rows
    assert load_split(str(tmp_path), "validation", is_train=False).rows == rows[:2]
    with pytest.raises(DataError, match="no file for split 'test'.*splits present: train, validation"):
        load_split(str(tmp_path), "test", is_train=False)


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(arithmetic_pairs(4))}).save_to_disk(str(tmp_path / "saved"))
    assert len(load_split(str(tmp_path / "saved"), "train", is_train=True).rows) == 4
    with pytest.raises(DataError, match="split 'valid' does not exist; splits: train"):
        load_split(str(tmp_path / "saved"), "valid", is_train=False)


def test_missing_path_and_single_file_valid_split(tmp_path, pairs_file):
    with pytest.raises(DataError, match="no such file"):
        load_split(str(tmp_path / "nope.jsonl"), "train", is_train=True)
    with pytest.raises(DataError, match="single file holds only the training split"):
        load_split(str(pairs_file), "validation", is_train=False)


def test_columns_default_to_prompt_chosen_rejected(pairs_file):
    data = prepare_data(LLMTrainingParams(data_path=str(pairs_file)), make_tokenizer(True), 512)
    assert data.columns == COLS
    assert len(data.train) == 12


def test_missing_column_lists_the_columns(pairs_file):
    params = LLMTrainingParams(data_path=str(pairs_file), text_column="answer")
    with pytest.raises(DataError, match="column 'answer': missing; columns present: prompt, chosen, rejected"):
        prepare_data(params, make_tokenizer(True), 512)


def test_bundled_sample_pairs_load_with_defaults():
    data = prepare_data(LLMTrainingParams(valid_split="validation"), make_tokenizer(True), 512)
    assert len(data.train) >= 300 and len(data.valid) >= 60
