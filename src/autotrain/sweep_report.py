"""What a finished sweep shows: `<project>/sweep.md` (every trial, then the settings every trial shared) and
`<project>/sweep.png` (the metric against each swept field). The sweep itself: autotrain.sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autotrain.params import LLMTrainingParams
from autotrain.params.sweep import Range, SweepParams

TABLE_FILE, PLOT_FILE = "sweep.md", "sweep.png"
# Not settings of a trial: where the sweep runs and how it searches (the table's title says the metric).
_NOT_TRIAL_SETTINGS = frozenset({*SweepParams.model_fields, "project_name", "resume_from_checkpoint"})
# Shown in the table even at their defaults: what was trained, on what, how.
_ALWAYS_SHOWN = ("model", "data_path", "trainer")


def fixed_settings(params: LLMTrainingParams, ranges: list[Range]) -> dict[str, Any]:
    """Every setting that is the same in all the trials (all but the swept fields and the sweep's own), as JSON
    values and without secrets: what a resumed sweep must match, and what the table lists."""
    swept = {r.name for r in ranges}
    values = params.public_dict()
    return {name: value for name, value in values.items() if name not in swept and name not in _NOT_TRIAL_SETTINGS}


def rows(study: Any) -> list[tuple[Any, float | None]]:
    """Each finished or failed trial with its metric: the final value, or a pruned trial's last reported one."""
    found = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        found.append((trial, value))
    return found


def write_table(study: Any, params: LLMTrainingParams, ranges: list[Range], project: Path, best: int) -> None:
    names = [r.name for r in ranges]
    lines = [f"# Sweep: {params.sweep_metric} ({params.sweep_direction})", "",
             "| trial | state | " + " | ".join([params.sweep_metric, *names]) + " |",
             "|---" * (3 + len(names)) + "|"]
    for trial, value in rows(study):
        state = trial.state.name.lower() + (" (best)" if trial.number == best else "")
        cells = [f"{trial.number:03d}", state, "" if value is None else f"{value:.6g}"]
        cells += [_cell(trial.params.get(n)) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    fixed = fixed_settings(params, ranges)
    shown = [n for n in fixed if n in params.model_fields_set or n in _ALWAYS_SHOWN]
    lines += ["", "## Fixed settings", "", "The same in every trial; the other fields have their defaults "
              "(each trial's training_params.json holds them all).", ""]
    lines += [f"- {name}: {_setting(fixed[name])}" for name in shown]
    (project / TABLE_FILE).write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def plot(study: Any, params: LLMTrainingParams, ranges: list[Range], project: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    drawn = [(t, v) for t, v in rows(study) if v is not None]
    figure, axes = plt.subplots(1, len(ranges), figsize=(4 * len(ranges), 3.2), constrained_layout=True,
                                squeeze=False)
    for axis, r in zip(axes[0], ranges):
        for state, marker, label in ((TrialState.COMPLETE, "o", "finished"), (TrialState.PRUNED, "x", "pruned")):
            points = [(t.params[r.name], v) for t, v in drawn if t.state == state and r.name in t.params]
            if points:
                axis.plot(*zip(*points), marker, linestyle="none", label=label)
        if r.kind == "log":
            axis.set_xscale("log")
        axis.set_xlabel(r.name)
        axis.set_ylabel(params.sweep_metric)
        axis.legend()
    figure.savefig(project / PLOT_FILE, dpi=100)
    plt.close(figure)
