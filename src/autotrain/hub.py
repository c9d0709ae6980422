"""Uploading a finished run to the Hugging Face hub: after training (push_to_hub), or later for a finished folder
(`aitraining llm --push-to-hub --project-name DIR`). The checks before training are autotrain.preflight's."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError, PushError
from autotrain.params import LLMTrainingParams
from autotrain.project_folder import PARAMS_FILE, unfinished

logger = logging.getLogger("autotrain")


def push_to_hub(project: Path, params: LLMTrainingParams) -> str:
    """Upload the project folder (not checkpoints or tracker logs); the token is passed, never stored. A failure
    (the network, the hub) is one line saying how to upload the finished run later."""
    from huggingface_hub import HfApi

    token = params.token.get_secret_value() if params.token else None
    repo_id = params.hub_repo
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=params.hub_private, exist_ok=True)
        api.upload_folder(
            folder_path=str(project),
            repo_id=repo_id,
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "wandb/**", "*.log"],
        )
    except Exception as exc:  # noqa: BLE001 - httpx, OS and hub errors alike: the run itself is finished and kept
        lines = str(exc).strip().splitlines()
        raise PushError(f"push_to_hub: the upload to {repo_id} failed ({lines[0] if lines else type(exc).__name__});"
                        f" the finished run is in {project}: upload it with `aitraining llm --push-to-hub "
                        f"--project-name {params.project_name}`") from exc
    logger.info("pushed to the hub as %s", repo_id)
    return repo_id


def push_finished(params: LLMTrainingParams) -> str:
    """`aitraining llm --push-to-hub --project-name DIR`: upload a finished run, under the folder's lock (no run
    starts in it meanwhile), after the same checks a training run makes before it starts."""
    from autotrain import preflight
    from autotrain.project_folder import owned

    project = preflight.project_dir(params)
    with owned(project):
        check_finished(project)
        preflight.check_hub_push(params, before_training=False)
        return push_to_hub(project, params)


def hub_settings(project: Path) -> dict[str, Any]:
    """Where a finished run was told to upload itself (its training_params.json), if it was: repo_id, username,
    hub_private."""
    try:
        saved = json.loads((project / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or not saved.get("push_to_hub"):
        return {}
    return {k: saved[k] for k in ("repo_id", "username", "hub_private") if saved.get(k) is not None}


def check_finished(project: Path) -> None:
    """A run to push must be finished (autotrain.project_folder.unfinished)."""
    why = unfinished(project)
    if why is not None:
        raise ParamsError(f"project_name: nothing to push: {why}")
