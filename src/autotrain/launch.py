"""Several processes: `AutoTrainProject.create()` starts them with `accelerate launch` and waits.

When more than one GPU is visible, or `distributed_backend` is set, the run does not train in the calling process.
`launch(params)`:

1. checks what can be checked here (autotrain.preflight: the backend against the machine, mixed precision, the
   project folder) before anything is written;
2. writes `<project>/training_params.json` (no secrets) and `<project>/accelerate_config.yaml` (built from the
   params by autotrain.launch_config);
3. runs `python -m accelerate.commands.launch --config_file <project>/accelerate_config.yaml
   -m autotrain.trainers.clm --training_config <project>/training_params.json`, with its output (stdout and stderr
   merged) copied line by line to the console and to `<project>/train.log`;
4. raises the launched processes' error in this process: the same exception class and one-line message as a run
   in this process, with the child's exit code (so the CLI prints `error: ...` and exits with that code).

The hub token travels in the environment (`HF_TOKEN`), never on a command line or on disk.

The launched processes run autotrain.worker; the first that fails records its error in the file named by
STATUS_ENV (`write_status`), from which this process raises it. The number of processes is
autotrain.preflight.num_processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from autotrain import launch_config, preflight, resuming
from autotrain.errors import AutoTrainError, TrainingInterrupted
from autotrain.params import LLMTrainingParams
from autotrain.project_folder import LAUNCH_CONFIG_FILE, LAUNCH_LOG_FILE, PARAMS_FILE

logger = logging.getLogger("autotrain")

# A file where the first launched process that fails records its exit code and error (JSON), for the parent.
STATUS_ENV = "AITRAINING_STATUS_FILE"


class LaunchError(AutoTrainError):
    """The launched processes failed without a one-line error of their own (a crash, a kill, a launcher error)."""

    def __init__(self, message: str, *, exit_code: int, log_file: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.log_file = log_file


def command(config_file: Path, params_file: Path) -> list[str]:
    """The launch command: accelerate's launcher running this package's training entry point."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "-m", "autotrain.trainers.clm", "--training_config", str(params_file),
    ]


def launch(params: LLMTrainingParams) -> None:
    """Train in launched processes; return when they have finished, raise their error when they failed."""
    project = preflight.project_dir(params)
    preflight.check_launch(params)
    preflight.check_device(params)
    resuming.checked_resume(params)  # fails before anything is written
    count = preflight.num_processes(params)
    project.mkdir(parents=True, exist_ok=True)
    params_file, config_file, log_file = project / PARAMS_FILE, project / LAUNCH_CONFIG_FILE, project / LAUNCH_LOG_FILE
    params.save_json(params_file)
    launch_config.write_accelerate_config(launch_config.accelerate_config(params, count), config_file, params_file)
    cpu = preflight.cuda_devices() == 0

    env = dict(os.environ)
    env[preflight.LAUNCHED_ENV] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the console as they are written
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    if params.token is not None:
        env["HF_TOKEN"] = params.token.get_secret_value()
    if params.wandb_token is not None:  # like the hub token: the environment, never a file or a command line
        env["WANDB_API_KEY"] = params.wandb_token.get_secret_value()
    cmd = command(config_file, params_file)
    logger.info("launching %d %s processes (%s): %s", count, preflight.backend_of(params),
                "CPU, gloo" if cpu else "CUDA", " ".join(cmd))

    with tempfile.TemporaryDirectory(prefix="aitraining-launch-") as scratch:
        status_file = Path(scratch) / "status.json"
        env[STATUS_ENV] = str(status_file)
        code, received, last_lines = _run_and_tee(cmd, env, log_file)
        status = _read_status(status_file)
    if code == 0:
        return
    raise _failure(project, code, received, status, last_lines, log_file)


def _run_and_tee(cmd: list[str], env: dict[str, str], log_file: Path) -> tuple[int, int | None, list[str]]:
    """Run `cmd` in its own process group; copy its merged output to stdout and `log_file`.

    SIGINT and SIGTERM received here are forwarded to the child's process group (the launcher, which passes them
    once to each training process; those save a checkpoint and stop), and this waits for the child to exit.
    Returns the exit code, the signal received (if any) and the last lines of output.
    """
    received: list[int] = []
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def forward(number: int, frame: Any) -> None:
        received.append(number)
        try:
            os.killpg(process.pid, number)
        except ProcessLookupError:
            pass

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, forward)
    tail: list[str] = []
    try:
        with log_file.open("a", encoding="utf-8") as log:
            assert process.stdout is not None
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                del tail[:-200]
        code = process.wait()
    except BaseException:
        # This process is going down (an exception in the copy loop): do not leave the training processes behind.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return code, (received[0] if received else None), tail


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _failure(project: Path, code: int, received: int | None, status: dict[str, Any] | None, tail: list[str],
             log_file: Path) -> AutoTrainError:
    """The exception that stands for the launched run's failure in this process."""
    from autotrain import errors
    from autotrain.stop import interrupted

    if received is not None or (status is not None and status.get("kind") == "TrainingInterrupted"):
        number = received if received is not None else int(status["exit_code"]) - 128
        stopped = interrupted(number, project)
        if status is not None:  # the training process's own words
            stopped = TrainingInterrupted(status["message"], signal_number=number, checkpoint=stopped.checkpoint)
        return stopped
    if status is not None:
        kind = getattr(errors, str(status.get("kind")), None)
        if isinstance(kind, type) and issubclass(kind, AutoTrainError) and kind is not TrainingInterrupted:
            try:
                exc = kind(status["message"])
            except TypeError:
                exc = None
            if exc is not None:
                exc.exit_code = int(status["exit_code"])
                exc.log_file = str(log_file)
                return exc
        return LaunchError(f"{status['message']} (exit code {status['exit_code']}; output in {log_file})",
                           exit_code=int(status["exit_code"]), log_file=str(log_file))
    line = last_error_line(tail)
    return LaunchError(f"launched training failed (exit code {code}): {line} (output in {log_file})",
                       exit_code=code if code > 0 else 1, log_file=str(log_file))


def last_error_line(lines: list[str]) -> str:
    """The last `error: ...` line (how the training processes report an error), else the last line with text."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("error: "):
            return text.removeprefix("error: ")
    for line in reversed(lines):
        text = line.strip()
        if text.strip("=-_*#+| "):  # not a rule of a table
            return text
    return "no output"


def write_status(exit_code: int, kind: str, message: str) -> None:
    """In a launched process: record the first failure for the parent (only when the parent asked for it)."""
    path = os.environ.get(STATUS_ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # another process failed first (or the folder is gone): the first error is the root cause
        return
    with os.fdopen(fd, "w") as handle:
        json.dump({"exit_code": exit_code, "kind": kind, "message": message}, handle)
