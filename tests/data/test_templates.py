"""One chat template from training to inference (issues 10 and 11).

Goldens are written by hand from the character-level vocabulary in conftest (`char_ids`); where TRL defines the
behaviour (a prompt that ends with an assistant message), its own rendering is the reference.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from conftest import EOS, IM_END, IM_START, NEWLINE, char_ids, make_tokenizer, write_jsonl

from autotrain.data.prepare import prepare_data
from autotrain.data.render import Columns, Renderer, pick_template
from autotrain.data.sources import RawSplit
from autotrain.data.tokenize import Limits, tokenize_split
from autotrain.trainers.clm.params import LLMTrainingParams

WIDE = Limits(max_prompt_length=1000, max_completion_length=None, block_size=1000)
COLUMNS = dict(prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected")


@pytest.fixture(autouse=True)
def _scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def tokenize_rows(rows, columns=Columns("prompt", "chosen", "rejected"), chat=True, template="own"):
    tok = make_tokenizer(chat)
    chosen_template = pick_template(tok, None) if template == "own" else template
    split = RawSplit("mem.jsonl", rows, list(range(1, len(rows) + 1)))
    return tokenize_split(split, Renderer(tok, chosen_template, columns), tok, WIDE, Path(tempfile.mkdtemp()) / "t.arrow")


# --- A prompt that ends with an assistant message -------------------------------------------------------------------

PARTIAL = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "The answer is"}]


def test_a_prompt_ending_with_an_assistant_message_is_continued_by_the_answer():
    out = tokenize_rows([{"prompt": PARTIAL, "chosen": " 4.", "rejected": " 5."}])
    # The answer continues the assistant's message: no closing marker and no second assistant turn in between.
    assert out.prompt_ids[0] == [IM_START, *char_ids("user\n2+2?"), IM_END, NEWLINE,
                                 IM_START, *char_ids("assistant\nThe answer is")]
    assert out.chosen_ids[0] == [*char_ids(" 4."), IM_END, NEWLINE]
    assert out.rejected_ids[0] == [*char_ids(" 5."), IM_END, NEWLINE]
    # SFT's prompt + completion rows: the same.
    sft = tokenize_rows([{"prompt": PARTIAL, "completion": " 4."}], columns=Columns("prompt", "completion", None))
    assert (sft.prompt_ids[0], sft.chosen_ids[0]) == (out.prompt_ids[0], out.chosen_ids[0])


def test_the_continued_prompt_is_the_one_trl_renders():
    from trl.data_utils import apply_chat_template

    tok = make_tokenizer(True)
    row = {"prompt": PARTIAL, "chosen": [{"role": "assistant", "content": " 4."}],
           "rejected": [{"role": "assistant", "content": " 5."}]}
    trl = apply_chat_template(row, tok)
    ours = Renderer(tok, tok.chat_template, Columns("prompt", "chosen", "rejected"))(row, "mem.jsonl:1")
    assert ours.prompt == trl["prompt"]
    # TRL's completion then closes that message and opens a second assistant turn; the answer here continues it
    # (README, Data): what generation from this prompt produces.
    assert trl["chosen"] == "<|im_end|>\n<|im_start|>assistant\n 4.<|im_end|>\n"
    assert ours.chosen == " 4.<|im_end|>\n"


# --- Noise ------------------------------------------------------------------------------------------------------------


def test_no_sequence_length_warning_where_truncation_is_handled(tmp_path, monkeypatch):
    from transformers.utils import logging as hf_logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    library = logging.getLogger("transformers")  # it does not propagate to the root logger, so listen on it
    library.addHandler(handler)
    monkeypatch.setattr(library, "level", library.level)
    hf_logging.set_verbosity_warning()
    try:
        tok = make_tokenizer(True)
        tok.model_max_length = 8  # every text below is longer; the data stage truncates by its own limits
        path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a long question " * 4, "chosen": "x" * 30,
                                                   "rejected": "y"}])
        data = prepare_data(LLMTrainingParams(data_path=str(path), **COLUMNS, max_prompt_length=20), tok, 512)
        assert len(data.train.prompt_ids[0]) == 20
        assert not [m for m in seen if "Token indices sequence length" in m], seen
        tok("z" * 30)  # the check itself can fail: the same tokenizer warns when asked without our setting
        assert any("Token indices sequence length" in m for m in seen)
    finally:
        library.removeHandler(handler)


# --- Training, the saved tokenizer and inference render a prompt the same way ---------------------------------------


CHOICES = [(True, c) for c in (None, "tokenizer", "chatml", "zephyr", "none")] + [
    (False, c) for c in (None, "chatml", "zephyr", "none")]  # a base tokenizer has no template of its own


@pytest.mark.parametrize(("chat", "choice"), CHOICES, ids=[f"{'chat' if t else 'base'}-{c}" for t, c in CHOICES])
def test_inference_builds_the_prompt_ids_training_used(tmp_path, chat, choice):
    from transformers import AutoTokenizer

    from autotrain.inference import prompt_inputs
    from autotrain.outputs.final import save_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "3+4=", "chosen": "7", "rejected": "8"}])
    tok = make_tokenizer(chat)
    data = prepare_data(LLMTrainingParams(data_path=str(path), chat_template=choice, **COLUMNS), tok, 512)
    save_tokenizer(tok, data.template, tmp_path / "saved")
    saved = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert prompt_inputs(saved, "3+4=")["input_ids"][0].tolist() == data.train.prompt_ids[0]
    # A prompt ending with an assistant message is continued at inference as in training (templates only).
    if data.template is not None:
        partial = write_jsonl(tmp_path / "p.jsonl", [{"prompt": PARTIAL, "chosen": " 4.", "rejected": " 5."}])
        trained = prepare_data(LLMTrainingParams(data_path=str(partial), chat_template=choice, **COLUMNS), tok, 512)
        assert prompt_inputs(saved, PARTIAL)["input_ids"][0].tolist() == trained.train.prompt_ids[0]


def test_chatml_on_a_tokenizer_without_its_markers_ends_each_turn_with_eos(caplog):
    tok = make_tokenizer(chat=False)
    with caplog.at_level(logging.WARNING, logger="autotrain"):
        template = pick_template(tok, "chatml")
    assert "no single token for <|im_start|>, <|im_end|>" in caplog.text and "EOS token </s>" in caplog.text
    out = tokenize_rows([{"prompt": "Hi", "chosen": "a", "rejected": "b"}], chat=False, template=template)
    # The markers the tokenizer lacks are spelled out; each turn ends with EOS, where generate() stops.
    assert out.prompt_ids[0] == [*char_ids("<|im_start|>user\nHi"), EOS, NEWLINE, *char_ids("<|im_start|>assistant\n")]
    assert out.chosen_ids[0] == [*char_ids("a"), EOS, NEWLINE]


def test_generation_stops_where_the_template_ends_a_turn():
    from autotrain.data.templates import CHATML_TEMPLATE, ZEPHYR_TEMPLATE, stop_ids

    chat = make_tokenizer(True)  # EOS is <|im_end|>
    assert stop_ids(chat, CHATML_TEMPLATE) == [IM_END]
    chat.eos_token = "</s>"  # a base model's tokenizer with ChatML tokens (as Qwen's base models have)
    assert stop_ids(chat, CHATML_TEMPLATE) == [EOS, IM_END]
    base = make_tokenizer(False)
    assert stop_ids(base, None) == [EOS]
    assert stop_ids(base, ZEPHYR_TEMPLATE) == [EOS]
    assert stop_ids(base, pick_template(base, "chatml")) == [EOS]


# --- Sample prompts as a reader sees them -----------------------------------------------------------------------------

SYSTEM_DEFAULT = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are kind.<|im_end|>\n' }}{% endif %}"
)


def test_sample_prompts_lose_the_templates_text_and_keep_their_own_words():
    from conftest import CHATML

    from autotrain.outputs.answers import prompt_texts

    tok = make_tokenizer(True)
    template = SYSTEM_DEFAULT + CHATML  # a default system prompt, as SmolLM2's template has
    questions = ["Add 37 and 41.", "Add 4 and 53.", "Add 2 and 2, please. Add"]
    rows = [{"prompt": q, "chosen": "x", "rejected": "y"} for q in questions]
    out = tokenize_rows(rows, template=template)
    assert prompt_texts(tok, out.prompt_ids, template) == questions
    # A prompt with its own system message keeps it; the text is collapsed, never cut inside the question.
    own = tokenize_rows([{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                          "chosen": "x", "rejected": "y"}], template=template)
    assert prompt_texts(tok, own.prompt_ids, template) == ["system Be brief. user Hi"]
    base = make_tokenizer(False)
    plain = tokenize_rows(rows, chat=False, template=None)
    assert prompt_texts(base, plain.prompt_ids, None) == questions


def test_column_defaults_survive_the_params_file(tmp_path):
    """A launched process reads its params back from training_params.json, where every field is written: the
    column defaults must resolve there as they do in the process the user started."""
    from autotrain.data.prepare import open_data

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    conversations = write_jsonl(tmp_path / "conv.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                                         {"role": "assistant", "content": "a"}]}])
    for data_path, trainer, paired, expected in ((pairs, "orpo", True, Columns("prompt", "chosen", "rejected")),
                                                 (pairs, "sft", False, Columns("prompt", "chosen", None)),
                                                 (conversations, "sft", False, Columns(None, "messages", None))):
        params = LLMTrainingParams(data_path=str(data_path), trainer=trainer)
        params.save_json(tmp_path / "training_params.json")
        reloaded = LLMTrainingParams.load_json(tmp_path / "training_params.json")
        assert json.loads((tmp_path / "training_params.json").read_text())["text_column"] == "text"
        assert open_data(params, paired).columns == expected
        assert open_data(reloaded, paired).columns == expected, (trainer, data_path.name)
