"""The one place a model or a tokenizer is loaded, and the one way back to the transformers model inside wrappers.

Models load for training (`load_model`, with LoRA adapters from autotrain.lora), as a frozen DPO reference
(`load_reference`), for inference (`load_trained`) and to merge a saved adapter (`merge_saved_adapter`), all through
`_from_pretrained`: float32 (mixed precision autocasts on top; a merged model is saved as trained), safetensors only
(a pickle file can run code when it is loaded), and the run's trust_remote_code. The tokenizer and config load first
and cheaply, so the data can be checked before any weights are read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from autotrain.errors import ModelError
from autotrain.lora import add_lora
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")


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
    """The base model, with LoRA adapters when `peft` is set.

    On CUDA with packing, attention runs through flex_attention, which skips the masked blocks of a packed row
    (SDPA with an explicit mask computes them all); elsewhere transformers picks its default (SDPA). With
    `quantization`, the frozen base weights load in 4 or 8 bits through bitsandbytes (QLoRA).
    """
    extra: dict[str, Any] = _attention(params)
    if params.quantization is not None:
        extra["quantization_config"] = quantization_config(params)
        # Each process holds its quantized copy on its own GPU (bitsandbytes weights cannot be moved after loading).
        extra["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        net = _from_pretrained(model, params.trust_remote_code, **extra)
    except (ValueError, ImportError) as exc:
        if params.attention is None:
            raise
        # transformers refuses a kernel the model or the machine cannot run (flash_attn missing, no CUDA ...).
        raise ModelError(f"attn_implementation {params.attention}: {str(exc).split('. ')[0]}") from None
    # The KV cache is useless in training and conflicts with gradient checkpointing.
    net.config.use_cache = False
    if params.peft:
        if params.quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Casts norms and the head to fp32 for stable training; checkpointing is the Trainer's to enable.
            net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
        net = add_lora(net, params)
    return net


def load_reference(params: LLMTrainingParams, model: str, vocab_size: int) -> torch.nn.Module:
    """A frozen reference model for DPO (never quantized, never given adapters); its vocabulary must match."""
    net = _from_pretrained(model, params.trust_remote_code, **_attention(params))
    net.config.use_cache = False
    size = net.get_output_embeddings().weight.shape[0]
    if size != vocab_size:
        raise ModelError(
            f"model_ref: {model} has a vocabulary of {size} tokens, the model being trained {vocab_size}; the "
            "reference must share the tokenizer"
        )
    return net.requires_grad_(False).eval()


def load_trained(project: Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A finished run's model, in eval mode, and its tokenizer: the merged model where there is one, else the base
    model with the adapter."""
    if not (project / "config.json").exists() and not (project / "adapter_config.json").exists():
        raise ModelError(f"{project}: no trained model here (no config.json or adapter_config.json)")
    model = _from_pretrained(project, trust_remote_code)
    return model.eval(), load_tokenizer(str(project), trust_remote_code)


def merge_saved_adapter(adapter_dir: Path, trust_remote_code: bool) -> Any:
    """The base model (loaded again, on CPU) with the adapter saved in `adapter_dir` merged in."""
    return _from_pretrained(adapter_dir, trust_remote_code).merge_and_unload()


def _from_pretrained(name: str | Path, trust_remote_code: bool, **extra: Any) -> torch.nn.Module:
    """A causal LM in float32 from safetensors; a folder holding only a LoRA adapter loads as its base model with the
    adapter (peft reads the base model's name from the adapter's config)."""
    folder = Path(name).expanduser()
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        from peft import AutoPeftModelForCausalLM as loader
    else:
        from transformers import AutoModelForCausalLM as loader
    return loader.from_pretrained(name, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                  use_safetensors=True, **extra)


def _attention(params: LLMTrainingParams) -> dict[str, Any]:
    if params.attention is not None:  # the user's choice wins (check_attention refused what the model cannot run)
        return {"attn_implementation": params.attention}
    # flex_attention skips a packed row's masked blocks on CUDA; elsewhere transformers' default (SDPA) is used.
    return {"attn_implementation": "flex_attention"} if torch.cuda.is_available() and params.packing else {}


# The attention kernels transformers offers, and the model-class flag that says a model can use each.
_KERNEL_FLAGS = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn",
                 "flash_attention_2": "_supports_flash_attn", "flash_attention_3": "_supports_flash_attn"}


def check_attention(params: LLMTrainingParams, config: Any) -> None:
    """Refuse, before the data is tokenized, an attn_implementation the model's class says it cannot run (sdpa on
    Gemma 2, whose attention soft-caps its logits), naming the kernels it can."""
    chosen = params.attention
    if chosen is None or chosen == "eager":
        return
    if chosen not in _KERNEL_FLAGS:
        raise ModelError(f"attn_implementation: unknown kernel '{chosen}'; known: eager, {', '.join(_KERNEL_FLAGS)}")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:  # remote code: transformers checks when the model loads
        return
    if not getattr(model_class, _KERNEL_FLAGS[chosen], False):
        can = ["eager"] + [k for k, flag in _KERNEL_FLAGS.items() if getattr(model_class, flag, False)]
        raise ModelError(f"attn_implementation {chosen}: {model_class.__name__} does not support it; it supports "
                         f"{', '.join(can)}")


def quantization_config(params: LLMTrainingParams) -> Any:
    """bitsandbytes' config for `params.quantization`. int4 computes in the precision the run trains in: bf16 or
    fp16 when mixed_precision asks for it, float32 when it is none (as fp32 training means everywhere else)."""
    from transformers import BitsAndBytesConfig

    if params.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.mixed_precision or "", torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def unwrap(model: torch.nn.Module, peft: bool = True) -> torch.nn.Module:
    """The model inside the DDP, FSDP and DeepSpeed wrappers (accelerate's `extract_model_from_parallel`) and, with
    `peft`, inside the PEFT wrapper too: the transformers model itself. `peft=False` keeps the PEFT wrapper (its
    `disable_adapter`, its state dict's names)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model.get_base_model() if peft and hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def compiled_layers(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """With `enabled`, each decoder layer runs through torch.compile while the block lasts (training and its
    evaluations; not generation, whose KV-cache shapes would compile again): Inductor fuses a layer's elementwise
    work (norms, rotary, activations, LoRA's scaling) into a few kernels. Dynamic shapes, since a packed row changes
    width every batch. Compiling costs time up front (SmolLM2-135M with LoRA on one CPU thread: about 30 s, for 13%
    off each later micro-batch, BENCHMARKS.md), so it pays only for long runs; the loss agrees with eager to float
    rounding, not bitwise."""
    if not enabled:
        yield
        return
    layers = getattr(unwrap(model).get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ModelError(f"torch_compile: {type(unwrap(model)).__name__} keeps no list of decoder layers to compile")
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # the slot nn.Module.compile fills: the layer runs eagerly again


@contextlib.contextmanager
def whole_on(model: torch.nn.Module, device: torch.device | str) -> Iterator[torch.nn.Module]:
    """The model with all its weights on `device`, for a forward pass before the trainer has prepared it.

    Under FSDP and DeepSpeed, transformers' Trainer leaves the model where it loaded (the CPU) until `train()` wraps
    it, while `_prepare_inputs` sends batches to the accelerator: a pass in `__init__` (precomputed reference
    log-probs) would mix devices. ZeRO-3 with `zero3_init_flag` loads each process's shard only: the full weights
    are gathered for the pass (every process must enter, as every process builds the trainer). An FSDP2 model (after
    training) has its root's weights gathered, every process taking part. Otherwise the model moves to `device` and
    back, so that the wrapper later finds it as it was loaded.
    """
    from torch.distributed.fsdp import FSDPModule
    from transformers.integrations import is_deepspeed_zero3_enabled

    if isinstance(model, FSDPModule):
        # FSDP2 after train(): generate() calls the inner model's forward, past the root's hooks that gather the
        # root's own weights (embeddings, head). Each block's hooks gather its weights, every process taking part.
        model.unshard()
        try:
            yield model
        finally:
            model.reshard()
        return
    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model
        return
    device = torch.device(device)
    before = next(model.parameters()).device
    if before.type == device.type and (before.index or 0) == (device.index or 0):  # "cuda" is "cuda:0"
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(before)
