"""One training process of a run, under any launcher: `python -m autotrain.trainers.clm --training_config FILE`.

FILE is a `training_params.json` (what `LLMTrainingParams.save_json` writes, e.g. the one a run leaves in its
project folder). Each process started by `accelerate launch`, `torchrun`, `deepspeed` or slurm's `srun` (through
one of those) runs this; they find each other through the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR,
...), and transformers' Trainer splits the batches between them. `AutoTrainProject.create()` launches it this way
itself when several processes are needed (autotrain.launch).

- The hub token is never in FILE: with `push_to_hub`, it comes from the HF_TOKEN environment variable.
- Logs: the process of rank 0 logs progress to stdout; the others only warnings. Started by autotrain.launch, it
  leaves the summary to the launching process, which prints it once.
- The project folder is owned by one run at a time (autotrain.project_folder): under torchrun or slurm the process
  of rank 0 holds its lock while the run lasts; started by autotrain.launch, the launching process holds it.
- An error prints one line `error: ...` on stderr and exits with the error's code (2 for input errors), as
  `aitraining` does; when started by `AutoTrainProject.create()`, the first failing process also records it for
  the parent (autotrain.launch.write_status).
- Without a GPU, several processes train on CPU and join with gloo (ACCELERATE_USE_CPU is set for them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from autotrain.errors import AutoTrainError, ParamsError, TrainingInterrupted
from autotrain.launch import write_status
from autotrain.params import LLMTrainingParams
from autotrain.preflight import LAUNCHED_ENV, global_rank, project_dir

logger = logging.getLogger("autotrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m autotrain.trainers.clm",
        description="Train one process of a run from its training_params.json (under accelerate launch, torchrun, "
        "deepspeed or slurm).",
    )
    parser.add_argument("--training_config", "--training-config", required=True, metavar="FILE",
                        help="training_params.json of the run (no token: HF_TOKEN is read from the environment).")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks and library logs.")
    return parser


def main(argv: list[str] | None = None) -> int:
    from autotrain import quiet

    args = build_parser().parse_args(argv)
    _cpu_without_cuda()
    rank = global_rank()
    quiet.survive_closed_output()  # under torchrun or slurm, `| head` must not stop a process of the run either
    _configure_logging(rank)
    try:
        with quiet.libraries(args.verbose):
            params = load_params(args.training_config)
            result = _train(params)
        if rank == 0 and not os.environ.get(LAUNCHED_ENV):
            print(result.summary(), flush=True)
        return 0
    except TrainingInterrupted as exc:
        _say(f"stopped: {exc}")
        write_status(exc.exit_code, "TrainingInterrupted", str(exc))
        return exc.exit_code
    except AutoTrainError as exc:
        write_status(exc.exit_code, type(exc).__name__, str(exc))
        if args.verbose:
            raise
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        write_status(130, "KeyboardInterrupt", "interrupted")
        _say("interrupted")
        return 130
    except Exception as exc:  # a crash: the traceback follows; the parent gets the exception and its first line
        lines = str(exc).strip().splitlines()
        write_status(1, type(exc).__name__, f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))
        raise


def _say(line: str) -> None:
    """One line on stderr in one write, so that lines of processes sharing the launcher's pipe do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def load_params(path: str) -> LLMTrainingParams:
    """The params of FILE, with the hub token from HF_TOKEN when the run pushes to the hub."""
    file = Path(path).expanduser()
    try:
        data: Any = json.loads(file.read_text())
    except FileNotFoundError:
        raise ParamsError(f"--training_config {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ParamsError(f"--training_config {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"--training_config {path}: expected a JSON object of training parameters")
    token = os.environ.get("HF_TOKEN")
    if token and data.get("push_to_hub") and not data.get("token"):
        data["token"] = token
    return LLMTrainingParams.from_saved(data)


def _train(params: LLMTrainingParams) -> Any:
    from autotrain import project
    from autotrain.project_folder import resume_point

    with project.session(params):
        if not os.environ.get(LAUNCHED_ENV):
            # Started by another launcher (torchrun, slurm): nobody checked the folder yet. Every process checks
            # it (rank 0 under the lock), and none goes on (and writes to it) until all have. A folder holding only
            # training_params.json and accelerate_config.yaml (prepared for this run) is a fresh one.
            resume_point(project_dir(params), params.resume_from_checkpoint)
            project.process_state(params).wait_for_everyone()
        return project.run(params, folder_checked=True)


def _cpu_without_cuda() -> None:
    """Several processes and no GPU: train on CPU with gloo (transformers and accelerate read ACCELERATE_USE_CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def _configure_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)  # stderr: errors only
    logging.getLogger().setLevel(level)
    logger.setLevel(level)
