"""The ORPO loss against references written here from the paper's equations (arXiv 2403.07691, eqs. 4-7):

    odds(y) = P(y) / (1 - P(y)),  P(y) = exp(mean completion-token log-prob)
    L_OR = -log sigmoid(log(odds(chosen) / odds(rejected)))
    L = L_SFT + lambda * mean over pairs of L_OR

No expected value here comes from the code under test.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F

from autotrain.train.losses import OrpoOutput, log1mexp, orpo_loss


def paper_reference(chosen: torch.Tensor, rejected: torch.Tensor, nll: float, beta: float) -> dict[str, torch.Tensor]:
    """The paper's equations, literally, in float64 (accurate for the moderate log-probs it is used on)."""
    c, r = chosen.double(), rejected.double()
    p_c, p_r = torch.exp(c), torch.exp(r)
    odds_c, odds_r = p_c / (1 - p_c), p_r / (1 - p_r)
    log_odds = torch.log(odds_c / odds_r)
    l_or = -torch.log(torch.sigmoid(log_odds))
    return {"log_odds": log_odds, "or_loss": l_or.mean(), "loss": nll + beta * l_or.mean(), "per_pair": -l_or}


def random_logps(batch: int, generator: torch.Generator, low: float = -4.0, high: float = -0.05) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


@pytest.mark.parametrize("batch", [1, 3, 16, 128])
def test_matches_float64_paper_reference(batch):
    gen = torch.Generator().manual_seed(batch)
    chosen, rejected = random_logps(batch, gen), random_logps(batch, gen)
    nll, beta = 1.7, 0.25
    out = orpo_loss(chosen, rejected, torch.tensor(nll), beta)
    ref = paper_reference(chosen, rejected, nll, beta)

    assert isinstance(out, OrpoOutput)
    for field in ("loss", "nll", "or_loss", "log_odds", "log_odds_ratio", "chosen_rewards", "rejected_rewards"):
        assert getattr(out, field).dtype == torch.float32, field
    assert out.loss.shape == out.nll.shape == out.or_loss.shape == ()
    torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out.or_loss.double(), ref["or_loss"], rtol=1e-5, atol=0)
    # log-odds differences can be near 0, where only an absolute tolerance makes sense
    torch.testing.assert_close(out.log_odds.double(), ref["log_odds"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.log_odds_ratio.double(), ref["per_pair"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.chosen_rewards, beta * chosen, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.rejected_rewards, beta * rejected, rtol=1e-6, atol=0)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_matches_trl_formula():
    """TRL's ORPOTrainer.odds_ratio_loss, transcribed: the two definitions must agree (a later test runs TRL)."""
    gen = torch.Generator().manual_seed(7)
    c, r = random_logps(32, gen, low=-8.0), random_logps(32, gen, low=-8.0)
    nll, beta = torch.tensor(0.9), 0.1
    cd, rd = c.double(), r.double()
    trl_log_odds = (cd - rd) - (torch.log1p(-torch.exp(cd)) - torch.log1p(-torch.exp(rd)))
    trl_ratio = F.logsigmoid(trl_log_odds)
    trl_loss = nll.double() - beta * trl_ratio.mean()
    out = orpo_loss(c, r, nll, beta)
    torch.testing.assert_close(out.loss.double(), trl_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.log_odds.double(), trl_log_odds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.log_odds_ratio.double(), trl_ratio, rtol=1e-5, atol=1e-7)


def test_hand_derived_values():
    # P = 1/2 has odds 1 (log-odds 0); P = 1/4 has odds 1/3 (log-odds -log 3). So the chosen-minus-rejected
    # log-odds are +log 3 for pair 0 and -log 3 for pair 1 (swapped), and
    #   -log sigmoid(log 3)  = log(1 + 1/3) = log(4/3) = 0.28768207245178090
    #   -log sigmoid(-log 3) = log(1 + 3)   = log 4    = 1.38629436111989061
    log_3 = 1.09861228866810969
    log_4_3 = 0.28768207245178090
    log_4 = 1.38629436111989061
    half, quarter = math.log(0.5), math.log(0.25)

    out = orpo_loss(torch.tensor([half]), torch.tensor([quarter]), torch.tensor(2.0), 0.1)
    assert out.log_odds.item() == pytest.approx(log_3, rel=1e-6)
    assert out.log_odds_ratio.item() == pytest.approx(-log_4_3, rel=1e-6)
    assert out.or_loss.item() == pytest.approx(log_4_3, rel=1e-6)
    assert out.loss.item() == pytest.approx(2.0 + 0.1 * log_4_3, rel=1e-6)
    assert out.nll.item() == 2.0

    both = orpo_loss(torch.tensor([half, quarter]), torch.tensor([quarter, half]), torch.tensor(0.5), 0.2)
    assert both.log_odds.tolist() == pytest.approx([log_3, -log_3], rel=1e-6)
    assert both.or_loss.item() == pytest.approx((log_4_3 + log_4) / 2, rel=1e-6)
    assert both.loss.item() == pytest.approx(0.5 + 0.2 * (log_4_3 + log_4) / 2, rel=1e-6)
    assert both.chosen_rewards.tolist() == pytest.approx([0.2 * half, 0.2 * quarter], rel=1e-6)


def test_equal_chosen_and_rejected_give_log_2():
    # odds ratio 1: -log sigmoid(0) = log 2 = 0.69314718055994531, and the gradient is -1/2 * d log-odds
    x = torch.tensor([-0.3, -2.0, 0.0, -1e-9], requires_grad=True)
    out = orpo_loss(x, x.detach().clone(), torch.tensor(0.0), 1.0)
    assert out.log_odds.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out.or_loss.item() == pytest.approx(0.69314718055994531, rel=1e-6)
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


def test_beta_scales_only_the_preference_term():
    gen = torch.Generator().manual_seed(3)
    c, r = random_logps(8, gen), random_logps(8, gen)
    nll = torch.tensor(1.25)
    zero = orpo_loss(c, r, nll, 0.0)
    assert torch.equal(zero.loss, nll)
    assert zero.or_loss.item() > 0  # the term exists, beta just weighs it 0
    one, three = orpo_loss(c, r, nll, 1.0), orpo_loss(c, r, nll, 3.0)
    torch.testing.assert_close(one.or_loss, three.or_loss, rtol=0, atol=0)
    torch.testing.assert_close(one.log_odds, three.log_odds, rtol=0, atol=0)
    torch.testing.assert_close(three.loss - nll, 3 * (one.loss - nll), rtol=1e-6, atol=0)

    n = torch.tensor(1.25, requires_grad=True)
    orpo_loss(c, r, n, 3.0).loss.backward()
    assert n.grad.item() == 1.0  # the NLL enters with weight 1 whatever beta is


def analytic_grads(c: torch.Tensor, r: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Derived by hand: d log-odds(x)/dx = 1 + e^x / (1 - e^x) = 1 / (1 - e^x), d(-log sigmoid z)/dz = -sigmoid(-z),
    so dL/dc_i = -beta/B * sigmoid(-z_i) / (1 - e^c_i) and dL/dr_i = +beta/B * sigmoid(-z_i) / (1 - e^r_i)."""
    c, r = c.double(), r.double()
    z = (c - torch.log(1 - torch.exp(c))) - (r - torch.log(1 - torch.exp(r)))
    s = torch.sigmoid(-z) * beta / c.numel()
    return -s / (1 - torch.exp(c)), s / (1 - torch.exp(r))


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(11)
    c = random_logps(5, gen, low=-3.0, high=-0.1).double().requires_grad_()
    r = random_logps(5, gen, low=-3.0, high=-0.1).double().requires_grad_()
    nll = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, r, n: orpo_loss(c, r, n, 0.3).loss, (c, r, nll))
    assert torch.autograd.gradcheck(lambda c, r, n: orpo_loss(c, r, n, 0.3).log_odds, (c, r, nll))
    assert torch.autograd.gradgradcheck(lambda c, r, n: orpo_loss(c, r, n, 0.3).loss, (c, r, nll))


@pytest.mark.parametrize("scale", ["moderate", "near_zero"])
def test_float32_grads_match_hand_derived(scale):
    gen = torch.Generator().manual_seed(5)
    if scale == "moderate":
        c, r = random_logps(16, gen), random_logps(16, gen)
    else:  # stable branch territory, above the clamp: -1e-6 .. -1e-3
        c = -(10 ** (-3 - 3 * torch.rand(16, generator=gen)))
        r = random_logps(16, gen, low=-2.0, high=-1e-3)
    c.requires_grad_(), r.requires_grad_()
    orpo_loss(c, r, torch.tensor(0.0), 0.5).loss.backward()
    gc, gr = analytic_grads(c.detach(), r.detach(), 0.5)
    torch.testing.assert_close(c.grad.double(), gc, rtol=1e-4, atol=0)
    torch.testing.assert_close(r.grad.double(), gr, rtol=1e-4, atol=0)


def test_float32_accurate_near_zero_above_the_clamp():
    # Where the naive float32 log(1 - exp(x)) is off by percent, the stable form matches float64.
    c = torch.tensor([-1e-6, -3e-6, -1e-5, -1e-4, -1e-3])
    r = torch.full_like(c, -1.0)
    out = orpo_loss(c, r, torch.tensor(0.0), 1.0)
    ref = paper_reference(c, r, 0.0, 1.0)
    torch.testing.assert_close(out.log_odds.double(), ref["log_odds"], rtol=1e-6, atol=0)
    naive = (c - torch.log(1 - torch.exp(c))) - (r - torch.log(1 - torch.exp(r)))
    assert ((naive.double() - ref["log_odds"]).abs() / ref["log_odds"].abs()).max() > 5e-4  # the test can tell


def test_clamp_caps_log_p_just_below_zero():
    # log P = 0, -1e-9 and -1e-12 all act as log P = -1e-7: log-odds = -1e-7 - log(1 - exp(-1e-7)) = 16.11809565...
    capped = -1e-7 - math.log(-math.expm1(-1e-7))
    r = -1.0
    ref = capped - (r - math.log(1 - math.exp(r)))
    for x in (0.0, -1e-9, -1e-12, -1e-7):
        out = orpo_loss(torch.tensor([x]), torch.tensor([r]), torch.tensor(0.0), 1.0)
        assert out.log_odds.item() == pytest.approx(ref, rel=1e-6), x


NEAR_ZERO = [0.0, -0.0, -1e-12, -1e-9, -1e-7, -1e-6, -1e-3, -0.5, -1.0, -30.0, -1e4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_loss_and_grads_over_the_whole_range(dtype):
    grid = torch.tensor(NEAR_ZERO, dtype=torch.float64)
    c = grid.repeat_interleave(len(NEAR_ZERO)).to(dtype).requires_grad_()  # every (chosen, rejected) pair,
    r = grid.repeat(len(NEAR_ZERO)).to(dtype).requires_grad_()  # chosen == rejected included
    nll = torch.tensor(3.0, dtype=dtype, requires_grad=True)
    out = orpo_loss(c, r, nll, 0.1)
    assert out.loss.dtype == torch.float32 and out.log_odds.dtype == torch.float32
    for field in ("loss", "or_loss", "log_odds", "log_odds_ratio"):
        assert torch.isfinite(getattr(out, field)).all(), field
    out.loss.backward()
    assert c.grad.dtype == dtype
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all() and torch.isfinite(nll.grad)
    # a single pair, so no batch mean dilutes a large gradient
    for x in NEAR_ZERO:
        for y in NEAR_ZERO:
            a = torch.tensor([x], dtype=dtype, requires_grad=True)
            b = torch.tensor([y], dtype=dtype, requires_grad=True)
            one = orpo_loss(a, b, torch.tensor(0.0), 1.0)
            one.loss.backward()
            assert torch.isfinite(one.loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), (x, y)


# ---- log1mexp -------------------------------------------------------------------------------------------------


def mp_log1mexp(values: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) at 40 significant digits, evaluated at each input exactly as stored."""
    mpmath.mp.dps = 40
    return torch.tensor([float(mpmath.log(1 - mpmath.exp(mpmath.mpf(v)))) for v in values.double().tolist()],
                        dtype=torch.float64)


def test_log1mexp_accurate_on_both_branches():
    x64 = -torch.logspace(-6, math.log10(50.0), 1500, dtype=torch.float64)
    assert (x64 < -math.log(2)).any() and (x64 > -math.log(2)).any()
    x32 = x64.float()
    ref32 = mp_log1mexp(x32)
    torch.testing.assert_close(log1mexp(x32).double(), ref32, rtol=1e-6, atol=0)
    torch.testing.assert_close(log1mexp(x64), mp_log1mexp(x64), rtol=1e-13, atol=0)
    # both naive float32 forms fail somewhere in this range, so the tolerance above is meaningful
    for naive in (torch.log1p(-torch.exp(x32)), torch.log(-torch.expm1(x32))):
        rel = ((naive.double() - ref32) / ref32).abs()
        assert rel.max() > 1e-3


def test_log1mexp_at_the_branch_point_and_zero():
    at = torch.tensor([-math.log(2)], dtype=torch.float64, requires_grad=True)
    y = log1mexp(at)
    assert y.item() == pytest.approx(-math.log(2), rel=1e-15)  # 1 - 1/2 = 1/2
    y.backward()
    assert at.grad.item() == pytest.approx(-1.0, rel=1e-12)  # -e^x / (1 - e^x) = -(1/2)/(1/2)
    assert log1mexp(torch.tensor([0.0])).item() == -math.inf


def test_log1mexp_grads_finite_and_correct():
    # d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / (e^-x - 1)
    x = -torch.logspace(-6, math.log10(50.0), 200, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    log1mexp(x32).sum().backward()
    expected = -1 / torch.expm1(-x32.detach().double())
    torch.testing.assert_close(x32.grad.double(), expected, rtol=1e-5, atol=1e-30)
    x64 = torch.tensor([-5.0, -1.0, -0.7, -0.69, -0.1, -1e-3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(log1mexp, (x64,))
    # Where exp(x) rounds to 1 the discarded branch log1p(-exp(x)) is -inf with an infinite slope; it must not
    # leak a NaN into the gradient through torch.where.
    tiny = torch.tensor([-1e-9, -1e-12, -1e-20, -100.0], requires_grad=True)
    log1mexp(tiny).sum().backward()
    assert torch.isfinite(tiny.grad).all()
    torch.testing.assert_close(tiny.grad.double(), -1 / torch.expm1(-tiny.detach().double()), rtol=1e-5, atol=1e-40)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        orpo_loss(torch.zeros(3) - 1, torch.zeros(2) - 1, torch.tensor(0.0), 0.1)
    with pytest.raises(ValueError, match="scalar"):
        orpo_loss(torch.zeros(3) - 1, torch.zeros(3) - 1, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="at least one"):
        orpo_loss(torch.zeros(0), torch.zeros(0), torch.tensor(0.0), 0.1)
