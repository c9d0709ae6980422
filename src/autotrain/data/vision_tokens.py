"""Rows with images -> token ids and the images' bytes: the data stage of a vision-language run.

Each row's images are read and checked (autotrain.data.images), placed in its prompt, and the prompt is rendered
through the chat template as text rows are (autotrain.data.render, every message as parts). The processor turns the
prompt and its images into the prompt's ids: each image's placeholder expanded into as many image tokens as the
image gives (Qwen2-VL: one per 28x28 pixels after its resize; Idefics3: a grid of tiles). The completions are
tokenized as in a text run (autotrain.data.tokenize), so the masks of context turns, the block-size cut and every
drop rule are the text run's.

Truncation never cuts inside an image: a prompt longer than max_prompt_length loses text from its start, but only
the text before its first image (and the special tokens that open that image); a prompt whose part from the first
image on does not fit is dropped and counted, as "image tokens alone exceed ..." when its image tokens alone do not
fit. The budget is max_prompt_length, and block_size less one token for the completion.

The split is tokenized each run, not taken from the tokenized-data cache: the cache's key sees the data file, not
the image files a row names.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from autotrain.data.columns import PAIRS, SUPERVISED
from autotrain.data.images import PartsTokenizer, image_token_id, place_images, read_images
from autotrain.data.render import Columns, RenderedPair, Renderer
from autotrain.data.split import Location, Row, Split
from autotrain.data.tokenize import Limits, TokenCounts, _ArrowSink, _progress, _tokenize, report
from autotrain.errors import DataError

__all__ = ["IMAGES_COLUMN", "VisionRenderer", "prompt_ids", "write_vision_tokens"]

IMAGES_COLUMN = "images"  # the tokenized split's column of each pair's image bytes
NO_ROOM_FOR_IMAGES = "image tokens alone exceed max_prompt_length or block_size"
NO_ROOM_FROM_IMAGE = "prompt from its first image on exceeds max_prompt_length or block_size"
CUT_BEFORE_IMAGE = "prompt > max_prompt_length (text before its first image cut)"


class VisionRenderer(Renderer):
    """A Renderer whose rows carry images: `placed` puts a row's images in its prompt; the template gets every
    message as parts (autotrain.data.images.PartsTokenizer)."""

    def __init__(self, tokenizer: Any, template: str | None, columns: Columns, image_column: str, root: Path,
                 **options: Any):
        if columns.shape not in (PAIRS, SUPERVISED):
            raise DataError(f"--image-column: rows of {columns.shape} answers are not read with images here; give "
                            "one prompt, chosen and rejected (or SFT's completion) per row")
        super().__init__(PartsTokenizer(tokenizer), template, columns, **options)
        self.image_column, self.root = image_column, root

    def images(self, row: Row, where: object) -> tuple[list[bytes], list[Any]]:
        if self.image_column not in row:
            raise DataError(f"{where}, column '{self.image_column}': missing from this row (it has: {', '.join(row)})")
        return read_images(row[self.image_column], where, self.image_column, self.root)

    def placed(self, row: Row, count: int, where: object) -> Row:
        """The row with its `count` images placed: in the prompt, or where there is no prompt column, in each
        conversation (chosen and rejected, or SFT's messages) at its first user message."""
        cols = self.columns
        names = [cols.prompt] if cols.prompt is not None else [cols.chosen, cols.rejected]
        row = dict(row)
        for name in names:
            if name is None or not isinstance(row.get(name), (str, list)):
                continue
            if isinstance(row[name], str) and name != cols.prompt:
                raise DataError(f"{where}, column '{name}': a text without a prompt column has no prompt for the "
                                f"images of column '{self.image_column}'; give a prompt column or conversations")
            row[name] = place_images(row[name], count, where, name, self.image_column)
        return row


def prompt_ids(processor: Any, text: str, images: list[Any], where: object, column: str) -> list[int]:
    """The prompt's ids with each image placeholder expanded by the processor (one line naming the row when the
    processor refuses the images or the text's placeholders do not match them)."""
    try:
        out = processor(text=[text], images=[images] if images else None, add_special_tokens=False)
    except Exception as exc:  # noqa: BLE001 - the processor's own reason, on one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where}, column '{column}': the processor refuses this prompt's {len(images)} image(s): "
                        f"{reason}") from None
    return list(out["input_ids"][0])


def write_vision_tokens(split: Split, renderer: VisionRenderer, processor: Any, limits: Limits, path: Path,
                        eos: bool = True) -> TokenCounts:
    """Tokenize every row and keep its images' bytes, in an Arrow file at `path` (tokenize.write_tokens' contract).
    `eos` is unused: a vision-language run renders through a chat template, which ends each turn."""
    tokenizer = processor.tokenizer
    if renderer.template is None:
        raise DataError("--image-column: the model's processor and tokenizer have no chat template to place the "
                        "images with", path=split.source)
    paired = renderer.columns.paired
    image_ids, opening = _image_tokens(processor)
    dropped, truncated, rows = Counter(), Counter(), 0
    renderer.made.clear()
    with _progress(split) as bar, _ImageSink(path, supervised=not paired) as sink:
        for number, row in split.rows(advance=bar.update):
            rows += 1
            where = Location(split, number)
            kept, images = renderer.images(row, where)
            pair = renderer(renderer.placed(row, len(images), where), where)
            if pair.blank or (paired and pair.chosen == pair.rejected):
                dropped["completion only whitespace" if pair.blank else "chosen == rejected"] += 1
                continue
            prompt = prompt_ids(processor, pair.prompt, images, where, renderer.image_column)
            prompt, why = _cut_prompt(prompt, image_ids, opening, limits)
            if prompt is None:
                dropped[why] += 1
                continue
            if why is not None:
                truncated[why] += 1
            columns = _completions(pair, prompt, tokenizer, paired, limits, dropped, truncated)
            if columns is not None:
                sink.add([[value] for value in columns] + [[kept]])
    counts = TokenCounts(sink.rows, rows, dropped, truncated, renderer.shape, +renderer.made)
    report(split.source, counts)
    return counts


def _completions(pair: RenderedPair, prompt: list[int], tokenizer: Any, paired: bool, limits: Limits,
                 dropped: Counter, truncated: Counter) -> list[list[int]] | None:
    """The pair's columns (prompt, chosen, rejected, masks) with its completions tokenized, cut and checked as a text
    run's are (tokenize._tokenize, with the prompt's room already taken from the block), or None when dropped."""
    room = Limits(limits.max_prompt_length, limits.max_completion_length, limits.block_size - len(prompt))
    columns = _tokenize([dataclasses.replace(pair, prompt="")], tokenizer, True, paired, room, dropped, truncated)
    if not columns[0]:
        return None
    return [prompt] + [column[0] for column in columns[1:]]


def _image_tokens(processor: Any) -> tuple[set[int], set[int]]:
    """(the image token ids, the special tokens that may open an image): what truncation must not cut into."""
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    return {image_token_id(processor)}, special


def _cut_prompt(ids: list[int], image_ids: set[int], opening: set[int], limits: Limits
                ) -> tuple[list[int] | None, str | None]:
    """(the prompt kept, or None when the pair is dropped; the truncation or drop reason, or None)."""
    budget = min(limits.max_prompt_length, limits.block_size - 1)
    first = next((i for i, token in enumerate(ids) if token in image_ids), None)
    if first is None:
        return (ids, None) if len(ids) <= limits.max_prompt_length else \
            (ids[-limits.max_prompt_length :], "prompt > max_prompt_length")
    start = first
    while start > 0 and ids[start - 1] in opening:  # <|vision_start|>, <fake_token_around_image><row_1_col_1>, ...
        start -= 1
    if sum(token in image_ids for token in ids) > budget:
        return None, NO_ROOM_FOR_IMAGES
    if len(ids) - start > budget:
        return None, NO_ROOM_FROM_IMAGE
    if len(ids) > limits.max_prompt_length:
        return ids[-limits.max_prompt_length :], CUT_BEFORE_IMAGE
    return ids, None


class _ImageSink(_ArrowSink):
    """The token columns, and each pair's image bytes."""

    def __init__(self, path: Path, supervised: bool = False):
        super().__init__(path, supervised)
        self.schema = self.schema.append(self.pa.field(IMAGES_COLUMN, self.pa.list_(self.pa.binary())))
