"""Evaluation metrics are exact aggregates over the whole validation split, each pair counted once.

7 validation pairs in batches of 3 (3 + 3 + 1): before the fix each metric was the mean of the three batch means
(the last pair weighing as much as three), and eval_loss was weighted per packed row. Expected values here come from
per-pair log-probs computed by transformers' ordinary forward (full logits, float64 log-softmax), not by the code
under test. The 2-process case (duplicates from `even_batches` not counted) is in test_step_invariance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import IM_END, IM_START, NEWLINE, char_ids, write_jsonl

from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

BETA = 0.5


def rows(count: int, start: int = 0) -> list[dict]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    word = lambda i, n: "".join(letters[(i * 7 + 3 * k) % 26] for k in range(n))  # noqa: E731
    return [{"prompt": f"{i}" + "?" * (i % 4), "chosen": word(i, 1 + (i * 7) % 9), "rejected": word(i + 5, 1 + i % 6)}
            for i in range(start, start + count)]


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory):
    """The tiny chat Llama with perturbed weights: log-probs far from uniform, so pairs go both ways."""
    from conftest import make_model_dir
    from transformers import AutoModelForCausalLM

    folder = make_model_dir(tmp_path_factory.mktemp("varied"), chat=True, seed=4)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    return folder


def token_logps(model: torch.nn.Module, prompt: list[int], completion: list[int]) -> list[float]:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return [logps[len(prompt) + t - 1, token].item() for t, token in enumerate(completion)]


def expected_metrics(model: torch.nn.Module, valid: list[dict]) -> dict[str, float]:
    """ORPO's metrics over the split, by the definitions (autotrain.train.losses' module docstring), in float64."""
    prompt = lambda p: [IM_START, *char_ids("user\n" + p), IM_END, NEWLINE, IM_START, *char_ids("assistant\n")]  # noqa: E731
    answer = lambda a: [*char_ids(a), IM_END, NEWLINE]  # noqa: E731
    nll, tokens, pairs = 0.0, 0, []
    for row in valid:
        chosen = token_logps(model, prompt(row["prompt"]), answer(row["chosen"]))
        rejected = token_logps(model, prompt(row["prompt"]), answer(row["rejected"]))
        nll -= sum(chosen)
        tokens += len(chosen)
        pairs.append((sum(chosen) / len(chosen), sum(rejected) / len(rejected)))
    log_odds = lambda logp: logp - math.log(-math.expm1(logp))  # noqa: E731
    ratios = [log_odds(c) - log_odds(r) for c, r in pairs]
    log_sigmoids = [-math.log1p(math.exp(-x)) for x in ratios]
    n = len(pairs)
    return {
        "eval_loss": nll / tokens - BETA * sum(log_sigmoids) / n,
        "eval_nll_loss": nll / tokens,
        "eval_log_odds_ratio": sum(log_sigmoids) / n,
        "eval_log_odds_chosen": sum(ratios) / n,
        "eval_logps/chosen": sum(c for c, _ in pairs) / n,
        "eval_logps/rejected": sum(r for _, r in pairs) / n,
        "eval_rewards/margins": BETA * sum(c - r for c, r in pairs) / n,
        "eval_rewards/accuracies": sum(c > r for c, r in pairs) / n,
        "eval_rewards/ties": sum(c == r for c, r in pairs) / n,
    }


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_eval_metrics_are_exact_over_an_odd_split(tmp_path, varied_model, packing):
    from transformers import AutoModelForCausalLM

    valid = rows(7, start=20)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows(3))
    write_jsonl(data / "validation.jsonl", valid)
    params = LLMTrainingParams(model=str(varied_model), data_path=str(data), project_name=str(tmp_path / "run"),
                               valid_split="validation", batch_size=3, gradient_accumulation=1, max_steps=1,
                               dpo_beta=BETA, packing=packing, lr=1e-6)
    result = AutoTrainProject(params).create()
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if "eval_loss" in r)
    assert first["step"] == 0  # before training: the weights on disk are the ones evaluated
    expected = expected_metrics(AutoModelForCausalLM.from_pretrained(varied_model, dtype=torch.float32), valid)
    assert 0 < expected["eval_rewards/accuracies"] < 1  # a fraction of 7 that batch means (of 3, 3, 1) would miss
    for name, value in expected.items():
        assert first[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
