"""The one training loop: a transformers.Trainer whose loss is the method's, reduced over each whole step.

transformers owns the loop, the optimizer, the schedule, checkpoints and mixed precision. This module owns only
what it lacks: the step-wide reduction of a method's per-pair terms (the method is autotrain.methods', looked up by
the name it is given; how the terms reduce is autotrain.losses'), the frozen reference a method may need, metrics
that stay on the device until a logging step reads them, the non-finite guard and checkpoint staging. The loop's
own checks live in autotrain.trainers.clm.checks.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, Trainer

from autotrain import checkpoints, dropout, methods
from autotrain.errors import TrainingError
from autotrain.forward import sequence_logps
from autotrain.losses import PAIRS, PairTerms, pair_counts, reduce_columns
from autotrain.models import unwrap, whole_on
from autotrain.progress import is_evaluation
from autotrain.project_folder import PARAMS_FILE
from autotrain.trainers.clm import checks


class MethodTrainer(Trainer):
    """transformers.Trainer with a method's loss (any of autotrain.methods: ORPO, DPO, SFT, ...), reduced over each
    whole optimizer step (autotrain.losses).

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
        self.method, self.beta = methods.load(method), beta
        # The method's own settings besides beta that its terms take (SimPO's gamma, the NLL weight of CPO and SimPO).
        self.options = {name: value for name, value in (options or {}).items() if name in self.method.spec.options}
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
        if self.method.needs_reference and precompute_ref:
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
            # Under ZeRO-3 the reference loaded as shards too (zero3_init_flag) and no engine gathers them for it.
            with whole_on(self.ref_model, self.args.device):
                return sequence_logps(self.ref_model, batch).sums
        inner = unwrap(model, peft=False)
        if not hasattr(inner, "disable_adapter") and not untrained:
            raise ValueError("a reference without --peft needs a reference model (the trainer is built with ref_model)")
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
        # Under FSDP/DeepSpeed this runs before train() prepares the model, which is still where it loaded.
        with torch.no_grad(), self.compute_loss_context_manager(), dropout.eval_mode(model), \
                whole_on(self.ref_model or model, self.args.device):
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
        # [NLL tokens, pairs, micro-batches] of the whole step on every process, each pair at its weight where the
        # data weighs pairs (autotrain.losses.pair_counts). No host sync: the counts are device sums, and host ints
        # enter through torch.full (a kernel argument, not a copy to the device).
        counted = [pair_counts(batch) for batch in batches]
        weighted = "pair_weight" in batches[0]
        dtype = (torch.float32 if self.args.device.type == "mps" else torch.float64) if weighted else torch.int64
        fill = lambda value: torch.full((), value, dtype=dtype, device=self.args.device)  # noqa: E731
        on_device = lambda value: value.to(self.args.device, dtype) if torch.is_tensor(value) else fill(value)  # noqa: E731
        counts = torch.stack([on_device(sum(t for t, _ in counted)), on_device(sum(p for _, p in counted)),
                              fill(len(batches))])
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return batches, counts.float() if weighted else counts

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
        reference = (lambda batch: self.reference_sums(model, batch)) if self.method.needs_reference else None
        terms = self.method.pair_terms(model, inputs, self.beta, reference, **self.options)
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
        staged = root / checkpoints.STAGING / name
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save and (root / PARAMS_FILE).is_file():
                # The settings it was trained with travel with it: a resume is checked against them (resuming).
                shutil.copyfile(root / PARAMS_FILE, staged / PARAMS_FILE)
        except Exception as exc:
            failure = checkpoints.failed_save(root, name, exc)
            if failure is None:
                raise
            raise failure from None
        finally:
            self._staging = False
        # Every process writes its own RNG state into the staged folder: publish it only once all have.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # peft's template model card (39 "[More Information Needed]") says nothing about this checkpoint.
            (staged / "README.md").unlink(missing_ok=True)
            checkpoints.publish(staged, root / name)
            checkpoints.rotate(root, self.args.save_total_limit)

    def save_checkpoint(self) -> None:
        """A checkpoint of the current step, outside the loop's own saving (a run stopped after its last step)."""
        self._save_checkpoint(self.model, trial=None)

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
        if self._window and not is_evaluation(logs):
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


# The earlier name (it trains SFT too, hence the new one), kept for scripts and the benchmark that import it.
PreferenceTrainer = MethodTrainer
