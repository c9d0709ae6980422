"""What a run checks before it writes anything, shared by a run in this process (autotrain.project) and a launch
of several processes (autotrain.run.launch). Which process of a run this one is: autotrain.run.processes.

The checks, in the order a run takes them, each only as costly as it has to be:

1. the project folder (`autotrain.outputs.project_folder.resume_point`), under the folder's lock, before the data is read;
2. `check_inputs`: first `check_setup`, what the params need besides themselves (the packages of the optimizer, the
   tracker, the attention kernel, quantization and DeepSpeed; the W&B server an online run logs to; the hub's
   answer and write access for push_to_hub); then the data (files, splits, columns) and the models' files or hub
   ids, without importing torch or transformers (seconds), so the first error in the input comes in well under a
   second;
3. `check_device`: what the machine and the installed transformers support (optimizer and scheduler names, mixed
   precision, quantization); a launch adds `check_launch` (the backend against the machine, the process count).

Whether the run trains here or in launched processes: autotrain.run.processes.needs_launch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from autotrain.errors import ParamsError
from autotrain.outputs.project_folder import project_dir  # noqa: F401 - where callers look for it
from autotrain.params import DEFAULT_MODEL, LLMTrainingParams, methods
from autotrain.params.packages import OPTIMIZER_PACKAGES
from autotrain.run import processes
from autotrain.train.arguments import bf16_accelerator, bf16_on_cpu

logger = logging.getLogger("autotrain")


def check_inputs(params: LLMTrainingParams) -> Any:
    """Open the data (files, splits, columns) and check the models' files or hub ids; return the opened data
    (autotrain.data.prepare.OpenedData). Imports neither torch nor transformers."""
    from autotrain.data import cache_store
    from autotrain.data.prepare import open_data
    from autotrain.model import files as model_files

    check_setup(params)
    if params.save_processed_data != "none":
        cache_store.max_bytes()  # the cache's size cap, from the environment
    opened = open_data(params, paired=methods.spec(params.trainer).paired)
    for name in (params.model, params.model_ref):
        if name is not None and name != DEFAULT_MODEL:  # the embedded default is checked when it is converted
            model_files.check(name)
    return opened


def check_device(params: LLMTrainingParams) -> None:
    """What the machine and the installed transformers must support, before the model loads."""
    import torch
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    # params checks the names against its own copy of transformers' lists; the installed version decides.
    if params.optimizer not in {o.value for o in OptimizerNames}:
        raise ParamsError(f"optimizer: '{params.optimizer}' is not an optimizer of the installed transformers")
    if params.scheduler not in {s.value for s in SchedulerType}:
        raise ParamsError(f"scheduler: '{params.scheduler}' is not a scheduler of the installed transformers")
    if params.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError("mixed_precision: fp16 needs a CUDA GPU; on CPU leave it unset (fp32)")
    if params.mixed_precision == "bf16" and torch.cuda.is_available() and not bf16_accelerator():
        raise ParamsError("mixed_precision: bf16 needs an Ampere or newer GPU; use fp16 on this one")
    if bf16_on_cpu(params):
        # bf16 autocast on CPU is what a GPU run computes, so a GPU config can be tried on a laptop, only slower.
        if not torch.amp.is_autocast_available("cpu"):
            raise ParamsError("mixed_precision: bf16 needs a GPU or a torch with CPU autocast; leave it unset (fp32)")
        logger.warning("mixed_precision bf16 on CPU: training runs under CPU bf16 autocast, which is far slower than "
                       "fp32 on most CPUs")
    check_kernel_here(params.attention)
    if params.quantization is not None and not torch.cuda.is_available():  # the package: check_setup
        raise ParamsError(f"quantization: {params.quantization} (bitsandbytes) needs a CUDA GPU; on CPU leave it unset")


def check_kernel_here(attention: str | None) -> None:
    """Refuse an attention kernel chosen by name that cannot train on this machine, before the model loads: torch's
    flex_attention has no backward on CPU or MPS (the first training step would raise), flash-attn runs on CUDA only
    (its package is check_setup's). Whether the model's class supports the kernel is models.check_attention's."""
    import torch

    if attention not in ("flex_attention", "flash_attention_2", "flash_attention_3"):
        return
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if attention == "flex_attention" and not gpu:
        raise ParamsError("attn_implementation flex_attention: torch's flex_attention has no backward pass on CPU or "
                          "MPS, so it cannot train on this machine (no CUDA GPU is visible); choose sdpa or eager, or "
                          "leave --attn-implementation unset")
    if attention == "flex_attention":
        return
    if not torch.cuda.is_available():
        raise ParamsError(f"attn_implementation {attention}: flash-attn runs on CUDA GPUs only and none is visible; "
                          "choose sdpa or eager, or leave --attn-implementation unset")


def check_launch(params: LLMTrainingParams) -> None:
    """What a launch needs besides `check_device`: the backend fits the machine, its packages are installed, and
    the number of processes is one this machine can run."""
    backend = processes.backend_of(params)
    gpus = processes.cuda_devices()
    # FSDP2 (fully_shard) runs on CPU processes joined by gloo, as ddp does; DeepSpeed needs CUDA.
    if backend == "deepspeed" and gpus == 0:
        raise ParamsError(
            f"distributed_backend: {backend} needs CUDA GPUs and none is visible; on CPU use --distributed-backend ddp"
        )
    if backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ParamsError("distributed_backend: deepspeed needs the deepspeed package (pip install deepspeed)")
    if backend in ("fsdp", "deepspeed") and params.quantization is not None:
        raise ParamsError(
            f"quantization {params.quantization} is not supported with distributed_backend {backend}; use ddp"
        )
    processes.num_processes(params)


# --- What the params need besides themselves: packages, a tracker's server, the hub -------------------------------
# Checked by `check_setup` before the data stage, without importing torch or transformers: each failed seconds
# into a run before (after the data stage; some left training_params.json, which blocked the plain rerun).

# Attention kernels of their own package; transformers can also fetch them through the `kernels` package.
_KERNEL_PACKAGES = {"flash_attention_2": (("flash_attn", "kernels"), "flash-attn"),
                    "flash_attention_3": (("flash_attn_interface", "kernels"), "flash-attn-3")}
_WANDB_SERVER = "https://api.wandb.ai"
_reached: set[str] = set()  # W&B servers that answered: a sweep's trials ask once


def installed(*modules: str) -> bool:
    """Whether one of `modules` can be imported (found without importing it)."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            continue
    return False


def _missing(what: str, modules: tuple[str, ...], pip: str, also: str = "") -> ParamsError:
    return ParamsError(f"{what} needs the {modules[0]} package, which is not installed (pip install {pip}{also})")


def check_setup(params: LLMTrainingParams) -> None:
    """The packages the run's choices need, the W&B server an online run logs to, and the hub's write access for
    push_to_hub: before the data stage, in a fraction of a second (a network check waits HUB_TIMEOUT_S at most).
    Processes that autotrain.run.launch started leave the network checks to it, those of another launcher to rank 0."""
    if params.optimizer in OPTIMIZER_PACKAGES and not installed(*OPTIMIZER_PACKAGES[params.optimizer][0]):
        raise _missing(f"optimizer: {params.optimizer}", *OPTIMIZER_PACKAGES[params.optimizer])
    if params.log == "tensorboard" and not installed("tensorboard", "tensorboardX"):
        raise _missing("log: tensorboard", ("tensorboard",), "tensorboard")
    if params.log == "wandb" and not installed("wandb"):
        raise _missing("log: wandb", ("wandb",), "wandb")
    if params.attention in _KERNEL_PACKAGES and not installed(*_KERNEL_PACKAGES[params.attention][0]):
        raise _missing(f"attn_implementation: {params.attention}", *_KERNEL_PACKAGES[params.attention],
                       also="; it also needs a CUDA GPU")
    if params.quantization is not None and not installed("bitsandbytes"):
        raise ParamsError(f"quantization: {params.quantization} (bitsandbytes) needs a CUDA GPU and the bitsandbytes "
                          "package, which is not installed (pip install bitsandbytes)")
    if params.distributed_backend == "deepspeed" and not installed("deepspeed"):
        raise ParamsError("distributed_backend: deepspeed needs CUDA GPUs and the deepspeed package, which is not "
                          "installed (pip install deepspeed)")
    if os.environ.get(processes.LAUNCHED_ENV) or processes.global_rank() != 0:  # one process of a run asks the servers
        return
    if params.log == "wandb" and wandb_online(params):
        _check_wandb_server()
    if params.push_to_hub:
        check_hub_push(params)
    if params.judge is not None:  # its files, its model or its server, its prompts: judged only after training
        from autotrain.judge.before_after import read_judge_prompts
        from autotrain.judge.spec import check as check_judge

        check_judge(params.judge, params.judge_template, embedded=params.judge == DEFAULT_MODEL)
        if params.judge_prompts:
            read_judge_prompts(params.judge_prompts)


def wandb_online(params: LLMTrainingParams) -> bool:
    """Whether wandb will log online: as autotrain.project sets it up, a run without a key logs offline."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return False
    return mode == "online" or bool(params.wandb_token or os.environ.get("WANDB_API_KEY"))


def _check_wandb_server() -> None:
    """An online wandb run waits 90 s for an unreachable server and then fails: ask it once now. Any HTTP answer
    (even an error status) means it is there."""
    import urllib.error
    import urllib.request

    url = os.environ.get("WANDB_BASE_URL", _WANDB_SERVER).rstrip("/")
    if url in _reached:
        return
    from autotrain.model.files import HUB_TIMEOUT_S

    def ask() -> None:
        try:
            urllib.request.urlopen(url, timeout=HUB_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass

    try:
        within(HUB_TIMEOUT_S, ask)
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, TimeoutError: the server did not answer
        raise ParamsError(f"log: wandb cannot reach {url} ({_reason(exc)}); connect, or log offline with "
                          "WANDB_MODE=offline and upload the run later with `wandb sync`") from None
    _reached.add(url)


def check_hub_push(params: LLMTrainingParams, before_training: bool = True) -> None:
    """push_to_hub: the hub must be online, and answer that the token is valid and may write. Asked before training
    (the upload comes after it, when a refusal would cost the run's time), and before a finished run is pushed."""
    import huggingface_hub
    from huggingface_hub import constants

    # Before training, the other way out: train now, upload later.
    later = (", or train without --push-to-hub and upload the finished run with `aitraining llm --push-to-hub "
             f"--project-name {params.project_name}`") if before_training else ""
    if constants.HF_HUB_OFFLINE:
        raise ParamsError(f"push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it{later}")
    token = params.token.get_secret_value() if params.token else huggingface_hub.get_token()
    if not token:
        raise ParamsError("push_to_hub: no hub token; set HF_TOKEN to a token with write access (or run `hf auth "
                          "login`)")
    from autotrain.model.files import HUB_TIMEOUT_S

    try:
        who = within(HUB_TIMEOUT_S, huggingface_hub.HfApi(token=token).whoami)
    except Exception as exc:  # noqa: BLE001 - connection errors come from httpx or the OS; refusals as HTTP errors
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ParamsError(f"push_to_hub: the hub refuses the token ({_reason(exc)}); set HF_TOKEN to a valid "
                              "token with write access") from None
        if status is None:
            raise ParamsError(f"push_to_hub: cannot reach the Hugging Face hub ({_reason(exc)}); "
                              f"connect{later}") from None
        return  # the hub answered (a rate limit on whoami, a server error): the upload will say more
    role = (who.get("auth") or {}).get("accessToken", {}).get("role") if isinstance(who, dict) else None
    if role == "read":
        raise ParamsError("push_to_hub: the token is read-only; set HF_TOKEN to a token with write access")


def within(seconds: float, ask: Any) -> Any:
    """`ask()`'s answer, or TimeoutError after `seconds` (a name lookup can hang longer than any socket timeout;
    the thread left waiting is a daemon, which the process does not wait for)."""
    import threading

    answer: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            answer.append(ask())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if failed:
        raise failed[0]
    if thread.is_alive():
        raise TimeoutError(f"no answer in {seconds:g} s")
    return answer[0]


def _reason(exc: BaseException) -> str:
    """An exception's first line; a URLError's own reason (`[Errno 111] Connection refused`)."""
    reason = getattr(exc, "reason", None)
    text = str(reason if isinstance(reason, BaseException | str) else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
