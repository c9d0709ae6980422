"""Stage 1 of bench/gpu_run.sh: seconds-long checks before the stages that spend minutes. One line per check, never
raises, so every line prints even when an early one fails:
- versions (the GPU image had torch 2.11 and transformers 5.17 when this was written; the CPU suite runs 2.13/5.24);
- the device;
- flex_attention under bf16 autocast with fp32 q/k and a bf16 v (what RoPE hands it from fp32 weights): torch 2.13
  casts them back, older torch raises `Expected query, key, and value to have the same dtype` or runs fp32 kernels;
  this tool casts them itself (autotrain's kernel functions), this line says what the bare torch does;
- the private transformers.Trainer members this tool overrides (autotrain.trainers.clm.checks checks them at start);
- a bitsandbytes NF4 round trip on CUDA;
- the project's imports, and those of every later stage's script.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
import warnings

warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")  # eager on purpose


def line(name: str, fn) -> None:
    try:
        print(f"PREFLIGHT {name}: {fn()}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a preflight line reports, it never stops the others
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"PREFLIGHT {name}: FAILED {type(exc).__name__}: {text}", flush=True)


def versions() -> str:
    out = [f"python {sys.version.split()[0]}"]
    for dist in ("torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic",
                 "bitsandbytes", "flash-attn", "deepspeed"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            out.append(f"{dist} -")
    return ", ".join(out)


def device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA"
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    return f"{p.name}, cc {p.major}.{p.minor}, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free), CUDA {torch.version.cuda}"


def flex_autocast() -> str:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k = torch.randn(1, 2, 256, 64, device=dev), torch.randn(1, 2, 256, 64, device=dev)
    v = torch.randn(1, 2, 256, 64, device=dev, dtype=torch.bfloat16)
    try:
        with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
            out = flex_attention(q, k, v)  # eager: no compile, seconds
        return f"bare torch ran fp32 q/k + bf16 v under autocast, output {out.dtype}"
    except Exception as exc:  # noqa: BLE001
        return f"bare torch raised {type(exc).__name__}: {str(exc).splitlines()[0][:160]} (autotrain casts first)"


def trainer_members() -> str:
    import transformers

    from autotrain.trainers.clm import checks

    checks.check_trainer_api(transformers.Trainer)
    return "checks.check_trainer_api passed"


def bnb() -> str:
    import torch

    import bitsandbytes as b
    import bitsandbytes.functional as F

    if not torch.cuda.is_available():
        return f"bitsandbytes {b.__version__} imported (no CUDA to test)"
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(x, quant_type="nf4")
    back = F.dequantize_4bit(packed, state)
    return f"bitsandbytes {b.__version__}: nf4 round trip relative error {((back - x).norm() / x.norm()).item():.3f}"


def project_imports() -> str:
    # Every later stage's script, so that a dry run on CPU finds one that no longer imports against the project.
    mods = ["autotrain.trainers.clm.trainer", "autotrain.trainers.clm.kernel_probe", "autotrain.project", "datasets",
            "trl.experimental.orpo", "orpo_bench", "gpu_correctness", "kernel_probe_cost", "gpu_checks"]
    for m in mods:
        importlib.import_module(m)
    return "ok: " + ", ".join(mods)


if __name__ == "__main__":
    for name, fn in (("versions", versions), ("device", device), ("flex under autocast", flex_autocast),
                     ("Trainer members", trainer_members), ("bitsandbytes", bnb), ("imports", project_imports)):
        line(name, fn)
