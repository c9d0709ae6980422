"""Load the tokenizer and the model; attach LoRA adapters.

The tokenizer and config load first and cheaply, so the data can be checked before any weights are read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from autotrain.errors import ModelError
from autotrain.trainers.clm.params import LLMTrainingParams

logger = logging.getLogger("autotrain")


def check_model_path(model: str) -> None:
    """A local-looking path must exist and hold a config and safetensors; anything else goes to the hub loader."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{model}: the folder has no config.json, so it is not a transformers model folder")
        _require_safetensors(model)
        return
    if path.exists():
        raise ModelError(f"{model}: a model must be a folder (or a hub id), not a file")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelError(f"{model}: no such model folder")


def load_tokenizer(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id serves; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)


def model_max_length(config: Any) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def load_model(params: LLMTrainingParams, model: str) -> torch.nn.Module:
    """The base model in float32 (mixed precision autocasts on top), with LoRA adapters when `peft` is set."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(
        model,
        dtype=torch.float32,
        trust_remote_code=params.trust_remote_code,
        use_safetensors=_require_safetensors(model),
    )
    # The KV cache is useless in training and conflicts with gradient checkpointing.
    net.config.use_cache = False
    if params.peft:
        net = _add_lora(net, params)
    return net


def _require_safetensors(model: str) -> bool:
    """Weights load from safetensors only: a pickle file can run code when it is loaded."""
    path = Path(model).expanduser()
    if path.is_dir() and not any(path.glob("*.safetensors")):
        raise ModelError(f"{model}: no *.safetensors weights; only safetensors are loaded (no pickle files)")
    return True


def _add_lora(net: torch.nn.Module, params: LLMTrainingParams) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = params.target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    config = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(net, config)
    except ValueError as exc:  # peft names the unknown target modules
        raise ModelError(f"target_modules: {exc}".splitlines()[0]) from None


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, float | None]]:
    """The transformer body, the LM head and the head's logit transforms, through any PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    extras = {
        "softcap": getattr(config, "final_logit_softcapping", None),
        "logit_scale": getattr(config, "logit_scale", None),
    }
    return base.get_decoder(), base.get_output_embeddings(), extras
