"""--trainer kto: its losses against float64 references written here from the papers' equations (and perturbed ones
shown to fail them), the KL reference point, the metrics over each class, the data (unpaired rows, pairs unpaired,
each example's KL completion), the params and one run whose first evaluation is known in advance.

No expected value here comes from the code under test. TRL's equality is tests/test_trl_kto.py.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from conftest import EOS, char_ids, make_tokenizer, write_jsonl

from autotrain.data.tokenize import made_lines
from autotrain.errors import DataError, ParamsError
from autotrain.train.losses import Subsets, kl_baseline, reduce_columns
from autotrain.train.pair_losses import kto_loss
from autotrain.trainers.clm.params import LLMTrainingParams


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- float64 references -----------------------------------------------------------------------------------------
# r: log pi(y|x) - log ref(y|x) summed over the completion; z: the KL reference point; d: desirable; b: beta;
# wd, wu: the class weights. KTO eq. 7 (lambda_y - v), APO eq. 7 with each answer on its own.
REFERENCES = {
    "kto": lambda r, d, z, b, wd, wu: wd * (1 - sigmoid(b * (r - z))) if d else wu * (1 - sigmoid(b * (z - r))),
    "apo_zero_unpaired": lambda r, d, z, b, wd, wu: wd * (1 - sigmoid(b * r)) if d else wu * sigmoid(b * r),
}


def examples64(n: int = 7, seed: int = 0) -> tuple[list[float], list[bool]]:
    g = torch.Generator().manual_seed(seed)
    ratios = (-9 + 18 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    return ratios, [bool(b) for b in torch.randint(0, 2, (n,), generator=g)]


def reference(name: str, ratios: list[float], labels: list[bool], z: float, b: float, wd: float, wu: float
              ) -> list[float]:
    return [REFERENCES[name](r, d, z, b, wd, wu) for r, d in zip(ratios, labels)]


def ours(name: str, ratios: list[float], labels: list[bool], z: float, b: float, wd: float, wu: float) -> torch.Tensor:
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return kto_loss(as64(ratios), torch.tensor(labels), as64(z), b, wd, wu, name)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_each_loss_matches_its_float64_reference_and_perturbed_ones_fail(name):
    ratios, labels = examples64()
    z, b, wd, wu = 1.7, 0.3, 1.4, 0.6
    expected = reference(name, ratios, labels, z, b, wd, wu)
    got = ours(name, ratios, labels, z, b, wd, wu)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    exact = sum(expected) / len(expected)  # a batch's loss: the plain mean over its examples (TRL's nanmean)
    slips = {
        "the log-ratio's sign": reference(name, [-r for r in ratios], labels, -z, b, wd, wu),
        "beta left out": reference(name, ratios, labels, z, 1.0, wd, wu),
        "the weights swapped": reference(name, ratios, labels, z, b, wu, wd),
        "the labels flipped": reference(name, ratios, [not d for d in labels], z, b, wd, wu),
    }
    if name == "kto":
        slips["the KL reference point left out"] = reference(name, ratios, labels, 0.0, b, wd, wu)
    for slip, losses in slips.items():
        assert abs(sum(losses) / len(losses) - exact) > 1e-4 * exact, f"{name}: {slip} goes unnoticed"
    assert abs(sum(expected) - exact) > 1e-4 * exact  # a sum over examples for the mean
    # a mean of the class means for the mean over examples (labels are 4 to 3 here)
    means = [sum(v for v, d in zip(expected, labels) if d == want) / labels.count(want) for want in (True, False)]
    assert abs(sum(means) / 2 - exact) > 1e-4 * exact


def test_hand_computed_cases():
    """beta * (r - z) = ln 3 makes sigma 3/4: a desirable example's loss is 1/4 of its weight."""
    ln3 = math.log(3.0)
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    yes, no = torch.tensor([True]), torch.tensor([False])
    # r = 2 ln 3 + 1, z = 1, beta 1/2: 1 - 3/4, times 2
    assert kto_loss(one(2 * ln3 + 1), yes, 1.0, 0.5, 2.0, 1.0).item() == pytest.approx(0.5, rel=1e-12)
    # undesirable: z - r = ln 3, beta 1: 1 - 3/4, times 3
    assert kto_loss(one(1 - ln3), no, 1.0, 1.0, 1.0, 3.0).item() == pytest.approx(0.75, rel=1e-12)
    # apo_zero_unpaired ignores z: desirable 1 - sigma(ln 3) = 1/4, undesirable sigma(ln 3) = 3/4
    assert kto_loss(one(ln3), yes, 5.0, 1.0, loss_type="apo_zero_unpaired").item() == pytest.approx(0.25, rel=1e-12)
    assert kto_loss(one(ln3), no, 5.0, 1.0, loss_type="apo_zero_unpaired").item() == pytest.approx(0.75, rel=1e-12)


def test_the_kl_reference_point_is_a_clamped_mean_without_gradient():
    values = torch.tensor([3.0, -1.0, 0.5, 1.5], requires_grad=True)
    assert kl_baseline(values.sum(), 4).item() == pytest.approx(1.0)
    assert not kl_baseline(values.sum(), 4).requires_grad
    assert kl_baseline(torch.tensor(-2.0), 4).item() == 0.0  # a negative estimate of a KL is 0
    # and no gradient reaches it through the loss either
    z = torch.tensor(0.7, requires_grad=True)
    kto_loss(torch.tensor([0.3, -0.2], requires_grad=True), torch.tensor([True, False]), z, 0.5).sum().backward()
    assert z.grad is None


def test_finite_at_huge_log_ratios():
    ratios = torch.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    losses = kto_loss(ratios, torch.tensor([True, True, False, False]), torch.tensor(3.0), 0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(ratios.grad).all()


# --- metrics over each class ---------------------------------------------------------------------------------------
SUBSETS = Subsets(counts={"rewards/chosen": "desirable", "rewards/rejected": "undesirable"},
                  differences={"rewards/margins": ("rewards/chosen", "rewards/rejected")})


def test_class_metrics_are_means_over_their_class():
    sums = {"nll_sum": 6.0, "nll_tokens": 3.0, "pair_loss": 2.0, "pairs": 4.0, "desirable": 3.0, "undesirable": 1.0,
            "rewards/chosen": 0.9, "rewards/rejected": -0.2, "kl": 0.4}
    metrics = reduce_columns(sums, 0.0, SUBSETS)
    assert metrics["rewards/chosen"] == pytest.approx(0.3) and metrics["rewards/rejected"] == pytest.approx(-0.2)
    assert metrics["rewards/margins"] == pytest.approx(0.5) and metrics["kl"] == pytest.approx(0.1)
    assert metrics["loss"] == pytest.approx(0.5) and "desirable" not in metrics
    # a window with no undesirable example reports neither its mean nor the margin (TRL logs none)
    none = reduce_columns({**sums, "undesirable": 0.0, "rewards/rejected": 0.0}, 0.0, SUBSETS)
    assert "rewards/rejected" not in none and "rewards/margins" not in none
    as_tensors = reduce_columns({k: torch.tensor(v) for k, v in {**sums, "undesirable": 0.0}.items()}, 0.0, SUBSETS)
    assert math.isnan(as_tensors["rewards/rejected"]) and math.isnan(as_tensors["rewards/margins"])


# --- the data -----------------------------------------------------------------------------------------------------
UNPAIRED = [{"prompt": "1+1=", "completion": "2", "label": True}, {"prompt": "2+2=", "completion": "5", "label": False},
            {"prompt": "3+3=", "completion": "6", "label": 1}, {"prompt": "4+4=", "completion": "9", "label": "false"}]
PAIRS = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
         {"prompt": "3+3=", "chosen": "6", "rejected": "7"}]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))


def prepared(tmp_path, rows: list[dict], **given):
    from autotrain.data.prepare import prepare_data

    params = LLMTrainingParams(data_path=str(write_jsonl(tmp_path / "rows.jsonl", rows)), trainer="kto", **given)
    return prepare_data(params, make_tokenizer(False), 512, opened=None)


def test_unpaired_rows_become_examples_with_the_previous_examples_completion_as_kl(tmp_path):
    """TRL's construction over the split: (x1, y4), (x2, y1), (x3, y2), (x4, y3)."""
    data = prepared(tmp_path, UNPAIRED)
    train = data.train.dataset
    completions = [char_ids(row["completion"]) + [EOS] for row in UNPAIRED]
    assert data.train.prompt_ids == [[1] + char_ids(row["prompt"]) for row in UNPAIRED]  # BOS: a base tokenizer
    assert data.train.chosen_ids == completions
    assert data.train.rejected_ids == [completions[3], completions[0], completions[1], completions[2]]
    assert train["label"] == [True, False, True, False]
    assert data.columns.describe() == "prompt `prompt`, completion `completion`, label `label` (true: desirable)"
    assert data.columns.unit == "examples"


def test_pairs_become_their_chosen_answers_then_their_rejected_ones(tmp_path):
    data = prepared(tmp_path, PAIRS)
    answers = [char_ids(row[side]) + [EOS] for side in ("chosen", "rejected") for row in PAIRS]
    assert data.train.chosen_ids == answers
    assert data.train.rejected_ids == [answers[-1], *answers[:-1]]
    assert data.train.dataset["label"] == [True] * 3 + [False] * 3
    assert data.train.prompt_ids == [[1] + char_ids(row["prompt"]) for row in PAIRS] * 2
    assert made_lines(data.train.made)[:2] == ["3 pairs -> 6 examples: each pair's chosen answer desirable, its "
                                               "rejected answer undesirable", "3 desirable and 3 undesirable examples"]


def test_apo_zero_unpaired_rows_carry_no_kl_completion(tmp_path):
    data = prepared(tmp_path, UNPAIRED, loss_type="apo_zero_unpaired")
    assert data.train.rejected_ids == [[]] * 4


@pytest.mark.parametrize("rows, given, message", [
    ([*UNPAIRED[:1], {"prompt": "2+2=", "completion": "4", "label": "yes"}], {},
     "column 'label': expected true (a desirable completion) or false, got 'yes'"),
    ([{"prompt": "p", "completion": "c", "verdict": True}] * 2, {"label_column": "label"},
     "column 'label': missing; columns present: prompt, completion, verdict"),
    ([{"completion": "c", "label": True}] * 2, {}, "unpaired rows (completion and label) need a prompt column"),
    ([{"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]}], {},
     "--trainer kto needs each answer labelled once"),
    ([{"prompt": "p", "chosen": "c"}], {},
     "--trainer kto also reads unpaired rows: a prompt, a completion and a 'label' column"),
    (UNPAIRED[:1], {}, "1 example: kto's KL reference point reads each example's prompt with another example's"),
])
def test_bad_unpaired_data_is_one_line(tmp_path, rows, given, message):
    with pytest.raises(DataError) as info:
        prepared(tmp_path, rows, **given)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_named_label_column_and_completion_column(tmp_path):
    rows = [{"q": r["prompt"], "a": r["completion"], "ok": r["label"], "rejected": "x"} for r in UNPAIRED]
    data = prepared(tmp_path, rows, label_column="ok", text_column="a", prompt_text_column="q")
    assert data.train.dataset["label"] == [True, False, True, False]
    assert data.train.chosen_ids[1] == char_ids("5") + [EOS]


def test_unequal_classes_get_trls_advice(tmp_path, caplog):
    """3 desirable, 1 undesirable, weights 1 and 1: eq. 8's ranges are [1/3, 0.44] for the desirable weight and
    [2.26, 3] for the undesirable one (TRL's rounding), neither holds."""
    rows = [*UNPAIRED[:1], *UNPAIRED[1:2], {"prompt": "5+5=", "completion": "10", "label": True}, UNPAIRED[2]]
    with caplog.at_level(logging.WARNING, logger="autotrain"):
        prepared(tmp_path, rows)
    assert any("3 desirable and 1 undesirable examples, weighted 1 and 1: the KTO paper (eq. 8) advises "
               "--desirable-weight in [0.33, 0.44] or --undesirable-weight in [2.26, 3]" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autotrain"):
        prepared(tmp_path, rows, undesirable_weight=2.5)
    assert not any("advises" in m for m in caplog.messages)


# --- the params ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, line", [
    (dict(trainer="kto"), "KTO with beta 0.1 (KTO's default), desirable_weight 1 (KTO's default), undesirable_weight 1 "
                          "(KTO's default)"),
    (dict(trainer="kto", loss_type="apo_zero_unpaired", undesirable_weight=1.3),
     "unpaired APO-zero with beta 0.1 (unpaired APO-zero's default), desirable_weight 1 (TRL's default; the unpaired "
     "APO-zero paper gives none), undesirable_weight 1.3"),
])
def test_the_settings_line_names_the_defaults(given, line):
    assert LLMTrainingParams(**given).method_settings().describe() == line


@pytest.mark.parametrize("given, message", [
    (dict(trainer="dpo", desirable_weight=2.0), "desirable_weight applies to --trainer kto only (trainer is dpo"),
    (dict(trainer="orpo", label_column="ok"), "label_column applies to --trainer kto only (trainer is orpo)"),
    (dict(trainer="kto", loss_type="sigmoid"), "unknown loss_type for --trainer kto 'sigmoid'"),
    (dict(trainer="kto", undesirable_weight=0), "undesirable_weight: Input should be greater than 0"),
    (dict(trainer="kto", dpo_beta=0), "dpo_beta 0 leaves kto with no gradient"),
])
def test_bad_settings_are_one_line(given, message):
    with pytest.raises(ParamsError) as info:
        LLMTrainingParams(**given)
    assert message in str(info.value)


# --- the layouts ---------------------------------------------------------------------------------------------------


def test_packed_equals_padded_with_the_kl_completion_in_the_row():
    """An example packed as prompt | completion | KL completion (the KL completion sees the prompt, not the
    completion) gives the padded layout's loss, metrics and gradient."""
    from test_packing import ODD, assert_same, random_pairs, tiny_model

    from autotrain.batch.packed import PackedCollator
    from autotrain.batch.padded import PaddedCollator
    from autotrain.model.forward import sequence_logps
    from autotrain.params import methods

    features = [{**f, "label": i % 3 != 0} for i, f in enumerate(random_pairs(ODD, seed=3))]
    model, ref = tiny_model(seed=4), tiny_model(seed=2)
    terms = methods.load("kto").terms
    results = []
    for collate in (PaddedCollator(0), PackedCollator(0, token_budget=30)):
        batch = collate(features)
        model.zero_grad(set_to_none=True)
        out = terms(model, batch, 0.5, lambda b: sequence_logps(ref, b).sums, desirable_weight=1.5)
        loss = out.loss()
        loss.backward()
        metrics = {k: v.item() for k, v in out.batch_metrics().items()}
        results.append(((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}), metrics))
    assert PackedCollator(0, token_budget=30)(features)["input_ids"].shape[0] > 1  # several rows, examples share them
    (padded, padded_metrics), (packed, packed_metrics) = results
    assert_same(packed, padded)
    assert packed_metrics == pytest.approx(padded_metrics, rel=1e-5, abs=1e-6)
    assert padded_metrics["kl"] > 0  # the reference point is not clamped away on this batch


# --- a run ---------------------------------------------------------------------------------------------------------


def test_a_run_trains_kto_and_its_first_evaluation_is_known(tmp_path, chat_model):
    """With LoRA the policy starts as its reference: every log-ratio and the KL point are 0, each example's loss is
    its weight times 1 - sigma(0) = 1/2, so the step-0 evaluation of 3 desirable and 2 undesirable examples at weights
    2 and 1 is (3 * 2 + 2 * 1) / 2 / 5 = 0.8, and every reward 0. The reference log-probs (the KL completions'
    included) are precomputed; a run that lost them, or the weight, or trained on pairs, would log another value."""
    from autotrain.cli import main

    data = tmp_path / "data"
    data.mkdir()
    train = [{"prompt": f"{i}+{i}=", "completion": str(2 * i + (i % 2)), "label": i % 2 == 0} for i in range(8)]
    valid = [{"prompt": f"{i}*2=", "completion": str(2 * i + (i % 2)), "label": i % 2 == 0} for i in range(5)]
    write_jsonl(data / "train.jsonl", train)
    write_jsonl(data / "validation.jsonl", valid)
    project = tmp_path / "run"
    code = main(["llm", "--train", "--model", str(chat_model), "--data-path", str(data), "--project-name",
                 str(project), "--trainer", "kto", "--desirable-weight", "2", "--peft", "--lora-dropout", "0",
                 "--precompute-ref-logps",
                 "--valid-split", "validation", "--batch-size", "2", "--gradient-accumulation", "2", "--max-steps",
                 "2", "--lr", "1e-3", "--warmup-ratio", "0"])
    assert code == 0
    records = [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if "eval_loss" in r and r["step"] == 0)
    assert first["eval_loss"] == pytest.approx(0.8, rel=1e-6)
    for key in ("eval_kl", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
    steps = [r for r in records if "grad_norm" in r]
    assert len(steps) == 2 and all({"kl", "rewards/chosen", "logps/rejected"} <= set(r) for r in steps)
    card = (project / "README.md").read_text()
    assert ("Method: KTO with beta 0.1 (KTO's default), desirable_weight 2, undesirable_weight 1 (KTO's default)."
            in card)
    assert "4 desirable and 4 undesirable examples" in card and "preference-tuning" in card


def test_a_killed_kto_run_resumes_to_the_uninterrupted_run_and_refuses_other_weights(tmp_path, chat_model):
    """Each step's KL reference point is taken from the step's own micro-batches and each example's KL completion is
    fixed over the split, so a run killed in step 2 and resumed from step 1 trains what the uninterrupted run trains (weights,
    losses and KL points); a resume with another class weight would train another objective and is refused."""
    from safetensors.torch import load_file

    from autotrain.project import AutoTrainProject
    from autotrain.train.stop import StopOnSignal

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl",
                [{"prompt": f"{i}+{i}=", "completion": str(2 * i + i % 2), "label": i % 3 != 0} for i in range(12)])

    def params(project: str, **changes) -> LLMTrainingParams:
        return LLMTrainingParams(**{**dict(
            model=str(chat_model), data_path=str(data), project_name=str(tmp_path / project), trainer="kto",
            peft=True, lora_dropout=0.0, merge_adapter=False, batch_size=2, gradient_accumulation=2, max_steps=2,
            save_steps=1, logging_steps=1, lr=5e-3, warmup_ratio=0.0, seed=3, desirable_weight=1.3), **changes})

    class Killed(Exception):
        pass

    def die_at_2(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise Killed
        return original(self, args, state, control, **kwargs)

    AutoTrainProject(params=params("whole")).create()
    original = StopOnSignal.on_step_end
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StopOnSignal, "on_step_end", die_at_2)
        with pytest.raises(Killed):
            AutoTrainProject(params=params("cut")).create()
    with pytest.raises(ParamsError, match="desirable_weight 1.3 -> 2.0"):
        AutoTrainProject(params=params("cut", resume_from_checkpoint="auto", desirable_weight=2.0)).create()
    AutoTrainProject(params=params("cut", resume_from_checkpoint="auto")).create()

    def steps(project: str) -> list[tuple]:
        lines = (tmp_path / project / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["kl"]) for r in map(json.loads, lines) if "kl" in r]

    whole, cut = steps("whole"), steps("cut")
    assert len(whole) == 2 and whole[-1][2] > 0 and cut == whole
    adapter = "adapter_model.safetensors"
    expected, actual = load_file(tmp_path / "whole" / adapter), load_file(tmp_path / "cut" / adapter)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
