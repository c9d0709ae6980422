"""What a method module builds on: the Method record, the reference callable's type and the shared metric helpers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from autotrain.forward import SequenceLogps
from autotrain.losses import PairTerms
from autotrain.methods import MethodSpec

__all__ = ["Method", "Metrics", "ReferenceSums", "pair_nll", "reward_metrics"]

# batch -> [2B] summed completion log-probs of the frozen reference model, no grad (chosen sums, then rejected)
ReferenceSums = Callable[[dict[str, Any]], torch.Tensor]
Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Method:
    """One training method: its spec (autotrain.methods) and its per-pair loss terms. Everything else (data stage,
    collators, the loop, outputs) is shared by all methods.

    `terms(model, batch, beta, reference, **options)` runs the forward pass on one micro-batch and returns its
    PairTerms (how they reduce over a step is autotrain.losses'); `reference` is a ReferenceSums when
    `spec.needs_reference`, else None; `options` are the settings named in `spec.options` (SimPO's gamma, the NLL
    weight alpha). Metrics go under TRL's names, so logs and the plots read the same for every method.
    """

    spec: MethodSpec
    terms: Callable[..., PairTerms]

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    def pair_terms(self, model: torch.nn.Module, batch: dict[str, Any], beta: float,
                   reference: ReferenceSums | None = None, **options: float) -> PairTerms:
        """`terms`, with the batch's pair weights (`pair_weight`: ranked answers) for the reduction to honour."""
        terms = self.terms(model, batch, beta, reference, **options)
        weight = batch.get("pair_weight")
        return terms if weight is None else dataclasses.replace(terms, weight=weight.to(terms.nll.device))

    def step(self, model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None,
             **options: float) -> tuple[torch.Tensor, Metrics]:
        """One batch on its own (one micro-batch, one process): its loss and its metrics (TRL's names)."""
        terms = self.pair_terms(model, batch, beta, reference, **options)
        return terms.loss(), terms.batch_metrics()


def pair_nll(seqs: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] summed NLL, [B] NLL target count) per pair: the first two fields of PairTerms."""
    # Every NLL target is on a pair's chosen side (sequence i of pair i), so the first B sequences hold them all.
    return seqs.nll_sums[: seqs.pairs], seqs.nll_counts[: seqs.pairs]


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen: torch.Tensor,
                   rejected: torch.Tensor, won: torch.Tensor, lost: torch.Tensor) -> Metrics:
    """Per-pair preference metrics; `won` beats `lost` for accuracy (what that means is the spec's `accuracy`), and
    a tie (equal values) is counted apart."""
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
        "rewards/accuracies": (won > lost).float(),
        "rewards/ties": (won == lost).float(),
    }
