"""The start-up head check: before training, the chunked LM head (autotrain.model.logprobs) against the model's own
forward on one short row; a model whose head transforms its logits in a way the chunked head does not reproduce is
refused."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

import torch
from transformers import TrainerCallback

from autotrain.errors import ModelError
from autotrain.model.dropout import eval_mode
from autotrain.model.loading import unwrap

logger = logging.getLogger("autotrain")

# Tokens of the head check's row: the end of the first training pair's prompt and the start of its chosen answer.
CHECK_PROMPT_TOKENS, CHECK_TOKENS = 16, 32


def head_tolerance(largest_logit: float, width: int, eps: float) -> float:
    """How far two correct computations of the same log-probs may differ.

    Both sides compute the same logits from bitwise the same hidden states (one row, the same decoder inputs), with
    matmuls of different shapes, whose float32 accumulation differs by up to about sqrt(width) float32 ulps of the
    logits' scale (width: the hidden size summed over), and which are then rounded to the head's output precision
    (`eps`: 2**-7 for bf16, 2**-10 for fp16, float32's eps in fp32) once each; a log-softmax moves a log-prob by at
    most twice its logits' largest change. Margins of 8 and 3 on those two terms, plus 1e-3. A head transform this
    trainer does not apply (a scale, a cap) moves log-probs of a trained model by a good part of a nat or more.
    """
    float32 = torch.finfo(torch.float32).eps
    return 1e-3 + (3 * eps + 8 * width**0.5 * float32) * (1 + largest_logit)


class HeadSpec(NamedTuple):
    """What check_head needs to know of the model: its class name (for the error), vocabulary size, hidden size
    (the matmul width, for the tolerance) and the eps of the head's output precision."""

    name: str
    vocab: int
    width: int
    eps: float


def check_head(model: torch.nn.Module, row: list[int], sequence_logps: Callable[..., Any],
               device: torch.device, spec: HeadSpec, gather: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Compare the chunked head's log-probs at the last position of one row with a log-softmax of the logits the
    model's own forward returns there; raise ModelError past head_tolerance, return the gap otherwise.

    One forward, in eval mode and without grad: `sequence_logps` (the training code path) runs the row, with targets
    at its last position only, each a sequence of its own (so its per-sequence sums are per-token log-probs), while
    the model's forward, asked for the last position's logits (`own_logits=1`), returns them with whatever
    transform it applies (a scale, a soft cap): both come from bitwise the same hidden state. The targets are the
    row's own tokens and ids spread over the vocabulary. `gather` collects every process's gap, so all processes
    take the same decision and none is left waiting in a collective.
    """
    targets = sorted(set(row) | set(range(0, spec.vocab, max(1, spec.vocab // 16))))
    k, last = len(targets), len(row) - 1
    ids = torch.tensor([row], device=device)
    everywhere = torch.ones(k, dtype=torch.bool, device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "hidden_index": torch.full((k,), last, device=device), "target_ids": torch.tensor(targets, device=device),
             "target_seq": torch.arange(k, device=device), "in_completion": everywhere, "in_nll": everywhere,
             "num_pairs": k, "num_real_tokens": len(row)}
    returned: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, output: returned.append(output.logits[0, -1]))
    try:
        with torch.no_grad(), eval_mode(model):
            ours = sequence_logps(model, batch, own_logits=1).sums[:k].float()
    finally:
        handle.remove()
    own = returned[-1].float()
    theirs = own.log_softmax(-1).index_select(0, batch["target_ids"])
    found = torch.stack([(ours - theirs).abs().max(), own.abs().max()]).reshape(1, 2)
    gap, largest = gather(found).max(dim=0).values.tolist()
    tolerance = head_tolerance(largest, spec.width, spec.eps)
    if not gap <= tolerance:  # NaN fails too
        raise ModelError(
            f"{spec.name}: the chunked LM head's log-probs differ from the model's own forward by up to {gap:.3g} "
            f"(tolerance {tolerance:.2g}) on the first training row; its head transforms the logits in a way this "
            "trainer does not reproduce, so it would train a different objective (nothing was trained)"
        )
    return gap


def head_row(feature: dict[str, Any]) -> list[int]:
    """The head check's row: the end of a pair's prompt and the start of its chosen answer (or SFT's completion)."""
    return (list(feature["prompt_ids"])[-CHECK_PROMPT_TOKENS:] + list(feature["chosen_ids"]))[:CHECK_TOKENS]


class HeadCheck(TrainerCallback):
    """check_head on the first training pair when training begins: after the model is wrapped for its processes (the
    check runs through the wrapper, on every process), before any evaluation or optimizer step."""

    def __init__(self, trainer: Any, sequence_logps: Callable[..., Any]):
        self.trainer, self.sequence_logps = trainer, sequence_logps
        self.seconds: float | None = None  # what the check cost, once it ran

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.run()

    def run(self) -> float:
        """Check the first training pair; return the largest gap (ModelError past the tolerance)."""
        start = time.perf_counter()
        trainer = self.trainer
        model = trainer.model_wrapped
        base = unwrap(model)
        weight = base.get_output_embeddings().weight
        eps = max({"bf16": 2.0**-7, "fp16": 2.0**-10}.get(str(trainer.accelerator.mixed_precision), 0.0),
                  torch.finfo(weight.dtype).eps if weight.dtype.is_floating_point else 0.0)
        # From the config: a sharded (FSDP, ZeRO-3) weight need not have its full shape here.
        vocab = getattr(base.config, "vocab_size", None) or weight.shape[0]
        width = getattr(base.config, "hidden_size", None) or weight.shape[-1]
        spec = HeadSpec(type(base).__name__, vocab, width, eps)
        gap = check_head(model, head_row(trainer.train_dataset[0]), self.sequence_logps, trainer.args.device, spec,
                         trainer.accelerator.gather)
        self.seconds = time.perf_counter() - start
        logger.info("checked: the chunked LM head gives the model's own log-probs (largest gap %.1g, %.2f s)", gap,
                    self.seconds)
        return gap
