"""Reasoning (`reasoning_content` / `thinking`): rendered as the template writes it, under the loss or not as
--reasoning-loss says, empty think blocks never; a template that does not write it is refused naming the row.

Goldens are written by hand (tests/tool_templates.py's vocabulary; SmolLM2's own tokenizer for its template).
"""

from __future__ import annotations

import pytest
from conftest import write_jsonl
from test_tool_rows import EMPTY_THINK, expected, prepare, smollm2, tokenize, user  # noqa: F401 - smollm2: a fixture
from tool_templates import JSON_IN_TAG, SPECIAL_BLOCK, TOOLS_IN_SYSTEM, call, ids, tool_tokenizer

from autotrain.data.render import Columns
from autotrain.errors import DataError

COLUMNS = Columns("prompt", "chosen", "rejected")
THOUGHT = "Paris is in France."
ROW = {"prompt": [user("Weather in Paris?")],
       "chosen": [{"role": "assistant", "content": "Sunny.", "reasoning_content": THOUGHT}],
       "rejected": [{"role": "assistant", "content": "Rain."}]}
PROMPT = "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("loss", ["include", "exclude"])
def test_a_template_that_thinks_in_every_turn(loss):
    """JSON_IN_TAG opens a think block in every assistant turn: the chosen one holds the reasoning, the rejected one
    is empty, and an empty block is context whatever --reasoning-loss says."""
    row = tokenize([ROW], tool_tokenizer(JSON_IN_TAG), COLUMNS, reasoning_loss=loss).dataset[0]
    assert row["prompt_ids"] == ids(PROMPT)
    block = f"<think>\n{THOUGHT}\n</think>\n\n"
    assert (row["chosen_ids"], row["chosen_mask"]) == expected([(block, loss == "include"), ("Sunny.<|im_end|>\n", True)])
    assert (row["rejected_ids"], row["rejected_mask"]) == expected([(EMPTY_THINK, False), ("Rain.<|im_end|>\n", True)])


@pytest.mark.parametrize("loss", ["include", "exclude"])
@pytest.mark.parametrize("key", ["reasoning_content", "thinking"])
def test_a_template_that_writes_reasoning_only_when_there_is_some(loss, key):
    """TOOLS_IN_SYSTEM reads reasoning_content and writes `Thought: ...` only when a turn has some; `thinking`, the
    other common key, reaches it too."""
    chosen = {"role": "assistant", "content": "Sunny.", key: THOUGHT}
    row = tokenize([{**ROW, "chosen": [chosen]}], tool_tokenizer(TOOLS_IN_SYSTEM), COLUMNS,
                   reasoning_loss=loss).dataset[0]
    assert row["prompt_ids"] == ids(PROMPT)
    assert (row["chosen_ids"], row["chosen_mask"]) == expected([(f"Thought: {THOUGHT}\n", loss == "include"),
                                                                ("Sunny.<|im_end|>\n", True)])
    assert (row["rejected_ids"], row["rejected_mask"]) == expected([("Rain.<|im_end|>\n", True)])


def test_reasoning_before_a_tool_call():
    chosen = {**call("Paris"), "reasoning_content": THOUGHT}
    row = tokenize([{**ROW, "chosen": [chosen]}], tool_tokenizer(JSON_IN_TAG), COLUMNS,
                   reasoning_loss="exclude").dataset[0]
    assert (row["chosen_ids"], row["chosen_mask"]) == expected([
        (f"<think>\n{THOUGHT}\n</think>\n\n", False),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n', True)])


def test_a_conversation_keeps_its_context_turns_and_think_blocks_out_of_the_loss():
    """SFT on a conversation: both assistant turns trained, the user turn between them context, their empty think
    blocks too."""
    messages = [user("Hi"), {"role": "assistant", "content": "Hello."}, user("Weather?"),
                {"role": "assistant", "content": "Sunny.", "reasoning_content": THOUGHT}]
    row = tokenize([{"messages": messages}], tool_tokenizer(JSON_IN_TAG), Columns(None, "messages", None)).dataset[0]
    assert row["prompt_ids"] == ids("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert (row["chosen_ids"], row["chosen_mask"]) == expected([
        (EMPTY_THINK, False), ("Hello.<|im_end|>\n", True),
        ("<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n", False),
        (f"<think>\n{THOUGHT}\n</think>\n\nSunny.<|im_end|>\n", True)])


REFUSED = ("mem.jsonl:1, column 'chosen': an assistant turn has reasoning (reasoning_content / thinking) that the chat "
           "template does not write, so its answer would train without it; use a template that writes reasoning, or "
           "leave the key out")


def test_reasoning_a_template_does_not_write_is_refused():
    with pytest.raises(DataError) as info:
        tokenize([ROW], tool_tokenizer(SPECIAL_BLOCK), COLUMNS)
    assert str(info.value) == REFUSED


def test_smollm2_writes_no_reasoning_so_it_is_refused_and_rows_without_it_train(smollm2):  # noqa: F811
    with pytest.raises(DataError) as info:
        tokenize([ROW], smollm2, COLUMNS)
    assert str(info.value) == REFUSED
    plain = {**ROW, "chosen": [{"role": "assistant", "content": "Sunny.", "reasoning_content": ""}]}
    row = tokenize([plain], smollm2, COLUMNS).dataset[0]
    assert (row["chosen_ids"], row["chosen_mask"]) == (smollm2("Sunny.<|im_end|>\n", add_special_tokens=False)
                                                       ["input_ids"], [])


def test_exclude_with_a_template_that_writes_reasoning_after_the_answer_is_refused():
    after = ("{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content }}"
             "{% if message.reasoning_content %}{{ ' (because ' + message.reasoning_content + ')' }}{% endif %}"
             "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = tool_tokenizer(after)
    row = tokenize([ROW], tok, COLUMNS).dataset[0]  # include: the whole turn is trained, reasoning and all
    assert (row["chosen_ids"], row["chosen_mask"]) == expected([(f"Sunny. (because {THOUGHT})<|im_end|>\n", True)])
    with pytest.raises(DataError, match=r"^mem.jsonl:1, column 'chosen': --reasoning-loss exclude: the chat template "
                                        "does not write this turn's reasoning before its answer"):
        tokenize([ROW], tok, COLUMNS, reasoning_loss="exclude")


def test_the_cache_keeps_include_and_exclude_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "d.jsonl", [ROW])
    tok = tool_tokenizer(JSON_IN_TAG)
    masks = [prepare(path, tok, reasoning_loss=loss).train.dataset[0]["chosen_mask"]
             for loss in ("include", "exclude", "include")]
    block = len(ids(f"<think>\n{THOUGHT}\n</think>\n\n"))
    assert masks[0] == masks[2] == [] and masks[1] == [0] * block + [1] * len(ids("Sunny.<|im_end|>\n"))
