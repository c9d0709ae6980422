"""What a run leaves in <project_name>/: weights, tokenizer, params without secrets, metrics, model card.

Layout:
- full fine-tune: config.json + model.safetensors (+ generation_config.json) at the top;
- LoRA: adapter_config.json + adapter_model.safetensors at the top; with `merge_adapter`, the merged full model is
  at the top instead and the adapter moves to adapter/ (a folder holding both would make transformers load the
  base model plus the adapter, not the merged weights);
- tokenizer files with the chat template used in training; training_params.json; metrics.jsonl; README.md.

The final save is written into `.staging/final` and moved to the top only once complete (`save_final`): a full disk
or a second signal never leaves half-written weights beside the run's other files. The free space is checked before
training (`check_room`, from the parameter count) and again before the save; a failed write says in one line what
was lost and what was kept.

metrics.jsonl is strict JSON (RFC 8259), one object per line: a non-finite value (NaN, +-inf, which Python's json
would write as the non-JSON tokens NaN and Infinity) is written as null, so jq, JavaScript and pandas read it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from autotrain import answers, disk, resuming
from autotrain.checkpoints import STAGING, checkpoints, drop_staged, step_of
from autotrain.errors import DiskFull
from autotrain.data.tokenize import made_lines
from autotrain.judge import report as judge_report
from autotrain.models import merge_saved_adapter, unwrap
from autotrain.plots import PLOT_FILE
from autotrain.progress import is_evaluation
from autotrain.project_folder import ADAPTER_DIR, CARD_FILE, METRICS_FILE, PARAMS_FILE  # noqa: F401 - re-exported
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")


class MetricsFile(TrainerCallback):
    """Appends one JSON object per logged step to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if logs and state.is_world_process_zero:
            record = {**logs, "step": state.global_step}
            with self.path.open("a") as handle:
                handle.write(json_line(record))


def json_line(record: dict[str, Any]) -> str:
    """One strict-JSON line: non-finite floats become null (allow_nan=False makes sure no other one slips by)."""
    clean = {key: None if isinstance(value, float) and not math.isfinite(value) else value
             for key, value in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def keep_metrics_until(project: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint: those steps run again and are logged again."""
    path = project / METRICS_FILE
    kept = [r for r in read_metrics(project) if r.get("step", 0) <= step] if step else []
    temp = path.with_suffix(".tmp")
    temp.write_text("".join(json_line(r) for r in kept))
    os.replace(temp, path)


def read_metrics(project: Path) -> list[dict[str, Any]]:
    path = project / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_model(trainer: Any, tokenizer: Any, template: str | None, params: LLMTrainingParams, folder: Path,
               stopped: Callable[[], bool] = lambda: False) -> bool:
    """Save weights and tokenizer into `folder` in the layout above; every process calls it, the main process writes.

    Under FSDP or DeepSpeed the weights are sharded across processes: Trainer.save_model gathers them (a collective
    step, hence every process), and a merged model is rebuilt from the base weights and the saved adapter. Otherwise
    each process holds the whole model and the main process saves (and merges) it directly: the merge changes the
    weights in memory, so it is skipped when `stopped()` says a signal came (the run then saves a checkpoint). Returns
    whether the weights in memory were merged.
    """
    accelerator = trainer.accelerator
    model = unwrap(trainer.model, peft=False)
    stop_at_turn_end(model, tokenizer, template)  # on the base model's config: a merged model keeps it
    sharded = getattr(accelerator, "is_fsdp2", False) or accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
    if sharded:
        trainer.save_model(str(folder / ADAPTER_DIR if params.peft and params.merge_adapter else folder))
    if not accelerator.is_main_process:
        return False
    if params.peft and params.merge_adapter:
        if sharded:
            merged = merge_saved_adapter(folder / ADAPTER_DIR, params.trust_remote_code)
        else:
            model.save_pretrained(folder / ADAPTER_DIR)
            if stopped():
                return False
            merged = model.merge_and_unload()
        save_tokenizer(tokenizer, template, folder / ADAPTER_DIR)
        merged.config.use_cache = True
        merged.save_pretrained(folder)
    elif not sharded:
        if not params.peft:
            model.config.use_cache = True
        model.save_pretrained(folder)
    save_tokenizer(tokenizer, template, folder)
    if params.peft:
        # peft writes its template card (39 "[More Information Needed]"). At the top it would also mark the run as
        # finished before it is (README.md is written last, by write_card); in adapter/ a short true card replaces it.
        if params.merge_adapter:
            write_adapter_card(folder / ADAPTER_DIR, params)
        else:
            (folder / CARD_FILE).unlink(missing_ok=True)
    return params.peft and params.merge_adapter and not sharded


def final_size(model: Any, params: LLMTrainingParams) -> int:
    """About how many bytes the final save writes: the weights as saved (a tied tensor once), the adapter alone with
    LoRA, and both with merge_adapter (the merged model at the top, the adapter in adapter/)."""
    seen: set[tuple[int, int]] = set()
    base = adapter = 0
    for name, tensor in unwrap(model, peft=False).state_dict().items():
        key = (tensor.data_ptr(), tensor.numel())
        if key in seen and key[0] != 0:
            continue
        seen.add(key)
        size = tensor.numel() * tensor.element_size()
        if "lora_" in name:
            adapter += size
        else:
            base += size
    if not params.peft:
        return base
    return base + adapter if params.merge_adapter else adapter


_FINAL = "final"  # the final save's folder under .staging/
# Besides the weights, the final save writes the tokenizer, the configs, the card and the plots.
_OTHER_FILES = 16_000_000


def check_room(project: Path, model: Any, params: LLMTrainingParams) -> None:
    """Before training: a disk that cannot hold the final model is reported now, not after the training is done."""
    weights, free = final_size(model, params), disk.free_bytes(project)
    need = int(weights * 1.05) + _OTHER_FILES
    if free < need:
        raise DiskFull(f"project_name: not enough free space for the final model in {project}: about "
                       f"{disk.size(need)} needed ({disk.size(weights)} of weights, up to {disk.size(_OTHER_FILES)} "
                       f"of tokenizer, configs and card), {disk.size(free)} free (checked before training; nothing "
                       "was written); free space, or choose a --project-name on another disk")


def save_final(trainer: Any, tokenizer: Any, template: str | None, params: LLMTrainingParams, project: Path,
               stopped: Callable[[], bool]) -> bool:
    """Save the final model into `.staging/final`, then move it to the top of `project`; return False, with nothing
    moved, when `stopped()` says a signal came meanwhile (the caller stops as it does during training, with a
    checkpoint of the last step). Once the adapter is merged into the weights in memory no such checkpoint can be
    saved: a signal after that point, with no checkpoint of the last step on disk, lets the save finish instead.

    A failed write (a full disk) removes the staged copy and raises DiskFull naming what was lost and what was kept:
    the newest checkpoint and the records stay as they were."""
    staged, name = project / STAGING / _FINAL, _FINAL
    main = trainer.accelerator.is_main_process
    free = disk.free_bytes(project)
    if main:
        shutil.rmtree(staged, ignore_errors=True)
        need = final_size(trainer.model, params)
        if free < need:
            raise DiskFull(_lost(project, trainer.state.global_step,
                                 f"about {disk.size(need)} needed, {disk.size(free)} free"))
    try:
        merged = save_model(trainer, tokenizer, template, params, staged, stopped)
    except Exception as exc:
        drop_staged(project, name)
        reason = disk.write_failure(exc)
        if reason is None:
            raise
        raise DiskFull(_lost(project, trainer.state.global_step,
                             f"{reason}; {disk.size(disk.free_bytes(project))} free there")) from None
    if stopped():
        kept = checkpoints(project)
        if not merged or (kept and step_of(kept[-1]) == trainer.state.global_step):
            drop_staged(project, name)
            return False
        logger.warning("a signal came while the merged model was written: the weights in memory are merged, so no "
                       "checkpoint of the last step can be saved; the save is finished instead, and the run with it")
    if main:
        for entry in sorted(staged.iterdir()):
            target = project / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        drop_staged(project, name)
    return True


def _lost(project: Path, step: int, why: str) -> str:
    """The one line for a final save that failed: what is lost, what is kept, how to go on."""
    kept = checkpoints(project)
    newest = kept[-1] if kept else None
    if newest is not None and step_of(newest) == step:
        lost, then = f"nothing of the training ({newest.name} holds its last step)", "resume"
    elif newest is not None:
        lost, then = f"the steps after {newest.name} (step {step_of(newest)} of {step})", "resume"
    else:
        lost, then = f"all {step} steps of training (no checkpoint was saved)", "start over"
    kept_names = ", ".join(([newest.name] if newest else []) + [METRICS_FILE, PARAMS_FILE])
    return (f"writing the final model into {project} failed ({why}); nothing half-written was left. Lost: {lost}; "
            f"kept: {kept_names}. Free space, then run the same command plus --resume-from-checkpoint auto (it will "
            f"{then})")


def save_tokenizer(tokenizer: Any, template: str | None, folder: Path) -> None:
    """The tokenizer with the chat template training used, and none when training used none (raw prompts): a
    template saved but not trained on would make `--inference`, and any other tool, render prompts differently."""
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)


def stop_at_turn_end(model: Any, tokenizer: Any, template: str | None) -> None:
    """Make the saved generation config stop where the training template ends a turn (ChatML's <|im_end|> on a
    tokenizer whose EOS is another token), so that generate() anywhere stops where the model learned to."""
    from autotrain.data.templates import stop_ids

    config = getattr(model, "generation_config", None)
    if config is not None:
        wanted = stop_ids(tokenizer, template, also=config.eos_token_id)
        if wanted:
            config.eos_token_id = wanted if len(wanted) > 1 else wanted[0]


def _trained_dropout(folder: Path, params: LLMTrainingParams) -> Any:
    """The LoRA dropout the adapter trained with, as peft saved it (lora_dropout none resolves to a default, or to
    0 on fused experts: lora.add_lora); the flag's value where the config cannot be read."""
    try:
        return json.loads((folder / "adapter_config.json").read_text())["lora_dropout"]
    except (OSError, ValueError, KeyError):
        return params.lora_dropout


def write_adapter_card(folder: Path, params: LLMTrainingParams) -> None:
    """adapter/README.md: what the adapter is, how it was trained, and where the rest is described."""
    targets, dropout = params.target_modules, _trained_dropout(folder, params)
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {params.model}",
        f"tags: [aitraining, lora, {params.method}]",
        "---",
        f"# LoRA adapter of {Path(params.project_name).name}",
        "",
        f"LoRA adapter (r={params.lora_r}, alpha={params.lora_alpha}, dropout={dropout}, target modules: "
        f"{targets}) trained with aitraining's {params.method_settings().title} trainer on `{params.model}`.",
        "The folder above holds the same adapter merged into the base model; its README.md describes the data, the "
        "parameters and the metrics.",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    (folder / CARD_FILE).write_text("\n".join(lines))


def final_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The last value of each metric logged during the run (train and eval)."""
    final: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
                final[key] = value
    return final


def before_after(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]] | None:
    """The first and last evaluation (step 0 is before any training)."""
    evals = [r for r in records if is_evaluation(r)]
    if not evals:
        return None
    return evals[0], evals[-1]


def write_card(project: Path, params: LLMTrainingParams, base_model: str, data: Any, records: list[dict]) -> None:
    """README.md: base model, data, parameters, final metrics, and before/after evaluation where there is one."""
    final = final_metrics(records)
    unit = data.columns.unit
    settings = params.method_settings()
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {base_model}",
        f"tags: [aitraining, {params.method}" + (", preference-tuning]" if data.columns.paired else "]"),
        "---",
        f"# {Path(params.project_name).name}",
        "",
        f"Fine-tuned with aitraining's **{settings.title}** trainer from `{base_model}`"
        + (" with LoRA adapters." if params.peft else " (all weights)."),
        "",
        f"Method: {settings.describe()}.",
        "",
        "## Data",
        f"- source: `{params.data_path}` (train split `{params.train_split}`: {_counted(len(data.train), unit)})",
        f"- columns: {data.columns.describe()}",
    ]
    if data.valid is not None:
        lines.append(f"- validation split `{params.valid_split}`: {_counted(len(data.valid), unit)}")
    else:
        lines.append("- no validation split was given, so nothing was evaluated on held-out data")
    for split_name, split in (("train", data.train), ("validation", data.valid)):
        if split is None:
            continue
        lines += [f"- {split_name}: {line}" for line in made_lines(split.made)]
        for reason, count in split.dropped.items():
            lines.append(f"- {split_name}: {_counted(count, unit)} dropped ({reason})")
        for reason, count in split.truncated.items():
            lines.append(f"- {split_name}: {_counted(count, unit)} truncated ({reason})")
    comparison = before_after(records)
    if comparison is not None:
        before, after = comparison
        lines += ["", "## Validation: before -> after training", "", "| metric | before | after |", "|---|---|---|"]
        for key in ("eval_rewards/accuracies", "eval_loss", "eval_nll_loss", "eval_rewards/margins"):
            if isinstance(before.get(key), int | float) and isinstance(after.get(key), int | float):
                lines.append(f"| {key.removeprefix('eval_')} | {before[key]:.4f} | {after[key]:.4f} |")
        accuracy = params.method_settings().accuracy
        if accuracy is not None and "eval_rewards/accuracies" in before:
            lines += ["", f"rewards/accuracies: the share of validation pairs where {accuracy}."]
    answered = answers.read(project)
    if answered:
        lines += ["", "## Sample answers (validation prompts, greedy)", "", "| prompt | before | after |", "|---|---|---|"]
        lines += [f"| {_cell(s['prompt'])} | {_cell(s['before'])} | {_cell(s['after'])} |" for s in answered]
    lines += judge_report.card_section(project)
    if (project / PLOT_FILE).exists():
        lines += ["", "## Training curves", "", f"![training curves]({PLOT_FILE})"]
    resumed = resuming.read_records(project)
    if resumed:
        lines += ["", "## Resumed", ""] + [f"- {resuming.describe(entry)}" for entry in resumed]
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.6g} |" for key, value in sorted(final.items()) if key not in ("step",)]
    lines += ["", "## Parameters", "", "```json", json.dumps(params.public_dict(), indent=2), "```", ""]
    (project / CARD_FILE).write_text("\n".join(lines))


def _counted(count: int, unit: str) -> str:
    """'1 pair', '3 pairs': `unit` is the plural ('pairs', 'examples')."""
    return f"{count} {unit.removesuffix('s') if count == 1 else unit}"


def _cell(text: str | None) -> str:
    """Text for one Markdown table cell: line breaks shown as ⏎ (answers.flat), pipes escaped; None is an explicit
    dash."""
    if text is None:
        return "—"
    return answers.flat(text).replace("|", "\\|") or "(empty)"
