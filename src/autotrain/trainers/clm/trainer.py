"""The one training loop: a transformers.Trainer whose loss is the method's.

transformers owns the loop, the optimizer, the schedule, checkpoints and mixed precision. This module owns only
what it lacks: the forward pass that computes log-probs at the collator's targets (never the full logits), the
method's loss, and metrics that stay on the device until a logging step reads them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer

from autotrain import moe
from autotrain.attention import decoder_inputs
from autotrain.errors import ModelError, TrainingError
from autotrain.logprobs import segment_sum, token_logps
from autotrain.losses import dpo_loss, orpo_loss
from autotrain.models import decoder_and_head
from autotrain.trainers.clm import safety


@dataclass(frozen=True)
class SequenceLogps:
    """Completion log-probs of a batch's 2B sequences (chosen i is row i, rejected i is row B + i)."""

    sums: torch.Tensor  # [2B] sum of completion-token log-probs per sequence (DPO's log pi(y|x))
    counts: torch.Tensor  # [2B] completion tokens per sequence (0 for the absent rejected side of SFT)
    nll: torch.Tensor  # scalar: mean NLL over the batch's `in_nll` targets
    pairs: int
    # coef * the MoE router load-balancing loss when the model's config asks for it (autotrain.moe), else 0; every
    # method adds it to its loss, as TRL does.
    router_loss: torch.Tensor | float = 0.0

    @property
    def means(self) -> torch.Tensor:  # [2B] mean completion-token log-prob (ORPO's length-normalised log P)
        return self.sums / self.counts.clamp(min=1)

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values[: self.pairs], values[self.pairs :]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/FSDP/DeepSpeed wrappers (each keeps it as `.module`), PEFT wrapper included."""
    while not hasattr(model, "get_decoder") and not hasattr(model, "get_base_model") and hasattr(model, "module"):
        model = model.module
    return model


def sequence_logps(model: torch.nn.Module, batch: dict[str, Any]) -> SequenceLogps:
    """Run the model body once and the LM head only at the batch's targets (see autotrain.data.collate).

    Takes a padded or a packed batch (autotrain.data.pack); autotrain.attention turns the latter's segment ids into
    the mask the model's attention kernel takes. The call goes through the outermost module, so a DDP, FSDP or
    DeepSpeed wrapper sees a normal forward (gradient sync, parameter gathering); a forward hook on the decoder
    takes its hidden states and runs the chunked head inside that forward, while the model's own head runs on one
    position per row only (`logits_to_keep=1`). No step here reads a device value back to the host: targets are
    selected by index and masked by `torch.where`, never by boolean indexing (a `nonzero`, hence a sync, on CUDA).
    A mixture-of-experts model whose config sets `output_router_logits` also gives its router logits, from which
    `router_loss` is computed over the batch's real tokens in either layout (autotrain.moe).
    """
    inner = unwrap(model)
    decoder, head, extras = decoder_and_head(inner)
    router = moe.router_loss(inner.get_base_model() if hasattr(inner, "get_base_model") else inner)
    found: list[torch.Tensor] = []
    routed: list[Any] = []

    def take_hidden(module: torch.nn.Module, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["hidden_index"])
        found.append(
            token_logps(hidden, head, batch["target_ids"], softcap=extras["softcap"], logit_scale=extras["logit_scale"])
        )
        if router is not None:
            routed.append(getattr(output, "router_logits", None))

    handles = [decoder.register_forward_hook(take_hidden)]
    extra: dict[str, Any] = {}
    if router is not None:
        # The decoder returns the router logits; the outer forward must not compute the loss from the batch's mask,
        # which is 4-D when packed (autotrain.moe).
        handles.append(decoder.register_forward_pre_hook(moe.ask_for_router_logits, with_kwargs=True))
        extra["output_router_logits"] = False
    try:
        model(**decoder_inputs(inner, batch), use_cache=False, logits_to_keep=1, **extra)
    finally:
        for handle in handles:
            handle.remove()
    (logps,) = found
    router_term: torch.Tensor | float = 0.0
    if router is not None:
        if routed[0] is None or len(routed[0]) == 0:
            raise ModelError(f"output_router_logits: {type(decoder).__name__} returned no router logits")
        router_term = router(routed[0], batch)
    n = 2 * batch["num_pairs"]
    keep = batch["in_completion"]
    # Dropped entries add an exact 0 to their segment's sum and count (torch.where, not a product: 0 * -inf is NaN).
    sums = segment_sum(torch.where(keep, logps, 0.0), batch["target_seq"], n)
    counts = segment_sum(keep.to(logps.dtype), batch["target_seq"], n)
    nll = -_masked_mean(logps, batch["in_nll"])
    return SequenceLogps(sums, counts, nll, batch["num_pairs"], router_term)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # No kept entry gives NaN, as the mean of an empty selection does (the collators never produce one).
    return torch.where(keep, values, 0.0).sum() / keep.sum().to(values.dtype)


Reference = Callable[[dict[str, Any]], torch.Tensor]  # batch -> [2B] summed completion log-probs, no grad
Metrics = dict[str, torch.Tensor]


def orpo_step(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None
              ) -> tuple[torch.Tensor, Metrics]:
    """ORPO's loss and its metrics (TRL's names), all still on the device. No reference model."""
    seqs = sequence_logps(model, batch)
    chosen, rejected = seqs.split(seqs.means)
    out = orpo_loss(chosen, rejected, seqs.nll, beta)
    metrics = {
        "nll_loss": out.nll.detach(),
        "log_odds_ratio": out.log_odds_ratio.detach().mean(),
        "log_odds_chosen": out.log_odds.detach().mean(),
        **_reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected),
        # Compared on log-probs, not rewards, so the accuracy stays meaningful at beta = 0 (log-odds are monotone in
        # log P, so this is "chosen log-odds beat rejected").
        "rewards/accuracies": (chosen > rejected).float().mean(),
    }
    return out.loss + seqs.router_loss, metrics


def dpo_step(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None
             ) -> tuple[torch.Tensor, Metrics]:
    """Sigmoid DPO on summed completion log-probs against the reference's; metrics under TRL's names."""
    if reference is None:
        raise ValueError("dpo_step needs a reference (the trainer supplies one)")
    seqs = sequence_logps(model, batch)
    with torch.no_grad():
        ref_chosen, ref_rejected = seqs.split(reference(batch))
    chosen, rejected = seqs.split(seqs.sums)
    out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    metrics = {
        "nll_loss": seqs.nll.detach(),
        **_reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected),
        # DPO's implicit reward: the chosen answer gained more log-probability over the reference than the rejected.
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean(),
    }
    return out.loss + seqs.router_loss, metrics


def sft_step(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None
             ) -> tuple[torch.Tensor, Metrics]:
    """Supervised fine-tuning: the mean NLL over the completion tokens (`in_nll`), nothing else."""
    seqs = sequence_logps(model, batch)
    return seqs.nll + seqs.router_loss, {"nll_loss": seqs.nll.detach()}


def _reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen: torch.Tensor,
                    rejected: torch.Tensor) -> Metrics:
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen.detach().mean(),
        "logps/rejected": rejected.detach().mean(),
    }


@dataclass(frozen=True)
class Method:
    """What sets one training method apart; everything else (data stage, collators, loop, outputs) is shared."""

    step: Callable[..., tuple[torch.Tensor, Metrics]]  # (model, batch, beta, reference) -> loss, metrics
    paired: bool  # needs a rejected completion per row
    reference: bool  # needs a frozen reference model


SFT = Method(sft_step, paired=False, reference=False)
# One entry per --trainer choice (params.TRAINER_NAMES); `default` is the seed's name for sft.
METHODS: dict[str, Method] = {
    "orpo": Method(orpo_step, paired=True, reference=False),
    "dpo": Method(dpo_step, paired=True, reference=True),
    "sft": SFT,
    "default": SFT,
}


class PreferenceTrainer(Trainer):
    """transformers.Trainer with a method's loss; metrics are averaged between logging steps."""

    # compute_loss returns a per-micro-batch mean; let Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, method: str, beta: float, ref_model: torch.nn.Module | None = None,
                 precompute_ref: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method, self.beta = METHODS[method], beta
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False).eval().to(self.args.device)
        # Running sums stay on the device: reading them is a host sync, done only when logging.
        self._sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._counts: dict[str, int] = defaultdict(int)
        self._loss_finite: torch.Tensor | None = None  # device flag over this step's micro-batches
        self._staging = False
        self.num_tokens = 0  # real tokens trained on by this process (host count from the collator)
        if self.method.reference and precompute_ref:
            self.train_dataset = self.precompute_reference(self.train_dataset)
            if self.eval_dataset is not None:
                self.eval_dataset = self.precompute_reference(self.eval_dataset)
            self.ref_model = None  # every batch now carries its reference log-probs

    def _reference_sums(self, model: torch.nn.Module, batch: dict[str, Any], untrained: bool = False) -> torch.Tensor:
        """[2B] summed completion log-probs of the frozen reference: precomputed, a separate model, this model with
        its adapters disabled (the same weights, so no second copy in memory), or, when `untrained` (precomputing
        before the first step), this model itself."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.ref_model is not None:
            return sequence_logps(self.ref_model, batch).sums
        inner = unwrap(model)
        if hasattr(inner, "disable_adapter"):
            with inner.disable_adapter():
                return sequence_logps(model, batch).sums
        if untrained:
            return sequence_logps(model, batch).sums
        raise ValueError("DPO without --peft needs a reference model (the trainer is built with ref_model)")

    def precompute_reference(self, dataset: Any) -> Any:
        """The dataset plus `ref_chosen_logps` / `ref_rejected_logps` columns: one no-grad pass, in eval mode.

        With no reference model and no adapters, the reference is the model itself, which is only right before the
        first optimizer step; the caller passes a reference model when resuming.
        """
        model, loader = self.model, self.get_eval_dataloader(dataset)
        training = model.training
        model.eval()
        chosen: list[float] = []
        rejected: list[float] = []
        try:
            with torch.no_grad(), self.compute_loss_context_manager():
                for batch in loader:
                    batch = self._prepare_inputs(batch)
                    sums = self._reference_sums(model, batch, untrained=True)
                    pairs = batch["num_pairs"]
                    gathered = self.accelerator.gather_for_metrics(sums.float().reshape(2, pairs).T.contiguous())
                    chosen += gathered[:, 0].tolist()
                    rejected += gathered[:, 1].tolist()
        finally:
            model.train(training)
        if len(chosen) != len(dataset):
            raise RuntimeError(f"reference pass gave {len(chosen)} pairs for a dataset of {len(dataset)}")
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        return loss

    def _clip_grad_norm(self, model):
        grad_norm = super()._clip_grad_norm(model)
        # The one host sync per optimizer step: deciding whether to step at all. A NaN would otherwise reach the
        # weights (Trainer's own nan filter only hides it from the logged loss).
        finite = bool(torch.isfinite(torch.as_tensor(grad_norm)).all() and self._loss_finite.all())
        self._loss_finite = None
        if not finite:
            done = safety.checkpoints(Path(self.args.output_dir))
            last = f"the last good checkpoint is {done[-1]}" if done else "no checkpoint was saved yet"
            raise TrainingError(
                f"non-finite loss or gradient at step {self.state.global_step + 1}; the weights were not updated "
                f"and no final model was saved; {last} (try a lower --lr or fp32)"
            )
        return grad_norm

    def _get_output_dir(self, trial):
        # While saving a checkpoint, transformers writes under the staging folder; _save_checkpoint publishes it.
        root = super()._get_output_dir(trial)
        return os.path.join(root, safety.STAGING) if self._staging else root

    def _save_checkpoint(self, model, trial):
        root = Path(super()._get_output_dir(trial))
        name = f"{safety.CHECKPOINT_PREFIX}{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        # Every process writes its own RNG state into the staged folder: publish it only once all have.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = root / safety.STAGING / name
            # peft's template model card (39 "[More Information Needed]") says nothing about this checkpoint.
            (staged / "README.md").unlink(missing_ok=True)
            safety.publish(staged, root / name)
            safety.rotate(root, self.args.save_total_limit)

    def _issue_warnings_after_load(self, load_result):
        # A checkpoint of a model with tied embeddings holds one copy of the tied weight; the other name is reported
        # missing although resuming restores it. Only keys that are really absent are worth a warning.
        model = unwrap(self.model)
        shared: dict[int, list[str]] = defaultdict(list)
        for key, tensor in model.state_dict(keep_vars=True).items():
            shared[id(tensor)].append(key)
        missing = set(load_result.missing_keys)
        restored = {key for names in shared.values() if not set(names) <= missing for key in names}
        return super()._issue_warnings_after_load(
            load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in restored]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        reference = (lambda batch: self._reference_sums(model, batch)) if self.method.reference else None
        loss, metrics = self.method.step(model, inputs, self.beta, reference)
        mode = "train" if model.training else "eval"
        if mode == "train":
            self.num_tokens += inputs.get("num_real_tokens", 0)
        sums = self._sums[mode]
        for name, value in metrics.items():
            sums[name] = sums[name] + value if name in sums else value.clone()
        self._counts[mode] += 1
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: D102
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # noqa: D102
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        if self._counts[mode]:
            prefix = "eval_" if mode == "eval" else ""
            # One stacked transfer for all metrics instead of one sync per value; with several processes, one
            # all-reduce of the sums, the micro-batch counts and the token counts, so the logged values are the
            # means over every process's micro-batches (as the loss is), and tokens are everyone's.
            names = list(self._sums[mode])
            device = self._sums[mode][names[0]].device
            dtype = torch.float32 if device.type == "mps" else torch.float64  # exact token counts; MPS has no fp64
            extra = torch.tensor([self._counts[mode], self.num_tokens], dtype=dtype, device=device)
            totals = torch.cat([torch.stack([self._sums[mode][n].to(dtype) for n in names]), extra])
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            totals = totals.cpu()
            values = totals[: len(names)] / totals[-2]
            logs.update({prefix + n: round(v, 6) for n, v in zip(names, values.tolist())})
            self._sums[mode], self._counts[mode] = {}, 0
            if mode == "train" and "loss" in logs:
                logs["num_tokens"] = int(totals[-1])
        super().log(logs, start_time)
