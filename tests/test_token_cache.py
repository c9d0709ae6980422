"""The tokenized-data cache keeps only what it can vouch for: an entry holds the ids of exactly the bytes its key
names, the cache stays under its size cap (least recently used entries go first), `aitraining cache` lists and
clears it, and a cache that cannot be written (read-only, full) only costs the caching, never the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import IM_END, char_ids, make_tokenizer, write_jsonl

from autotrain import atomic
from autotrain.data import prepare as prepare_module
from autotrain.data.prepare import prepare_data
from autotrain.errors import DataError, ParamsError
from autotrain.trainers.clm.params import LLMTrainingParams


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AITRAINING_CACHE_MAX_GB", raising=False)
    return tmp_path / "cache" / "tokenized"


def rows(tag: str, count: int = 3) -> list[dict]:
    return [{"prompt": f"{tag}{i}?", "chosen": f"{tag}yes{i}", "rejected": f"{tag}no{i}"} for i in range(count)]


def prepare(path: Path):
    params = LLMTrainingParams(data_path=str(path), apply_chat_template=False)
    return prepare_data(params, make_tokenizer(True), 1024)


def expected_chosen(tag: str, count: int = 3) -> list[list[int]]:
    """The chosen ids of `rows(tag)` without a template: the characters, then the tokenizer's EOS (<|im_end|>)."""
    return [[*char_ids(f"{tag}yes{i}"), IM_END] for i in range(count)]


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []


# --- The key names exactly the bytes that were tokenized -----------------------------------------------------------


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_a_file_rewritten_while_it_is_tokenized_never_poisons_the_cache(tmp_path, cache, monkeypatch, how):
    """The file changes after its hash was taken and before its rows are read (a regenerated file, a checkout, an
    editor's save): the rows tokenized are not the ones the key names, so nothing may be cached under that key."""
    path = write_jsonl(tmp_path / "d.jsonl", rows("A"))
    original = path.read_bytes()
    other = "".join(line.replace("A", "B") + "\n" for line in original.decode().splitlines()).encode()
    assert len(other) == len(original) and other != original
    real = prepare_module.write_tokens

    def rewritten_first(*args, **kwargs):
        if how == "in place":
            path.write_bytes(other)
        else:  # a new file renamed over the old one, as editors and generators do
            (tmp_path / "d.new").write_bytes(other)
            os.replace(tmp_path / "d.new", path)
        monkeypatch.setattr(prepare_module, "write_tokens", real)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_tokens", rewritten_first)
    try:
        prepare(path)
        first_error = None
    except DataError as exc:
        first_error = str(exc)
    path.write_bytes(original)  # the file as it was when the first run hashed it
    again = prepare(path)
    assert again.train.chosen_ids == expected_chosen("A"), "a later run on the original file trains on other rows"
    assert first_error is not None and "changed while it was read" in first_error, first_error
    assert first_error.startswith(str(path))


def test_an_unchanged_file_is_cached_and_hit(tmp_path, cache):
    path = write_jsonl(tmp_path / "d.jsonl", rows("A"))
    assert prepare(path).train.chosen_ids == expected_chosen("A")
    assert len(entries(cache)) == 1
    assert prepare(path).train.chosen_ids == expected_chosen("A")
    assert len(entries(cache)) == 1


# --- Size cap, least recently used first ---------------------------------------------------------------------------


def test_the_cache_keeps_under_its_cap_evicting_the_least_recently_used(tmp_path, cache, monkeypatch):
    files = {tag: write_jsonl(tmp_path / f"{tag}.jsonl", rows(tag, 40)) for tag in "ABC"}
    prepare(files["A"])
    (entry,) = entries(cache)
    size = sum(f.stat().st_size for f in entry.iterdir())
    # Room for two entries of this size (the three files' entries are within a few bytes of each other), not three.
    monkeypatch.setenv("AITRAINING_CACHE_MAX_GB", str(2.5 * size / 1e9))
    prepare(files["B"])
    assert len(entries(cache)) == 2
    prepare(files["A"])  # a hit: A is now the most recently used
    prepare(files["C"])
    assert len(entries(cache)) == 2
    built = tokenized_files(monkeypatch)
    prepare(files["A"])
    prepare(files["C"])
    assert built == [], "A (used last) and C (just built) are kept"
    prepare(files["B"])
    assert built == [str(files["B"])], "B, the least recently used, went first"


def tokenized_files(monkeypatch) -> list[str]:
    """The files tokenized from now on (a cache hit tokenizes none)."""
    seen: list[str] = []
    real = prepare_module.write_tokens

    def spy(split, *args, **kwargs):
        seen.append(split.source)
        return real(split, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_tokens", spy)
    return seen


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_a_bad_cap_is_one_line_before_the_data_stage(cache, monkeypatch, tmp_path, value):
    from autotrain import preflight

    monkeypatch.setenv("AITRAINING_CACHE_MAX_GB", value)
    params = LLMTrainingParams(data_path=str(write_jsonl(tmp_path / "d.jsonl", rows("A"))))
    with pytest.raises(ParamsError, match=f"AITRAINING_CACHE_MAX_GB: '{value}' is not a number of gigabytes"):
        preflight.check_inputs(params)
    with pytest.raises(ParamsError, match="AITRAINING_CACHE_MAX_GB"):
        prepare(params.data_path)


def test_cache_list_and_clear(tmp_path, cache, capsys):
    from autotrain.cli import main

    files = [write_jsonl(tmp_path / f"{tag}.jsonl", rows(tag)) for tag in "AB"]
    for path in files:
        prepare(path)
    sizes = {e.name: sum(f.stat().st_size for f in e.iterdir()) for e in entries(cache)}
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for path in files:
        assert sum(str(path) in line for line in listed) == 1, listed
    assert f"2 entries, {sum(sizes.values()) / 1e6:.1f} MB" in listed[-1]
    assert str(cache) in listed[-1]
    assert main(["cache", "clear"]) == 0
    assert f"removed 2 entries ({sum(sizes.values()) / 1e6:.1f} MB)" in capsys.readouterr().out
    assert entries(cache) == []
    assert prepare(files[0]).train.chosen_ids == expected_chosen("A")  # and the cache works again


# --- A cache that cannot be written --------------------------------------------------------------------------------


def uncached_lines(caplog) -> list[str]:
    return [m for m in caplog.messages if "not kept" in m]


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EDQUOT])
def test_a_cache_that_cannot_be_written_falls_back_to_uncached(tmp_path, cache, monkeypatch, caplog, code):
    """The cache folder exists (an earlier run made it) but its file system is now read-only or full."""
    cache.mkdir(parents=True)

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(cache))

    monkeypatch.setattr(atomic, "new_temp", refused)
    with caplog.at_level("INFO", logger="autotrain"):
        data = prepare(write_jsonl(tmp_path / "d.jsonl", rows("A")))
    assert data.train.chosen_ids == expected_chosen("A")
    assert len(uncached_lines(caplog)) == 1, caplog.messages
    assert os.strerror(code) in uncached_lines(caplog)[0]
    assert list(cache.iterdir()) == []


def test_a_disk_that_fills_while_the_tokens_are_written_leaves_no_partial_entry(tmp_path, cache, monkeypatch,
                                                                                 caplog):
    real = prepare_module.write_tokens

    def full_in_the_cache(split, renderer, tokenizer, limits, path, **kwargs):
        if Path(path).is_relative_to(cache):
            Path(path).write_bytes(b"\0" * 1000)  # a part was written, then the disk was full
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real(split, renderer, tokenizer, limits, path, **kwargs)

    monkeypatch.setattr(prepare_module, "write_tokens", full_in_the_cache)
    with caplog.at_level("INFO", logger="autotrain"):
        data = prepare(write_jsonl(tmp_path / "d.jsonl", rows("A")))
    assert data.train.chosen_ids == expected_chosen("A")
    assert len(uncached_lines(caplog)) == 1, caplog.messages
    assert list(cache.iterdir()) == [], "no entry and no temp folder is left"


def test_a_full_disk_everywhere_is_one_line(tmp_path, cache, monkeypatch):
    def full(split, renderer, tokenizer, limits, path, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(prepare_module, "write_tokens", full)
    with pytest.raises(DataError, match="cannot write the tokenized data .*No space left on device"):
        prepare(write_jsonl(tmp_path / "d.jsonl", rows("A")))
    assert list(cache.iterdir()) == []

