"""AutoTrainProject: check the params, prepare the data, train, save; return what was made.

Order matters: every check that can fail on the user's input (params, project folder, model path, data) runs
before any weights are loaded and before anything is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError
from autotrain.outputs import resuming
from autotrain.outputs.project_folder import resume_point
from autotrain.params import LLMTrainingParams, methods
from autotrain.private import attention_of, check_transformers
from autotrain.run import preflight, processes
from autotrain.run.processes import process_state
from autotrain.run.session import session, tracker_environment
from autotrain.train.arguments import training_arguments

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
    accuracy: str | None = None  # what the method's preference accuracy counts (autotrain.params.methods); None: none

    def summary(self) -> str:
        lines = [f"outputs: {self.output_dir}"]
        from autotrain.outputs.answers import one_line

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
        from autotrain import quiet
        from autotrain.run import launch

        params = self.params
        if params.use_sweep:  # trials in <project>/trials/, the best one's model in <project>/ (autotrain.run.sweep)
            from autotrain.run.sweep import run_sweep

            preflight.check_setup(params)  # packages and servers, before the sweep's folder is made

            return run_sweep(params, _trial, result_of, self.verbose)
        with quiet.libraries(self.verbose), session(params):
            resuming.checked_resume(params)  # the folder, the checkpoint and what a resume may change: before the data
            opened = preflight.check_inputs(params)
            if processes.needs_launch(params):
                # Several processes: accelerate starts them; each runs `python -m autotrain.trainers.clm`.
                launch.launch(params)
                return result_of(params)
            return run(params, opened=opened)


def _trial(params: LLMTrainingParams, callbacks: tuple[Any, ...]) -> RunResult:
    """One sweep trial, in this process, in its own new folder (autotrain.run.sweep)."""
    with session(params):
        resume_point(preflight.project_dir(params), None)
        return run(params, callbacks=callbacks)


def _checkpoint_step(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def run(params: LLMTrainingParams, folder_checked: bool = False, opened: Any = None,
        callbacks: tuple[Any, ...] = ()) -> RunResult:
    """Train in this process and return the result; raise on any failure.

    `folder_checked`: the project folder was checked before this process started (by autotrain.run.launch, or by
    every process of another launcher before any wrote to it); by now it holds this run's own first files, so
    no resume asked for means "no checkpoint" rather than "refuse a used folder". `opened`: the data as
    `open_data` returned it, when the caller checked it already.
    """
    from autotrain import quiet
    from autotrain.model import embedded
    from autotrain.model import files as model_files
    from autotrain.outputs.project_folder import PARAMS_FILE, PROCESSED_DIR
    from autotrain.train.eval_metrics import eval_extras

    project = preflight.project_dir(params)
    resume_from = resuming.checked_resume(params, folder_checked)
    # The data's files, splits and columns are checked before torch and transformers are imported (seconds) and
    # before the model is touched (the default model's one-time conversion takes ~40 s).
    opened = opened or preflight.check_inputs(params)
    quiet.import_quietly("transformers.integrations.integration_utils")  # the first import of transformers
    preflight.check_device(params)
    check_transformers()  # the private transformers members this run reaches (autotrain.private), before any work
    from autotrain.data.prepare import prepare_data
    from autotrain.judge.before_after import BeforeAfter
    from autotrain.model import loading, vision
    from autotrain.model.compiled import compiled_layers
    from autotrain.outputs import final as outputs
    from autotrain.outputs.checkpoints import clear_staging, finish, set_aside_newer
    from autotrain.outputs.plots import plot_training

    method = methods.spec(params.trainer)
    settings = params.method_settings()
    logger.info("method: %s", settings.describe())
    model_path = embedded.resolve_model(params.model)
    ref_path = embedded.resolve_model(params.model_ref) if params.model_ref else None
    with model_files.loading(model_path):
        tokenizer = loading.load_tokenizer(model_path, params.trust_remote_code)
        config = loading.load_config(model_path, params.trust_remote_code)
        processor = vision.processor_for(params, model_path, config)  # --image-column: checked before the data
    tokenizer = tokenizer if processor is None else processor.tokenizer
    resuming.check_model_config(resume_from, config, params.model)
    loading.check_attention(params, config)
    if method.needs_reference and ref_path is not None:  # before the data stage and any weights
        with model_files.loading(ref_path):
            loading.check_reference_tokenizer(tokenizer, ref_path, params.trust_remote_code)
    data = prepare_data(params, tokenizer, loading.model_max_length(config), opened=opened, processor=processor)
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from autotrain.model.kernels import make_collator
    from autotrain.outputs.progress import Progress
    from autotrain.train import stop as stopping
    from autotrain.train.resume import check_weights, schedule_callbacks
    from autotrain.train.trainer import MethodTrainer

    main = process_state(params).is_main_process  # with several processes, only the first writes the project's files
    # Before the model: under ZeRO-3 the arguments announce it (accelerate's zero3_init_flag), and transformers then
    # loads only this process's shard of the weights.
    args = training_arguments(params, project, len(data.train), data.valid is not None)
    set_seed(params.seed)  # before the model: LoRA's initial weights depend on it
    with model_files.loading(model_path):
        model = loading.load_model(params, model_path)
    quiet.settle()  # peft and accelerate are imported by now
    check_weights(model, resume_from, params.peft, params.model)
    sharded = processes.sharded_weights()
    if main and not sharded:
        outputs.check_room(project, model, params)  # a run that could not save its model is not started
    if not sharded:  # a GPU-only kernel is checked before anything uses it; a sharded model cannot run whole here
        from autotrain.train.kernel_probe import settle_run_kernel

        with loading.whole_on(model, args.device):
            settle_run_kernel(params, model, data.train.dataset[0], tokenizer.pad_token_id, args.device)
    # Sample answers and the judge's are the main process's to write; when the weights are sharded (FSDP, ZeRO-3)
    # every process must take part in generate. A resumed run has no untrained model left to ask.
    asked = BeforeAfter(params, data, tokenizer, model, asks=bool(main or sharded), processor=processor)
    # On the training device (Trainer has not moved the model yet).
    before = asked.answer(model, args.device) if resume_from is None else None
    ref_model = None
    if method.needs_reference:
        # With adapters the reference is the same weights with the adapters off; precomputing before the first
        # step can use the model itself; otherwise a second, frozen copy is needed.
        fresh = params.precompute_ref_logps and resume_from is None
        if ref_path is not None or not (params.peft or fresh):
            vocab = model.get_output_embeddings().weight.shape[0]
            with model_files.loading(ref_path or model_path):
                ref_model = loading.load_reference(params, ref_path or model_path, vocab,
                                                  attention=attention_of(loading.unwrap(model).config))
    changed = resuming.changed_since(resume_from, params)
    project.mkdir(parents=True, exist_ok=True)
    if main:
        resuming.keep_records_until(project, _checkpoint_step(resume_from))
        if resume_from is not None:
            resuming.record(project, resume_from, changed)
        params.save_json(project / PARAMS_FILE)  # first: it marks the folder as this tool's (project_folder)
        asked.keep(project, before)
        if params.save_processed_data == "local":
            data.save(project / PROCESSED_DIR)
        clear_staging(project)
        aside = set_aside_newer(project, resume_from)
        if aside:
            logger.info("resuming from %s: %d newer checkpoint(s) of the run it left set aside in %s",
                        resume_from.name, len(aside), aside[0].parent)
        outputs.keep_metrics_until(project, _checkpoint_step(resume_from))
    tracker_environment(params, project)
    stop = stopping.StopOnSignal()
    trainer = MethodTrainer(
        model=model,
        args=args,
        train_dataset=data.train.dataset,
        eval_dataset=data.valid.dataset if data.valid is not None else None,
        data_collator=make_collator(params.packing, tokenizer.pad_token_id, params.nll_on_prompt, model=model,
                                    padding_side=params.padding, ld_alpha=settings.ld_alpha) if processor is None else
        vision.collator(params, processor, model),
        processing_class=tokenizer,
        callbacks=[outputs.MetricsFile(project / outputs.METRICS_FILE), stop, Progress(),
                   *schedule_callbacks(changed)],
        method=params.trainer,
        beta=settings.beta,
        options=settings.options,
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
        with compiled_layers(model, params.torch_compile):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        after = asked.answer(trainer.model, trainer.args.device) if stop.received is None else None
        if main:
            asked.write(project, before, after)
        # Signals stay caught through the final save: one that comes now stops the run as during training.
        saved = stop.received is None and outputs.save_final(trainer, processor or tokenizer, data.template, params,
                                                             project, lambda: stop.received is not None)
    finally:
        stop.uninstall()
        if params.log == "wandb":
            import wandb

            wandb.finish()
            wandb.teardown()  # its settings (this run's folder and project) must not outlive the run
    if not saved:
        stopping.save_last_step(trainer)
        raise stopping.interrupted(stop.received, project)
    stopped = None
    if main:
        finish(project)
        stopped = asked.judge(project, before, after)  # after the weights are saved; before the card, which shows it
        records = outputs.read_metrics(project)
        plot_training(project, records)
        outputs.write_card(project, params, params.model, data, records)
        if params.push_to_hub:
            from autotrain.run.hub import push_to_hub

            push_to_hub(project, params)
    trainer.accelerator.wait_for_everyone()  # every process returns a finished project
    if stopped is not None:
        raise stopped
    return result_of(params)


def result_of(params: LLMTrainingParams) -> RunResult:
    """What a finished run left in its project folder (the same whether it ran here or in launched processes)."""
    from autotrain.outputs import answers
    from autotrain.outputs import final as outputs

    project = preflight.project_dir(params)
    records = outputs.read_metrics(project)
    adapter_dir = None
    if params.peft:
        adapter_dir = project / outputs.ADAPTER_DIR if params.merge_adapter else project
    hub_repo = params.hub_repo if params.push_to_hub else None
    return RunResult(project, outputs.final_metrics(records), adapter_dir, hub_repo, outputs.before_after(records),
                     tuple(answers.read(project)), params.method_settings().accuracy)
