"""What a run holds while it lasts: the project folder's lock, a command line without secrets, and its trackers'
environment (W&B, TensorBoard), all the caller's again afterwards."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from autotrain.outputs.project_folder import owned
from autotrain.params import LLMTrainingParams
from autotrain.run import preflight, processes

logger = logging.getLogger("autotrain")

# What a run sets for its trackers (`tracker_environment`). WANDB_SERVICE is wandb's own note of its live service
# process: a run tears the caller's down to start its own, so putting the old address back would send the next
# wandb.init to a dead socket; wandb keeps it.
_TRACKER_VARIABLES = ("WANDB_", "TENSORBOARD_LOGGING_DIR")


_WANDBS_OWN = "WANDB_SERVICE"


def _tracker_variables() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name.startswith(_TRACKER_VARIABLES) and name != _WANDBS_OWN}


@contextlib.contextmanager
def session(params: LLMTrainingParams) -> Iterator[None]:
    """What a run holds while it lasts: the project folder's lock (in the process that owns the run:
    processes.takes_lock), and a `sys.argv` without secrets, since trackers record it (wandb keeps the command line
    in its run files, and an online run uploads them). The argv, and the trackers' environment, are the caller's
    again afterwards, also on an error: a Python caller must not keep the W&B key (later subprocesses inherit it)
    nor WANDB_DIR and WANDB_PROJECT (its own wandb runs would log into this folder)."""
    secrets = [value for value in params.secret_values() if value]
    saved = list(sys.argv)
    environment = _tracker_variables()
    sys.argv[:] = [scrub(arg, secrets) for arg in saved]
    try:
        with owned(preflight.project_dir(params), take=processes.takes_lock()):
            yield
    finally:
        sys.argv[:] = saved
        for name in _tracker_variables():
            if name not in environment:
                del os.environ[name]
        os.environ.update(environment)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def tracker_environment(params: LLMTrainingParams, project: Path) -> None:
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
        # The service process wandb named in the environment is gone with the teardown (or was never this
        # process's: an address a caller saved and put back); this run starts its own.
        os.environ.pop(_WANDBS_OWN, None)
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            logger.info("wandb: no WANDB_API_KEY, logging offline under %s/wandb (sync later with `wandb sync`)", project)
        if params.tracks_visually:
            logger.info("wandb: watch this run in the terminal with `wandb beta leet %s`", project / "wandb")
    if params.log == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(project / "runs")
