"""The one training loop: a transformers.Trainer whose loss is the method's, reduced over each whole step.

transformers owns the loop, the optimizer, the schedule, checkpoints and mixed precision. This module owns only
what it lacks: the forward pass that computes log-probs at the collator's targets (never the full logits), each
method's per-pair terms (autotrain.losses defines how they reduce), and metrics that stay on the device until a
logging step reads them. The loop's own checks live in autotrain.trainers.clm.checks.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import EvalPrediction, Trainer

from autotrain import dropout, moe
from autotrain.data.kernels import decoder_inputs
from autotrain.errors import ModelError, TrainingError
from autotrain.logprobs import segment_sum, token_logps
from autotrain.losses import PAIRS, PairTerms, cpo_loss, dpo_loss, orpo_loss, reduce_columns, simpo_loss
from autotrain.head import decoder_and_head
from autotrain.models import unwrap
from autotrain import checkpoints
from autotrain.trainers.clm import checks


@dataclass(frozen=True)
class SequenceLogps:
    """Completion log-probs of a batch's 2B sequences (chosen i is row i, rejected i is row B + i)."""

    sums: torch.Tensor  # [2B] sum of completion-token log-probs per sequence (DPO's log pi(y|x))
    counts: torch.Tensor  # [2B] completion tokens per sequence (0 for the absent rejected side of SFT)
    nll: torch.Tensor  # scalar: mean NLL over the batch's `in_nll` targets
    pairs: int
    nll_sums: torch.Tensor  # [2B] summed NLL of each sequence's `in_nll` targets (only chosen sequences have any)
    nll_counts: torch.Tensor  # [2B] the number of those targets
    # coef * the MoE router load-balancing loss when the model's config asks for it (autotrain.moe), else None;
    # every method adds it to its loss, as TRL does (a per-micro-batch term: PairTerms.batch_term).
    router_loss: torch.Tensor | None = None

    @property
    def means(self) -> torch.Tensor:  # [2B] mean completion-token log-prob (ORPO's length-normalised log P)
        return self.sums / self.counts.clamp(min=1)

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values[: self.pairs], values[self.pairs :]


def sequence_logps(model: torch.nn.Module, batch: dict[str, Any]) -> SequenceLogps:
    """Run the model body once and the LM head only at the batch's targets (see autotrain.data.collate).

    Takes a padded or a packed batch (autotrain.data.pack); autotrain.data.kernels turns the latter's segment ids into
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
    router = moe.router_loss(inner)
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
    router_term: torch.Tensor | None = None
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
    nll_sums = -segment_sum(torch.where(batch["in_nll"], logps, 0.0), batch["target_seq"], n)
    nll_counts = segment_sum(batch["in_nll"].to(logps.dtype), batch["target_seq"], n)
    return SequenceLogps(sums, counts, nll, batch["num_pairs"], nll_sums, nll_counts, router_term)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # No kept entry gives NaN, as the mean of an empty selection does (the collators never produce one).
    return torch.where(keep, values, 0.0).sum() / keep.sum().to(values.dtype)


Reference = Callable[[dict[str, Any]], torch.Tensor]  # batch -> [2B] summed completion log-probs, no grad
Metrics = dict[str, torch.Tensor]


def orpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None
               ) -> PairTerms:
    """ORPO per pair: the chosen side's NLL and beta times the odds-ratio term; metrics under TRL's names."""
    seqs = sequence_logps(model, batch)
    chosen, rejected = seqs.split(seqs.means)
    out = orpo_loss(chosen, rejected, seqs.nll, beta)
    return PairTerms(
        *_pair_nll(seqs), pair_loss=-beta * out.log_odds_ratio, nll_weight=1.0, batch_term=seqs.router_loss,
        metrics={
            "log_odds_ratio": out.log_odds_ratio.detach(),
            "log_odds_chosen": out.log_odds.detach(),
            # Compared on log-probs, not rewards, so the accuracy stays meaningful at beta = 0 (log-odds are monotone
            # in log P, so this is "chosen log-odds beat rejected").
            **_reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected),
        },
    )


def dpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None
              ) -> PairTerms:
    """Sigmoid DPO per pair on summed completion log-probs against the reference's; the NLL is reported only."""
    if reference is None:
        raise ValueError("dpo_terms needs a reference (the trainer supplies one)")
    seqs = sequence_logps(model, batch)
    with torch.no_grad():
        ref_chosen, ref_rejected = seqs.split(reference(batch))
    chosen, rejected = seqs.split(seqs.sums)
    out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    # DPO's implicit reward: the chosen answer gained more log-probability over the reference than the rejected.
    metrics = _reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, out.chosen_rewards,
                              out.rejected_rewards)
    return PairTerms(*_pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=0.0, metrics=metrics,
                     batch_term=seqs.router_loss)


def simpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None,
                gamma: float = 0.0, alpha: float = 0.0) -> PairTerms:
    """SimPO per pair on mean completion log-probs with margin gamma; alpha > 0 adds the NLL term (CPO-SimPO)."""
    seqs = sequence_logps(model, batch)
    out = simpo_loss(*seqs.split(seqs.sums), *seqs.split(seqs.counts), seqs.nll, beta, gamma, alpha)
    chosen, rejected = seqs.split(seqs.means)
    # SimPO's reward is beta times the mean log-prob: compared on the mean, so the accuracy holds at beta = 0 too.
    metrics = _reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected)
    return PairTerms(*_pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=alpha, metrics=metrics,
                     batch_term=seqs.router_loss)


def cpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None,
              alpha: float = 1.0) -> PairTerms:
    """CPO per pair on summed completion log-probs, plus alpha times the NLL of the chosen completions."""
    seqs = sequence_logps(model, batch)
    chosen, rejected = seqs.split(seqs.sums)
    out = cpo_loss(chosen, rejected, seqs.nll, beta, alpha)
    metrics = _reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected)
    return PairTerms(*_pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=alpha, metrics=metrics,
                     batch_term=seqs.router_loss)


def sft_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None
              ) -> PairTerms:
    """Supervised fine-tuning: the NLL of the completion tokens (`in_nll`), nothing else."""
    seqs = sequence_logps(model, batch)
    nll, tokens = _pair_nll(seqs)
    return PairTerms(nll, tokens, pair_loss=torch.zeros_like(nll), nll_weight=1.0, batch_term=seqs.router_loss)


def _pair_nll(seqs: SequenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    # Every NLL target is on a pair's chosen side (sequence i of pair i), so the first B sequences hold them all.
    return seqs.nll_sums[: seqs.pairs], seqs.nll_counts[: seqs.pairs]


def _reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen: torch.Tensor,
                    rejected: torch.Tensor, won: torch.Tensor, lost: torch.Tensor) -> Metrics:
    """Per-pair metrics; `won` beats `lost` for accuracy, and a tie (equal values) is counted apart."""
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
        "rewards/accuracies": (won > lost).float(),
        "rewards/ties": (won == lost).float(),
    }


@dataclass(frozen=True)
class Method:
    """What sets one training method apart; everything else (data stage, collators, loop, outputs) is shared."""

    terms: Callable[..., PairTerms]  # (model, batch, beta, reference, **options) -> the micro-batch's per-pair terms
    paired: bool  # needs a rejected completion per row
    reference: bool  # needs a frozen reference model
    options: tuple[str, ...] = ()  # the MethodSettings fields besides beta that `terms` takes (gamma, alpha)

    def step(self, model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: Reference | None = None,
             **options: float) -> tuple[torch.Tensor, Metrics]:
        """One batch on its own (one micro-batch, one process): its loss and its metrics (TRL's names)."""
        terms = self.terms(model, batch, beta, reference, **options)
        return terms.loss(), terms.batch_metrics()


ORPO = Method(orpo_terms, paired=True, reference=False)
DPO = Method(dpo_terms, paired=True, reference=True)
SIMPO = Method(simpo_terms, paired=True, reference=False, options=("gamma", "alpha"))
CPO = Method(cpo_terms, paired=True, reference=False, options=("alpha",))
SFT = Method(sft_terms, paired=False, reference=False)
orpo_step, dpo_step, sft_step = ORPO.step, DPO.step, SFT.step
# One entry per --trainer choice (params.TRAINER_NAMES); `default` is the seed's name for sft.
METHODS: dict[str, Method] = {
    "orpo": ORPO,
    "dpo": DPO,
    "simpo": SIMPO,
    "cpo": CPO,
    "sft": SFT,
    "default": SFT,
}


class PreferenceTrainer(Trainer):
    """transformers.Trainer with a method's loss, reduced over each whole optimizer step (autotrain.losses).

    get_batch_samples counts the step's NLL tokens, pairs and micro-batches on the device, summed over the processes
    (no host sync), and hands them to compute_loss as num_items_in_batch; a micro-batch's loss is its share of the
    step's loss, times the processes (whose gradients DDP/FSDP/DeepSpeed average), and reaches backward undivided.
    Evaluation returns per-pair values, which Trainer gathers without the pairs `even_batches` repeats.
    """

    # compute_loss returns each micro-batch's share of the step's loss: Trainer must not divide it again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, method: str, beta: float, ref_model: torch.nn.Module | None = None,
                 precompute_ref: bool = False, disable_dropout: bool = True, options: dict[str, float] | None = None,
                 **kwargs: Any):
        checks.check_trainer_api(Trainer)
        super().__init__(*args, **kwargs)
        # Before transformers 5.19 (no loss_is_scaled_for_ga) training_step leaves the loss undivided when the model
        # "accepts loss kwargs" and num_items_in_batch is given; get_batch_samples always gives it here.
        self.model_accepts_loss_kwargs = True
        self.method, self.beta = METHODS[method], beta
        # The method's own settings besides beta (SimPO's gamma, the NLL weight alpha of CPO and SimPO).
        self.options = {name: value for name, value in (options or {}).items() if name in self.method.options}
        self.ref_model = ref_model
        for net in (self.model, ref_model) if disable_dropout else ():
            if net is not None:
                dropout.disable_dropout(net)
        if ref_model is not None:
            ref_model.requires_grad_(False).eval().to(self.args.device)
        if self.compute_metrics is None:
            self.compute_metrics = self._eval_metrics
        self.add_callback(checks.HeadCheck(self, sequence_logps))
        # Per-pair column sums of the training micro-batches since the last log; on the device until a log reads them.
        self._window: dict[str, torch.Tensor] = {}
        self._nll_weight = 1.0
        self._eval_columns: list[str] = []
        self._loss_finite: torch.Tensor | None = None  # device flag over this step's micro-batches
        self._scaling_checked = False
        self._last_loss: torch.Tensor | None = None
        self._staging = False
        self.num_tokens = 0  # real tokens trained on by this process (host count from the collator)
        if self.method.reference and precompute_ref:
            self.train_dataset = self.precompute_reference(self.train_dataset)
            if self.eval_dataset is not None:
                self.eval_dataset = self.precompute_reference(self.eval_dataset)
            self.ref_model = None  # every batch now carries its reference log-probs

    def reference_sums(self, model: torch.nn.Module, batch: dict[str, Any], untrained: bool = False) -> torch.Tensor:
        """[2B] summed completion log-probs of the frozen reference: precomputed, a separate model, this model with
        its adapters disabled (the same weights, no second copy), or, when `untrained` (precomputing before the first
        step), this model itself. Never with dropout: a separate model is in eval mode, this one is switched to it."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.ref_model is not None:
            return sequence_logps(self.ref_model, batch).sums
        inner = unwrap(model, peft=False)
        if not hasattr(inner, "disable_adapter") and not untrained:
            raise ValueError("DPO without --peft needs a reference model (the trainer is built with ref_model)")
        with dropout.eval_mode(model):
            if hasattr(inner, "disable_adapter"):
                with inner.disable_adapter():
                    return sequence_logps(model, batch).sums
            return sequence_logps(model, batch).sums

    def precompute_reference(self, dataset: Any) -> Any:
        """The dataset plus `ref_chosen_logps` / `ref_rejected_logps` columns: one no-grad pass, in eval mode.

        With no reference model and no adapters, the reference is the model itself, which is only right before the
        first optimizer step; the caller passes a reference model when resuming.
        """
        model, loader = self.model, self.get_eval_dataloader(dataset)
        chosen: list[float] = []
        rejected: list[float] = []
        with torch.no_grad(), self.compute_loss_context_manager(), dropout.eval_mode(model):
            for batch in loader:
                batch = self._prepare_inputs(batch)
                sums = self.reference_sums(model, batch, untrained=True)
                pairs = batch["num_pairs"]
                gathered = self.accelerator.gather_for_metrics(sums.float().reshape(2, pairs).T.contiguous())
                chosen += gathered[:, 0].tolist()
                rejected += gathered[:, 1].tolist()
        if len(chosen) != len(dataset):
            raise RuntimeError(f"reference pass gave {len(chosen)} pairs for a dataset of {len(dataset)}")
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):  # noqa: D102
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        if not batches:
            return batches, None
        # [NLL tokens, pairs, micro-batches] of the whole step on every process. No host sync: the token count is a
        # device sum, and the host ints enter through torch.full (a kernel argument, not a copy to the device).
        tokens = sum(batch["in_nll"].sum() for batch in batches).to(device=self.args.device, dtype=torch.int64)
        fill = lambda value: torch.full((), value, dtype=torch.int64, device=tokens.device)  # noqa: E731
        counts = torch.stack([tokens, fill(sum(batch["num_pairs"] for batch in batches)), fill(len(batches))])
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return batches, counts

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self._scaling_checked and getattr(self, "current_gradient_accumulation_steps", 1) > 1:
            # The accumulation rule held (checks.check_trainer_api): checked once, one host read.
            checks.check_undivided(loss, self._last_loss)
            self._scaling_checked = True
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        terms = self._terms(model, inputs)
        if num_items_in_batch is None:  # a batch on its own
            loss = terms.loss()
        else:
            loss = terms.loss(*num_items_in_batch) * self.accelerator.num_processes
        if model.training:
            self._add_to_window(terms, inputs)
            finite = torch.isfinite(loss.detach())
            self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
            self._last_loss = loss.detach()
            if self.is_deepspeed_enabled and self.accelerator.sync_gradients:
                # DeepSpeed steps the optimizer inside this micro-batch's backward: decide before it runs.
                self._stop_on(checks.step_problem(self._read_flags()[0], True, None), applied=False)
        return (loss, terms) if return_outputs else loss

    def _terms(self, model: torch.nn.Module, inputs: dict[str, Any]) -> PairTerms:
        reference = (lambda batch: self.reference_sums(model, batch)) if self.method.reference else None
        terms = self.method.terms(model, inputs, self.beta, reference, **self.options)
        self._nll_weight = terms.nll_weight
        return terms

    def _add_to_window(self, terms: PairTerms, inputs: dict[str, Any]) -> None:
        self.num_tokens += inputs.get("num_real_tokens", 0)
        for name, column in terms.columns().items():
            total = column.sum()
            self._window[name] = self._window[name] + total if name in self._window else total

    def _read_flags(self, grad_norm: Any = None) -> tuple[bool, bool]:
        """(loss finite over the step so far, gradient norm finite): the one host read per optimizer step."""
        flags = [self._loss_finite if self._loss_finite is not None else torch.tensor(True)]
        if grad_norm is not None:
            flags.append(torch.isfinite(torch.as_tensor(grad_norm)).all().to(flags[0].device))
        self._loss_finite = None
        loss_ok, *grad = torch.stack(flags).tolist()
        return bool(loss_ok), bool(grad[0]) if grad else True

    def _clip_grad_norm(self, model):
        grad_norm = super()._clip_grad_norm(model)
        loss_ok, grad_ok = self._read_flags(grad_norm)
        if self.is_deepspeed_enabled:
            # The loss was checked before backward, and DeepSpeed has stepped by now: its fp16 scaler skips an overflow
            # step itself; otherwise a non-finite gradient was applied.
            self._stop_on(None if grad_ok or self.args.fp16 else "non-finite gradient", applied=True)
            return grad_norm
        scaler = getattr(self.accelerator, "scaler", None)
        scale = scaler.get_scale() if not grad_ok and scaler is not None and scaler.is_enabled() else None
        self._stop_on(checks.step_problem(loss_ok, grad_ok, scale), applied=False)
        return grad_norm

    def _stop_on(self, problem: str | None, applied: bool) -> None:
        if problem is not None:
            done = checkpoints.checkpoints(Path(self.args.output_dir))
            raise TrainingError(checks.stop_message(problem, self.state.global_step + 1,
                                                    str(done[-1]) if done else None, applied))

    def _get_output_dir(self, trial):
        # While saving a checkpoint, transformers writes under the staging folder; _save_checkpoint publishes it.
        root = super()._get_output_dir(trial)
        return os.path.join(root, checkpoints.STAGING) if self._staging else root

    def _save_checkpoint(self, model, trial):
        root = Path(super()._get_output_dir(trial))
        name = f"{checkpoints.CHECKPOINT_PREFIX}{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        # Every process writes its own RNG state into the staged folder: publish it only once all have.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = root / checkpoints.STAGING / name
            # peft's template model card (39 "[More Information Needed]") says nothing about this checkpoint.
            (staged / "README.md").unlink(missing_ok=True)
            checkpoints.publish(staged, root / name)
            checkpoints.rotate(root, self.args.save_total_limit)

    def _issue_warnings_after_load(self, load_result):
        # A checkpoint of a model with tied embeddings holds one copy of the tied weight; the other name is reported
        # missing although resuming restores it. Only keys that are really absent are worth a warning.
        model = unwrap(self.model, peft=False)
        shared: dict[int, list[str]] = defaultdict(list)
        for key, tensor in model.state_dict(keep_vars=True).items():
            shared[id(tensor)].append(key)
        missing = set(load_result.missing_keys)
        restored = {key for names in shared.values() if not set(names) <= missing for key in names}
        return super()._issue_warnings_after_load(
            load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in restored]))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: D102
        # Per-pair values [B, columns] as the "predictions": Trainer gathers them with gather_for_metrics, which drops
        # the pairs even_batches repeats on the last batch, and _eval_metrics reduces them over the whole split.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            columns = self._terms(model, inputs).columns()
        self._eval_columns = list(columns)
        return None, torch.stack(list(columns.values()), dim=1), columns[PAIRS]

    def _eval_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        sums = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1, len(self._eval_columns)).sum(axis=0)
        return {name: float(value)
                for name, value in reduce_columns(dict(zip(self._eval_columns, sums.tolist())), self._nll_weight).items()}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # noqa: D102
        if self._window and not any(key.startswith("eval_") for key in logs):
            # One stacked transfer (and with several processes one all-reduce) of all sums and the token count.
            names = list(self._window)
            device = self._window[names[0]].device
            dtype = torch.float32 if device.type == "mps" else torch.float64  # exact token counts; MPS has no fp64
            tokens = torch.full((), self.num_tokens, dtype=dtype, device=device)
            totals = torch.stack([self._window[n].to(dtype) for n in names] + [tokens])
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            totals = totals.tolist()
            metrics = reduce_columns(dict(zip(names, totals[:-1])), self._nll_weight)
            del metrics["loss"]  # Trainer logs the loss itself: the mean of the window's step losses
            logs.update({name: round(value, 6) for name, value in metrics.items()})
            self._window = {}
            if "loss" in logs:
                logs["num_tokens"] = int(totals[-1])
        super().log(logs, start_time)
