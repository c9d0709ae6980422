"""`use_sweep`: trials of sampled hyperparameters, one after another, with optuna; the best one kept.

- Each trial is a full run in `<project>/trials/NNN/` (NNN is optuna's trial number), with the swept fields
  (autotrain.params.sweep) set over the user's other parameters.
- Before trial 000 the whole space is checked (autotrain.params.sweep.corners): a trial is built for every choice
  and both ends of every range, through the params' own checks, and the metric must be one that each of them
  logs. A space that cannot run fails there, with nothing written.
- Each evaluation reports `sweep_metric` to optuna; its MedianPruner stops a trial whose metric is worse than the
  median of the earlier trials at the same step (after two finished trials, and not on the untrained model's
  step-0 evaluation). A pruned trial keeps its folder and counts as finished.
- `<project>/sweep.db` is optuna's storage (SQLite). A sweep that was killed is started again with the same command:
  its finished trials stay; a trial that was running when it died is marked failed and its parameters are tried
  again first (the sweep holds the project's lock, so a running trial in the storage is a dead one). Once a trial
  has finished, the sweep is fixed: its space, metric and direction and every setting it does not sweep
  (autotrain.sweep_report.fixed_settings) must match, or the run is refused naming what changed; only
  `sweep_n_trials` may change (a finished sweep run again with more trials goes on).
- When `sweep_n_trials` trials are finished: `<project>/sweep.md` (a table of every trial, then the fixed
  settings), `<project>/sweep.png` (the metric against each swept parameter) and, in `<project>/` itself, the best
  trial's model and outputs, in place of an earlier best's, whole (`_publish`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from autotrain import atomic, methods, preflight
from autotrain.errors import ParamsError, did_you_mean
from autotrain.judge import stats
from autotrain.params import LLMTrainingParams
from autotrain.params.sweep import DEFAULT_SPACE, Range, SweepParams, corners, parse_space
from autotrain.sweep_report import TABLE_FILE, fixed_settings, plot, write_table

logger = logging.getLogger("autotrain")

STORAGE_FILE, TRIALS_DIR = "sweep.db", "trials"
_STUDY = "sweep"
# Not copied from the best trial into the project: its checkpoints, tracker logs and hidden files (its lock) stay
# in its own folder.
_NOT_COPIED = ("checkpoint-*", "runs", "wandb", ".*")
_TEMP_PREFIX = ".sweep-"
# What every evaluation logs besides the method's own metrics (the loss, the NLL, transformers' timings).
_EVAL_LOGS = ("eval_loss", "eval_nll_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def run_sweep(params: LLMTrainingParams, train: Callable[..., Any], result_of: Callable[[LLMTrainingParams], Any],
              verbose: bool = False) -> Any:
    """Run the sweep `params` describe and return the best trial's result, with the project as its folder.
    `train(params, callbacks)` runs one trial in this process; `result_of(params)` reads a finished run's result
    (autotrain.project passes its own, so this module does not import it)."""
    try:
        import optuna
    except ImportError:
        raise ParamsError("use_sweep runs its trials with optuna, which is not installed: "
                          "pip install 'aitraining[sweep]'") from None

    from autotrain import quiet
    from autotrain.project_folder import owned

    project = preflight.project_dir(params)
    ranges = parse_space(params.sweep_params, LLMTrainingParams.model_fields)
    _check_folder(project)
    base = {name: getattr(params, name) for name in params.model_fields_set
            if name not in SweepParams.model_fields and name not in ("project_name", "resume_from_checkpoint")}
    if params.push_to_hub:
        raise ParamsError("use_sweep: push_to_hub is not done for a sweep; push the best model after it")
    check_space(params, ranges, base)
    with quiet.libraries(verbose), owned(project):
        project.mkdir(parents=True, exist_ok=True)
        study, storage = open_study(project, params)
        _same_sweep(study, params)
        _retry_dead_trials(study, storage)
        while _finished(study) < params.sweep_n_trials:
            _one_trial(study, params, base, ranges, project, train)
        return _conclude(study, params, ranges, project, result_of)


def open_study(project: Path, params: LLMTrainingParams) -> tuple[Any, Any]:
    """The sweep's optuna study in <project>/sweep.db, new or resumed.

    The sampler's seed is the run's seed plus the trials already stored: a fresh sweep is reproducible, and a resumed
    one draws new parameters instead of replaying the first trials' draws from the same seed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{project / STORAGE_FILE}")
    study = optuna.create_study(
        study_name=_STUDY, storage=storage, direction=params.sweep_direction, load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    study.sampler = optuna.samplers.TPESampler(seed=params.seed + len(study.get_trials(deepcopy=False)))
    return study, storage


def _check_folder(project: Path) -> None:
    """A sweep uses a new or empty folder, or one holding an earlier sweep (resumed)."""
    if project.is_dir() and any(project.iterdir()) and not (project / STORAGE_FILE).exists():
        raise ParamsError(f"project_name: {project} holds files and no {STORAGE_FILE}; a sweep needs a new folder "
                          "(or the folder of the sweep to resume)")


def check_space(params: LLMTrainingParams, ranges: list[Range], base: dict[str, Any]) -> None:
    """Build the trials the space can draw (each choice, both ends of each range) through the params' own checks,
    and check that each logs the metric: before trial 000, so a bad space costs no training and leaves no folder."""
    from autotrain.eval_metrics import requested

    folder = preflight.project_dir(params) / TRIALS_DIR / "000"
    for values in corners(ranges):
        try:
            trial = LLMTrainingParams(**{**base, **values, "project_name": str(folder)})
            if preflight.needs_launch(trial):
                raise ParamsError("use_sweep runs its trials in this process: one GPU, no --distributed-backend")
        except ParamsError as exc:
            raise ParamsError(f"sweep_params: a trial with {_shown(values)} cannot run: {exc}") from None
        logged = [*_EVAL_LOGS, *(f"eval_{name}" for name in (*methods.spec(trial.trainer).metrics,
                                                             *requested(trial))),
                  *(stats.METRICS if trial.judge else ())]  # once, after training (autotrain.judge)
        if params.sweep_metric not in logged:
            hint = did_you_mean(params.sweep_metric, logged, otherwise=f"it logs {', '.join(logged)}")
            raise ParamsError(f"sweep_metric: {params.sweep_metric} is not a metric that the evaluation logs with "
                              f"--trainer {trial.trainer}{' and --judge' if trial.judge else ''}; {hint}")
    if params.sweep_metric in stats.HIGHER_IS_BETTER and "sweep_direction" not in params.model_fields_set:
        raise ParamsError(f"sweep_metric: {params.sweep_metric} is better when higher, and the sweep minimizes by "
                          "default: add --sweep-direction maximize")


def _same_sweep(study: Any, params: LLMTrainingParams) -> None:
    """A resumed sweep must be the same search: the space and the direction always (optuna's storage holds them),
    and once a trial has finished, the metric and every setting it does not sweep too. Before that (trial 000
    failed, or was stopped), a command corrected in those goes on with the corrected settings."""
    settings = {"space": params.sweep_params, "metric": params.sweep_metric, "direction": params.sweep_direction,
                "fixed": fixed_settings(params, parse_space(params.sweep_params))}
    saved, finished = study.user_attrs.get("settings"), _finished(study)
    if saved is not None:
        compared = ("space", "direction", "metric") if finished else ("space", "direction")
        changed = [f"{k} {saved[k]!r} -> {settings[k]!r}" for k in compared
                   if _comparable(k, saved[k]) != _comparable(k, settings[k])]
        if finished:
            before, now = saved.get("fixed", settings["fixed"]), settings["fixed"]  # not recorded before
            changed += [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted({*before, *now})
                        if before.get(k) != now.get(k)]
        if changed:
            may = "--sweep-n-trials" if finished else "--sweep-n-trials, --sweep-metric and the settings not swept"
            raise ParamsError(f"project_name: the sweep in {preflight.project_dir(params)} ran its trials with other "
                              f"settings ({', '.join(changed)}); run it with those (only {may} may change), or use "
                              "a new folder")
    if saved != settings:
        study.set_user_attr("settings", settings)


def _comparable(setting: str, value: Any) -> Any:
    # The same space however it is spaced or ordered (JSON typed as a flag, or a YAML mapping).
    return json.loads(value if value is not None else DEFAULT_SPACE) if setting == "space" else value


def _retry_dead_trials(study: Any, storage: Any) -> None:
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(_STUDY)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                                       TrialState.FAIL)
        logger.info("sweep: trial %03d was stopped while running; its parameters are tried again", trial.number)
        study.enqueue_trial(trial.params)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _suggest(trial: Any, r: Range) -> Any:
    if r.kind == "categorical":
        return trial.suggest_categorical(r.name, list(r.choices))
    if r.kind == "int":
        return trial.suggest_int(r.name, int(r.low), int(r.high))
    return trial.suggest_float(r.name, r.low, r.high, log=r.kind == "log")


def _one_trial(study: Any, params: LLMTrainingParams, base: dict[str, Any], ranges: list[Range], project: Path,
               train: Callable[..., Any]) -> None:
    from optuna.trial import TrialState

    trial = study.ask()
    values = {r.name: _suggest(trial, r) for r in ranges}
    folder = project / TRIALS_DIR / f"{trial.number:03d}"
    try:
        trial_params = LLMTrainingParams(**{**base, **values, "project_name": str(folder)})
        if preflight.needs_launch(trial_params):
            raise ParamsError("use_sweep runs its trials in this process: one GPU, no --distributed-backend")
    except ParamsError as exc:
        study.tell(trial, state=TrialState.FAIL)
        raise ParamsError(f"sweep trial {trial.number:03d} ({_shown(values)}): {exc}") from None
    logger.info("sweep: trial %03d of %d: %s", trial.number, params.sweep_n_trials, _shown(values))
    report = PruneOnEval(trial, params.sweep_metric)
    try:
        result = train(trial_params, (report,))
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    value = result.metrics.get(params.sweep_metric)
    if value is None:
        study.tell(trial, state=TrialState.FAIL)
        known = sorted(k for k in result.metrics if k.startswith("eval_"))
        raise ParamsError(f"sweep_metric: {params.sweep_metric} is not among the evaluation's metrics "
                          f"({', '.join(known)})")
    if report.pruned:
        study.tell(trial, state=TrialState.PRUNED)
        logger.info("sweep: trial %03d pruned at step %d (%s %.4g)", trial.number, report.step, params.sweep_metric,
                    report.value)
    else:
        study.tell(trial, value)
        logger.info("sweep: trial %03d %s = %.4g", trial.number, params.sweep_metric, value)


def _shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


class PruneOnEval(TrainerCallback):
    """Reports each evaluation's `metric` to the optuna trial and stops training when optuna prunes it."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned, self.step, self.value = False, 0, float("nan")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or self.metric not in logs or self.pruned:
            return
        self.step, self.value = state.global_step, logs[self.metric]
        self.trial.report(self.value, self.step)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


def _conclude(study: Any, params: LLMTrainingParams, ranges: list[Range], project: Path,
              result_of: Callable[[LLMTrainingParams], Any]) -> Any:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ParamsError(f"use_sweep: every trial was pruned or failed; no best trial (see {project / TABLE_FILE})")
    best = study.best_trial
    best_folder = project / TRIALS_DIR / f"{best.number:03d}"
    write_table(study, params, ranges, project, best.number)
    plot(study, params, ranges, project)
    _publish(best_folder, project)
    logger.info("sweep: best trial %03d (%s = %.4g, %s); its model is in %s", best.number, params.sweep_metric,
                best.value, _shown(best.params), project)
    logger.info("%s", (project / TABLE_FILE).read_text().rstrip())
    best_params = LLMTrainingParams.load_json(best_folder / "training_params.json")
    result = result_of(best_params)
    from dataclasses import replace

    adapter = result.adapter_dir
    return replace(result, output_dir=project,
                   adapter_dir=None if adapter is None else project / adapter.relative_to(best_folder))


def _publish(best: Path, project: Path) -> None:
    """Put the best trial's outputs in the project's top folder in place of an earlier best's, whole: nothing of
    that one stays beside them (an adapter_config.json beside merged weights would be loaded with them). What an
    earlier publish left is every top-level name that a trial folder holds too. The new outputs are copied into a
    temp folder of the project, then swapped in (autotrain.atomic.replace_entries): a crash leaves one trial's
    outputs or part of them, never two trials' mixed, and running the sweep's command again publishes again."""
    atomic.remove_stale_temps(project, _TEMP_PREFIX, 0)  # the sweep holds the project's lock: any is a dead one's
    staged = atomic.new_temp(project, _TEMP_PREFIX, "best")
    try:
        shutil.copytree(best, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        outputs = {p.name for trial in (project / TRIALS_DIR).iterdir() if trial.is_dir() for p in trial.iterdir()
                   if not any(fnmatch.fnmatch(p.name, pattern) for pattern in _NOT_COPIED)}
        atomic.replace_entries(staged, project, outputs, _TEMP_PREFIX)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
