"""Data stage: sources, rendering goldens, truncation, collation."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import BOS, EOS, IM_END, IM_START, NEWLINE, arithmetic_pairs, char_ids, make_tokenizer

from autotrain.data.collate import PaddedCollator
from autotrain.data.prepare import prepare_data
from autotrain.data.render import Columns, Renderer, pick_template
from autotrain.data.sources import RawSplit, load_split
from autotrain.data.tokenize import Limits, tokenize_split
from autotrain.errors import DataError
from autotrain.trainers.clm.params import LLMTrainingParams

COLS = Columns("prompt", "chosen", "rejected")
WIDE = Limits(max_prompt_length=1000, max_completion_length=None, block_size=1000)


@pytest.fixture(autouse=True)
def _scratch(tmp_path, monkeypatch):
    """Token files and the tokenized-data cache go to the test's own folder."""
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def tokenize_rows(rows, chat=True, limits=WIDE, columns=COLS, template="own"):
    tok = make_tokenizer(chat)
    chosen_template = pick_template(tok, None) if template == "own" else template
    split = RawSplit("mem.jsonl", rows, list(range(1, len(rows) + 1)))
    path = Path(tempfile.mkdtemp()) / "tokens.arrow"
    return tokenize_split(split, Renderer(tok, chosen_template, columns), tok, limits, path)


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


# A named template on a base tokenizer: tests/test_templates.py (its turns end with EOS).


def test_conversational_rows_without_template_are_an_error():
    row = {"prompt": SYSTEM_PROMPT, "chosen": "a", "rejected": "b"}
    with pytest.raises(DataError, match=r"mem.jsonl:1: conversational rows need a chat template"):
        tokenize_rows([row], chat=False)


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


# --- Sources: streamed rows, each named as a user finds it ------------------------------------------------------


def rows_of(split):
    return [row for _, row in split.rows()]


def test_jsonl_rows_are_named_by_file_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": "x"}\n\n{"a": "y"}\n')
    split = load_split(str(path), "train", is_train=True)
    assert [(n, r["a"]) for n, r in split.rows()] == [(1, "x"), (3, "y")]
    assert split.where(3) == f"{path}:3"


def test_json_list_rows_are_named_by_the_line_where_they_start(tmp_path):
    rows = arithmetic_pairs(3)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2))  # each object spans 5 lines, after the opening "[" line
    split = load_split(str(path), "train", is_train=True)
    assert [n for n, _ in split.rows()] == [2, 7, 12]
    assert rows_of(split) == rows
    wrapped = tmp_path / "w.json"
    wrapped.write_text('{"data": [\n' + ",\n".join(json.dumps(r) for r in rows) + "\n]}")
    assert [n for n, _ in load_split(str(wrapped), "train", is_train=True).rows()] == [2, 3, 4]


def test_table_rows_are_counted_from_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(arithmetic_pairs(3)), path)
    split = load_split(str(path), "train", is_train=True)
    assert [n for n, _ in split.rows()] == [1, 2, 3]
    assert split.where(3) == f"{path}, row 3 of 3"
    assert split.columns == ["prompt", "chosen", "rejected"]


def test_folder_of_splits_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = arithmetic_pairs(3)
    (tmp_path / "train.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "validation.parquet")
    assert rows_of(load_split(str(tmp_path), "train", is_train=True)) == rows
    assert rows_of(load_split(str(tmp_path), "validation", is_train=False)) == rows[:2]


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(arithmetic_pairs(4))}).save_to_disk(str(tmp_path / "saved"))
    split = load_split(str(tmp_path / "saved"), "train", is_train=True)
    assert rows_of(split) == arithmetic_pairs(4)
    assert split.where(2) == f"{tmp_path / 'saved'}[train], row 2 of 4"


def test_columns_default_to_prompt_chosen_rejected(pairs_file):
    data = prepare_data(LLMTrainingParams(data_path=str(pairs_file)), make_tokenizer(True), 512)
    assert data.columns == COLS
    assert len(data.train) == 12


def test_prepared_splits_are_memory_mapped_arrow(pairs_file):
    data = prepare_data(LLMTrainingParams(data_path=str(pairs_file)), make_tokenizer(False), 512)
    dataset = data.train.dataset
    # The masks are empty: single-turn answers are trained whole (multi-turn ones: test_preference_turns).
    assert dataset.column_names == ["prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask"]
    assert dataset.cache_files and dataset.cache_files[0]["filename"].endswith(".arrow")
    first = arithmetic_pairs(1)[0]
    assert dataset[0] == {
        "prompt_ids": [BOS, *char_ids(first["prompt"])],
        "chosen_ids": [*char_ids(first["chosen"]), EOS],
        "rejected_ids": [*char_ids(first["rejected"]), EOS],
        "chosen_mask": [],
        "rejected_mask": [],
    }


def test_bundled_sample_pairs_load_with_defaults():
    data = prepare_data(LLMTrainingParams(valid_split="validation"), make_tokenizer(True), 512)
    assert len(data.train) >= 300 and len(data.valid) >= 60


def test_validation_split_of_a_save_to_disk_folder_and_of_a_datasets_id(tmp_path, monkeypatch):
    import datasets
    from datasets import Dataset, DatasetDict

    splits = {"train": arithmetic_pairs(5), "validation": arithmetic_pairs(3, start=30)}
    saved = tmp_path / "saved"
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(saved))
    asked = []

    def hub(name, split):  # no network here: stand in for the hub, and record what was asked
        asked.append((name, split))
        return Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", hub)
    for source in (str(saved), "someone/pairs"):
        data = prepare_data(LLMTrainingParams(data_path=source, valid_split="validation"), make_tokenizer(False), 512)
        assert (len(data.train), len(data.valid)) == (5, 3)
        assert data.valid.prompt_ids[0] == [BOS, *char_ids(splits["validation"][0]["prompt"])]
    assert asked == [("someone/pairs", "train"), ("someone/pairs", "validation")]
