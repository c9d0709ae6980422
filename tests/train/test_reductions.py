"""The reductions of autotrain.train.losses against hand computations: micro-batch shares add up to the step's loss,
whatever the split, and metrics reduce as token means (NLL) or pair means (everything else)."""

from __future__ import annotations

import pytest
import torch

from autotrain.train.losses import PAIRS, PairTerms, reduce_columns

# Six pairs: NLL sum and token count of each chosen side, and each pair's (weighted) preference term.
NLL = [2.0, 9.0, 0.5, 4.0, 12.0, 1.5]
TOKENS = [2, 6, 1, 3, 8, 1]
PAIR = [0.3, 0.1, 0.7, 0.2, 0.4, 0.9]


def terms(index: slice, nll_weight: float = 1.0, batch_term: float | None = None) -> PairTerms:
    t = lambda values: torch.tensor(values[index], dtype=torch.float64)  # noqa: E731
    extra = {} if batch_term is None else {"batch_term": torch.tensor(batch_term, dtype=torch.float64)}
    return PairTerms(t(NLL), t(TOKENS), t(PAIR), nll_weight, {"rewards/accuracies": t([1.0, 0, 1, 1, 0, 0])}, **extra)


@pytest.mark.parametrize("split", [[slice(0, 6)], [slice(0, 3), slice(3, 6)], [slice(0, 1), slice(1, 5), slice(5, 6)]])
@pytest.mark.parametrize("nll_weight", [1.0, 0.0])
def test_shares_add_up_to_the_steps_loss(split, nll_weight):
    expected = nll_weight * sum(NLL) / sum(TOKENS) + sum(PAIR) / len(PAIR)  # ORPO/SFT shape; DPO with weight 0
    shares = [terms(part, nll_weight).loss(sum(TOKENS), len(PAIR)) for part in split]
    assert sum(s.item() for s in shares) == pytest.approx(expected, rel=1e-12)


def test_a_batch_alone_is_its_own_loss():
    assert terms(slice(1, 3)).loss().item() == pytest.approx((9.0 + 0.5) / 7 + (0.1 + 0.7) / 2, rel=1e-12)


def test_a_per_micro_batch_term_is_averaged_over_the_steps_micro_batches():
    shares = [terms(slice(0, 2), batch_term=0.6), terms(slice(2, 6), batch_term=0.2)]
    total = sum(t.loss(sum(TOKENS), len(PAIR), 2).item() for t in shares)
    assert total == pytest.approx(sum(NLL) / sum(TOKENS) + sum(PAIR) / 6 + (0.6 + 0.2) / 2, rel=1e-12)


def test_metrics_are_token_and_pair_means_over_any_set_of_pairs():
    parts = [terms(slice(0, 4)).columns(), terms(slice(4, 6)).columns()]
    sums = {name: sum(p[name].sum().item() for p in parts) for name in parts[0]}
    metrics = reduce_columns(sums, 1.0)
    assert sums[PAIRS] == 6
    assert metrics["nll_loss"] == pytest.approx(sum(NLL) / sum(TOKENS), rel=1e-6)
    assert metrics["loss"] == pytest.approx(sum(NLL) / sum(TOKENS) + sum(PAIR) / 6, rel=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(3 / 6, rel=1e-12)
    assert set(metrics) == {"loss", "nll_loss", "rewards/accuracies"}
