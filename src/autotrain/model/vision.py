"""What a vision-language run (--image-column) adds at run time: its processor and the checks before the data, which
weights train, its collator, and the images of sample answers and --inference prompts.

The data stage is autotrain.data.vision_tokens; the batches and the forward's image inputs are
autotrain.model.vision_collate; the model loads in autotrain.model.loading like any other (AutoModelForImageTextToText), and
which of its weights train is autotrain.model.vision_weights'.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from autotrain.data.images import PartsTokenizer, image_inputs, image_token_id, place_images
from autotrain.data.vision_tokens import prompt_ids
from autotrain.errors import DataError, ModelError
from autotrain.model.kernels import PaddedFallback, make_collator
from autotrain.model.loading import load_processor
from autotrain.model.vision_collate import VisionCollator, rope_model, takes, vision_packing
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")

__all__ = ["check_config", "collator", "processor_for", "prompt_inputs", "sample_inputs"]


def check_config(config: Any, model: str) -> None:
    """Refuse, before the data stage, a model that takes no images."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or getattr(config, "vision_config", None) is not None:
        return
    raise ModelError(f"image_column: {model} is a text-only model ({type(config).__name__}, model type "
                     f"{config.model_type}); images need a vision-language model (Qwen2-VL, Qwen2.5-VL, "
                     "SmolVLM/Idefics3, Gemma 3, LLaVA, ...): give one as --model, or leave --image-column out")


def processor_for(params: LLMTrainingParams, model: str, config: Any) -> Any:
    """The processor of a run with --image-column, after checking its model takes images; None for a text run."""
    if params.image_column is None:
        return None
    check_config(config, params.model)
    return load_processor(model, params.trust_remote_code)


def collator(params: LLMTrainingParams, processor: Any, model: torch.nn.Module) -> VisionCollator:
    """The run's collator: the text layout this model takes (packed where its forward can place images in a packed
    row, else padded, with the one-line reason on the first batch), plus the images (autotrain.model.vision_collate).
    LD-DPO's completion weights (--ld-alpha) come from `params`, as a text run's do."""
    pad_id = processor.tokenizer.pad_token_id
    ld_alpha = params.method_settings().ld_alpha
    why = vision_packing(model) if params.packing else None
    if why is None:
        layout = make_collator(params.packing, pad_id, params.nll_on_prompt, model=model, padding_side=params.padding,
                               ld_alpha=ld_alpha)
    else:
        layout = PaddedFallback(pad_id=pad_id, prompt_loss=params.nll_on_prompt, padding_side=params.padding,
                                reason=why, ld_alpha=ld_alpha)
    return VisionCollator(layout, processor, rope=rope_model(model) is not None and takes(model, "mm_token_type_ids"),
                          token_types=takes(model, "token_type_ids"))


def _generation_inputs(processor: Any, model: torch.nn.Module, ids: list[int], images: list[Any]) -> dict[str, Any]:
    """generate()'s inputs besides the ids for one prompt and its images."""
    if not images:
        return {}
    out = image_inputs(processor, [images])
    types = (torch.tensor([ids]) == image_token_id(processor)).long()  # 1: an image token
    for name in ("mm_token_type_ids", "token_type_ids"):
        if takes(model, name):
            out[name] = types
    return out


def sample_inputs(processor: Any, model: torch.nn.Module, dataset: Any, rows: list[int]) -> list[dict[str, Any]]:
    """The image inputs of the validation prompts in `rows`, for their sample answers."""
    from autotrain.data.images import decode_image

    rows = dataset.select(rows)
    return [_generation_inputs(processor, model, list(row["prompt_ids"]), [decode_image(b) for b in row["images"]])
            for row in rows]


def prompt_inputs(processor: Any, model: torch.nn.Module, prompt: Any, images: list[Any], where: str
                  ) -> dict[str, Any]:
    """generate()'s inputs for an --inference prompt and its images, built as training built its prompt ids: the
    images placed (autotrain.data.images), the saved chat template, the processor's expansion."""
    tokenizer = processor.tokenizer
    if not tokenizer.chat_template:
        raise DataError(f"{where}: this project's processor has no chat template to place the images with")
    messages = place_images(prompt, len(images), where, "prompt", "images")
    continues = messages[-1]["role"] == "assistant"
    text = PartsTokenizer(tokenizer).apply_chat_template(messages, tokenize=False, add_generation_prompt=not continues,
                                                         continue_final_message=continues)
    ids = prompt_ids(processor, text, images, where, "images")
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            **_generation_inputs(processor, model, ids, images)}
