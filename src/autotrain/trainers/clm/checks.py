"""The training loop's own checks: what must never train silently wrong.

- `check_trainer_api`: the few transformers.Trainer members this loop relies on that are not documented hooks,
  checked at start-up, so an upgrade that renames one fails loudly instead of quietly changing the objective.
- `step_problem`: whether an optimizer step must stop the run. A non-finite loss always does; a non-finite gradient
  does unless an fp16 loss scaler will skip the step (its ordinary overflow step), and even then once the scale has
  fallen to MIN_LOSS_SCALE (the scaler cannot help any more).
- `check_head`: before training, the chunked LM head (autotrain.logprobs) against the model's own forward on one
  short row: a model whose head transforms its logits in a way the chunked head does not reproduce is refused.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Callable, NamedTuple

import torch
from transformers import TrainerCallback

from autotrain.dropout import eval_mode
from autotrain.errors import ModelError
from autotrain.models import unwrap

logger = logging.getLogger("autotrain")

# An fp16 overflow at this loss scale or below stops the run: the scaled gradients overflow although the loss is no
# longer scaled up, so halving the scale again cannot help (DeepSpeed's default min_loss_scale is also 1).
MIN_LOSS_SCALE = 1.0

# Tokens of the head check's row: the end of the first training pair's prompt and the start of its chosen answer.
CHECK_PROMPT_TOKENS, CHECK_TOKENS = 16, 32


# Trainer members the loop overrides or calls that are not documented hooks, with their leading parameters.
TRAINER_MEMBERS: dict[str, list[str]] = {
    "_clip_grad_norm": ["self", "model"],
    "_prepare_inputs": ["self", "inputs"],
    "get_batch_samples": ["self", "epoch_iterator", "num_batches"],
    "_get_output_dir": ["self", "trial"],
    "_save_checkpoint": ["self", "model", "trial"],
    "_issue_warnings_after_load": ["self", "load_result"],
}


def check_trainer_api(trainer_class: type) -> None:
    """Fail at start-up if a Trainer member this loop relies on (beyond the documented hooks) is gone or changed.

    - `_clip_grad_norm(model)`: returns the step's gradient norm before the optimizer steps; the non-finite guard
      runs there (no public hook sees the norm before the step).
    - `_prepare_inputs(inputs)`: moves a batch to the device, for the evaluation and reference passes.
    - `get_batch_samples(epoch_iterator, num_batches, ...)`: its second result reaches compute_loss as
      num_items_in_batch; it carries the step's token and pair counts here.
    - `_save_checkpoint(model, trial)`, which must find its folder through `_get_output_dir(trial)`: a checkpoint is
      written under a staging folder and published by rename (autotrain.checkpoints), so a half-written one is
      never taken for a checkpoint (no public hook runs around the whole save).
    - `_issue_warnings_after_load(load_result)`: the tied weight a checkpoint stores once is not reported missing.
    - The loss returned by compute_loss must reach backward undivided by the accumulation steps: declared by the
      `loss_is_scaled_for_ga` class attribute (transformers >= 5.19); before it, training_step divides unless
      `model_accepts_loss_kwargs` is set and num_items_in_batch is given (both are, here). A run-time check of the
      first accumulated step backs this up (MethodTrainer.training_step).
    """
    for name, parameters in TRAINER_MEMBERS.items():
        member = getattr(trainer_class, name, None)
        found = list(inspect.signature(member).parameters)[: len(parameters)] if callable(member) else None
        if found != parameters:
            raise RuntimeError(
                f"transformers.Trainer.{name} is not what this version of aitraining was written for (expected "
                f"parameters {parameters}, found {found}); install a transformers version between 5.17 and 5.24"
            )
    if "_get_output_dir" not in _source(trainer_class._save_checkpoint, "_get_output_dir"):
        raise RuntimeError(
            "transformers.Trainer._save_checkpoint no longer finds its folder through _get_output_dir, so checkpoints "
            "would not be staged; install a transformers version between 5.17 and 5.24"
        )
    if "loss_is_scaled_for_ga" in _class_attributes(trainer_class):
        return
    source = _source(trainer_class.training_step, "model_accepts_loss_kwargs num_items_in_batch")
    if "model_accepts_loss_kwargs" not in source or "num_items_in_batch" not in source:
        raise RuntimeError(
            "transformers.Trainer.training_step has neither loss_is_scaled_for_ga nor the model_accepts_loss_kwargs "
            "rule, so the gradient-accumulation scaling cannot be controlled; install transformers 5.17 to 5.24"
        )


def _source(function: Any, assumed: str) -> str:
    """The function's source; `assumed` (the words looked for) where there is none to read (a compiled build): the
    run-time checks still apply then."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return assumed


def check_undivided(backward_loss: torch.Tensor, returned_loss: torch.Tensor) -> None:
    """The loss training_step backpropagated (and returned) must be compute_loss's, undivided."""
    if not torch.equal(backward_loss, returned_loss):
        raise RuntimeError(
            "transformers.Trainer divided the loss by the accumulation steps although this trainer declares it "
            "scaled (loss_is_scaled_for_ga); this transformers version is not supported"
        )


def _class_attributes(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ if klass.__module__.startswith("transformers") for name in vars(klass)}


def step_problem(loss_finite: bool, grad_finite: bool, loss_scale: float | None) -> str | None:
    """Why the coming optimizer step must stop the run, or None.

    `loss_scale` is the current scale of an enabled fp16 loss scaler (torch's GradScaler), None without one. With a
    scaler, a non-finite gradient with a finite loss is an overflow of the scaled gradients: the scaler skips that
    step and halves its scale, which is how it finds its scale, so the run goes on, until the scale reaches
    MIN_LOSS_SCALE.
    """
    if not loss_finite:
        return "non-finite loss"
    if grad_finite:
        return None
    if loss_scale is None:
        return "non-finite gradient"
    if loss_scale <= MIN_LOSS_SCALE:
        return f"fp16 gradients overflow even at loss scale {loss_scale:g} (the scaler cannot lower it further)"
    return None


def stop_message(problem: str, step: int, last_checkpoint: str | None, applied: bool) -> str:
    """The one-line error for a stopped step. `applied`: the optimizer had already stepped (DeepSpeed steps inside
    backward), so the weights in memory cannot be trusted; otherwise the step was refused before it ran."""
    state = ("DeepSpeed had already applied this step inside backward, so the weights in memory are not trusted"
             if applied else "the weights were not updated")
    last = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
    hint = "try a lower --lr, or bf16/fp32" if "fp16" in problem else "try a lower --lr or fp32"
    return f"{problem} at step {step}; {state} and no final model was saved; {last} ({hint})"


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

