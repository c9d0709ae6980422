"""Load the tokenizer and the model; attach LoRA adapters.

The tokenizer and config load first and cheaply, so the data can be checked before any weights are read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from autotrain.errors import ModelError
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")


def check_model_path(model: str) -> None:
    """A local-looking path must exist and hold a config and safetensors; anything else goes to the hub loader
    (autotrain.model_files.check_local, which checks without importing torch)."""
    from autotrain.model_files import check_local

    check_local(model)


def load_tokenizer(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    _report_rebuilt_tokenizer(model, tokenizer)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id serves; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Spaces, a newline, a tab, digits, accents and CJK: where tokenizer pipelines differ.
_PROBE_TEXT = "Hello, world!\n  Two spaces,\ta tab; 12345 digits, naïve café, 漢字."


def _report_rebuilt_tokenizer(model: str, tokenizer: Any) -> None:
    """Warn when the tokenizer transformers built encodes differently from the model's own tokenizer.json.

    transformers 5 builds some model types' tokenizers from their class's own pipeline and the vocabulary (qwen2 ->
    Qwen2Tokenizer, with Qwen2's pre-tokenizer) rather than from tokenizer.json. The run trains with what
    AutoTokenizer gives, which is also what inference with AutoTokenizer gets, but that may not be how the model was
    trained before. Only a class of its own can differ: the generic backend reads tokenizer.json as it is.
    """
    if type(tokenizer).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast") or not tokenizer.is_fast:
        return
    path = Path(model).expanduser() / "tokenizer.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "tokenizer.json")
        if not isinstance(cached, str):
            return
        path = Path(cached)
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(path)).encode(_PROBE_TEXT, add_special_tokens=False).ids
    if shipped != tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        logger.warning(
            f"{model}: transformers builds its tokenizer as {type(tokenizer).__name__}, which encodes text differently "
            "from the model's tokenizer.json; training uses it (as inference with AutoTokenizer will)"
        )


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
        extra["quantization_config"] = quantization_config(params)
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


def quantization_config(params: LLMTrainingParams) -> Any:
    """bitsandbytes' config for `params.quantization`. int4 computes in the precision the run trains in: bf16 or
    fp16 when mixed_precision asks for it, float32 when it is none (as fp32 training means everywhere else)."""
    from transformers import BitsAndBytesConfig

    if params.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.mixed_precision or "", torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def _require_safetensors(model: str) -> bool:
    """Weights load from safetensors only: a pickle file can run code when it is loaded."""
    path = Path(model).expanduser()
    if path.is_dir() and not any(path.glob("*.safetensors")):
        raise ModelError(f"{model}: no *.safetensors weights; only safetensors are loaded (no pickle files)")
    return True


# LoRA dropout when lora_dropout is none (its default).
DEFAULT_LORA_DROPOUT = 0.05


def _add_lora(net: torch.nn.Module, params: LLMTrainingParams) -> torch.nn.Module:
    """LoRA adapters on `params.target_modules`.

    On a transformers-5 mixture-of-experts model (Mixtral, Qwen3-MoE, ...) the experts are fused into 3-D parameters,
    and peft's all-linear adapts them, with the router, through lora.ParamWrapper, which cannot apply dropout (the
    input of each expert is not a module input to drop). lora_dropout none then means 0 for the whole adapter (peft
    takes one dropout per adapter); an explicit positive lora_dropout is refused with the two ways out.
    """
    from peft import get_peft_model

    targets: str | list[str] = params.target_modules
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
        dropout = 0.0 if fused else DEFAULT_LORA_DROPOUT
        if fused:
            logger.info(f"LoRA dropout 0: {type(net).__name__}'s mixture-of-experts weights ({', '.join(fused)}) "
                        "get adapters as parameters, and peft applies no dropout to those")
    try:
        return get_peft_model(net, _lora_config(params, targets, dropout))
    except ValueError as exc:  # peft names the unknown target modules
        raise ModelError(f"target_modules: {exc}".splitlines()[0]) from None


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
    from peft import get_peft_model

    with torch.device("meta"):
        skeleton = type(net)(net.config)
    try:
        probe = get_peft_model(skeleton, _lora_config(params, targets, 0.0))
    except ValueError:  # an unknown target module: the real call reports it
        return []
    return sorted(probe.peft_config["default"].target_parameters or [])


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, float | None]]:
    """The transformer body, the LM head and the head's logit transforms, through any PEFT wrapper.

    The transforms are {"logit_scale", "softcap"} as autotrain.logprobs.token_logps takes them; see `head_transform`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    scale, softcap = head_transform(base.config)
    return base.get_decoder(), base.get_output_embeddings(), {"softcap": softcap, "logit_scale": scale}


def _reciprocal(field: str) -> Callable[[Any], float]:
    return lambda config: 1.0 / getattr(config, field)


def _field(field: str) -> Callable[[Any], float | None]:
    return lambda config: getattr(config, field, None)


# What each family's causal-LM forward (the class AutoModelForCausalLM loads for the model type) does between its LM
# head and the logits it returns, read from transformers' modeling_*.py (surveyed on 5.24): logits * scale, then
# tanh(logits / softcap) * softcap, with the values read from the text config. Keyed by the outer config's model
# type, since the class decides: Gemma3ForConditionalGeneration ("gemma3") never applies the final_logit_softcapping
# of its text config, Gemma3ForCausalLM ("gemma3_text") does. A family that is not listed returns the head's output
# unchanged; the start-up self-check that compares the chunked head with the model's own logits refuses any family
# for which that is wrong.
_SCALES: dict[str, Callable[[Any], float | None]] = {
    # Granite's muP: logits / logits_scaling.
    **dict.fromkeys(("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "granitemoehybrid"),
                    _reciprocal("logits_scaling")),
    # MiniCPM3 divides the hidden state before its bias-free head instead: the same logits.
    "minicpm3": _reciprocal("logits_scaling"),
    "hyperclovax": _field("logits_scaling"),  # the same field as Granite's, multiplied
    "falcon_h1": _field("lm_head_multiplier"),
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), _field("logit_scale")),
}
_SOFTCAPS: dict[str, Callable[[Any], float | None]] = {
    **dict.fromkeys(("gemma2", "gemma3_text", "gemma3n", "gemma3n_text", "gemma4", "gemma4_text",
                     "vaultgemma", "nanochat", "beam"),
                    _field("final_logit_softcapping")),
    "recurrent_gemma": _field("logits_soft_cap"),
}


def head_transform(config: Any) -> tuple[float | None, float | None]:
    """(scale, softcap) that the model of `config` applies to its LM head's output; None where it applies none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def read(table: dict[str, Callable[[Any], float | None]]) -> float | None:
        value = table[config.model_type](text) if config.model_type in table else None
        return None if value is None else float(value)

    scale = read(_SCALES)
    return (None if scale == 1.0 else scale), read(_SOFTCAPS)
