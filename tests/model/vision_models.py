"""Tiny vision-language models built in the test, with their processors, offline: Qwen2-VL (M-RoPE positions, patch
grids whose token count follows the image's size) and Idefics3 (SmolVLM's architecture: tiled images, a Llama
language model). Each processor is its image processor from the class defaults (the PIL path: no torchvision), the
character tokenizer of conftest with the family's image tokens added, and a chat template that places image parts.

Images of different sizes give different numbers of image tokens: Qwen2-VL makes one token per 28 x 28 pixels after
its resize (56 x 84 -> 6, 112 x 56 -> 8, 84 x 84 -> 9); Idefics3 splits an image into 32-pixel tiles, 4 tokens each,
plus a global view.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import make_tokenizer

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] | capitalize }}:{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>Assistant:{% endif %}"
)
# Gemma 3's and LLaVA's: the same ChatML turns, each image as the family's placeholder.
GEMMA_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<start_of_image>")
LLAVA_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")
QWEN_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
GEMMA_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
FAMILIES = ("qwen2_vl", "idefics3")
# Also built: Gemma 3 (its image tokens attend to each other both ways: padded) and LLaVA (CLIP tiles of one size).
MORE_FAMILIES = ("gemma3", "llava")
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, bos_token_id=1, eos_token_id=4, pad_token_id=2)


def _tokenizer(extra: list[str]):
    tokenizer = make_tokenizer(chat=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *extra]})
    return tokenizer


def make_vlm_dir(folder: Path, family: str, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                 max_pixels: int = 28 * 28 * 16) -> Path:
    """A tiny random `family` model with its processor's files in `folder`; `text`, `vision` and `max_pixels` (the
    largest image Qwen2-VL's processor keeps) resize it (bench/vlm_bench.py)."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tokenizer = _tokenizer(QWEN_TOKENS)
        ids = dict(zip(QWEN_TOKENS, tokenizer.convert_tokens_to_ids(QWEN_TOKENS)))
        config = Qwen2VLConfig(
            text_config={**dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                 "rope_theta": 10000.0},
                                bos_token_id=1, eos_token_id=4, pad_token_id=2), **(text or {})},
            vision_config={**dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3), **(vision or {})},
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False)
        model = Qwen2VLForConditionalGeneration(config)
        images = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=max_pixels)
        template, processor_class, extra = QWEN_TEMPLATE, "Qwen2VLProcessor", {}
    elif family == "gemma3":
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        tokenizer = _tokenizer(GEMMA_TOKENS)
        tokenizer._set_model_specific_special_tokens(special_tokens=dict(zip(("boi_token", "eoi_token", "image_token"),
                                                                             GEMMA_TOKENS)))
        ids = tokenizer.convert_tokens_to_ids(GEMMA_TOKENS)
        config = Gemma3Config(
            text_config=dict(_TEXT, vocab_size=len(tokenizer), head_dim=8, sliding_window=8,
                             layer_types=["sliding_attention", "full_attention"]),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=7),
            mm_tokens_per_image=4, boi_token_id=ids[0], eoi_token_id=ids[1], image_token_id=ids[2])
        model = Gemma3ForConditionalGeneration(config)
        images = Gemma3ImageProcessorPil(size={"height": 28, "width": 28})
        template, processor_class, extra = GEMMA_TEMPLATE, "Gemma3Processor", {"image_seq_length": 4}
    elif family == "llava":
        from transformers import LlavaConfig, LlavaForConditionalGeneration
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        tokenizer = _tokenizer(["<image>"])
        config = LlavaConfig(
            text_config=dict(_TEXT, model_type="llama", vocab_size=len(tokenizer), tie_word_embeddings=False),
            vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                               projection_dim=16),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
            vision_feature_layer=-1, tie_word_embeddings=False)
        model = LlavaForConditionalGeneration(config)
        images = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
        template, processor_class = LLAVA_TEMPLATE, "LlavaProcessor"
        extra = {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    else:
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        tokenizer = _tokenizer(IDEFICS_TOKENS)
        config = Idefics3Config(
            text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, bos_token_id=1, eos_token_id=4, pad_token_id=2,
                             tie_word_embeddings=False),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2, tie_word_embeddings=False)
        model = Idefics3ForConditionalGeneration(config)
        images = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        template, processor_class, extra = IDEFICS_TEMPLATE, "Idefics3Processor", {"image_seq_len": 4}
    # Weights far from the uniform start, so that log-probs differ between tokens and images matter.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    model.save_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    images.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(template)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": processor_class, **extra}))
    return folder


def make_images(folder: Path, sizes=((56, 84), (112, 56), (84, 84))) -> list[str]:
    """PNG files of these (width, height) sizes with random pixels; their names."""
    from PIL import Image

    generator = torch.Generator().manual_seed(len(sizes))
    names = []
    for number, (width, height) in enumerate(sizes):
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        name = f"img{number}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names
