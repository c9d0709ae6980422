"""KTO (Ethayarajh et al. 2024) and unpaired APO-zero on labelled examples against a frozen reference, as TRL's
KTOTrainer: each example's completion (sequence i of the batch) is compared with the reference, and with `kto` also
its mismatched KL completion (sequence B + i: autotrain.data.unpaired), whose log-ratios make the KL reference point."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.model.forward import sequence_logps
from autotrain.params.methods import spec
from autotrain.train.losses import PairTerms, Subsets, kl_baseline
from autotrain.train.methods.base import STEP_STATISTIC, Method, ReferenceSums, pair_nll
from autotrain.train.pair_losses import kto_loss

# TRL's KTOTrainer means: each class's rewards and log-probs over its own examples, the margin their difference.
SUBSETS = Subsets(
    counts={"rewards/chosen": "desirable", "logps/chosen": "desirable", "rewards/rejected": "undesirable",
            "logps/rejected": "undesirable"},
    differences={"rewards/margins": ("rewards/chosen", "rewards/rejected")},
)


def kl_logratios(model: torch.nn.Module, batch: dict[str, Any], reference: ReferenceSums | None = None,
                 loss_type: tuple[str, ...] = ("kto",), **_: Any) -> torch.Tensor | None:
    """[B] log pi(y'|x) - log ref(y'|x) of the batch's mismatched (prompt, KL completion) pairs, summed over the KL
    completion's tokens, without gradient; None for a loss type without a KL reference point."""
    if loss_type[0] != "kto":
        return None
    if reference is None:
        raise ValueError("kl_logratios needs the reference's log-probs (the trainer supplies them)")
    with torch.no_grad():
        seqs = sequence_logps(model, batch)
        return seqs.split(seqs.sums)[1] - seqs.split(reference(batch))[1]


def kto_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None,
              loss_type: tuple[str, ...] = ("kto",), desirable_weight: float = 1.0,
              undesirable_weight: float = 1.0) -> PairTerms:
    """KTO per example: the rows of PairTerms are examples, each loss already times its class's weight, so the step's
    mean over its examples is TRL's loss. The KL reference point is the batch's STEP_STATISTIC when the trainer took it
    over the whole step, else this batch's own (a step of one micro-batch on one process: the same number). The NLL
    (of every completion) is reported, not trained. Metrics under TRL's KTOTrainer names."""
    if reference is None:
        raise ValueError("kto_terms needs the reference's log-probs (the trainer supplies them)")
    (name,) = loss_type
    seqs = sequence_logps(model, batch)
    with torch.no_grad():
        ref_sums = reference(batch)
    completion, kl_side = seqs.split(seqs.sums)
    ref_completion, ref_kl = seqs.split(ref_sums)
    logratios = completion - ref_completion.detach()
    kl = torch.zeros((), dtype=completion.dtype, device=completion.device)
    if name == "kto":
        kl = batch.get(STEP_STATISTIC)
        if kl is None:
            kl = kl_baseline((kl_side.detach() - ref_kl).sum(), seqs.pairs)
    desirable = batch["desirable"].to(completion.device)
    losses = kto_loss(logratios, desirable, kl, beta, desirable_weight, undesirable_weight, name)
    good = desirable.to(completion.dtype)
    rewards, logps = (beta * logratios).detach(), completion.detach()
    metrics = {"kl": kl.to(completion.dtype).expand(seqs.pairs), "desirable": good, "undesirable": 1 - good,
               "rewards/chosen": rewards * good, "logps/chosen": logps * good,
               "rewards/rejected": rewards * (1 - good), "logps/rejected": logps * (1 - good)}
    return PairTerms(*pair_nll(seqs), pair_loss=losses, nll_weight=0.0, metrics=metrics, batch_term=seqs.router_loss,
                     subsets=SUBSETS)


METHOD = Method(spec("kto"), kto_terms, step_values=kl_logratios, step_statistic=kl_baseline)
kto_step = METHOD.step
