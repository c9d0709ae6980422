"""The training methods: the one list of their names and the facts about each that are needed before torch loads.

A method is a module of this package that defines `METHOD` (an autotrain.methods.base.Method: its per-pair loss
terms, built on autotrain.forward.sequence_logps and a pure loss of autotrain.losses). This table names that module
and says, without importing it (so without torch), what the rest of the tool needs to know early:

- `paired`: its rows need a rejected completion (the data stage opens preference columns);
- `needs_reference`: it compares against a frozen reference model (the run loads one, and --model-ref and
  --precompute-ref-logps apply to it only);
- `accuracy`: what its logged `rewards/accuracies` counts, as the run summary and the model card say it (None: the
  method logs no accuracy);
- `help`: its part of the --trainer help;
- `metrics`: what it logs besides loss and nll_loss (each evaluation's, with the `eval_` prefix), so that a sweep's
  metric is checked before any trial (a test runs each method and compares);
- its settings, each taking its authors' value when left unset (autotrain.params' MethodParams.method_settings):
  `beta` (--dpo-beta; None: the method has none), and in `options` the others its terms take: `gamma` (SimPO's
  margin, default `gamma_per_beta` x beta) and `alpha` (the NLL weight, default `alpha`); `title` is its name as
  papers write it, `nll_title` its name once alpha > 0 adds an NLL term it has not by default (CPO-SimPO);
- `losses`: its --loss-type menu (autotrain.methods.loss_types), where it has one (dpo, cpo): each loss's own
  settings and their authors' values, which then take the place of the spec's.

The params' list of --trainer choices is `NAMES`; the trainer and the project look a method up here, by the name the
user gave, and never name one themselves. Adding a method: write methods/<name>.py (its terms and `METHOD`), its pure
loss in autotrain/losses.py if it has a new one, and one `MethodSpec` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from autotrain.methods.loss_types import CPO_LOSSES, DPO_LOSSES, LossType

__all__ = ["ALIASES", "NAMES", "PAIR_METRICS", "SPECS", "MethodSpec", "canonical", "load", "spec"]

# What every preference method logs (autotrain.methods.base.reward_metrics), under TRL's names.
PAIR_METRICS: tuple[str, ...] = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                                 "logps/rejected", "rewards/accuracies", "rewards/ties")


@dataclass(frozen=True)
class MethodSpec:
    """What is known about a method before torch is imported (see the module docstring)."""

    name: str
    paired: bool
    needs_reference: bool
    accuracy: str | None
    help: str
    title: str = ""  # empty: the name in capitals
    beta: float | None = 0.1
    options: tuple[str, ...] = ()  # settings besides beta that the method's terms take as keywords
    gamma_per_beta: float = 0.0
    alpha: float = 0.0
    nll_title: str = ""
    # beta scales the reward inside the sigmoid: at 0 every pair's loss is log 2 and no gradient flows (ORPO's lambda
    # at 0 is plain SFT, which is a choice)
    positive_beta: bool = False
    metrics: tuple[str, ...] = PAIR_METRICS
    losses: Mapping[str, LossType] | None = None  # its --loss-type menu; the first is the default

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"


SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("orpo", paired=True, needs_reference=False,
                   accuracy="chosen log-odds > rejected", help="SFT + odds-ratio term, no reference model",
                   metrics=("log_odds_ratio", "log_odds_chosen", *PAIR_METRICS)),
        MethodSpec("dpo", paired=True, needs_reference=True,
                   accuracy="chosen gained more log-probability over the reference than rejected",
                   help="a frozen reference; --loss-type", options=("loss_type", "loss_weights", "label_smoothing", "discopop_tau"),
                   positive_beta=True, losses=DPO_LOSSES),
        # SimPO: the SimPO paper's beta 2.0-2.5 and gamma / beta about 0.5 (gamma follows a chosen beta), no NLL term.
        MethodSpec("simpo", paired=True, needs_reference=False, title="SimPO",
                   accuracy="chosen mean token log-prob > rejected",
                   help="length-normalised reward with a target margin, no reference model; --cpo-alpha > 0 adds "
                   "CPO's NLL term: CPO-SimPO",
                   beta=2.0, options=("gamma", "alpha"), gamma_per_beta=0.5, alpha=0.0, nll_title="CPO-SimPO",
                   positive_beta=True),
        # CPO: beta 0.1 and NLL weight 1.0, as the CPO paper and TRL's CPOConfig.
        MethodSpec("cpo", paired=True, needs_reference=False,
                   accuracy="chosen summed log-prob > rejected",
                   help="+ NLL, no reference model; --loss-type",
                   beta=0.1, options=("alpha", "loss_type", "label_smoothing", "gamma", "alphapo_alpha"), alpha=1.0,
                   positive_beta=True, losses=CPO_LOSSES),
        MethodSpec("sft", paired=False, needs_reference=False, accuracy=None,
                   help="NLL on the completion or text", beta=None, metrics=()),
    )
}
# Other accepted names: `default` is the parent tool's name for sft.
ALIASES: dict[str, str] = {"default": "sft"}
NAMES: tuple[str, ...] = (*SPECS, *ALIASES)


def canonical(name: str) -> str:
    """The method a --trainer value names (an alias resolved); KeyError for an unknown name."""
    name = ALIASES.get(name, name)
    if name not in SPECS:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(NAMES)}")
    return name


def spec(name: str) -> MethodSpec:
    return SPECS[canonical(name)]


def load(name: str) -> Any:
    """The method's `METHOD` (an autotrain.methods.base.Method); imports its module, and so torch."""
    return importlib.import_module(spec(name).module).METHOD
