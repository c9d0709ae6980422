"""The --loss-type menu of `dpo` and `cpo` (TRL's `loss_type` names), torch-free: each loss's name, its title as
papers write it, when to choose it, and its authors' values for the settings it reads.

The formulas are autotrain.pair_losses' (pure tensor functions, one per loss); this table is what the params, the
log, the model card and the README need before torch is imported. A setting left unset takes the value listed here:
the authors' (the paper's, as TRL's paper index reproduces it), or, where the paper gives none, TRL's default, which
`trl_defaults` names so that the log and the card say so rather than claim it for the authors.

Settings a loss reads, by the keyword the method's terms take (the params field in brackets):
  beta (--dpo-beta), label_smoothing (--label-smoothing), discopop_tau (--discopop-tau), gamma (--simpo-gamma),
  alphapo_alpha (--alphapo-alpha), alpha (--cpo-alpha: the NLL weight of cpo).
`ld_alpha` (--ld-alpha, LD-DPO) is not a loss's: it reweighs the log-probs every dpo loss reads (the collators'
`completion_weight`), so it applies to any dpo loss type.

Not offered: TRL's `aot` and `aot_unpaired` sort the log-ratios across the batch and pair each pair's with the
reference's of the same rank, so a pair's loss depends on which other pairs share its micro-batch: batch 4 x
accumulation 1 and 2 x 2 would train on different objectives (this tool's step is one loss however it is split,
autotrain.losses), and defining the sort over a whole step would need a no-grad pass over the step's pairs before
each step. `NOT_OFFERED` says so when they are asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = ["CPO_LOSSES", "DPO_LOSSES", "LossType", "NOT_OFFERED"]


@dataclass(frozen=True)
class LossType:
    """One --loss-type of a method (see the module docstring)."""

    name: str  # TRL's loss_type
    title: str  # as papers write it (the log's and the card's method name)
    paper: str  # where it comes from
    when: str  # when to choose it (the README's method table)
    defaults: Mapping[str, float] = field(default_factory=dict)  # the settings it reads -> its authors' values
    trl_defaults: tuple[str, ...] = ()  # the settings whose value is TRL's default: the paper gives none
    # Settings that switch a variant on only when non-zero (sigmoid's label smoothing: cDPO): not named at 0.
    switches: tuple[str, ...] = ()
    # What its logged rewards/accuracies count, where it differs from the method's (autotrain.methods' MethodSpec).
    accuracy: str | None = None

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self.defaults)


def _table(*losses: LossType) -> Mapping[str, LossType]:
    return MappingProxyType({loss.name: loss for loss in losses})


# Every dpo loss reads the four log-ratios of a pair against the frozen reference: log pi(c) - log ref(c) and the
# rejected one's (summed over completion tokens; ipo and sigmoid_norm divide them by the completion's token count).
DPO_LOSSES: Mapping[str, LossType] = _table(
    LossType("sigmoid", "DPO", "Rafailov et al. 2023, arXiv 2305.18290",
             "the default: a Bradley-Terry fit of the margin; --label-smoothing e > 0 is cDPO (labels flipped with "
             "probability e)", {"beta": 0.1, "label_smoothing": 0.0}, switches=("label_smoothing",)),
    LossType("hinge", "SLiC", "Zhao et al. 2023, arXiv 2305.10425",
             "a margin of 1 / beta and no gradient once a pair clears it: stops pushing pairs it already ranks well",
             {"beta": 0.1}, trl_defaults=("beta",)),
    LossType("ipo", "IPO", "Azar et al. 2023, arXiv 2310.12036",
             "regresses the per-token margin to 1 / (2 tau) instead of pushing it to infinity: against overfitting "
             "near-deterministic preferences (beta is tau)", {"beta": 0.1}, trl_defaults=("beta",)),
    LossType("exo_pair", "EXO", "Ji et al. 2024, arXiv 2402.00856",
             "reverse KL to the (smoothed) preference labels instead of DPO's forward one: mode-seeking",
             {"beta": 0.1, "label_smoothing": 1e-3}),
    LossType("nca_pair", "NCA", "Chen et al. 2024, arXiv 2402.05369",
             "absolute rewards per response: keeps the chosen answer's likelihood from falling while the margin grows",
             {"beta": 0.01}),
    LossType("robust", "rDPO", "Chowdhury et al. 2024, arXiv 2403.00409",
             "labels known to be noisy: an unbiased loss under preference flips of probability --label-smoothing",
             {"beta": 0.01, "label_smoothing": 0.1}),
    LossType("bco_pair", "BCO", "Jung et al. 2024, arXiv 2404.04656",
             "each answer classified on its own (chosen up, rejected down) rather than only their margin",
             {"beta": 0.01}),
    LossType("sppo_hard", "SPPO", "Wu et al. 2024, arXiv 2405.00675",
             "self-play rounds: regresses the chosen log-ratio to +1 / (2 beta) and the rejected to -1 / (2 beta)",
             {"beta": 0.1}, trl_defaults=("beta",)),
    LossType("apo_zero", "APO-zero", "D'Oosterlinck et al. 2024, arXiv 2408.06266",
             "chosen answers better than the model's own: raises the chosen likelihood, lowers the rejected",
             {"beta": 0.1}),
    LossType("apo_down", "APO-down", "D'Oosterlinck et al. 2024, arXiv 2408.06266",
             "chosen answers worse than the model's own: lowers both, the rejected more", {"beta": 0.1}),
    LossType("discopop", "DiscoPOP", "Chris Lu et al. 2024, arXiv 2406.08414",
             "a blend of the logistic and exponential losses modulated by the margin (temperature --discopop-tau)",
             {"beta": 0.05, "discopop_tau": 0.05}),
    LossType("sigmoid_norm", "length-normalised DPO", "Lambert et al. 2024 (Tulu 3), arXiv 2411.15124",
             "DPO on per-token log-ratios: no reward for length when chosen answers run longer", {"beta": 5.0}),
    LossType("sft", "SFT", "the NLL of the chosen completion tokens",
             "only beside another loss: sigmoid,sft with --loss-weights 1,alpha is RPO (Liu et al. 2024, arXiv "
             "2405.16436, alpha 0.005), keeping the chosen answers likely"),
)

# CPO's menu: no reference model; alpha weighs the chosen side's NLL.
CPO_LOSSES: Mapping[str, LossType] = _table(
    LossType("sigmoid", "CPO", "Xu et al. 2024, arXiv 2401.08417",
             "the default: sigmoid on summed log-probs plus the NLL; --label-smoothing e > 0 flips labels with "
             "probability e (conservative)", {"beta": 0.1, "alpha": 1.0, "label_smoothing": 0.0},
             switches=("label_smoothing",)),
    LossType("hinge", "CPO-hinge", "SLiC's hinge (Zhao et al. 2023) on CPO's summed log-probs",
             "a margin of 1 / beta on summed log-probs, no gradient past it", {"beta": 0.1, "alpha": 1.0},
             trl_defaults=("beta", "alpha")),
    LossType("ipo", "CPO-IPO", "IPO's square loss (Azar et al. 2023) on mean token log-probs",
             "regresses the mean-log-prob margin to 1 / (2 beta) instead of pushing it to infinity",
             {"beta": 0.1, "alpha": 1.0}, trl_defaults=("beta", "alpha"),
             accuracy="chosen mean token log-prob > rejected"),
    LossType("alphapo", "AlphaPO", "Gupta et al. 2025, arXiv 2501.03884 (Table 3, Mistral-Instruct)",
             "SimPO with a reshaped reward (1 - p^-alpha) / alpha on the mean token probability p: alpha > 0 "
             "curbs the likelihood displacement of the chosen answers",
             {"beta": 2.5, "gamma": 0.1, "alphapo_alpha": 0.25, "alpha": 0.0},
             accuracy="chosen mean token log-prob > rejected"),
)

NOT_OFFERED: Mapping[str, str] = MappingProxyType(dict.fromkeys(
    ("aot", "aot_unpaired"),
    "sorts the log-ratios across the batch, so a pair's loss depends on which pairs share its micro-batch and a step "
    "split into micro-batches or processes would train on another objective than the same step in one batch",
))
