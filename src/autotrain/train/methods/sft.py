"""Supervised fine-tuning: the NLL of the trained completion tokens (`in_nll`), nothing else."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.model.forward import sequence_logps
from autotrain.params.methods import spec
from autotrain.train.losses import PairTerms
from autotrain.train.methods.base import Method, ReferenceSums, pair_nll


def sft_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None
              ) -> PairTerms:
    """The completion NLL per example; `beta` and `reference` are unused (every method takes the same arguments)."""
    seqs = sequence_logps(model, batch)
    nll, tokens = pair_nll(seqs)
    return PairTerms(nll, tokens, pair_loss=torch.zeros_like(nll), nll_weight=1.0, batch_term=seqs.router_loss)


METHOD = Method(spec("sft"), sft_terms)
sft_step = METHOD.step
