"""SimPO, CPO and CPO-SimPO: the losses against float64 references written here from the papers' equations and hand
values; the steps against TRL's CPOTrainer on one micro-batch of a tiny model; packed equal to padded.

    CPO   (arXiv 2401.08417, eq. 3 plus the NLL term):  L = -log sigmoid(beta * (log pi(c) - log pi(r))) + alpha * NLL
    SimPO (arXiv 2405.14734, eq. 6):  L = -log sigmoid(beta / |c| * log pi(c) - beta / |r| * log pi(r) - gamma)
    CPO-SimPO: SimPO's term + alpha * NLL

No expected value here comes from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from autotrain.train.losses import CpoOutput, cpo_loss, simpo_loss

LN2 = math.log(2.0)


def sigmoid_loss64(x: float) -> float:
    """-log sigmoid(x) = -log(1 / (1 + e^-x)), literally, in Python floats (float64)."""
    return -math.log(1.0 / (1.0 + math.exp(-x)))


def cpo_reference(c: list[float], r: list[float], nll: float, beta: float, alpha: float, gamma: float = 0.0) -> float:
    return sum(sigmoid_loss64(beta * (ci - ri) - gamma) for ci, ri in zip(c, r)) / len(c) + alpha * nll


def draws(n: int, seed: int, low: float, high: float) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)).tolist()


# --- the losses ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_cpo_matches_a_float64_reference(batch, alpha):
    c, r = draws(batch, batch, -40.0, -1.0), draws(batch, batch + 100, -40.0, -1.0)
    nll, beta = 1.3, 0.1
    out = cpo_loss(torch.tensor(c), torch.tensor(r), torch.tensor(nll), beta, alpha)
    assert isinstance(out, CpoOutput) and out.loss.dtype == torch.float32 and out.loss.shape == ()
    assert out.loss.item() == pytest.approx(cpo_reference(c, r, nll, beta, alpha), rel=1e-6)
    assert out.pair_losses.double().tolist() == pytest.approx(
        [sigmoid_loss64(beta * (ci - ri)) for ci, ri in zip(c, r)], rel=1e-5)
    assert out.chosen_rewards.double().tolist() == pytest.approx([beta * v for v in c], rel=1e-6)
    assert out.rejected_rewards.double().tolist() == pytest.approx([beta * v for v in r], rel=1e-6)
    assert out.nll.item() == pytest.approx(nll)  # reported whatever alpha
    assert not out.chosen_rewards.requires_grad


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_simpo_matches_a_float64_reference(batch, alpha):
    counts_c = [float(n) for n in torch.randint(1, 30, (batch,), generator=torch.Generator().manual_seed(batch))]
    counts_r = [float(n) for n in torch.randint(1, 30, (batch,), generator=torch.Generator().manual_seed(batch + 1))]
    c = [m * n for m, n in zip(draws(batch, batch, -3.0, -0.1), counts_c)]
    r = [m * n for m, n in zip(draws(batch, batch + 7, -3.0, -0.1), counts_r)]
    nll, beta, gamma = 0.9, 2.5, 1.375
    means_c = [s / n for s, n in zip(c, counts_c)]
    means_r = [s / n for s, n in zip(r, counts_r)]
    expected = cpo_reference(means_c, means_r, nll, beta, alpha, gamma)
    out = simpo_loss(torch.tensor(c), torch.tensor(r), torch.tensor(counts_c), torch.tensor(counts_r),
                     torch.tensor(nll), beta, gamma, alpha)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.chosen_rewards.double().tolist() == pytest.approx([beta * m for m in means_c], rel=1e-5)
    assert out.margin.double().tolist() == pytest.approx(
        [beta * (a - b) - gamma for a, b in zip(means_c, means_r)], rel=1e-4, abs=1e-5)


def test_hand_computed_cases():
    # SimPO, beta 2, gamma 1: chosen -2 over 2 tokens (mean -1), rejected -4.5 over 3 (mean -1.5):
    # 2 * (-1 + 1.5) - 1 = 0, and -log sigmoid(0) = ln 2. Rewards 2 * -1 = -2 and 2 * -1.5 = -3.
    simpo = simpo_loss(torch.tensor([-2.0]), torch.tensor([-4.5]), torch.tensor([2]), torch.tensor([3]),
                       torch.tensor(1.2), beta=2.0, gamma=1.0)
    assert simpo.loss.item() == pytest.approx(LN2, rel=1e-7)
    assert (simpo.chosen_rewards.item(), simpo.rejected_rewards.item()) == (-2.0, -3.0)
    # CPO-SimPO on the same pair with alpha 0.5 and NLL 1.2 adds 0.6.
    mixed = simpo_loss(torch.tensor([-2.0]), torch.tensor([-4.5]), torch.tensor([2]), torch.tensor([3]),
                       torch.tensor(1.2), beta=2.0, gamma=1.0, alpha=0.5)
    assert mixed.loss.item() == pytest.approx(LN2 + 0.6, rel=1e-7)
    # CPO, beta 0.5: pair 0 has c - r = -4 + 6 = 2, margin 1, log(1 + e^-1) = 0.3132616875182228;
    # pair 1 has c == r, ln 2 = 0.6931471805599453. Mean 0.5032044340390841, plus alpha 1 * NLL 2 = 2.5032044340390841.
    cpo = cpo_loss(torch.tensor([-4.0, -7.0]), torch.tensor([-6.0, -7.0]), torch.tensor(2.0), beta=0.5, alpha=1.0)
    assert cpo.pair_losses.tolist() == pytest.approx([0.3132616875182228, 0.6931471805599453], rel=1e-7)
    assert cpo.loss.item() == pytest.approx(2.5032044340390841, rel=1e-7)
    # beta = 0: every pair costs log(1 + e^gamma), whatever its log-probs.
    flat = simpo_loss(torch.tensor([-1.0, -50.0]), torch.tensor([-9.0, -1.0]), torch.ones(2), torch.ones(2),
                      torch.tensor(0.0), beta=0.0, gamma=1.0)
    assert flat.loss.item() == pytest.approx(math.log1p(math.e), rel=1e-7)


def test_hand_derived_gradients():
    """d/d(sum_c) of -log sigmoid(beta (sum_c/|c| - sum_r/|r|) - gamma) over B pairs is -beta sigmoid(-m) / (|c| B):
    at m = 0, -beta / (2 |c| B). SimPO divides each sequence's gradient by its length; CPO does not."""
    sums_c = torch.tensor([-2.0, -3.0], dtype=torch.float64, requires_grad=True)
    sums_r = torch.tensor([-4.5, -3.0], dtype=torch.float64, requires_grad=True)
    # pair 0: 2 * (-1 + 1.5) - 1 = 0; pair 1: 2 * (-1 + 1) - 1 = -1
    simpo_loss(sums_c, sums_r, torch.tensor([2, 3]), torch.tensor([3, 3]), torch.tensor(0.0), 2.0, 1.0).loss.backward()
    s1 = 1.0 / (1.0 + math.exp(-1.0))  # sigmoid(-m) at m = -1
    assert sums_c.grad.tolist() == pytest.approx([-2.0 * 0.5 / (2 * 2), -2.0 * s1 / (3 * 2)], rel=1e-12)
    assert sums_r.grad.tolist() == pytest.approx([2.0 * 0.5 / (3 * 2), 2.0 * s1 / (3 * 2)], rel=1e-12)

    c = torch.tensor([-5.0], dtype=torch.float64, requires_grad=True)
    nll = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    cpo_loss(c, c.detach().clone(), nll, beta=0.1, alpha=0.25).loss.backward()
    assert c.grad.item() == pytest.approx(-0.1 * 0.5, rel=1e-12)  # margin 0: -beta * sigmoid(0)
    assert nll.grad.item() == pytest.approx(0.25, rel=1e-12)  # alpha weighs the NLL


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    c = (-torch.rand(4, generator=g, dtype=torch.float64) * 20).requires_grad_()
    r = (-torch.rand(4, generator=g, dtype=torch.float64) * 20).requires_grad_()
    nll = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([3.0, 1.0, 7.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, n: cpo_loss(a, b, n, 0.3, 1.0).loss, (c, r, nll))
    assert torch.autograd.gradcheck(lambda a, b, n: simpo_loss(a, b, counts, counts.flip(0), n, 2.0, 0.5, 0.4).loss,
                                    (c, r, nll))


def test_stable_for_huge_margins():
    c = torch.tensor([0.0, -1e5], requires_grad=True)
    out = cpo_loss(c, torch.tensor([-1e5, 0.0]), torch.tensor(0.0), beta=1.0, alpha=0.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(c.grad).all()
    assert out.loss.item() == pytest.approx(1e5 / 2, rel=1e-6)  # pair 1: -log sigmoid(-1e5) = 1e5; pair 0: ~0


def test_alpha_zero_leaves_the_nll_out_of_the_graph():
    nll = torch.tensor(float("nan"), requires_grad=True)  # a NaN NLL must not reach a loss that does not use it
    out = cpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), nll, beta=0.1, alpha=0.0)
    assert torch.isfinite(out.loss)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one shape"):
        cpo_loss(torch.zeros(2), torch.zeros(3), torch.tensor(0.0), 0.1, 1.0)
    with pytest.raises(ValueError, match="scalar"):
        cpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.1, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        simpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(3), torch.ones(2), torch.tensor(0.0), 2.0, 1.0)


# --- the steps: TRL's CPOTrainer, packing --------------------------------------------------------------------

# (--trainer, beta, options, TRL's CPOConfig): SimPO, CPO, and CPO-SimPO (SimPO's term plus CPO's NLL).
TRL_CASES = {
    "simpo": ("simpo", 2.0, {"gamma": 1.0, "alpha": 0.0}, {"loss_type": "simpo", "simpo_gamma": 1.0, "cpo_alpha": 0.0}),
    "cpo": ("cpo", 0.1, {"alpha": 1.0}, {"loss_type": "sigmoid", "cpo_alpha": 1.0}),
    "cpo-simpo": ("simpo", 2.5, {"gamma": 0.5, "alpha": 0.7},
                  {"loss_type": "simpo", "simpo_gamma": 0.5, "cpo_alpha": 0.7}),
}


@pytest.mark.parametrize("case", list(TRL_CASES))
def test_first_step_matches_trl_cpo_trainer(tmp_path, chat_model, case):
    """One micro-batch of three pairs of uneven lengths: loss and metrics equal TRL's on the same model, at 1e-5."""
    from conftest import make_tokenizer
    from datasets import Dataset
    from test_trl_equivalence import trl_batch
    from transformers import AutoModelForCausalLM
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from autotrain.batch.padded import PaddedCollator
    from autotrain.params import methods

    method, beta, options, trl_options = TRL_CASES[case]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32)
    with torch.no_grad():  # far from uniform log-probs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    tokenizer = make_tokenizer(chat=True)
    rows = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    args = CPOConfig(output_dir=str(tmp_path), beta=beta, report_to=[], max_length=64, use_cpu=True, **trl_options)
    trainer = CPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    g = torch.Generator().manual_seed(1)
    draw = lambda n: torch.randint(5, 100, (n,), generator=g).tolist()  # noqa: E731
    features = [{"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)}
                for p, c, r in [(5, 3, 7), (2, 6, 1), (9, 4, 4)]]

    model.eval()
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch(features, tokenizer.pad_token_id))
        ours, metrics = methods.load(method).step(model, PaddedCollator(tokenizer.pad_token_id)(features), beta, **options)

    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    names = ["logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
             "rewards/accuracies"]
    # TRL logs nll_loss as 0 when cpo_alpha is 0 (it does not compute it); this pipeline always reports it.
    names += ["nll_loss"] if options["alpha"] else []
    for name in names:
        assert metrics[name].item() == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("case", list(TRL_CASES))
def test_packed_equals_padded(case):
    from test_packing import ODD, assert_same, random_pairs, tiny_model

    from autotrain.batch.packed import PackedCollator
    from autotrain.batch.padded import PaddedCollator
    from autotrain.params import methods

    method, beta, options, _ = TRL_CASES[case]
    features = random_pairs(ODD, seed=4)
    results = []
    for collate in (PaddedCollator(0), PackedCollator(0, token_budget=40)):
        model = tiny_model(lora=True)
        batch = collate(features)
        loss, _ = methods.load(method).step(model, batch, beta, **options)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    assert 1 < batch["input_ids"].shape[0] < len(features)  # packed: several rows, several pairs in a row
    assert_same(results[1], results[0])


# --- runs: evaluation before and after, the log, the card, the plots ------------------------------------------

RUNS = {  # --trainer, the params given, the card's method line, the pair term and its NLL weight (float64, by hand)
    "simpo": ({}, "SimPO with beta 2 (SimPO's default), gamma 1 (0.5 x beta, SimPO's default), alpha 0 (SimPO's "
              "default)", lambda c, r: sigmoid_loss64(2.0 * (c[0] - r[0]) - 1.0), 0.0),
    "cpo": ({"dpo_beta": 0.3}, "CPO with beta 0.3, alpha 1 (CPO's default)",
            lambda c, r: sigmoid_loss64(0.3 * (c[1] - r[1])), 1.0),
}


@pytest.mark.parametrize("method", list(RUNS))
def test_a_run_evaluates_before_and_after_and_says_which_defaults(tmp_path, method, capfd, caplog):
    """6 validation pairs in batches of 3: the step-0 evaluation equals the method's definitions over per-pair
    log-probs from transformers' full-logit forward (float64); the log, the card and the summary name the method's
    settings and which are its defaults."""
    import json

    from conftest import IM_END, IM_START, NEWLINE, char_ids, make_model_dir, write_jsonl
    from test_evaluation import rows, token_logps
    from transformers import AutoModelForCausalLM

    from autotrain.cli import main

    given, card_line, pair_term, alpha = RUNS[method]
    model_dir = make_model_dir(tmp_path / "model", chat=True, seed=4)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(model_dir)
    # 6 pairs in batches of 3: a run that ends with a short last batch leaves accelerate's GradientState remainder set
    # in this process, which truncates TRL's gather_for_metrics in later tests (test_trl_equivalence).
    valid = rows(6, start=20)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", valid)  # trained on: its loss must go down
    write_jsonl(data / "validation.jsonl", valid)
    flags = dict(model=model_dir, data_path=data, project_name=tmp_path / "run", trainer=method,
                 valid_split="validation", batch_size=3, gradient_accumulation=1, max_steps=2, lr=1e-3,
                 warmup_ratio=0, **given)
    argv = [part for name, value in flags.items() for part in (f"--{name.replace('_', '-')}", str(value))]
    assert main(["llm", "--train", "--no-packing", *argv]) == 0
    out = capfd.readouterr().out
    assert f"method: {card_line}" in caplog.messages
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2]

    prompt = lambda p: [IM_START, *char_ids("user\n" + p), IM_END, NEWLINE, IM_START, *char_ids("assistant\n")]  # noqa: E731
    answer = lambda a: [*char_ids(a), IM_END, NEWLINE]  # noqa: E731
    nll, tokens, pairs = 0.0, 0, []
    for row in valid:
        c = token_logps(model.float(), prompt(row["prompt"]), answer(row["chosen"]))
        r = token_logps(model, prompt(row["prompt"]), answer(row["rejected"]))
        nll, tokens = nll - sum(c), tokens + len(c)
        pairs.append(((sum(c) / len(c), sum(c)), (sum(r) / len(r), sum(r))))  # (mean, sum) of each side
    reward = 0 if method == "simpo" else 1  # SimPO's reward is on the mean, CPO's on the sum
    n = len(pairs)
    expected = {
        "eval_loss": sum(pair_term(c, r) for c, r in pairs) / n + alpha * nll / tokens,
        "eval_nll_loss": nll / tokens,
        "eval_rewards/accuracies": sum(c[reward] > r[reward] for c, r in pairs) / n,
        "eval_logps/chosen": sum(c[reward] for c, _ in pairs) / n,
        "eval_logps/rejected": sum(r[reward] for _, r in pairs) / n,
    }
    assert 0 < expected["eval_rewards/accuracies"] < 1
    for name, value in expected.items():
        assert evals[0][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]  # an epoch on these very pairs

    card = (tmp_path / "run" / "README.md").read_text()
    assert f"Method: {card_line}." in card and "| rewards/accuracies |" in card
    assert (tmp_path / "run" / "plots" / "training.png").stat().st_size > 0
    rule = {"simpo": "chosen mean token log-prob > rejected", "cpo": "chosen summed log-prob > rejected"}[method]
    assert f"validation preference accuracy ({rule}): " in out
    assert f"rewards/accuracies: the share of validation pairs where {rule}." in card


@pytest.mark.parametrize("case", ["cpo", "cpo-simpo"])
def test_micro_batch_shares_give_the_whole_batch_gradient(case):
    """Split invariance at the step: micro-batches of 2, 1 and 4 pairs of very uneven lengths, each loss its share of
    the step's (autotrain.train.losses: the NLL over the step's tokens, the pair term over its pairs), add up to the loss and
    gradient of the 7 pairs as one batch. A mean of per-micro-batch means would not (checked, so the test can fail).
    The full runs through the Trainer, with accumulation and 2 processes, are in test_step_invariance."""
    from test_packing import ODD, assert_same, random_pairs, tiny_model

    from autotrain.batch.packed import PackedCollator
    from autotrain.batch.padded import PaddedCollator
    from autotrain.params import methods

    method, beta, options, _ = TRL_CASES[case]
    features = random_pairs(ODD, seed=6)
    terms = methods.load(method).terms

    model = tiny_model(seed=2)
    whole = terms(model, PaddedCollator(0)(features), beta, None, **options).loss()
    whole.backward()
    expected = (whole.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})

    model.zero_grad(set_to_none=True)
    parts = [PackedCollator(0, token_budget=30)(features[a:b]) for a, b in [(0, 2), (2, 3), (3, 7)]]
    tokens, pairs = sum(int(b["in_nll"].sum()) for b in parts), len(features)
    total, naive = 0.0, 0.0
    for batch in parts:
        share = terms(model, batch, beta, None, **options)
        loss = share.loss(tokens, pairs)
        loss.backward()
        total += loss.item()
        naive += share.loss().item() / len(parts)
    assert_same((torch.tensor(total), {n: p.grad for n, p in model.named_parameters()}), expected)
    assert abs(naive - expected[0].item()) > 1e-3 * expected[0].item()


@pytest.mark.parametrize("trainer", ["dpo", "simpo", "cpo"])
def test_a_zero_beta_that_leaves_no_gradient_is_refused(trainer):
    from autotrain.errors import ParamsError
    from autotrain.trainers.clm.params import LLMTrainingParams

    with pytest.raises(ParamsError, match=f"dpo_beta 0 leaves {trainer} with no gradient"):
        LLMTrainingParams(trainer=trainer, dpo_beta=0)


def test_orpo_lambda_zero_is_plain_sft_and_allowed_and_names_are_case_blind():
    from autotrain.trainers.clm.params import LLMTrainingParams

    assert LLMTrainingParams(trainer="orpo", dpo_beta=0).dpo_beta == 0
    assert [LLMTrainingParams(trainer=name).trainer for name in ("SimPO", "CPO", "ORPO")] == ["simpo", "cpo", "orpo"]
