"""Load the tokenizer and the model; attach LoRA adapters.

The tokenizer and config load first and cheaply, so the data can be checked before any weights are read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from autotrain.errors import ModelError
from autotrain.trainers.clm.params import LLMTrainingParams

logger = logging.getLogger("autotrain")


def check_model_path(model: str) -> None:
    """A local-looking path must exist and hold a config and safetensors; anything else goes to the hub loader
    (autotrain.model_files.check_local, which checks without importing torch)."""
    from autotrain.model_files import check_local

    check_local(model)


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
    """The base model in float32 (mixed precision autocasts on top), with LoRA adapters when `peft` is set.

    On CUDA with packing, attention runs through flex_attention, which skips the masked blocks of a packed row
    (SDPA with an explicit mask computes them all); elsewhere transformers picks its default (SDPA). With
    `quantization`, the frozen base weights load in 4 or 8 bits through bitsandbytes (QLoRA).
    """
    net = _load_causal_lm(params, model, quantize=True)
    if params.peft:
        if params.quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Casts norms and the head to fp32 for stable training; checkpointing is the Trainer's to enable.
            net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
        net = _add_lora(net, params)
    return net


def load_reference(params: LLMTrainingParams, model: str, vocab_size: int) -> torch.nn.Module:
    """A frozen reference model for DPO (never quantized, never given adapters); its vocabulary must match."""
    net = _load_causal_lm(params, model, quantize=False)
    size = net.get_output_embeddings().weight.shape[0]
    if size != vocab_size:
        raise ModelError(
            f"model_ref: {model} has a vocabulary of {size} tokens, the model being trained {vocab_size}; the "
            "reference must share the tokenizer"
        )
    return net.requires_grad_(False).eval()


def _load_causal_lm(params: LLMTrainingParams, model: str, quantize: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    extra: dict[str, Any] = {}
    if torch.cuda.is_available() and params.packing:
        extra["attn_implementation"] = "flex_attention"
    if quantize and params.quantization is not None:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if params.mixed_precision == "bf16" else torch.float16
        extra["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
            if params.quantization == "int4"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        # Each process holds its quantized copy on its own GPU (bitsandbytes weights cannot be moved after loading).
        extra["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    net = AutoModelForCausalLM.from_pretrained(
        model,
        dtype=torch.float32,
        trust_remote_code=params.trust_remote_code,
        use_safetensors=_require_safetensors(model),
        **extra,
    )
    # The KV cache is useless in training and conflicts with gradient checkpointing.
    net.config.use_cache = False
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
