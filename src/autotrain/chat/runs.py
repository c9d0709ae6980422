"""The finished runs `aitraining chat` offers, and what the page shows of each: a line in the list and its card.

A run is a folder this tool trained (it holds training_params.json, written first) that finished (its README.md,
the card, is written last). `--project-name DIR` names one; `--projects-dir DIR` offers DIR itself, when it is a
run, and each run one level below it. Only the standard library and the project's own readers are used here, so a
folder that is no finished run is refused before torch is imported.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError
from autotrain.project_folder import CARD_FILE, PARAMS_FILE

# What the list shows of a run's final metrics, in this order, where it logged them.
LISTED_METRICS = ("eval_rewards/accuracies", "eval_loss", "train_loss")
# The settings the card shows at a glance (the card file itself holds them all).
CARD_SETTINGS = ("trainer", "peft", "lora_r", "lora_alpha", "lr", "epochs", "max_steps", "batch_size",
                 "gradient_accumulation", "chat_template", "data_path")
BEFORE_AFTER = ("eval_rewards/accuracies", "eval_loss", "eval_nll_loss", "eval_rewards/margins")


@dataclass(frozen=True)
class Run:
    """A finished run: the name the page gives it (its folder's name) and its folder."""

    name: str
    folder: Path


def is_finished(folder: Path) -> bool:
    return (folder / PARAMS_FILE).is_file() and (folder / CARD_FILE).is_file()


def named_run(project: str) -> Run:
    """The run `--project-name` names, or one line saying why the folder is none."""
    from autotrain.inference import check_finished

    folder = Path(project).expanduser()
    if not folder.is_dir():
        raise ParamsError(f"project_name: {folder} does not exist")
    if not (folder / PARAMS_FILE).is_file():
        raise ParamsError(f"project_name: {folder} holds no aitraining run (no {PARAMS_FILE}); name a folder that "
                          "`aitraining llm --train` wrote")
    check_finished(folder)  # an unfinished run is named with its newest checkpoint to resume from
    return Run(folder.resolve().name, folder.resolve())


def find_runs(root: str) -> tuple[list[Run], int]:
    """The finished runs under `root` (itself and one level below, by name), and how many unfinished ones were
    passed over."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ParamsError(f"projects_dir: {folder} does not exist")
    folder = folder.resolve()
    candidates = [folder, *sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)]
    ours = [c for c in candidates if (c / PARAMS_FILE).is_file()]
    finished = [Run(c.name, c) for c in ours if is_finished(c)]
    if not finished:
        unfinished = f" ({len(ours)} unfinished)" if ours else ""
        raise ParamsError(f"projects_dir: {folder} holds no finished run{unfinished}, in itself or one level below "
                          f"(a folder with {PARAMS_FILE} and {CARD_FILE}); train one with `aitraining llm --train` or "
                          "name one with --project-name")
    return finished, len(ours) - len(finished)


def saved_params(run: Run) -> dict[str, Any]:
    try:
        saved = json.loads((run.folder / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def summary(run: Run) -> dict[str, Any]:
    """The run's line in the list: name, method, base model, when it finished, its final metrics."""
    from autotrain.outputs import final_metrics, read_metrics

    saved = saved_params(run)
    finished = datetime.datetime.fromtimestamp((run.folder / CARD_FILE).stat().st_mtime)
    final = final_metrics(_metrics(run, read_metrics))
    return {
        "name": run.name,
        "method": str(saved.get("trainer", "?")),
        "base_model": str(saved.get("model", "?")),
        "lora": bool(saved.get("peft")),
        "date": finished.strftime("%Y-%m-%d %H:%M"),
        "metrics": {key: final[key] for key in LISTED_METRICS if key in final},
    }


def card(run: Run) -> dict[str, Any]:
    """The card at a glance: the method line, the main settings, validation before -> after, whether there is a
    training-curve image, and the sample answers."""
    from autotrain import answers
    from autotrain.outputs import before_after, read_metrics
    from autotrain.plots import PLOT_FILE

    saved = saved_params(run)
    comparison = before_after(_metrics(run, read_metrics))
    rows = []
    if comparison is not None:
        before, after = comparison
        rows = [[key.removeprefix("eval_"), before[key], after[key]] for key in BEFORE_AFTER
                if isinstance(before.get(key), int | float) and isinstance(after.get(key), int | float)]
    return {
        **summary(run),
        "method_line": _card_line(run, "Method: "),
        "settings": {key: saved[key] for key in CARD_SETTINGS if saved.get(key) is not None},
        "before_after": rows,
        "plot": (run.folder / PLOT_FILE).is_file(),
        "samples": answers.read(run.folder),
    }


def _metrics(run: Run, read: Any) -> list[dict[str, Any]]:
    try:
        return read(run.folder)
    except (OSError, ValueError):  # a metrics file edited by hand: the list still shows the run
        return []


def _card_line(run: Run, start: str) -> str:
    """The card's line that begins with `start` (what it says of the method), without it."""
    try:
        lines = (run.folder / CARD_FILE).read_text().splitlines()
    except OSError:
        return ""
    return next((line.removeprefix(start).rstrip(".") for line in lines if line.startswith(start)), "")
