"""Rows that hold several pairs: per-turn preferences (assistant messages carrying `rejected`) and ranked answers
(`responses` + `scores` or `ranking`), weighted so that each prompt counts once; and every new shape of row (tools,
reasoning, per-turn, ranked) the same packed as padded.

Goldens are written by hand (tests/tool_templates.py's vocabulary; SmolLM2's stock tokenizer for its template).
Expected losses come from the model's own full-logit forward and the paper's formulas written here.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import write_jsonl
from test_tool_rows import (EMPTY_THINK, RESULT, SMOL_SYSTEM, TOOL_ROW, error, expected, prepare, smollm2,  # noqa: F401
                            tokenize, user)
from tool_templates import JSON_IN_TAG, SPECIAL_BLOCK, TEMPLATES, TOOLS_IN_SYSTEM, VOCAB_SIZE, call, ids, tool_tokenizer

from autotrain.data.render import Columns
from autotrain.trainers.clm.params import LLMTrainingParams

TURNS = Columns(None, "messages", None, kind="turns")
RANKED = Columns("prompt", "responses", None, kind="ranked", scores="scores")


def answer(text: str, rejected=None) -> dict:
    return {"role": "assistant", "content": text, **({"rejected": rejected} if rejected is not None else {})}


# Two marked turns: the first's alternative is text, the second's an assistant message.
CONVERSATION = {"messages": [user("Q1"), answer("A1", "B1"), user("Q2"),
                             answer("A2", {"role": "assistant", "content": "B2"})]}
# Per template: (opening of turn 2's prompt after turn 1's prompt, how an answer is written: (pieces) for text).
TURN_GOLDEN = {
    TOOLS_IN_SYSTEM: ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n",
                      "A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
                      lambda text: [(f"{text}<|im_end|>\n", True)]),
    JSON_IN_TAG: ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n",
                  f"{EMPTY_THINK}A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
                  lambda text: [(EMPTY_THINK, False), (f"{text}<|im_end|>\n", True)]),
    SPECIAL_BLOCK: ("[INST]Q1[/INST]", "A1</s>[INST]Q2[/INST]", lambda text: [(f"{text}</s>", True)]),
}


@pytest.mark.parametrize("template", list(TURN_GOLDEN), ids=list(TEMPLATES))
def test_each_marked_turn_is_one_pair_whose_prompt_is_the_conversation_so_far(template):
    first, then, written = TURN_GOLDEN[template]
    out = tokenize([CONVERSATION], tool_tokenizer(template), TURNS)
    assert len(out) == 2 and dict(out.made) == {"conversations": 1, "pairs": 2}
    assert out.prompt_ids == [ids(first), ids(first + then)]
    rows = [out.dataset[k] for k in range(2)]
    assert [(r["chosen_ids"], r["chosen_mask"]) for r in rows] == [expected(written("A1")), expected(written("A2"))]
    assert [(r["rejected_ids"], r["rejected_mask"]) for r in rows] == [expected(written("B1")), expected(written("B2"))]


def test_smollm2_per_turn_pairs(smollm2):  # noqa: F811
    out = tokenize([CONVERSATION], smollm2, TURNS)

    def encode(text: str) -> list[int]:
        return smollm2(text, add_special_tokens=False)["input_ids"]

    first = f"{SMOL_SYSTEM}<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
    assert out.prompt_ids == [encode(first), encode(f"{first}A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
                                                     "<|im_start|>assistant\n")]
    assert out.chosen_ids == [encode("A1<|im_end|>\n"), encode("A2<|im_end|>\n")]
    assert out.rejected_ids == [encode("B1<|im_end|>\n"), encode("B2<|im_end|>\n")]


def test_a_marked_tool_call_and_a_tools_column():
    messages = [user("Weather in Paris?"), {**call("Paris"), "rejected": call("Lyon")}, RESULT,
                answer("Sunny.", "Rain.")]
    out = tokenize([{"messages": messages, "tools": None}], tool_tokenizer(SPECIAL_BLOCK),
                   Columns(None, "messages", None, kind="turns", tools="tools"))
    assert out.prompt_ids[1] == ids('[INST]Weather in Paris?[/INST][TOOL_CALLS][{"name": "get_weather", "arguments": '
                                    '{"city": "Paris"}}]</s>[TOOL_RESULTS]sunny[/TOOL_RESULTS]')
    assert out.rejected_ids == [ids('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lyon"}}]</s>'),
                                ids("Rain.</s>")]


def test_conversations_without_a_marked_turn_are_counted_and_sft_trains_the_chosen_turns():
    tok = tool_tokenizer(TOOLS_IN_SYSTEM)
    out = tokenize([CONVERSATION, {"messages": [user("Hi"), answer("Hello.")]}], tok, TURNS)
    assert dict(out.made) == {"conversations": 2, "pairs": 2, "conversations without a marked turn": 1}
    sft = tokenize([CONVERSATION], tok, Columns(None, "messages", None))
    assert sft.chosen_ids[0] == ids("A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n")


def test_per_turn_rows_that_cannot_be_pairs_name_the_line(tmp_path):
    tok = tool_tokenizer(TOOLS_IN_SYSTEM)
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATION, {"messages": [answer("A", "B"), user("Q")]}])
    assert error(path, tok) == (f"{path}:2, column 'messages': message 1 carries a 'rejected' alternative but "
                                "follows no user or tool message; a marked turn answers the turn before it")
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [user("Q"), answer("A", 7)]}])
    assert error(path, tok) == (f"{path}:1, column 'messages': message 2: 'rejected' must be text or an assistant "
                                "message, got 7")
    pairs = {"prompt": [user("Q")], "chosen": [answer("A", "B")], "rejected": "C"}
    path = write_jsonl(tmp_path / "d.jsonl", [pairs])
    assert error(path, tok) == (f"{path}:1, column 'chosen': message 1 carries a 'rejected' alternative; only an "
                                "assistant turn of a conversation column (per-turn pairs) may")


# --- Ranked answers ---------------------------------------------------------------------------------------------------

# "4" and "four" tie at the top, "22" is third, "5" last.
RANKED_ROW = {"prompt": "2+2?", "responses": ["4", "5", "four", "22"], "scores": [9, 1, 9, 3]}
PAIRS_BY_MODE = {"best": [("4", "5"), ("4", "22")],
                 "all": [("4", "5"), ("4", "22"), ("four", "5"), ("22", "5"), ("four", "22")]}


@pytest.mark.parametrize("mode", list(PAIRS_BY_MODE))
@pytest.mark.parametrize("template", list(TEMPLATES.values()), ids=list(TEMPLATES))
def test_ranked_answers_become_weighted_pairs_ties_skipped(template, mode):
    written = TURN_GOLDEN[template][2]
    prompt = "[INST]2+2?[/INST]" if template == SPECIAL_BLOCK else "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    out = tokenize([RANKED_ROW], tool_tokenizer(template), RANKED, ranked=mode)
    made = PAIRS_BY_MODE[mode]
    # Ties: best: "four" against the best "4"; all: ("4", "four").
    assert dict(out.made) == {"prompts": 1, "pairs": len(made), "tied pairs skipped": 1}
    assert out.prompt_ids == [ids(prompt)] * len(made)
    got = [(out.dataset[k]["chosen_ids"], out.dataset[k]["rejected_ids"]) for k in range(len(made))]
    assert sorted(got) == sorted((expected(written(c))[0], expected(written(r))[0]) for c, r in made)
    assert out.dataset["pair_weight"] == pytest.approx([1 / len(made)] * len(made))


def test_smollm2_ranked_answers_by_ranking(smollm2):  # noqa: F811
    row = {"prompt": "2+2?", "responses": ["5", "4", "22"], "ranking": [3, 1, 2]}  # 1 is best
    out = tokenize([row], smollm2, Columns("prompt", "responses", None, kind="ranked", scores="ranking"), ranked="all")

    def encode(text: str) -> list[int]:
        return smollm2(text, add_special_tokens=False)["input_ids"]

    assert out.prompt_ids == [encode(f"{SMOL_SYSTEM}<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")] * 3
    assert sorted(zip(out.chosen_ids, out.rejected_ids)) == sorted(
        (encode(f"{c}<|im_end|>\n"), encode(f"{r}<|im_end|>\n")) for c, r in (("4", "5"), ("4", "22"), ("22", "5")))


def test_ranked_columns_are_found_and_bad_scores_name_the_line(tmp_path):
    tok = tool_tokenizer(TOOLS_IN_SYSTEM)
    path = write_jsonl(tmp_path / "d.jsonl", [RANKED_ROW, {**RANKED_ROW, "scores": [1, 2]}])
    assert error(path, tok) == (f"{path}:2, column 'scores': expected a list of 4 numbers (one per answer in "
                                "'responses'), got [1, 2]")
    path = write_jsonl(tmp_path / "d.jsonl", [{**RANKED_ROW, "scores": [1, "high", 2, 3]}])
    assert error(path, tok) == f"{path}:1, column 'scores': expected a finite number for each answer, got 'high'"
    path = write_jsonl(tmp_path / "d.jsonl", [{**RANKED_ROW, "responses": ["4"], "scores": [1]}])
    assert error(path, tok) == (f"{path}:1, column 'responses': expected a list of two or more answers, got ['4']")
    path = write_jsonl(tmp_path / "d.jsonl", [{**RANKED_ROW, "scores": [1, 1, 1, 1]}])
    assert error(path, tok) == (f"{path}: every pair was dropped ({{'tied pairs skipped': 3, 'prompts without an "
                                "untied pair': 1}); nothing left to train on")


# --- Each prompt counts once ------------------------------------------------------------------------------------------


def reference_loss(model, rows: list[dict], groups: list[int], beta: float) -> float:
    """ORPO's loss from the model's full logits, written from the paper with each prompt's pairs weighing 1 in
    total: NLL = sum_i w_i nll_i / sum_i w_i n_i, odds-ratio term = sum_i w_i L_i / sum_i w_i."""
    weight = [1 / groups.count(g) for g in groups]
    nll = tokens = odds = 0.0
    for w, row in zip(weight, rows):
        means = []
        for side in ("chosen_ids", "rejected_ids"):
            seq = torch.tensor([row["prompt_ids"] + row[side]])
            with torch.no_grad():
                logps = model(input_ids=seq).logits[0].double().log_softmax(-1)
            start = len(row["prompt_ids"])
            picked = [logps[start + t - 1, tok].item() for t, tok in enumerate(row[side])]
            means.append(sum(picked) / len(picked))
            if side == "chosen_ids":
                nll, tokens = nll - w * sum(picked), tokens + w * len(picked)
        log_odds = [m - math.log(-math.expm1(m)) for m in means]
        odds += w * -math.log(1 / (1 + math.exp(-(log_odds[0] - log_odds[1]))))
    return nll / tokens + beta * odds / sum(weight)


def test_a_prompt_with_four_ranked_answers_weighs_what_a_prompt_with_two_does():
    from test_packing import tiny_model

    from autotrain.data.collate import PaddedCollator
    from autotrain.data.pack import PackedCollator
    from autotrain.losses import pair_counts
    from autotrain.methods.orpo import METHOD

    rows = [{"prompt": "Name a prime.", "responses": ["7", "9", "10", "12"], "scores": [4, 3, 2, 1]},
            {"prompt": "2+2?", "responses": ["4", "5"], "scores": [1, 0]}]
    out = tokenize(rows, tool_tokenizer(TOOLS_IN_SYSTEM), RANKED, ranked="all")
    features = [out.dataset[k] for k in range(len(out))]
    groups = [0] * 6 + [1]  # 4 answers: 6 pairs; 2 answers: 1 pair
    assert len(features) == 7
    model, beta = tiny_model(vocab=VOCAB_SIZE, seed=2).eval(), 0.5
    want = reference_loss(model, features, groups, beta)
    naive = reference_loss(model, features, list(range(7)), beta)  # every pair weighing 1: the first prompt 6x
    assert abs(naive - want) > 1e-3  # the rows make the two rules disagree, so the checks below can fail
    for collate in (PaddedCollator(0), PackedCollator(0), PackedCollator(0, token_budget=40)):
        with torch.no_grad():
            loss, _ = METHOD.step(model, collate(features), beta)
            # The same step split into micro-batches of 3 + 4 pairs, reduced over the whole step as the trainer does.
            batches = [collate(features[:3]), collate(features[3:])]
            counts = [pair_counts(b) for b in batches]
            tokens, pairs = sum(c[0] for c in counts), sum(c[1] for c in counts)
            split = sum(METHOD.pair_terms(model, b, beta).loss(tokens, pairs) for b in batches)
        assert loss.item() == pytest.approx(want, rel=1e-5), collate
        assert split.item() == pytest.approx(want, rel=1e-5), collate


# --- Packed equals padded on every new shape ---------------------------------------------------------------------------


def full_sums(model, row: dict, side: str) -> tuple[float, int]:
    """Summed log-prob and count of `side`'s trained tokens (its mask), from the model's full logits."""
    completion = row[f"{side}_ids"]
    mask = row[f"{side}_mask"] or [1] * len(completion)
    seq = torch.tensor([row["prompt_ids"] + completion])
    with torch.no_grad():
        logps = model(input_ids=seq).logits[0].double().log_softmax(-1)
    start = len(row["prompt_ids"])
    picked = [logps[start + t - 1, tok].item() for t, tok in enumerate(completion) if mask[t]]
    return sum(picked), len(picked)


def test_every_new_shape_is_the_same_packed_as_padded():
    from test_packing import tiny_model

    from autotrain.data.collate import PaddedCollator
    from autotrain.data.pack import PackedCollator
    from autotrain.forward import sequence_logps

    tok = tool_tokenizer(JSON_IN_TAG)  # think blocks, tool turns and tool definitions all at once
    thinking = {"prompt": [user("Weather?")], "chosen": [answer("Sunny.") | {"reasoning_content": "June."}],
                "rejected": "Rain."}
    features = [*tokenize([TOOL_ROW, thinking], tok, Columns("prompt", "chosen", "rejected", tools="tools"),
                          reasoning_loss="exclude").dataset,
                *tokenize([CONVERSATION], tok, TURNS).dataset,
                *tokenize([RANKED_ROW], tok, RANKED, ranked="all").dataset]
    assert all(f["chosen_mask"] for f in features)  # every row has context tokens: the masks are exercised
    model = tiny_model(vocab=VOCAB_SIZE, seed=5).eval()
    want = [full_sums(model, f, "chosen") for f in features] + [full_sums(model, f, "rejected") for f in features]
    for collate in (PaddedCollator(0), PackedCollator(0), PackedCollator(0, token_budget=300),
                    PackedCollator(0, share_prompt=False)):
        with torch.no_grad():
            out = sequence_logps(model, collate(features))
        assert out.counts.tolist() == [n for _, n in want], collate
        assert out.sums.tolist() == pytest.approx([s for s, _ in want], rel=1e-5), collate


# --- The model card and the cache ------------------------------------------------------------------------------------


def card_of(tmp_path, rows: list[dict], **overrides) -> tuple[str, object]:
    from autotrain.outputs import write_card

    path = write_jsonl(tmp_path / "d.jsonl", rows)
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    params = LLMTrainingParams(data_path=str(path), project_name=str(project), **overrides)
    data = prepare(path, tool_tokenizer(TOOLS_IN_SYSTEM), **overrides)
    write_card(project, params, "tiny", data, [])
    return (project / "README.md").read_text(), data


def test_the_card_counts_conversations_pairs_and_what_was_dropped(tmp_path):
    same = {"messages": [user("Q"), answer("A", "A")]}  # chosen == rejected: dropped and counted
    card, _ = card_of(tmp_path, [CONVERSATION, {"messages": [user("Hi"), answer("Hello.")]}, same])
    assert "- columns: conversations `messages` (per-turn pairs: each assistant message carrying a rejected " \
           "alternative)" in card
    assert "train split `train`: 2 pairs)" in card
    assert "- train: 3 conversations -> 3 pairs, one per assistant turn carrying a rejected alternative" in card
    assert "- train: 1 conversation without a marked turn gave no pair" in card
    assert "- train: 1 pair dropped (chosen == rejected)" in card


def test_the_card_counts_ranked_prompts_pairs_and_ties_and_the_cache_keeps_them(tmp_path, caplog):
    rows = [RANKED_ROW, {"prompt": "1+1?", "responses": ["2", "3"], "scores": [1, 1]}]
    card, first = card_of(tmp_path, rows, ranked_pairs="all")
    assert "- columns: prompt `prompt`, ranked answers `responses`, scores `scores`" in card
    assert "- train: 2 prompts with ranked answers -> 5 pairs, weighted so that each prompt counts once" in card
    assert "- train: 2 pairs of tied answers skipped" in card
    assert "- train: 1 prompt whose answers all tie gave no pair" in card
    with caplog.at_level("INFO", logger="autotrain"):
        again, second = card_of(tmp_path, rows, ranked_pairs="all")
    assert "tokenized data from the cache" in caplog.text and again == card
    assert second.train.dataset["pair_weight"] == first.train.dataset["pair_weight"] == pytest.approx([0.2] * 5)
    best = card_of(tmp_path, rows, ranked_pairs="best")[1]  # another pairing is another cache entry
    assert len(best.train) == 2 and best.train.dataset["pair_weight"] == pytest.approx([0.5, 0.5])
