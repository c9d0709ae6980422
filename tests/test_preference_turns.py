"""Preference answers of several turns train their assistant turns only; pairs that cannot be preferences, and chat
templates that refuse a conversation, are one line naming the row.

Expected ids are written by hand from conftest's character vocabulary; expected log-probs come from transformers'
own full-logit forward.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from conftest import IM_END, IM_START, NEWLINE, char_ids, make_tokenizer, write_jsonl

from autotrain.data.collate import PaddedCollator
from autotrain.data.pack import PackedCollator
from autotrain.data.render import Columns, Renderer
from autotrain.data.sources import RawSplit
from autotrain.data.tokenize import Limits, tokenize_split
from autotrain.errors import DataError

WIDE = Limits(max_prompt_length=1000, max_completion_length=None, block_size=1000)


def say(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


def turn(role: str, text: str) -> list[int]:
    return [IM_START, *char_ids(f"{role}\n{text}"), IM_END, NEWLINE]


OPENING = [IM_START, *char_ids("assistant\n")]


def answer(text: str) -> list[int]:
    return [*char_ids(text), IM_END, NEWLINE]


def tokenize(rows: list[dict], columns: Columns = Columns(None, "chosen", "rejected"), tok=None):
    tok = tok or make_tokenizer(True)
    split = RawSplit("mem.jsonl", rows, list(range(1, len(rows) + 1)))
    folder = Path(tempfile.mkdtemp())
    return tokenize_split(split, Renderer(tok, tok.chat_template, columns), tok, WIDE, folder / "t.arrow")


# Two conversations that part at the first answer and go on: the user's next turn differs too, as it would.
DIVERGING = {
    "chosen": [say("user", "Q"), say("assistant", "A1"), say("user", "U2"), say("assistant", "A2")],
    "rejected": [say("user", "Q"), say("assistant", "B1"), say("user", "V2"), say("assistant", "B2")],
}


def test_a_pair_diverging_at_the_first_answer_trains_only_the_assistant_turns():
    out = tokenize([DIVERGING])
    row = out.dataset[0]
    assert row["prompt_ids"] == turn("user", "Q") + OPENING
    chosen_context, rejected_context = turn("user", "U2") + OPENING, turn("user", "V2") + OPENING
    assert row["chosen_ids"] == answer("A1") + chosen_context + answer("A2")
    assert row["rejected_ids"] == answer("B1") + rejected_context + answer("B2")
    # The user's turn (with the next assistant opening) is context: 0; each answer with what closes it: 1.
    assert row["chosen_mask"] == [1] * len(answer("A1")) + [0] * len(chosen_context) + [1] * len(answer("A2"))
    assert row["rejected_mask"] == [1] * len(answer("B1")) + [0] * len(rejected_context) + [1] * len(answer("B2"))


def test_ordinary_pairs_carry_no_mask():
    out = tokenize([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], Columns("prompt", "chosen", "rejected"))
    assert (out.dataset[0]["chosen_mask"], out.dataset[0]["rejected_mask"]) == ([], [])


def full_sums(model, prompt: list[int], completion: list[int], mask: list[int]) -> tuple[float, int]:
    """Summed log-probs of the completion's trained tokens, and their count, from the model's full logits."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].double().log_softmax(-1)
    picked = [logps[len(prompt) + t - 1, tok].item() for t, tok in enumerate(completion) if mask[t]]
    return sum(picked), len(picked)


def test_context_turns_count_in_no_log_prob_mean_or_nll_in_either_layout():
    from test_packing import tiny_model

    from autotrain.forward import sequence_logps

    model = tiny_model(seed=3)
    rows = [
        {"prompt_ids": [5, 9], "chosen_ids": [20, 21, 2, 40, 41, 42, 22, 2], "chosen_mask": [1, 1, 1, 0, 0, 0, 1, 1],
         "rejected_ids": [30, 2, 43, 44, 31, 32, 2], "rejected_mask": [1, 1, 0, 0, 1, 1, 1]},
        {"prompt_ids": [7, 8, 9], "chosen_ids": [33, 2], "chosen_mask": [],  # an ordinary pair beside it
         "rejected_ids": [34, 35, 2], "rejected_mask": []},
    ]
    expected = []
    for side, mask_key in (("chosen_ids", "chosen_mask"), ("rejected_ids", "rejected_mask")):
        for r in rows:
            mask = r[mask_key] or [1] * len(r[side])
            expected.append(full_sums(model, r["prompt_ids"], r[side], mask))
    sums, counts = [s for s, _ in expected], [n for _, n in expected]
    nll = -(sums[0] + sums[1]) / (counts[0] + counts[1])
    for collate in (PaddedCollator(0), PackedCollator(0), PackedCollator(0, token_budget=12)):
        with torch.no_grad():
            out = sequence_logps(model, collate(rows))
        assert out.counts.tolist() == counts, collate
        assert out.sums.tolist() == pytest.approx(sums, rel=1e-5), collate
        assert out.nll.item() == pytest.approx(nll, rel=1e-5), collate
    separate = PackedCollator(0, share_prompt=False)(rows)  # varlen flash attention's layout: its targets
    assert separate["target_ids"].tolist() == [20, 21, 2, 22, 2, 30, 2, 31, 32, 2, 33, 2, 34, 35, 2]


# --- Pairs that are not preferences over one conversation -------------------------------------------------------------


def test_conversations_that_first_differ_in_a_user_turn_are_refused_with_that_reason():
    system = say("system", "S")
    row = {"chosen": [system, say("user", "U1"), say("assistant", "A")],
           "rejected": [system, say("user", "U2"), say("assistant", "B")]}
    with pytest.raises(DataError) as err:
        tokenize([row])
    assert str(err.value) == (
        "mem.jsonl:1: chosen and rejected first differ at message 2, a user message; a preference pair compares two "
        "answers to one conversation, so the first message that differs must be the assistant's")
    later = {"chosen": [say("user", "Q"), say("assistant", "A"), say("user", "U2"), say("assistant", "A2")],
             "rejected": [say("user", "Q"), say("assistant", "A"), say("user", "V2"), say("assistant", "B2")]}
    with pytest.raises(DataError, match="first differ at message 3, a user message"):
        tokenize([later])
    with_prompt = {"prompt": [say("user", "Q")], "chosen": later["chosen"][1:], "rejected": later["rejected"][1:]}
    with pytest.raises(DataError, match="first differ at message 3, a user message"):
        tokenize([with_prompt], Columns("prompt", "chosen", "rejected"))


def test_an_answer_ending_with_a_user_turn_is_refused():
    row = {"prompt": [say("user", "Q")], "chosen": [say("assistant", "A"), say("user", "more?")],
           "rejected": [say("assistant", "B"), say("user", "more?")]}
    with pytest.raises(DataError, match=r"^mem.jsonl:1, column 'chosen': the answer must end with an assistant "
                                        "message"):
        tokenize([row], Columns("prompt", "chosen", "rejected"))


# --- A template that refuses a conversation ---------------------------------------------------------------------------

ALTERNATING = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_template_that_raises_is_one_line_naming_the_row_and_column(tmp_path):
    from autotrain.data.prepare import prepare_data
    from autotrain.trainers.clm.params import LLMTrainingParams

    tok = make_tokenizer(True)
    tok.chat_template = ALTERNATING
    good = {"prompt": [say("user", "Q")], "chosen": "A", "rejected": "B"}
    bad = {"prompt": [say("user", "Q"), say("user", "again")], "chosen": "A", "rejected": "B"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, good, bad])
    params = LLMTrainingParams(data_path=str(path), chat_template="tokenizer")
    with pytest.raises(DataError) as err:
        prepare_data(params, tok, 512)
    assert str(err.value) == (f"{path}:3, column 'prompt': the chat template refuses this conversation: "
                              "Conversation roles must alternate user/assistant/user/assistant/...")
