"""LoRA adapters (peft) on the model being trained: which modules, which dropout.

peft owns the adapters; this module turns the params into peft's LoraConfig and refuses, with one line, what peft
would accept and then do differently from what was asked (a dropout on fused mixture-of-experts weights).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from autotrain.errors import ModelError
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")

# LoRA dropout when lora_dropout is none (its default) and disable_dropout is off: aitraining's value. With
# disable_dropout on (the default) none means 0, as in every preference run of aitraining: TRL's ORPOTrainer and
# DPOTrainer wrap the model with aitraining's LoraConfig(lora_dropout=0.05) and then set every nn.Dropout to 0
# (disable_dropout, on by default), LoRA's included. A dropout would also cost time: on the 2-core CPU, 0.05 made
# the newcomer's LoRA step about a fifth slower (BENCHMARKS.md).
SEED_LORA_DROPOUT = 0.05


def add_lora(net: torch.nn.Module, params: LLMTrainingParams, targets: str | list[str] | None = None
             ) -> torch.nn.Module:
    """LoRA adapters on `params.target_modules` (or on `targets`, the modules peft is to match, when given: a
    vision-language model's language model, autotrain.model.vision_weights).

    lora_dropout none follows disable_dropout: 0 when the model's dropout is off (TRL's disable_dropout zeroes LoRA's
    too), SEED_LORA_DROPOUT otherwise; a given value is used as it is. On a transformers-5 mixture-of-experts model (Mixtral, Qwen3-MoE, ...) the experts are fused into 3-D parameters,
    and peft's all-linear adapts them, with the router, through lora.ParamWrapper, which cannot apply dropout (the
    input of each expert is not a module input to drop). lora_dropout none then means 0 for the whole adapter (peft
    takes one dropout per adapter); an explicit positive lora_dropout is refused with the two ways out.
    """
    if targets is None:
        targets = params.target_modules
        if targets != "all-linear":
            targets = [name.strip() for name in targets.split(",") if name.strip()]
    dropout = params.lora_dropout
    fused = _adapted_parameters(net, params, targets) if dropout != 0 else []
    if fused and dropout is not None:
        raise ModelError(
            f"lora_dropout {dropout}: peft cannot apply dropout to the mixture-of-experts weights that target_modules "
            f"{params.target_modules!r} adapts as parameters on {type(net).__name__} ({', '.join(fused)}); use "
            "--lora-dropout 0, or --target-modules naming linear layers only (e.g. q_proj,k_proj,v_proj,o_proj)"
        )
    if dropout is None:
        dropout = 0.0 if fused or params.disable_dropout else SEED_LORA_DROPOUT
        if fused and not params.disable_dropout:
            logger.info(f"LoRA dropout 0: {type(net).__name__}'s mixture-of-experts weights ({', '.join(fused)}) "
                        "get adapters as parameters, and peft applies no dropout to those")
    try:
        return _get_peft_model(net, _lora_config(params, targets, dropout))
    except ValueError as exc:  # peft names the unknown target modules
        raise ModelError(f"target_modules: {exc}".splitlines()[0]) from None


def _get_peft_model(net: torch.nn.Module, config: Any) -> torch.nn.Module:
    """peft's get_peft_model, without its false warning on fused MoE experts.

    Fusing w1 and w3 into gate_up_proj, peft adds rank_pattern and alpha_pattern keys (2r, 2 alpha) for that
    parameter, applies them, and then warns that they matched no targeted *module* and were ignored. The tool passes
    neither pattern, so every key such a warning names is one of peft's own: only that warning is silenced."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The following (rank|alpha)_pattern keys did not match any "
                                r"targeted module and were ignored", category=RuntimeWarning)
        return get_peft_model(net, config)


def _lora_config(params: LLMTrainingParams, targets: str | list[str], dropout: float) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def _adapted_parameters(net: torch.nn.Module, params: LLMTrainingParams, targets: str | list[str]) -> list[str]:
    """The parameters (as opposed to modules) that peft adapts for these targets: fused MoE expert weights.

    Which ones depends on peft's own conversion rules for transformers-5 MoE models, so peft is asked, on a copy of
    the model's structure on the meta device (no weights allocated); only models holding a 3-D parameter can have
    any. peft cannot be asked on the model itself: a refused dropout is raised after it has wrapped some layers.
    """
    if not any(p.dim() == 3 for p in net.parameters()):
        return []

    with torch.device("meta"):
        skeleton = type(net)(net.config)
    try:
        probe = _get_peft_model(skeleton, _lora_config(params, targets, 0.0))
    except ValueError:  # an unknown target module: the real call reports it
        return []
    return sorted(probe.peft_config["default"].target_parameters or [])
