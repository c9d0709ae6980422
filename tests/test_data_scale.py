"""Scale of input (issue 3): streamed tokenization with flat memory, and the tokenized-data cache.

The 200,000-pair figures come from scripts/measure_data_scale.py; these tests keep the same properties checkable
in under a minute with the tiny character-level tokenizer (one token per character).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BOS, EOS, char_ids, make_tokenizer, write_jsonl
from transformers import PreTrainedTokenizerFast

from autotrain.data import cache as cache_module
from autotrain.data.prepare import prepare_data
from autotrain.errors import DataError
from autotrain.trainers.clm.params import LLMTrainingParams

COLUMNS = dict(prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected")
TESTS = Path(__file__).resolve().parent


def pairs(count: int) -> list[dict]:
    """~125-byte pairs, all different (the character-level tokenizer makes a token of every character)."""
    return [{"prompt": f"Question {i}: what is {i % 97} plus {i % 13}?", "chosen": f"It is {i % 97 + i % 13}.",
             "rejected": f"It is {i % 97 + i % 13 + 1}, I think."} for i in range(count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("scale")
    return {count: write_jsonl(folder / f"pairs-{count}.jsonl", pairs(count)) for count in (2_000, 20_000)}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenized"


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """How many texts each tokenizer call encoded, and a mark per chat-template render."""
    seen: list[int] = []
    encode, render = PreTrainedTokenizerFast.__call__, PreTrainedTokenizerFast.apply_chat_template

    def counting_encode(self, text, *args, **kwargs):
        seen.append(len(text) if isinstance(text, list) else 1)
        return encode(self, text, *args, **kwargs)

    def counting_render(self, *args, **kwargs):
        seen.append(0)
        return render(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", counting_encode)
    monkeypatch.setattr(PreTrainedTokenizerFast, "apply_chat_template", counting_render)
    return seen


def prepare(path: Path, tokenizer=None, model_max: int = 1024, **overrides):
    params = LLMTrainingParams(data_path=str(path), **{**COLUMNS, **overrides})
    return prepare_data(params, tokenizer or make_tokenizer(True), model_max)


# --- Flat memory --------------------------------------------------------------------------------------------------

MEASURE = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import autotrain.data.tokenize
autotrain.data.tokenize.RECORD_BYTES = 1 << 19  # a fixed buffer both sizes fill, so only growth with rows shows
from conftest import make_tokenizer
from autotrain.data.prepare import prepare_data
from autotrain.trainers.clm.params import LLMTrainingParams
tokenizer, peaks = make_tokenizer(True), []
for path in sys.argv[2:]:
    params = LLMTrainingParams(data_path=path, prompt_text_column="prompt", text_column="chosen",
                               rejected_text_column="rejected")
    assert len(prepare_data(params, tokenizer, 1024).train) > 0
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(peaks))
"""


def test_peak_memory_does_not_grow_with_rows(files, tmp_path):
    # One process, the small file first: its peak holds every one-off cost (imports, first batch, thread pools),
    # so what the large file adds on top is what grows with rows. Holding its 18,000 extra pairs in memory as
    # the seed tool did adds about 30 MB (rows as dicts, ids as Python lists: ~40 ids per sequence, 3 sequences).
    env = {**os.environ, "AITRAINING_CACHE": str(tmp_path / "measure-cache")}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(TESTS), str(files[2_000]), str(files[20_000])],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    small, large = json.loads(done.stdout)
    assert large - small < 8, f"peak RSS {small:.0f} MiB for 2,000 pairs, {large:.0f} MiB for 20,000"


# --- The cache ----------------------------------------------------------------------------------------------------


def test_cache_hit_skips_tokenization_and_keeps_the_counts(tmp_path, cache, calls, caplog):
    rows = [{"prompt": "a" * 20, "chosen": "same", "rejected": "same"}] + pairs(3)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level("INFO", logger="autotrain"):
        first = prepare(path, max_prompt_length=16)
    assert calls, "the first run tokenizes"
    cold_logs = [m for m in caplog.messages if "pairs" in m]
    calls.clear()
    caplog.clear()
    with caplog.at_level("INFO", logger="autotrain"):
        again = prepare(path, max_prompt_length=16)
    assert calls == [], "a cache hit neither renders nor tokenizes"
    assert again.train.as_dict() == first.train.as_dict()
    assert (again.train.dropped, again.train.truncated) == (first.train.dropped, first.train.truncated)
    assert again.train.dropped == {"chosen == rejected": 1}
    assert again.train.truncated == {"prompt > max_prompt_length": 3}
    assert [m for m in caplog.messages if "pairs" in m] == cold_logs
    assert len(list(cache.iterdir())) == 1


def test_a_hit_is_fast(files, cache):
    # Timed after a warm-up in the same process, so imports do not count; the 20,000-pair build takes seconds.
    prepare(files[20_000])
    started = time.perf_counter()
    data = prepare(files[20_000])
    assert time.perf_counter() - started < 1.0
    assert len(data.train) == 20_000


@pytest.mark.parametrize(
    "change",
    ["data", "tokenizer", "chat_template", "columns", "max_prompt_length", "max_completion_length", "block_size",
     "model_max", "split"],
)
def test_any_change_of_the_key_retokenizes(tmp_path, cache, calls, change):
    folder = tmp_path / "splits"
    folder.mkdir()
    rows = [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}, {"prompt": "3+3=", "chosen": "6", "rejected": "7"}]
    path = write_jsonl(folder / "train.jsonl", rows)
    base = dict(max_prompt_length=128, block_size=-1)
    prepare(path, **base)
    calls.clear()
    tokenizer, model_max, overrides, data_path = make_tokenizer(True), 1024, dict(base), path
    if change == "data":
        write_jsonl(path, [rows[0], {**rows[1], "rejected": "8"}])  # same path and size, one character differs
    elif change == "tokenizer":
        tokenizer.add_tokens(["<tool>"])
    elif change == "chat_template":
        overrides["chat_template"] = "none"
    elif change == "columns":
        overrides.update(text_column="rejected", rejected_text_column="chosen")
    elif change == "max_prompt_length":
        overrides["max_prompt_length"] = 127
    elif change == "max_completion_length":
        overrides["max_completion_length"] = 100
    elif change == "block_size":
        overrides["block_size"] = 1000
    elif change == "model_max":
        model_max = 1000  # block_size -1 resolves against the model
    elif change == "split":
        write_jsonl(folder / "validation.jsonl", rows)  # the same bytes, as another split
        data_path, overrides["train_split"] = folder, "validation"
    prepare(data_path, tokenizer, model_max, **overrides)
    assert calls, f"changing {change} must re-tokenize"
    assert len(list(cache.iterdir())) == 2


def test_a_bad_row_after_several_batches_leaves_no_entry(tmp_path, cache):
    rows = pairs(700)
    rows[650]["chosen"] = None
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:651, column 'chosen': null value"):
        prepare(path)
    assert list(cache.iterdir()) == []


KILLED = """
import sys
sys.path.insert(0, sys.argv[1])
import autotrain.data.tokenize
autotrain.data.tokenize.RECORD_BYTES = 1 << 16  # write as it goes, so the kill lands in a half-written file
from conftest import make_tokenizer
from autotrain.data.prepare import prepare_data
from autotrain.trainers.clm.params import LLMTrainingParams
params = LLMTrainingParams(data_path=sys.argv[2], prompt_text_column="prompt", text_column="chosen",
                           rejected_text_column="rejected")
prepare_data(params, make_tokenizer(True), 1024)
"""


def test_a_killed_run_leaves_no_entry_and_the_next_run_builds_one(files, cache, calls):
    process = subprocess.Popen([sys.executable, "-c", KILLED, str(TESTS), str(files[20_000])], env=os.environ)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            written = [p for p in cache.glob(".tmp-*/data.arrow") if p.stat().st_size > 200_000]
            if written:
                break
            time.sleep(0.05)
        assert written, "the run never started writing tokens"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert [p.name[:5] for p in cache.iterdir()] == [".tmp-"], "only the killed run's temp folder is there"
    data = prepare(files[20_000])
    assert calls, "the half-written temp folder is not taken for an entry"
    assert len(data.train) == 20_000
    assert [p.name.startswith(".tmp-") for p in cache.iterdir()] == [False], "the dead run's temp is cleared"


def test_a_damaged_entry_is_rebuilt(tmp_path, cache, calls):
    path = write_jsonl(tmp_path / "d.jsonl", pairs(50))
    first = prepare(path).train.as_dict()
    (entry,) = cache.iterdir()
    data_file = entry / cache_module.DATA_FILE
    data_file.write_bytes(data_file.read_bytes()[:-100])
    calls.clear()
    assert prepare(path).train.as_dict() == first
    assert calls


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "a"))
    assert cache_module.cache_dir() == tmp_path / "a" / "tokenized"
    monkeypatch.delenv("AITRAINING_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_module.cache_dir() == tmp_path / "xdg" / "aitraining" / "tokenized"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_module.cache_dir() == tmp_path / "home" / ".cache" / "aitraining" / "tokenized"


def test_cached_ids_are_the_tokenized_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    for _ in range(2):  # a miss, then a hit
        data = prepare(path, make_tokenizer(False))
        assert data.train.dataset[0] == {"prompt_ids": [BOS, *char_ids("2+2=")], "chosen_ids": [*char_ids("4"), EOS],
                                         "rejected_ids": [*char_ids("5"), EOS], "chosen_mask": [],
                                         "rejected_mask": []}  # empty: every answer token trains


# --- Progress -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch, tty):
    path = write_jsonl(tmp_path / "d.jsonl", pairs(10))
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    prepare(path)
    drawn = "tokenizing d.jsonl" in capsys.readouterr().err
    assert drawn == tty
