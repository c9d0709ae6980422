"""The one place a model or a tokenizer is loaded, and the one way back to the transformers model inside wrappers.

Models load for training (`load_model`, with LoRA adapters from autotrain.model.lora), as a frozen DPO reference
(`load_reference`), for inference (`load_trained`; `load_base`: what a full fine-tune started from, for `aitraining
chat`) and to merge a saved adapter (`merge_saved_adapter`), all through `_from_pretrained` (a vision-language model,
with its processor from `load_processor`, through AutoModelForImageTextToText): float32 (mixed precision autocasts on
top; a merged model is saved as trained), safetensors only (a pickle file can run code when it is loaded), and the
run's trust_remote_code. The tokenizer and config load first
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
from autotrain.model.lora import add_lora
from autotrain.model.vision_weights import freeze_vision, lora_targets
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


def load_processor(model: str, trust_remote_code: bool) -> Any:
    """The model's processor (image processor, tokenizer, chat template): one ModelError line when it has none.

    A processor that also holds a video processor (Qwen2-VL's) is loaded without it where torchvision, which every
    video processor of transformers needs, is not installed: images go through the image processor alone."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (ImportError, OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not any(word in reason.lower() for word in ("torchvision", "video processor")):
            raise ModelError(f"image_column: {model} has no processor to read images with ({reason})") from None
        processor = _without_video(model, trust_remote_code)
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise ModelError(f"image_column: {model} has no image processor (AutoProcessor gives a "
                         f"{type(processor).__name__}); --image-column needs a vision-language model's processor")
    tokenizer = processor.tokenizer
    if not getattr(tokenizer, "chat_template", None) and getattr(processor, "chat_template", None):
        tokenizer.chat_template = processor.chat_template  # the template that places the images
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, as for text models (models.load_tokenizer)
    return processor


# The files of a video processor's settings: an images-only processor saves the source's, so that its folder loads
# whole (video processor included) where torchvision is installed.
_VIDEO_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def _without_video(model: str, trust_remote_code: bool) -> Any:
    """The model's processor class, less its video processor: a subclass whose attributes leave it out."""
    import shutil

    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.utils import cached_file

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    base = PROCESSOR_MAPPING[type(config)]
    kept = [name for name in base.get_attributes() if name != "video_processor"]

    def save_pretrained(self: Any, folder: str | Path, *args: Any, **kwargs: Any) -> Any:
        saved = base.save_pretrained(self, folder, *args, **kwargs)
        for name in _VIDEO_FILES:
            source = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
            if source is not None and not (Path(folder) / name).exists():
                shutil.copyfile(source, Path(folder) / name)
        return saved

    images_only = type(base.__name__, (base,), {"get_attributes": classmethod(lambda cls: kept),
                                                "save_pretrained": save_pretrained, "__module__": base.__module__})
    # Debug only: --inference prints JSON lines on stdout, where the run's own lines would mix in.
    logger.debug("%s: loaded without its video processor (torchvision is not installed); images only", base.__name__)
    return images_only.from_pretrained(model, trust_remote_code=trust_remote_code)


def load_config(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)


def model_max_length(config: Any) -> int | None:
    # A vision-language model keeps it in its language model's config.
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def load_model(params: LLMTrainingParams, model: str) -> torch.nn.Module:
    """The base model, with LoRA adapters when `peft` is set.

    Attention runs through the kernel the user chose, else `default_attention`'s when the model's class supports
    it (flex_attention on CUDA with packing: it skips the masked blocks of a packed row, which SDPA with an explicit
    mask computes), else transformers' default (SDPA); the start-up probe (autotrain.train.kernel_probe)
    checks a GPU-only kernel before training. With `quantization`, the frozen base weights load in 4 or 8 bits
    through bitsandbytes (QLoRA).
    """
    extra: dict[str, Any] = {"attn_implementation": params.attention} if params.attention is not None else {}
    if params.quantization is not None:
        extra["quantization_config"] = quantization_config(params)
        # Each process holds its quantized copy on its own GPU (bitsandbytes weights cannot be moved after loading).
        extra["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    vision = params.image_column is not None
    try:
        net = _from_pretrained(model, params.trust_remote_code, vision=vision, **extra)
    except (ValueError, ImportError) as exc:
        if params.attention is None:
            raise
        # transformers refuses a kernel the model or the machine cannot run (flash_attn missing, no CUDA ...).
        raise ModelError(f"attn_implementation {params.attention}: {str(exc).split('. ')[0]}") from None
    if params.attention is None:
        _use_default_attention(net, params)
    # The KV cache is useless in training and conflicts with gradient checkpointing.
    net.config.use_cache = False
    if vision:
        freeze_vision(net, params)
    if params.peft:
        if params.quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Casts norms and the head to fp32 for stable training; checkpointing is the Trainer's to enable.
            net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
        net = add_lora(net, params, targets=lora_targets(net, params) if vision else None)
    return net


def check_reference_tokenizer(tokenizer: Any, reference: str, trust_remote_code: bool) -> None:
    """Refuse a reference model whose tokenizer is not the policy's, before any weights load: the reference scores
    the policy's token ids, so each id must be the same token for both. The vocabularies are compared token by
    token (special and added tokens included), not by size: Llama-2's and Mistral's both have 32,000 rows and
    share few ids. A reference folder without a tokenizer cannot be compared; only its size is then checked."""
    try:
        theirs = load_tokenizer(reference, trust_remote_code)
    except (OSError, ValueError) as exc:  # weights only, no tokenizer files
        logger.warning("model_ref %s: no tokenizer to compare with the policy's (%s); only its vocabulary size is "
                       "checked", reference, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    ours, other = tokenizer.get_vocab(), theirs.get_vocab()
    if ours == other:
        return
    by_id, other_by_id = {i: t for t, i in ours.items()}, {i: t for t, i in other.items()}
    differs = next((i for i in sorted(set(by_id) | set(other_by_id)) if by_id.get(i) != other_by_id.get(i)), None)
    if differs is not None:
        what = (f"token id {differs} is {_shown_token(by_id.get(differs))} in the policy's tokenizer and "
                f"{_shown_token(other_by_id.get(differs))} in the reference's")
    else:  # the same ids, one token spelt two ways for one id
        what = f"the policy's tokenizer has {len(ours)} tokens and the reference's {len(other)}"
    raise ModelError(f"model_ref: {reference} has another tokenizer than the model being trained: {what}; the "
                     "reference scores the policy's token ids, so it must share the tokenizer")


def _shown_token(token: str | None) -> str:
    return "absent" if token is None else repr(token)


def load_reference(params: LLMTrainingParams, model: str, vocab_size: int, attention: str | None = None
                   ) -> torch.nn.Module:
    """A frozen reference model for DPO (never quantized, never given adapters); its vocabulary must match.
    `attention`: the kernel the trained model runs (after the start-up probe); None: as the params choose."""
    attention = attention or params.attention
    extra = {"attn_implementation": attention} if attention is not None else {}
    net = _from_pretrained(model, params.trust_remote_code, vision=params.image_column is not None, **extra)
    if attention is None:
        _use_default_attention(net, params)
    net.config.use_cache = False
    size = net.get_output_embeddings().weight.shape[0]
    if size != vocab_size:
        raise ModelError(
            f"model_ref: {model} has a vocabulary of {size} tokens, the model being trained {vocab_size}; the "
            "reference must share the tokenizer"
        )
    return net.requires_grad_(False).eval()


def load_trained(project: Path, trust_remote_code: bool = False, vision: bool = False) -> tuple[Any, Any]:
    """A finished run's model, in eval mode, and its tokenizer: the merged model where there is one, else the base
    model with the adapter. `vision`: a vision-language run's (AutoModelForImageTextToText)."""
    if not (project / "config.json").exists() and not (project / "adapter_config.json").exists():
        raise ModelError(f"{project}: no trained model here (no config.json or adapter_config.json)")
    model = _from_pretrained(project, trust_remote_code, vision=vision)
    return model.eval(), load_tokenizer(str(project), trust_remote_code)


def load_judge(model: str, reward: bool) -> tuple[Any, Any]:
    """A judge (autotrain.judge) in eval mode, and its tokenizer: a reward model (sequence classification) or a
    causal LM. Never its own code (a judge is someone else's model, and no flag vouches for it); bf16 on a GPU
    that has it (a judge only reads, and a 7B one in fp32 takes 28 GB), else fp32."""
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if reward:
        from transformers import AutoModelForSequenceClassification

        net = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype, use_safetensors=True)
    else:
        net = _from_pretrained(model, False, dtype=dtype)
    return net.eval(), load_tokenizer(model, False)


def load_base(model: str, trust_remote_code: bool) -> Any:
    """The model a full fine-tune started from, in eval mode, to answer beside it (`aitraining chat`)."""
    return _from_pretrained(model, trust_remote_code).eval()


def merge_saved_adapter(adapter_dir: Path, trust_remote_code: bool, vision: bool = False) -> Any:
    """The base model (loaded again, on CPU) with the adapter saved in `adapter_dir` merged in."""
    return _from_pretrained(adapter_dir, trust_remote_code, vision=vision).merge_and_unload()


def _from_pretrained(name: str | Path, trust_remote_code: bool, vision: bool = False, **extra: Any
                     ) -> torch.nn.Module:
    """A causal LM in float32 from safetensors (`vision`: a vision-language model, AutoModelForImageTextToText); a
    folder holding only a LoRA adapter loads as its base model with the adapter (peft reads the base model's name
    from the adapter's config)."""
    folder = Path(name).expanduser()
    adapter_only = (folder / "adapter_config.json").exists() and not (folder / "config.json").exists()
    common = {"dtype": torch.float32, "trust_remote_code": trust_remote_code, "use_safetensors": True, **extra}
    if vision:
        from transformers import AutoModelForImageTextToText

        if not adapter_only:
            return AutoModelForImageTextToText.from_pretrained(name, **common)
        from peft import PeftConfig, PeftModel

        base = PeftConfig.from_pretrained(name).base_model_name_or_path
        return PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, **common), name)
    if adapter_only:
        from peft import AutoPeftModelForCausalLM as loader
    else:
        from transformers import AutoModelForCausalLM as loader
    return loader.from_pretrained(name, **common)


def _use_default_attention(net: torch.nn.Module, params: LLMTrainingParams) -> None:
    """Switch a model loaded with transformers' default kernel to `default_attention`'s, when its class supports it
    (a class without flex_attention keeps SDPA rather than failing to load)."""
    chosen = default_attention(params)
    if chosen is not None and getattr(type(net), _KERNEL_FLAGS[chosen], False):
        net.set_attn_implementation(chosen)


def default_attention(params: LLMTrainingParams) -> str | None:
    """The kernel a run gets when --attn-implementation is not given: flex_attention on CUDA with packing (it skips
    a packed row's masked blocks), else None (transformers' default, SDPA).

    The one place this default is decided. The start-up probe (autotrain.train.kernel_probe) checks it on
    the first training pair and falls back to SDPA when it fails; tests replace this function to take the CUDA
    decision on a CPU machine.
    """
    return "flex_attention" if torch.cuda.is_available() and params.packing else None


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
