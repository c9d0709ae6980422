"""Several processes: `AutoTrainProject.create()` starts them with `accelerate launch` and waits.

When more than one GPU is visible, or `distributed_backend` is set, the run does not train in the calling process.
`launch(params)`:

1. checks what can be checked here (backend against the machine, mixed precision, the project folder) before
   anything is written;
2. writes `<project>/training_params.json` (no secrets) and `<project>/accelerate_config.yaml` (built from the
   params by `accelerate_config`);
3. runs `python -m accelerate.commands.launch --config_file <project>/accelerate_config.yaml
   -m autotrain.trainers.clm --training_config <project>/training_params.json`, with its output (stdout and stderr
   merged) copied line by line to the console and to `<project>/train.log`;
4. raises the launched processes' error in this process: the same exception class and one-line message as a run
   in this process, with the child's exit code (so the CLI prints `error: ...` and exits with that code).

The hub token travels in the environment (`HF_TOKEN`), never on a command line or on disk.

Number of processes: the visible CUDA devices (`CUDA_VISIBLE_DEVICES` selects them). `AITRAINING_NUM_PROCESSES`
overrides it (at most the visible GPUs); without CUDA, `--distributed-backend ddp` runs that many CPU processes,
2 when unset, joined with gloo (this is for testing the distributed path; it is not faster than one process).
FSDP and DeepSpeed need CUDA GPUs.
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

from autotrain.errors import AutoTrainError, ParamsError, TrainingInterrupted
from autotrain.project_folder import LAUNCH_CONFIG_FILE as CONFIG_FILE
from autotrain.project_folder import LAUNCH_LOG_FILE as LOG_FILE
from autotrain.project_folder import PARAMS_FILE
from autotrain.project_folder import PREPARED_FILES as LAUNCH_FILES  # what launch() writes before training starts
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")

NUM_PROCESSES_ENV = "AITRAINING_NUM_PROCESSES"
CPU_PROCESSES = 2  # `--distributed-backend ddp` on a machine without CUDA, when AITRAINING_NUM_PROCESSES is unset
# Set by launch() for the processes it starts: the folder was checked and prepared by the parent.
LAUNCHED_ENV = "AITRAINING_LAUNCHED"
# A file where the first launched process that fails records its exit code and error (JSON), for the parent.
STATUS_ENV = "AITRAINING_STATUS_FILE"

# Set in every process that a launcher (torchrun, accelerate launch, deepspeed, mpirun) started: such a process
# trains itself and never launches again. ACCELERATE_MIXED_PRECISION and ACCELERATE_DYNAMO_BACKEND are set by each
# of accelerate's launchers, also for a single process.
_LAUNCHED_MARKERS = (
    "WORLD_SIZE", "LOCAL_RANK", "RANK", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND",
    "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", LAUNCHED_ENV,
)


class LaunchError(AutoTrainError):
    """The launched processes failed without a one-line error of their own (a crash, a kill, a launcher error)."""

    def __init__(self, message: str, *, exit_code: int, log_file: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.log_file = log_file


def global_rank() -> int:
    """This process's rank in its run (0 when no launcher says otherwise: torchrun, mpirun, slurm via either)."""
    text = os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or "0"
    return int(text) if text.strip().isdigit() else 0


def inside_launched_process() -> bool:
    """True in a process that a launcher started (see _LAUNCHED_MARKERS)."""
    return any(os.environ.get(name) for name in _LAUNCHED_MARKERS)


def needs_launch(params: LLMTrainingParams) -> bool:
    """Whether create() must start processes: a backend was asked for, or more than one GPU is visible."""
    if inside_launched_process():
        return False
    if params.distributed_backend is not None:
        return True
    return _cuda_devices() > 1


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def backend_of(params: LLMTrainingParams) -> str:
    """The backend a launch uses: the one asked for, else ddp (several GPUs)."""
    return params.distributed_backend or "ddp"


def check(params: LLMTrainingParams) -> None:
    """What must hold before anything is written: the backend fits the machine and its packages are installed."""
    backend = backend_of(params)
    gpus = _cuda_devices()
    if backend in ("fsdp", "deepspeed") and gpus == 0:
        raise ParamsError(
            f"distributed_backend: {backend} needs CUDA GPUs and none is visible; on CPU use --distributed-backend ddp"
        )
    if backend == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ParamsError("distributed_backend: deepspeed needs the deepspeed package (pip install deepspeed)")
    if backend in ("fsdp", "deepspeed") and params.quantization is not None:
        raise ParamsError(
            f"quantization {params.quantization} is not supported with distributed_backend {backend}; use ddp"
        )
    num_processes(params)


def num_processes(params: LLMTrainingParams) -> int:
    """The visible CUDA devices; AITRAINING_NUM_PROCESSES overrides; without CUDA (ddp only) 2 by default."""
    gpus = _cuda_devices()
    text = os.environ.get(NUM_PROCESSES_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ParamsError(f"{NUM_PROCESSES_ENV}={text!r}: must be a whole number of processes, at least 1")
        count = int(text)
        if gpus and count > gpus:
            raise ParamsError(f"{NUM_PROCESSES_ENV}={count}, but only {gpus} CUDA devices are visible")
        return count
    return gpus if gpus else CPU_PROCESSES


def accelerate_config(params: LLMTrainingParams, num_processes: int) -> dict[str, Any]:
    """The content of `<project>/accelerate_config.yaml` (keys as accelerate 1.x's ClusterConfig reads them).

    - ddp: MULTI_GPU, accelerate's torchrun launcher. Without CUDA it is the same launcher with `use_cpu`: the
      processes join with gloo (launch() also sets ACCELERATE_USE_CPU for them). accelerate's MULTI_CPU type would
      start a single process unless it is run under mpirun.
    - fsdp: FSDP (version 1), full sharding, wrapping each transformer block (the model's `_no_split_modules`),
      `use_orig_params` (LoRA: frozen and trainable weights in one flat parameter) and FULL_STATE_DICT, so that
      saving gathers the full weights on the main process. Gradient (activation) checkpointing stays with the
      trainer (`--disable-gradient-checkpointing`), not FSDP's own.
    - deepspeed: ZeRO stage `deepspeed_stage` (2 or 3) without offload; gradient accumulation and clipping are the
      params' (transformers refuses a DeepSpeed config that disagrees with its own arguments). Stage 3 gathers
      16-bit weights when saving.

    One machine (`num_machines: 1`, `machine_rank: 0`) and a free port (`main_process_port: 0`); for several
    machines edit `num_machines`, `num_processes` (the total), `machine_rank`, `main_process_ip` and
    `main_process_port` (see the README, "Scale out").
    """
    backend = backend_of(params)
    cpu = _cuda_devices() == 0
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[backend],
        "num_processes": num_processes,
        "num_machines": 1,
        "machine_rank": 0,
        "main_process_port": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "mixed_precision": params.mixed_precision or "no",
        "use_cpu": cpu,
        "debug": False,
        "downcast_bf16": "no",
    }
    if backend == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_reshard_after_forward": "FULL_SHARD",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": True,
            "fsdp_offload_params": False,
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_sync_module_states": True,
            "fsdp_activation_checkpointing": False,
        }
    if backend == "deepspeed":
        stage = params.deepspeed_stage
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": params.gradient_accumulation,
            "gradient_clipping": params.max_grad_norm,
            "zero3_init_flag": False,
            **({"zero3_save_16bit_model": True} if stage == 3 else {}),
        }
    return config


_CONFIG_HEADER = """\
# accelerate config written by aitraining from {params}.
# Single machine. For N machines, copy this file and the data to each machine, set num_machines: N,
# num_processes: the total over all machines, machine_rank: 0..N-1, main_process_ip: the rank-0 machine's
# address, main_process_port: a free port there, and run on each machine:
#   accelerate launch --config_file THIS_FILE -m autotrain.trainers.clm --training_config {params}
"""

_CPU_NOTE = """\
# distributed_type MULTI_GPU + use_cpu: accelerate's torchrun launcher with CPU processes joined by gloo
# (set ACCELERATE_USE_CPU=true when launching it yourself; python -m autotrain.trainers.clm does it when no GPU is
# visible). MULTI_CPU would start one process unless run under mpirun.
"""


def write_accelerate_config(config: dict[str, Any], path: Path, params_file: Path) -> None:
    import yaml

    header = _CONFIG_HEADER.format(params=params_file)
    if config.get("use_cpu") and config["distributed_type"] == "MULTI_GPU":
        header += _CPU_NOTE
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))


def prepared_only(project: Path) -> bool:
    """The folder holds only what launch() writes before training (a launch that failed before any output)."""
    if not project.is_dir():
        return False
    names = {path.name for path in project.iterdir()}
    return bool(names) and names <= LAUNCH_FILES


def check_folder(project: Path, resume: str | None) -> Path | None:
    """autotrain.project_folder.resume_point: a folder holding only the files of a launch that got no further
    (training_params.json, accelerate_config.yaml, train.log) is started over, as an empty one would be."""
    from autotrain.project_folder import resume_point

    return resume_point(project, resume)


def command(config_file: Path, params_file: Path) -> list[str]:
    """The launch command: accelerate's launcher running this package's training entry point."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "-m", "autotrain.trainers.clm", "--training_config", str(params_file),
    ]


def launch(params: LLMTrainingParams) -> None:
    """Train in launched processes; return when they have finished, raise their error when they failed."""
    from autotrain.project import check_device

    project = Path(params.project_name).expanduser().resolve()
    check(params)
    check_device(params)
    check_folder(project, params.resume_from_checkpoint)  # fails before anything is written
    count = num_processes(params)
    project.mkdir(parents=True, exist_ok=True)
    params_file, config_file, log_file = project / PARAMS_FILE, project / CONFIG_FILE, project / LOG_FILE
    params.save_json(params_file)
    write_accelerate_config(accelerate_config(params, count), config_file, params_file)

    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the console as they are written
    if _cuda_devices() == 0:
        env["ACCELERATE_USE_CPU"] = "true"
    if params.token is not None:
        env["HF_TOKEN"] = params.token.get_secret_value()
    cmd = command(config_file, params_file)
    logger.info("launching %d %s processes (%s): %s", count, backend_of(params),
                "CPU, gloo" if _cuda_devices() == 0 else "CUDA", " ".join(cmd))

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
