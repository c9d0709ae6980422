"""Data stage entry point: params + tokenizer -> tokenized train (and validation) splits.

Everything here runs before the model's weights are loaded, so bad data fails fast and costs nothing. Both splits
are opened (and their columns checked) before either is tokenized, so a missing validation split is reported
before minutes of tokenizing. Tokenized splits come from the cache in `data/cache.py` when nothing that decides
their ids has changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from autotrain.data.cache import TokenCache
from autotrain.data.render import Columns, Renderer, pick_template, resolve_columns
from autotrain.data.sources import Split, load_split
from autotrain.data.split import Sampled
from autotrain.data.tokenize import Limits, TokenizedSplit, resolve_block_size, write_tokens
from autotrain.data.unpaired import weight_advice
from autotrain.errors import DataError, ParamsError
from autotrain.params import LLMTrainingParams, methods

logger = logging.getLogger("autotrain")


@dataclass(frozen=True)
class PreparedData:
    train: TokenizedSplit
    valid: TokenizedSplit | None
    columns: Columns
    template: str | None  # the chat template used; saved with the tokenizer so inference renders the same way
    limits: Limits

    def save(self, folder: Path) -> None:
        """Each tokenized split as a datasets save_to_disk folder (`datasets.load_from_disk(folder / 'train')`)."""
        for name, split in (("train", self.train), ("validation", self.valid)):
            if split is not None:
                split.dataset.save_to_disk(str(folder / name))


@dataclass(frozen=True)
class OpenedData:
    """The splits opened and their columns checked: what can fail on the data before any tokenizer exists."""

    train: Split
    valid: Split | None
    columns: Columns


def open_data(params: LLMTrainingParams, paired: bool = True) -> OpenedData:
    """Open the splits and pick their columns. `paired`: preference rows for ORPO/DPO; False for SFT rows."""
    train_raw = load_split(params.data_path, params.train_split, is_train=True)
    valid_raw = load_split(params.data_path, params.valid_split, is_train=False) if params.valid_split else None
    if params.max_samples is not None:  # as aitraining: evenly spaced training rows, the first fifth as many to validate
        train_raw = Sampled.evenly(train_raw, params.max_samples)
        if valid_raw is not None:
            valid_raw = Sampled.first(valid_raw, max(1, params.max_samples // 5))
    columns = resolve_columns(params, train_raw, paired, labelled=methods.spec(params.trainer).labelled)
    if valid_raw is not None:
        columns.check(valid_raw)  # the same columns must exist there too
    for split in (train_raw, valid_raw) if params.image_column else ():
        if split is not None and params.image_column not in split.columns:
            raise DataError(f"missing; columns present: {', '.join(split.columns)}", path=split.source,
                            column=params.image_column)
    return OpenedData(train_raw, valid_raw, columns)


DEFAULT_MODEL_MAX: int = LLMTrainingParams.model_fields["model_max_length"].default


def longest_input(params: LLMTrainingParams, positions: int | None) -> int | None:
    """The longest input a block may hold: `model_max_length`, within the model's `positions`
    (max_position_embeddings; None when its config has none). Past its last position a model has nothing to read
    (GPT-2's learned positions fail with an IndexError), so a larger value is refused, naming both.

    2048, the field's default (aitraining's), means the model's own maximum, recognised by value as the column
    defaults are: typed or read back from training_params.json (where every field counts as given), it is the
    same run.
    """
    asked = params.model_max_length
    if asked == DEFAULT_MODEL_MAX:
        return positions
    if positions is not None and asked > positions:
        raise ParamsError(f"model_max_length: {asked} is more than the {positions} positions the model has (its "
                          f"config's max_position_embeddings), the longest input it can read; give at most "
                          f"{positions}, or leave it out to use the model's own")
    return asked


def prepare_data(params: LLMTrainingParams, tokenizer: Any, model_max: int | None, paired: bool = True,
                 opened: OpenedData | None = None, processor: Any = None) -> PreparedData:
    """Tokenize the splits (`opened` by `open_data`, or opened here); with `processor`, the rows' images too
    (autotrain.data.vision_tokens, never cached)."""
    opened = opened or open_data(params, paired)
    train_raw, valid_raw, columns = opened.train, opened.valid, opened.columns
    template = pick_template(tokenizer, params.chat_template if params.apply_chat_template else "none")
    limits = Limits(
        max_prompt_length=params.max_prompt_length,
        max_completion_length=params.max_completion_length,
        block_size=resolve_block_size(params.block_size, longest_input(params, model_max)),
    )
    renderer = Renderer(tokenizer, template, columns, params.reasoning_loss, params.ranked_pairs)
    method = params.method_settings()
    # Labelled examples (kto) carry each one's mismatched KL completion when the loss reads a KL reference point.
    kl = columns.labelled and method.losses[0].name == "kto"
    settings = {"columns": [columns.prompt, columns.chosen, columns.rejected], "chat_template": params.chat_template,
                "add_eos_token": params.add_eos_token, "shape": [columns.shape, columns.scores, columns.tools],
                "reasoning_loss": params.reasoning_loss, "ranked_pairs": params.ranked_pairs}
    if columns.labelled:
        settings["examples"] = [columns.label, columns.unpair, kl]
    cache = TokenCache(tokenizer, template, settings, limits,
                       keep=params.save_processed_data != "none" and processor is None)

    def tokenized(split: Split, name: str, extra: dict[str, Any] | None = None) -> TokenizedSplit:
        # called with the Arrow file to write
        build = partial(write_tokens, split, renderer, tokenizer, limits, eos=params.add_eos_token, kl_completions=kl)
        if processor is not None:  # never labelled: kto with --image-column is refused with the params
            from autotrain.data.images import image_root
            from autotrain.data.vision_tokens import VisionRenderer, write_vision_tokens

            vision = VisionRenderer(tokenizer, template, columns, params.image_column, image_root(split),
                                    reasoning_loss=params.reasoning_loss, ranked=params.ranked_pairs)
            vision.shape = renderer.shape
            build = partial(write_vision_tokens, split, vision, processor, limits)
        return cache.get(split, cache.key(split, name, extra), build)

    train = tokenized(train_raw, params.train_split)
    if columns.labelled:
        advice = weight_advice(train.made["desirable"], train.made["undesirable"],
                               method.values["desirable_weight"], method.values["undesirable_weight"])
        if advice:
            logger.warning("%s: %s", train_raw.source, advice)
    valid = None
    if valid_raw is not None:
        # Validation rows must have the training rows' shape (strings or messages); on a cached train split the
        # renderer has seen no row, so it learns the shape from the cache.
        renderer.shape = train.shape
        valid = tokenized(valid_raw, params.valid_split, {"train_shape": train.shape})
    logger.info(
        "data: %d train %s%s; template: %s; block size %d",
        len(train),
        columns.unit,
        f", {len(valid)} validation" if valid is not None else "",
        "none" if template is None else (params.chat_template or "tokenizer's"),
        limits.block_size,
    )
    return PreparedData(train, valid, columns, template, limits)
