"""The --loss-type menus of dpo and cpo: each loss against a float64 reference written here from its paper's equation,
one hand-computed case each, perturbed formulas shown to fail those references, finite values and gradients at huge
margins; the params' choices, refusals and authors' defaults, the log and card line; LD-DPO's token weights; one run
whose first evaluation is each loss's value at margin 0.

No expected value here comes from the code under test. TRL's equality is tests/test_trl_loss_types.py.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from autotrain.errors import ParamsError
from autotrain.pair_losses import cpo_menu_loss, dpo_loss
from autotrain.trainers.clm.params import LLMTrainingParams

LN2 = math.log(2.0)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -700 else x


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- float64 references, one per loss, from the papers' equations --------------------------------------------------
# c, r: the log-ratios log pi(y) - log ref(y) of chosen and rejected (summed over completion tokens); nc, nr: their
# completions' token counts; b: beta; e: label smoothing; t: DiscoPOP's tau.

DPO_REFERENCES = {
    # DPO eq. 7; cDPO (Mitchell 2023): the expectation over a label flipped with probability e
    "sigmoid": lambda c, r, nc, nr, b, e, t: -(1 - e) * log_sigmoid(b * (c - r)) - e * log_sigmoid(-b * (c - r)),
    # SLiC's hinge with margin 1 / beta, times beta
    "hinge": lambda c, r, nc, nr, b, e, t: max(0.0, 1 - b * (c - r)),
    # IPO eq. 17 on per-token log-ratios, tau = beta
    "ipo": lambda c, r, nc, nr, b, e, t: (c / nc - r / nr - 1 / (2 * b)) ** 2,
    # EXO eq. 16, K = 2: KL(p_theta || p_e), p_theta = softmax(beta * (c, r)), p_e = (1 - e, e)
    "exo_pair": lambda c, r, nc, nr, b, e, t: sum(
        q * (math.log(q) - math.log(p)) for q, p in ((sigmoid(b * (c - r)), 1 - e), (sigmoid(b * (r - c)), e))),
    # NCA, K = 2
    "nca_pair": lambda c, r, nc, nr, b, e, t: (-log_sigmoid(b * c) - 0.5 * log_sigmoid(-b * c)
                                               - 0.5 * log_sigmoid(-b * r)),
    # rDPO
    "robust": lambda c, r, nc, nr, b, e, t: ((1 - e) * -log_sigmoid(b * (c - r)) - e * -log_sigmoid(b * (r - c)))
    / (1 - 2 * e),
    # BCO on pairs, no reward shift
    "bco_pair": lambda c, r, nc, nr, b, e, t: -log_sigmoid(b * c) - log_sigmoid(-b * r),
    # SPPO eq. 4.7 with P(win) = 1 and 0, eta = 1 / beta
    "sppo_hard": lambda c, r, nc, nr, b, e, t: (c - (1 - 0.5) / b) ** 2 + (r - (0 - 0.5) / b) ** 2,
    # APO eqs. 7 and 8
    "apo_zero": lambda c, r, nc, nr, b, e, t: (1 - sigmoid(b * c)) + sigmoid(b * r),
    "apo_down": lambda c, r, nc, nr, b, e, t: sigmoid(b * c) + (1 - sigmoid(b * (c - r))),
    # DiscoPOP eq. 5
    "discopop": lambda c, r, nc, nr, b, e, t: ((1 - sigmoid(b * (c - r) / t)) * -log_sigmoid(b * (c - r))
                                               + sigmoid(b * (c - r) / t) * math.exp(-b * (c - r))),
    # length-normalised DPO
    "sigmoid_norm": lambda c, r, nc, nr, b, e, t: -log_sigmoid(b * (c / nc - r / nr)),
}
PER_TOKEN = {"ipo", "sigmoid_norm"}


def pairs64(n: int = 6, seed: int = 0) -> tuple[list[float], ...]:
    """Policy and reference sums, and token counts: log-ratios of either sign up to ~8, counts 1-30."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).tolist()  # noqa: E731
    ref_c, ref_r = u(-60, -5), u(-60, -5)
    c = [a + d for a, d in zip(ref_c, u(-8, 8))]
    r = [a + d for a, d in zip(ref_r, u(-8, 8))]
    counts = lambda: [float(k) for k in torch.randint(1, 30, (n,), generator=g)]  # noqa: E731
    return c, r, ref_c, ref_r, counts(), counts()


def ours_dpo(name: str, data: tuple, beta: float, e: float, tau: float) -> torch.Tensor:
    c, r, ref_c, ref_r, nc, nr = (torch.tensor(v, dtype=torch.float64) for v in data)
    return dpo_loss(c, r, ref_c, ref_r, beta, (name,), None, nc, nr, label_smoothing=e, discopop_tau=tau).pair_losses


def reference_dpo(name: str, data: tuple, beta: float, e: float, tau: float) -> list[float]:
    c, r, ref_c, ref_r, nc, nr = data
    return [DPO_REFERENCES[name](a - ra, b - rb, n, m, beta, e, tau)
            for a, b, ra, rb, n, m in zip(c, r, ref_c, ref_r, nc, nr)]


@pytest.mark.parametrize("name", list(DPO_REFERENCES))
def test_each_dpo_loss_matches_its_float64_reference(name):
    data, beta, e, tau = pairs64(), 0.3, 0.15, 0.2
    got = ours_dpo(name, data, beta, e, tau)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(reference_dpo(name, data, beta, e, tau), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", list(DPO_REFERENCES))
def test_a_perturbed_formula_fails_the_reference(name):
    """The references above are tight enough to catch the usual slips: each perturbation below moves the batch's
    loss by far more than their tolerance (1e-10), so a code with that slip fails its test."""
    data, beta, e, tau = pairs64(), 0.3, 0.15, 0.2
    c, r, ref_c, ref_r, nc, nr = data
    exact = sum(reference_dpo(name, data, beta, e, tau)) / len(c)
    ones = [1.0] * len(c)
    slips = {
        "chosen and rejected swapped (a sign)": reference_dpo(name, (r, c, ref_r, ref_c, nr, nc), beta, e, tau),
        "beta left out": reference_dpo(name, data, 1.0, e, tau),
        "the reference left out": reference_dpo(name, (c, r, [0.0] * len(c), [0.0] * len(c), nc, nr), beta, e, tau),
        # per-token log-ratios where sums belong, or sums where per-token ones do
        "a mean for a sum": reference_dpo(name, (c, r, ref_c, ref_r, ones, ones), beta, e, tau) if name in PER_TOKEN
        else reference_dpo(name, ([a / n for a, n in zip(c, nc)], [a / n for a, n in zip(r, nr)],
                                  [a / n for a, n in zip(ref_c, nc)], [a / n for a, n in zip(ref_r, nr)], nc, nr),
                           beta, e, tau),
    }
    assert ours_dpo(name, data, beta, e, tau).mean().item() == pytest.approx(exact, rel=1e-10)
    for slip, losses in slips.items():
        assert abs(sum(losses) / len(c) - exact) > 1e-4 * abs(exact), f"{name}: {slip} goes unnoticed"
    assert abs(sum(reference_dpo(name, data, beta, e, tau)) - exact) > 1e-4 * exact  # a sum over pairs for the mean


def test_hand_computed_cases():
    """One pair each, beta * margin chosen so that sigma is 3/4 (beta m = ln 3) or 1/2 (m = 0)."""
    ln3 = math.log(3.0)
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    zero = one(0.0)

    def dpo(name: str, c: float, r: float, beta: float = 1.0, **kw) -> float:
        return dpo_loss(one(c), one(r), zero, zero, beta, (name,), None, one(kw.pop("nc", 1)), one(kw.pop("nr", 1)),
                        **kw).loss.item()

    # -log(3/4) = ln(4/3)
    assert dpo("sigmoid", ln3, 0.0) == pytest.approx(0.28768207245178085, rel=1e-12)
    # cDPO, e = 1/4: 3/4 ln(4/3) + 1/4 ln 4
    assert dpo("sigmoid", ln3, 0.0, label_smoothing=0.25) == pytest.approx(0.5623351446188083, rel=1e-12)
    # rDPO, e = 1/4: (3/4 ln(4/3) - 1/4 ln 4) / (1/2)
    assert dpo("robust", ln3, 0.0, label_smoothing=0.25) == pytest.approx(-0.261624071882274, rel=1e-12)
    # EXO is 0 when the model's preference (3/4, 1/4) is the labels' (1 - e, e)
    assert dpo("exo_pair", ln3, 0.0, label_smoothing=0.25) == pytest.approx(0.0, abs=1e-15)
    # hinge, beta 1/2: max(0, 1 - 1/2) and max(0, 1 - 3/2)
    assert (dpo("hinge", 1.0, 0.0, beta=0.5), dpo("hinge", 3.0, 0.0, beta=0.5)) == (0.5, 0.0)
    # IPO, tau 1/4: target 2; per-token margin 6/2 - 0 = 3: (3 - 2)^2
    assert dpo("ipo", 6.0, 0.0, beta=0.25, nc=2) == pytest.approx(1.0, rel=1e-12)
    # NCA, r_c = ln 3, r_r = -ln 3: -ln(3/4) - 1/2 ln(1/4) - 1/2 ln(3/4)
    assert dpo("nca_pair", ln3, -ln3) == pytest.approx(1.1246702892376166, rel=1e-12)
    # BCO: -ln(3/4) - ln(3/4)
    assert dpo("bco_pair", ln3, -ln3) == pytest.approx(0.5753641449035617, rel=1e-12)
    # SPPO, beta 1/2: targets +1 and -1, met exactly; at 0 and 0 each misses by 1
    assert (dpo("sppo_hard", 1.0, -1.0, beta=0.5), dpo("sppo_hard", 0.0, 0.0, beta=0.5)) == (0.0, 2.0)
    # APO-zero at 0: 1 - 1/2 + 1/2; APO-down with r_c = ln 3 and r_c - r_r = 0: 3/4 + 1 - 1/2
    assert dpo("apo_zero", 0.0, 0.0) == pytest.approx(1.0, rel=1e-12)
    assert dpo("apo_down", ln3, ln3) == pytest.approx(1.25, rel=1e-12)
    # DiscoPOP at margin 0: 1/2 ln 2 + 1/2 e^0
    assert dpo("discopop", 0.0, 0.0, discopop_tau=0.05) == pytest.approx(0.8465735902799727, rel=1e-12)
    # length-normalised: (2 ln 3) / 2 tokens - 0 = ln 3
    assert dpo("sigmoid_norm", 2 * ln3, 0.0, nc=2) == pytest.approx(0.28768207245178085, rel=1e-12)
    # RPO: ln 2 at margin 0, plus 1/2 of an NLL of 3
    rpo = dpo_loss(zero, zero, zero, zero, 0.1, ("sigmoid", "sft"), (1.0, 0.5), nll=torch.tensor(3.0))
    assert (rpo.loss.item(), rpo.nll_weight) == (pytest.approx(LN2 + 1.5, rel=1e-7), 0.5)
    # AlphaPO, alpha 1: p = 1/2 -> 1 - 2 = -1, p = 1/4 -> -3; beta 1, gamma 1: -log sigma(2 - 1) = ln(1 + 1/e)
    alphapo = cpo_menu_loss("alphapo", one(math.log(0.5)), one(math.log(0.25)), torch.tensor(0.0, dtype=torch.float64),
                            beta=1.0, alpha=0.0, gamma=1.0, alphapo_alpha=1.0)
    assert alphapo.loss.item() == pytest.approx(0.31326168751822286, rel=1e-12)
    assert (alphapo.chosen_rewards.item(), alphapo.rejected_rewards.item()) == pytest.approx((-1.0, -3.0))


# CPO's menu: sums for sigmoid and hinge, per-token means for ipo and alphapo (u: AlphaPO's reward)
def alphapo_u(mean: float, a: float) -> float:
    return (1 - math.exp(mean) ** (-a)) / a


CPO_REFERENCES = {
    "sigmoid": lambda c, r, b, e, g, a: -(1 - e) * log_sigmoid(b * (c - r)) - e * log_sigmoid(-b * (c - r)),
    "hinge": lambda c, r, b, e, g, a: max(0.0, 1 - b * (c - r)),
    "ipo": lambda c, r, b, e, g, a: (c - r - 1 / (2 * b)) ** 2,
    "alphapo": lambda c, r, b, e, g, a: -log_sigmoid(b * (alphapo_u(c, a) - alphapo_u(r, a)) - g),
}


@pytest.mark.parametrize("name", list(CPO_REFERENCES))
def test_each_cpo_loss_matches_its_float64_reference_and_a_perturbed_one_fails(name):
    c, r, _, _, nc, nr = pairs64(seed=3)
    if name in ("ipo", "alphapo"):  # per-token means, in the range a mean log-prob takes
        c, r = [-abs(a) / n / 4 for a, n in zip(c, nc)], [-abs(a) / n / 4 for a, n in zip(r, nr)]
    beta, e, gamma, a, alpha, nll = 0.3, (0.15 if name == "sigmoid" else 0.0), (0.4 if name == "alphapo" else 0.0), \
        0.6, 0.7, 1.9
    expected = [CPO_REFERENCES[name](x, y, beta, e, gamma, a) for x, y in zip(c, r)]
    out = cpo_menu_loss(name, torch.tensor(c, dtype=torch.float64), torch.tensor(r, dtype=torch.float64),
                        torch.tensor(nll, dtype=torch.float64), beta, alpha, e, gamma, a)
    assert out.pair_losses.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert out.loss.item() == pytest.approx(sum(expected) / len(c) + alpha * nll, rel=1e-10)
    exact = sum(expected) / len(c)
    for slip in (lambda x, y: CPO_REFERENCES[name](y, x, beta, e, gamma, a),
                 lambda x, y: CPO_REFERENCES[name](x, y, 1.0, e, gamma, a)):
        assert abs(sum(slip(x, y) for x, y in zip(c, r)) / len(c) - exact) > 1e-4 * exact


@pytest.mark.parametrize("name", [*DPO_REFERENCES, "sft"])
def test_finite_at_huge_margins_with_gradients_gradcheck_in_float64(name):
    policy = torch.tensor([1e4, -1e4, 0.0], requires_grad=True)
    types = ("sigmoid", "sft") if name == "sft" else (name,)
    out = dpo_loss(policy, -policy.detach(), torch.zeros(3), torch.zeros(3), 0.1, types, None, torch.ones(3),
                   torch.ones(3), nll=torch.tensor(1.0), label_smoothing=0.1, discopop_tau=0.05)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(policy.grad).all()
    c, r, ref_c, ref_r, nc, nr = (torch.tensor(v, dtype=torch.float64) for v in pairs64(n=3, seed=5))
    assert torch.autograd.gradcheck(
        lambda a, b: dpo_loss(a, b, ref_c, ref_r, 0.3, types, None, nc, nr, nll=(a - b).mean() ** 2,
                              label_smoothing=0.1, discopop_tau=0.2).loss, (c.requires_grad_(), r.requires_grad_()))


# --- the params: choices, refusals, defaults --------------------------------------------------------------------


def settings_of(**given):
    return LLMTrainingParams(**given).method_settings()


@pytest.mark.parametrize("given, line", [
    (dict(trainer="dpo"), "DPO with beta 0.1 (DPO's default)"),
    (dict(trainer="dpo", loss_type="ipo"), "IPO with beta 0.1 (TRL's default; the IPO paper gives none)"),
    (dict(trainer="dpo", loss_type="robust"),
     "rDPO with beta 0.01 (rDPO's default), label_smoothing 0.1 (rDPO's default)"),
    (dict(trainer="dpo", loss_type="exo_pair", dpo_beta=0.2),
     "EXO with beta 0.2, label_smoothing 0.001 (EXO's default)"),
    (dict(trainer="dpo", loss_type="discopop"), "DiscoPOP with beta 0.05 (DiscoPOP's default), discopop_tau 0.05 "
                                                "(DiscoPOP's default)"),
    (dict(trainer="dpo", loss_type="sigmoid", label_smoothing=0.2), "cDPO with beta 0.1 (DPO's default), "
                                                                     "label_smoothing 0.2"),
    (dict(trainer="dpo", loss_type="sigmoid,sft", loss_weights="1,0.005"),
     "RPO with loss 1 x sigmoid + 0.005 x sft, beta 0.1 (DPO's default)"),
    (dict(trainer="dpo", loss_type=["ipo", "sft"], ld_alpha=0.5),
     "IPO + SFT with loss 1 x ipo + 1 x sft (equal weights, TRL's default), beta 0.1 (TRL's default; the IPO paper "
     "gives none), ld_alpha 0.5 (LD-DPO)"),
    (dict(trainer="cpo"), "CPO with beta 0.1 (CPO's default), alpha 1 (CPO's default)"),
    (dict(trainer="cpo", loss_type="alphapo"), "AlphaPO with beta 2.5 (AlphaPO's default), gamma 0.1 (AlphaPO's "
                                               "default), alphapo_alpha 0.25 (AlphaPO's default), alpha 0 (AlphaPO's default)"),
    (dict(trainer="cpo", loss_type="hinge", cpo_alpha=0.5), "CPO-hinge with beta 0.1 (TRL's default; the CPO-hinge "
                                                            "paper gives none), alpha 0.5"),
])
def test_settings_take_the_authors_values_and_the_line_says_whose(given, line):
    assert settings_of(**given).describe() == line


def test_the_terms_get_every_setting_of_every_loss_type():
    """What the trainer passes (MethodSettings.options) reaches the method's terms: each setting a loss type reads
    is among them and the terms take it by that keyword."""
    from autotrain import methods

    for trainer in ("dpo", "cpo"):
        accepted = set(inspect.signature(methods.load(trainer).terms).parameters)
        for name in methods.spec(trainer).losses:
            if name == "sft":
                continue
            settings = settings_of(trainer=trainer, loss_type=name, label_smoothing=0.1 if name == "exo_pair" else None)
            options = settings.options
            assert set(options) <= accepted, (trainer, name)
            assert options["loss_type"] == (name,)
            assert {key for key in settings.values if key != "beta"} <= set(options), (trainer, name)


@pytest.mark.parametrize("given, message", [
    (dict(trainer="dpo", loss_type="aot"), "loss_type aot is not offered: it sorts the log-ratios across the batch"),
    (dict(trainer="dpo", loss_type="ipoo"), "unknown loss_type for --trainer dpo 'ipoo'; did you mean ipo?"),
    (dict(trainer="dpo", loss_type="sigmoid,sigmoid"), "names a loss twice"),
    (dict(trainer="dpo", loss_type="sft"), "loss_type sft alone is --trainer sft"),
    (dict(trainer="dpo", loss_type="sigmoid,sft", loss_weights="1"), "loss_weights gives 1 weight(s) for 2 loss"),
    (dict(trainer="dpo", loss_type="sigmoid,sft", loss_weights="1,0"), "loss_weights must all be > 0"),
    (dict(trainer="dpo", loss_type="sigmoid,bco_pair"),
     "their authors' dpo_beta differ (sigmoid 0.1, bco_pair 0.01): give --dpo-beta"),
    (dict(trainer="dpo", loss_type="sigmoid,robust", dpo_beta=0.1),
     "their authors' label_smoothing differ (sigmoid 0, robust 0.1): give --label-smoothing"),
    (dict(trainer="cpo", loss_type="sigmoid,hinge"), "--trainer cpo takes one loss_type"),
    (dict(trainer="cpo", loss_type="simpo"), "unknown loss_type for --trainer cpo 'simpo'"),
    (dict(trainer="orpo", loss_type="ipo"), "loss_type applies to --trainer dpo and cpo only (trainer is orpo)"),
    (dict(trainer="dpo", loss_type="ipo", label_smoothing=0.1),
     "label_smoothing applies to --trainer dpo --loss-type sigmoid/exo_pair/robust and --trainer cpo --loss-type "
     "sigmoid only (trainer is dpo, loss_type ipo)"),
    (dict(trainer="dpo", discopop_tau=0.1), "discopop_tau applies to --trainer dpo --loss-type discopop only"),
    (dict(trainer="cpo", alphapo_alpha=0.5), "alphapo_alpha applies to --trainer cpo --loss-type alphapo only"),
    (dict(trainer="dpo", simpo_gamma=0.5), "simpo_gamma applies to --trainer simpo and --trainer cpo --loss-type "
                                           "alphapo only"),
    (dict(trainer="cpo", ld_alpha=0.5), "ld_alpha applies to --trainer dpo only"),
    (dict(trainer="dpo", loss_type="exo_pair", label_smoothing=0), "label_smoothing 0 is log(0) in exo_pair"),
    (dict(trainer="dpo", loss_type="robust", label_smoothing=0.5), "label_smoothing: Input should be less than 0.5"),
    (dict(trainer="dpo", ld_alpha=1.5), "ld_alpha: Input should be less than or equal to 1"),
])
def test_a_setting_no_chosen_loss_reads_or_a_bad_menu_choice_is_one_line(given, message):
    with pytest.raises(ParamsError, match=re_escape(message)):
        LLMTrainingParams(**given)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_cli_refuses_with_one_line_and_exit_2(capsys, tmp_path):
    from autotrain.cli import main

    code = main(["llm", "--train", "--project-name", str(tmp_path / "p"), "--trainer", "dpo", "--loss-type",
                 "aot_unpaired"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "loss_type aot_unpaired is not offered" in err[0]
    assert not (tmp_path / "p").exists()


def test_params_with_a_menu_survive_the_saved_json(tmp_path):
    params = LLMTrainingParams(trainer="dpo", loss_type="sigmoid,sft", loss_weights="1,0.25", ld_alpha=0.5)
    params.save_json(tmp_path / "p.json")
    loaded = LLMTrainingParams.load_json(tmp_path / "p.json")
    assert (loaded.loss_type, loaded.loss_weights, loaded.ld_alpha) == (("sigmoid", "sft"), (1.0, 0.25), 0.5)
    assert loaded.method_settings().describe() == params.method_settings().describe()


# --- LD-DPO's token weights ---------------------------------------------------------------------------------------

LD_PAIRS = [
    {"prompt_ids": [5, 6], "chosen_ids": [8, 9, 2], "rejected_ids": [10]},  # shared length 1
    {"prompt_ids": [7], "chosen_ids": [9, 2], "rejected_ids": [11, 12, 2]},  # shared length 2
]


def test_ld_weights_count_each_side_up_to_the_shorter_answer_in_both_layouts():
    from autotrain.data.collate import PaddedCollator
    from autotrain.data.pack import PackedCollator

    a = 0.25
    padded = PaddedCollator(0, ld_alpha=a)(LD_PAIRS)
    # sequences 0 (chosen 8 9 2), 1 (chosen 9 2), 2 (rejected 10), 3 (rejected 11 12 2)
    assert padded["target_seq"].tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3]
    assert padded["completion_weight"].tolist() == [1, a, a, 1, 1, 1, 1, 1, a]
    packed = PackedCollator(0, token_budget=None, ld_alpha=a)(LD_PAIRS)
    assert packed["target_seq"].tolist() == [0, 0, 0, 2, 1, 1, 3, 3, 3]
    assert packed["completion_weight"].tolist() == [1, a, a, 1, 1, 1, 1, 1, a]
    assert "completion_weight" not in PaddedCollator(0)(LD_PAIRS)


# --- a run: the first evaluation is each loss at margin 0 ---------------------------------------------------------


def test_a_run_trains_the_chosen_losses_and_says_so(tmp_path, chat_model, caplog):
    """With LoRA the policy starts as its reference: every log-ratio is 0, so the step-0 evaluation of
    ipo,sft weighted 1,0.25 at beta 0.5 is (0 - 1 / (2 * 0.5))^2 + 0.25 * NLL = 1 + 0.25 * NLL; a run that dropped
    the loss type, the weights or beta on the way to the trainer would log another value."""
    import json

    from conftest import arithmetic_pairs, write_jsonl

    from autotrain.project import AutoTrainProject

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", arithmetic_pairs(8))
    write_jsonl(data / "validation.jsonl", arithmetic_pairs(8, start=20))  # two full batches: reduced over both
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / "run"),
                               trainer="dpo", loss_type="ipo,sft", loss_weights="1,0.25", dpo_beta=0.5, ld_alpha=0.5,
                               peft=True, lora_dropout=0.0, valid_split="validation", batch_size=4, max_steps=2,
                               lr=1e-3, warmup_ratio=0)
    AutoTrainProject(params).create()
    line = ("IPO + SFT with loss 1 x ipo + 0.25 x sft, beta 0.5, ld_alpha 0.5 (LD-DPO)")
    assert f"method: {line}" in caplog.messages
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if "eval_loss" in r and r["step"] == 0)
    assert first["eval_loss"] == pytest.approx(1.0 + 0.25 * first["eval_nll_loss"], rel=1e-5)
    assert first["eval_rewards/ties"] == 1.0
    assert f"Method: {line}." in (tmp_path / "run" / "README.md").read_text()


def test_the_readme_has_a_line_for_every_loss_type():
    from pathlib import Path

    from autotrain import methods

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for trainer in ("dpo", "cpo"):
        table = readme.split(f"| `--trainer {trainer} --loss-type` |", 1)[1].split("\n\n", 1)[0]
        rows = [line.split("`")[1] for line in table.splitlines()[2:]]
        assert rows == list(methods.spec(trainer).losses), trainer
