"""AutoTrainProject: check the params, prepare the data, train, save; return what was made.

Order matters: every check that can fail on the user's input (params, project folder, model path, data) runs
before any weights are loaded and before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrain import methods, preflight
from autotrain.errors import ParamsError
from autotrain.params import LLMTrainingParams
from autotrain.project_folder import owned, resume_point

logger = logging.getLogger("autotrain")

BACKENDS = ("local",)


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)  # last logged value of each metric
    adapter_dir: Path | None = None  # LoRA adapter folder (output_dir itself when not merged)
    hub_repo: str | None = None
    evaluation: tuple[dict[str, float], dict[str, float]] | None = None  # first and last eval, when validated
    samples: tuple[dict[str, str | None], ...] = ()  # validation prompts with answers before and after training
    accuracy: str | None = None  # what the method's preference accuracy counts (autotrain.methods); None: none

    def summary(self) -> str:
        lines = [f"outputs: {self.output_dir}"]
        from autotrain.answers import one_line

        for sample in self.samples:
            lines += [f"prompt: {one_line(sample['prompt'])}", f"  before: {one_line(sample['before'])}",
                      f"  after:  {one_line(sample['after'])}"]
        if self.evaluation is not None:
            before, after = self.evaluation
            key = "eval_rewards/accuracies"
            if self.accuracy is None or key not in before:  # a method without preference pairs (SFT)
                key = "eval_loss"
                lines.append(f"validation loss: {_number(before[key], 4)} before training, {_number(after[key], 4)} "
                             "after")
                return "\n".join(lines)
            lines.append(
                f"validation preference accuracy ({self.accuracy}): {_number(before[key], 3)} before "
                f"training (step {before['step']}), {_number(after[key], 3)} after (step {after['step']})"
            )
        return "\n".join(lines)


def _number(value: Any, digits: int) -> str:
    """A metric for the summary; metrics.jsonl holds null where the value was not finite."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "not finite"


class AutoTrainProject:
    """One training run. The data is always checked and tokenized before the model loads: `process=True` (the
    default, the parent tool's name for that) is the only value; `process=False`, which there skipped it, is refused
    rather than silently ignored. `verbose=True` shows the libraries' own logs, warnings and loading bars, which are
    otherwise kept quiet during the run (autotrain.quiet)."""

    def __init__(self, params: LLMTrainingParams, backend: str = "local", process: bool = True,
                 verbose: bool = False):
        if not isinstance(params, LLMTrainingParams):
            raise ParamsError(f"params must be LLMTrainingParams, got {type(params).__name__}")
        if backend not in BACKENDS:
            raise ParamsError(f"backend '{backend}' is not available; supported: {', '.join(BACKENDS)}")
        if process is not True:
            raise ParamsError(f"process={process!r}: the data is always checked and tokenized before training, so "
                              "there is no processing to skip; leave process out")
        self.params, self.backend, self.process, self.verbose = params, backend, process, verbose

    def create(self) -> RunResult:
        """Own the project folder, check it and the data (before torch is imported), then train here or launch."""
        from autotrain import launch, quiet

        params = self.params
        if params.use_sweep:  # trials in <project>/trials/, the best one's model in <project>/ (autotrain.sweep)
            from autotrain.sweep import run_sweep

            return run_sweep(params, _trial, result_of, self.verbose)
        with quiet.libraries(self.verbose), session(params):
            resume_point(preflight.project_dir(params), params.resume_from_checkpoint)  # before the data is read
            opened = preflight.check_inputs(params)
            if preflight.needs_launch(params):
                # Several processes: accelerate starts them; each runs `python -m autotrain.trainers.clm`.
                launch.launch(params)
                return result_of(params)
            return run(params, opened=opened)


def _trial(params: LLMTrainingParams, callbacks: tuple[Any, ...]) -> RunResult:
    """One sweep trial, in this process, in its own new folder (autotrain.sweep)."""
    with session(params):
        resume_point(preflight.project_dir(params), None)
        return run(params, callbacks=callbacks)


@contextlib.contextmanager
def session(params: LLMTrainingParams) -> Iterator[None]:
    """What a run holds while it lasts: the project folder's lock (in the process that owns the run:
    preflight.takes_lock), and a `sys.argv` without secrets, since trackers record it (wandb keeps the command line
    in its run files, and an online run uploads them). The argv is restored afterwards."""
    secrets = [value for value in params.secret_values() if value]
    saved = list(sys.argv)
    sys.argv[:] = [scrub(arg, secrets) for arg in saved]
    try:
        with owned(preflight.project_dir(params), take=preflight.takes_lock()):
            yield
    finally:
        sys.argv[:] = saved


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def training_arguments(params: LLMTrainingParams, project: Path, train_pairs: int, has_valid: bool) -> Any:
    """Map the params onto transformers' TrainingArguments: each field that the loop owns goes here."""
    from transformers import TrainingArguments

    steps_per_epoch = math.ceil(math.ceil(train_pairs / params.batch_size) / params.gradient_accumulation)
    total = params.max_steps if params.max_steps > 0 else steps_per_epoch * params.epochs
    logging_steps = params.logging_steps if params.logging_steps > 0 else max(1, min(25, total // 20))
    report_to = [] if params.log == "none" else [params.log]
    return TrainingArguments(
        output_dir=str(project),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.lr,
        gradient_accumulation_steps=params.gradient_accumulation,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        optim=params.optimizer,
        lr_scheduler_type=params.scheduler,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        seed=params.seed,
        data_seed=params.seed,
        bf16=params.mixed_precision == "bf16",
        fp16=params.mixed_precision == "fp16",
        # transformers refuses bf16 without a GPU unless told to train on the CPU (under bf16 autocast).
        use_cpu=preflight.bf16_on_cpu(params),
        **_checkpointing_args(TrainingArguments, not params.disable_gradient_checkpointing),
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy=params.eval_strategy if has_valid else "no",
        eval_steps=params.eval_steps if params.eval_strategy == "steps" else None,
        eval_on_start=has_valid,
        save_strategy=params.save_every,
        save_steps=params.save_steps if params.save_steps > 0 else 500,
        auto_find_batch_size=params.auto_find_batch_size,  # halves the batch on OOM (accelerate)
        ddp_timeout=params.ddp_timeout,
        logging_nan_inf_filter=False,  # a NaN must show, not be replaced by an average (and it costs a sync)
        save_total_limit=params.save_total_limit,
        report_to=report_to,
        run_name=Path(params.project_name).name,
        remove_unused_columns=False,  # the collator reads prompt_ids/chosen_ids/rejected_ids
        dataloader_pin_memory=False,
        disable_tqdm=True,  # autotrain.progress.Progress shows step/total, loss, tokens/s and ETA instead
    )


def _checkpointing_args(arguments_class: Any, enabled: bool) -> dict[str, Any]:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing; use whichever exists."""
    fields = arguments_class.__dataclass_fields__
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    # Non-reentrant checkpointing needs no input grads, so it works with frozen embeddings under LoRA.
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def process_state(params: LLMTrainingParams) -> Any:
    """accelerate's PartialState, first built here so that the process group gets the run's ddp_timeout (a later
    TrainingArguments cannot change the state once it exists)."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(timeout=timedelta(seconds=params.ddp_timeout))


def _tracker_environment(params: LLMTrainingParams, project: Path) -> None:
    if params.log == "wandb":
        if params.wandb_token is not None:  # the environment only: never written to a file
            os.environ["WANDB_API_KEY"] = params.wandb_token.get_secret_value()
        if params.wandb_run_id:  # log into that run, as aitraining's wandb_run_id does
            os.environ["WANDB_RUN_ID"], os.environ["WANDB_RESUME"] = params.wandb_run_id, "allow"
        else:
            for name in ("WANDB_RUN_ID", "WANDB_RESUME"):
                os.environ.pop(name, None)
        # Set for every run, not setdefault: an earlier run in this process must not send this one elsewhere.
        os.environ["WANDB_DIR"] = str(project)
        os.environ["WANDB_PROJECT"] = Path(params.project_name).name
        import wandb

        # transformers reuses an active wandb run, and wandb keeps its settings per process: end both, so this run
        # starts its own, in this project's folder.
        wandb.finish()
        wandb.teardown()
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            logger.info("wandb: no WANDB_API_KEY, logging offline under %s/wandb (sync later with `wandb sync`)", project)
        if params.tracks_visually:
            logger.info("wandb: watch this run in the terminal with `wandb beta leet %s`", project / "wandb")
    if params.log == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(project / "runs")


def _checkpoint_step(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def run(params: LLMTrainingParams, folder_checked: bool = False, opened: Any = None,
        callbacks: tuple[Any, ...] = ()) -> RunResult:
    """Train in this process and return the result; raise on any failure.

    `folder_checked`: the project folder was checked before this process started (by autotrain.launch, or by
    every process of another launcher before any wrote to it); by now it holds this run's own first files, so
    no resume asked for means "no checkpoint" rather than "refuse a used folder". `opened`: the data as
    `open_data` returned it, when the caller checked it already.
    """
    from autotrain import defaults, model_files, quiet
    from autotrain.eval_metrics import eval_extras
    from autotrain.project_folder import PARAMS_FILE, PROCESSED_DIR

    project = preflight.project_dir(params)
    resume = params.resume_from_checkpoint
    resume_from = resume_point(project, "auto" if folder_checked and resume is None else resume)
    # The data's files, splits and columns are checked before torch and transformers are imported (seconds) and
    # before the model is touched (the default model's one-time conversion takes ~40 s).
    opened = opened or preflight.check_inputs(params)
    quiet.import_quietly("transformers.integrations.integration_utils")  # the first import of transformers
    preflight.check_device(params)
    from autotrain import answers, models, outputs
    from autotrain.checkpoints import clear_staging, finish, set_aside_newer
    from autotrain.data.prepare import prepare_data
    from autotrain.data.templates import stop_ids
    from autotrain.plots import plot_training

    method = methods.spec(params.trainer)
    settings = params.method_settings()
    logger.info("method: %s", settings.describe())
    model_path = defaults.resolve_model(params.model)
    ref_path = defaults.resolve_model(params.model_ref) if params.model_ref else None
    with model_files.loading(model_path):
        tokenizer = models.load_tokenizer(model_path, params.trust_remote_code)
        config = models.load_config(model_path, params.trust_remote_code)
    models.check_attention(params, config)
    data = prepare_data(params, tokenizer, models.model_max_length(config), opened=opened)
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from autotrain.data.kernels import make_collator
    from autotrain.progress import Progress
    from autotrain import stop as stopping
    from autotrain.trainers.clm.trainer import MethodTrainer

    main = process_state(params).is_main_process  # with several processes, only the first writes the project's files
    # Before the model: under ZeRO-3 the arguments announce it (accelerate's zero3_init_flag), and transformers then
    # loads only this process's shard of the weights.
    args = training_arguments(params, project, len(data.train), data.valid is not None)
    set_seed(params.seed)  # before the model: LoRA's initial weights depend on it
    with model_files.loading(model_path):
        model = models.load_model(params, model_path)
    quiet.settle()  # peft and accelerate are imported by now
    # Sample answers are the main process's to write; when the weights are sharded (FSDP, ZeRO-3) every process must
    # take part in generate. A resumed run has no untrained model left to ask.
    sharded = preflight.sharded_weights()
    asked = params.sample_answers and (main or sharded)
    sample_ids = data.valid.prompt_ids[: params.sample_answers] if asked else []
    own_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = stop_ids(tokenizer, data.template, also=own_eos) if sample_ids else None
    before = None
    if sample_ids and resume_from is None:
        # On the training device (Trainer has not moved the model yet); under ZeRO-3 the full weights gathered.
        with models.whole_on(model, args.device):
            before = answers.answer(model, tokenizer, sample_ids, stops)
    ref_model = None
    if method.needs_reference:
        # With adapters the reference is the same weights with the adapters off; precomputing before the first
        # step can use the model itself; otherwise a second, frozen copy is needed.
        fresh = params.precompute_ref_logps and resume_from is None
        if ref_path is not None or not (params.peft or fresh):
            vocab = model.get_output_embeddings().weight.shape[0]
            with model_files.loading(ref_path or model_path):
                ref_model = models.load_reference(params, ref_path or model_path, vocab)
    project.mkdir(parents=True, exist_ok=True)
    if main:
        params.save_json(project / PARAMS_FILE)  # first: it marks the folder as this tool's (project_folder)
        if params.save_processed_data == "local":
            data.save(project / PROCESSED_DIR)
        clear_staging(project)
        aside = set_aside_newer(project, resume_from)
        if aside:
            logger.info("resuming from %s: %d newer checkpoint(s) of the run it left set aside in %s",
                        resume_from.name, len(aside), aside[0].parent)
        outputs.keep_metrics_until(project, _checkpoint_step(resume_from))
    _tracker_environment(params, project)
    stop = stopping.StopOnSignal()
    trainer = MethodTrainer(
        model=model,
        args=args,
        train_dataset=data.train.dataset,
        eval_dataset=data.valid.dataset if data.valid is not None else None,
        data_collator=make_collator(params.packing, tokenizer.pad_token_id, params.nll_on_prompt, model=model,
                                    padding_side=params.padding),
        processing_class=tokenizer,
        callbacks=[outputs.MetricsFile(project / outputs.METRICS_FILE), stop, Progress()],
        method=params.trainer,
        beta=settings.beta,
        options={"gamma": settings.gamma, "alpha": settings.alpha},
        ref_model=ref_model,
        precompute_ref=params.precompute_ref_logps,
        disable_dropout=params.disable_dropout,
    )
    for default_display in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(default_display)
    # First: what they add to an evaluation's metrics (enhanced eval) reaches the trackers and metrics.jsonl too.
    trainer.callback_handler.callbacks[:0] = [*eval_extras(params), *callbacks]
    stop.install()
    try:
        with models.compiled_layers(model, params.torch_compile):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stop.uninstall()
        if params.log == "wandb":
            import wandb

            wandb.finish()
    if stop.received is not None:
        raise stopping.interrupted(stop.received, project)
    if sample_ids:
        with models.whole_on(trainer.model, trainer.args.device):
            after = answers.answer(models.unwrap(trainer.model, peft=False), tokenizer, sample_ids, stops)
        if main:
            answers.write(project, answers.prompt_texts(tokenizer, sample_ids, data.template), before, after)
    outputs.save_model(trainer, tokenizer, data.template, params, project)
    if main:
        finish(project)
        records = outputs.read_metrics(project)
        plot_training(project, records)
        outputs.write_card(project, params, params.model, data, records)
        if params.push_to_hub:
            outputs.push_to_hub(project, params)
    trainer.accelerator.wait_for_everyone()  # every process returns a finished project
    return result_of(params)


def result_of(params: LLMTrainingParams) -> RunResult:
    """What a finished run left in its project folder (the same whether it ran here or in launched processes)."""
    from autotrain import answers, outputs

    project = preflight.project_dir(params)
    records = outputs.read_metrics(project)
    adapter_dir = None
    if params.peft:
        adapter_dir = project / outputs.ADAPTER_DIR if params.merge_adapter else project
    hub_repo = params.hub_repo if params.push_to_hub else None
    return RunResult(project, outputs.final_metrics(records), adapter_dir, hub_repo, outputs.before_after(records),
                     tuple(answers.read(project)), methods.spec(params.trainer).accuracy)
