"""The batches of a vision-language run: a text layout's batch (autotrain.batch.padded, autotrain.batch.packed) plus the
processor's image inputs, and what the model's forward needs to place them.

The images go to the processor once per *prompt occurrence* in the batch, in the order the prompts appear in the
flattened rows: the model's forward fills its image tokens, in that order, with the vision encoder's outputs
(`masked_scatter`). The packed layout holds each pair's prompt once, so each image of a pair is encoded once; the
padded layout holds it twice (chosen row, rejected row), as TRL's vision collator does. A pair of two images:

    packed:  row = [prompt(img0, img1) | chosen | rejected]          images [img0, img1]
    padded:  rows = [prompt(img0, img1) chosen], [prompt(img0, img1) rejected]   images [img0, img1, img0, img1]

Models whose positions are multimodal (Qwen2-VL's M-RoPE, `get_rope_index`: an image's tokens take (t, h, w)
positions, the text after it continues past the largest) get them computed by the model's own `get_rope_index`, on
each prompt occurrence alone, in the forward (`vision_inputs`); each completion token takes its text position
(autotrain.batch.packed) plus its prompt's offset (the largest prompt position + 1 - the prompt's length), which is
exactly what the model computes for prompt + completion as one sequence. In the padded layout the model computes
them itself from `mm_token_type_ids` and the padding mask. A model whose forward takes `token_type_ids` (Gemma 3,
whose image tokens attend to each other both ways) gets them in the padded layout; it is not packed
(`vision_packing`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from autotrain.batch.packed import PROMPT
from autotrain.data.images import decode_image, image_inputs, image_token_id
from autotrain.model.loading import unwrap

__all__ = ["VisionCollator", "prompt_order", "rope_model", "vision_inputs", "vision_packing"]


def prompt_order(batch: dict[str, Any]) -> list[int]:
    """The pair of each prompt occurrence of a batch, in the order the prompts appear in its flattened rows.

    Read from the batch contract (autotrain.batch.contract): each sequence's tokens are contiguous, its prompt first, so
    its first target comes after its prompt and before any later sequence's prompt. A packed batch that shares
    prompts has one per pair (its chosen sequence's); the others have one per sequence."""
    first: dict[int, int] = {}
    for seq, hidden in zip(batch["target_seq"].tolist(), batch["hidden_index"].tolist()):
        first[seq] = min(first.get(seq, hidden), hidden)
    pairs = batch["num_pairs"]
    shared = "segment_ids" in batch and "cu_seq_lens" not in batch
    return [seq % pairs for seq in sorted((s for s in first if not (shared and s >= pairs)), key=first.__getitem__)]


def rope_model(model: torch.nn.Module) -> Any:
    """The module whose `get_rope_index` gives a multimodal-position model its positions (Qwen2-VL's), or None."""
    inner = getattr(unwrap(model), "model", None)
    return inner if callable(getattr(inner, "get_rope_index", None)) else None


def takes(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(unwrap(model).forward).parameters


def vision_packing(model: torch.nn.Module) -> str | None:
    """Why this vision-language model's forward cannot take a packed batch, or None when it can."""
    if takes(model, "token_type_ids"):
        return ("its image tokens attend to each other both ways (token_type_ids), which the packed mask does not "
                "express")
    owner = rope_model(model)
    if owner is not None:
        wanted = {"input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask"}
        if not wanted <= set(inspect.signature(owner.get_rope_index).parameters):
            return f"its multimodal positions ({type(owner).__name__}.get_rope_index) take other inputs"
    return None


@dataclass(frozen=True)
class VisionCollator:
    """`layout`'s batch of the pairs' ids, plus under `image_inputs` the processor's outputs for the images of each
    prompt occurrence (`prompt_order`), `mm_token_type_ids` (padded) or the `rope` plan (packed) for a model with
    multimodal positions (`rope`), and `token_type_ids` for a model that takes them (`token_types`).
    `num_images`: the images the vision encoder reads for this batch (a host int)."""

    layout: Callable[[list[dict[str, Any]]], dict[str, Any]]
    processor: Any
    rope: bool = False
    token_types: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.layout([{k: v for k, v in f.items() if k != "images"} for f in features])
        order = prompt_order(batch)
        images = [[decode_image(data) for data in features[pair].get("images") or []] for pair in order]
        batch["num_images"] = sum(map(len, images))
        if not batch["num_images"]:
            return batch
        batch["image_inputs"] = image_inputs(self.processor, [group for group in images if group])
        image = image_token_id(self.processor)
        if self.token_types:
            batch["token_type_ids"] = (batch["input_ids"] == image).long()
        if self.rope and "segment_ids" in batch:
            batch["rope"] = _rope_plan(batch, features, order, image)
        elif self.rope:
            batch["mm_token_type_ids"] = (batch["input_ids"] == image).long()
        return batch


def _rope_plan(batch: dict[str, Any], features: list[dict[str, Any]], order: list[int], image: int
               ) -> dict[str, torch.Tensor]:
    """Where each prompt occurrence of a packed batch lies, for `mrope_positions`: its ids (`prompts` [N, P],
    right-padded, `mask`, `types`), the flat index of each of its tokens in the rows (`index`) with the slot of
    that token in `prompts` (`slot`), and for every token of the rows the occurrence whose sequence it is in
    (`group` [R, T], -1 for padding)."""
    segments = batch["segment_ids"]
    rows, width = segments.shape
    shared = "cu_seq_lens" not in batch
    prompts = [list(features[pair]["prompt_ids"]) for pair in order]
    longest = max(map(len, prompts))
    ids = torch.zeros((len(prompts), longest), dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for k, prompt in enumerate(prompts):
        ids[k, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[k, : len(prompt)] = 1
    # Occurrence k is the k-th prompt segment in the flattened rows: a shared prompt's segment id is 3j (its chosen
    # 3j + 1 and rejected 3j + 2 follow it); a per-sequence segment (3j + 1) holds its prompt first.
    flat = segments.reshape(-1).tolist()
    group = [-1] * len(flat)
    index: list[int] = []
    slot: list[int] = []
    k = -1
    for t, seg in enumerate(flat):
        new_row = t % width == 0
        if seg < 0:
            continue
        if new_row or seg != flat[t - 1]:
            opens = seg % 3 == PROMPT if shared else True  # batch.packed's encoding: seg % 3 is the part
            if opens:
                k += 1
                index += range(t, t + len(prompts[k]))
                slot += range(k * longest, k * longest + len(prompts[k]))
        group[t] = k
    if k + 1 != len(prompts):
        raise RuntimeError(f"packed batch: {k + 1} prompt segments for {len(prompts)} prompts")
    return {"prompts": ids, "mask": mask, "types": (ids == image).long(),
            "group": torch.tensor(group, dtype=torch.long).reshape(rows, width),
            "index": torch.tensor(index, dtype=torch.long), "slot": torch.tensor(slot, dtype=torch.long)}


def vision_inputs(model: torch.nn.Module, batch: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """The image inputs of `batch` for the model's forward, with `args` (the decoder's text inputs,
    autotrain.model.kernels.decoder_inputs) adjusted: M-RoPE positions for a packed batch, the model's own positions
    (from `mm_token_type_ids` and the padding mask) for a padded one."""
    if "image_inputs" not in batch:
        return {}
    extra = dict(batch["image_inputs"])
    if "token_type_ids" in batch:
        extra["token_type_ids"] = batch["token_type_ids"]
    if "mm_token_type_ids" in batch:
        args.pop("position_ids", None)  # left padding's 2-D positions would stand for M-RoPE's three
        extra["mm_token_type_ids"] = batch["mm_token_type_ids"]
    if "rope" in batch:
        args["position_ids"] = mrope_positions(model, batch, args["position_ids"])
    return extra


def mrope_positions(model: torch.nn.Module, batch: dict[str, Any], text: torch.Tensor) -> torch.Tensor:
    """[4, R, T] positions of a packed batch for an M-RoPE model: the text positions (what a packed forward reads
    for its masks), then the three multimodal ones, each prompt's from the model's own `get_rope_index` on that
    prompt alone and each completion token's its text position plus its prompt's offset."""
    plan = batch["rope"]
    positions, offsets = rope_model(model).get_rope_index(
        plan["prompts"], mm_token_type_ids=plan["types"], image_grid_thw=batch["image_inputs"].get("image_grid_thw"),
        attention_mask=plan["mask"])
    group = plan["group"]
    offset = torch.where(group >= 0, offsets.reshape(-1).to(text.device)[group.clamp(min=0)], 0)
    multimodal = (text + offset).unsqueeze(0).repeat(3, 1, 1)
    flat = multimodal.view(3, -1)
    flat[:, plan["index"]] = positions.to(text.device).reshape(3, -1)[:, plan["slot"]].to(flat.dtype)
    return torch.cat([text.unsqueeze(0), multimodal])
