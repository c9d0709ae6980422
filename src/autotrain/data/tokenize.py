"""Rendered pairs -> token ids per pair, truncated; the prompt is tokenized once and shared.

Each pair stays three separate id lists (prompt, chosen, rejected) until the collator, so the padded and the
packed layouts are two collators over the same data.

Prompt and completion are tokenized separately. Tokenizing them as one string could merge tokens across the
boundary (e.g. "=" + "4"), which would give chosen and rejected different prompt ids; separate tokenization keeps
one prompt for both, which is what makes the prompt shareable.

Rows stream in, are rendered one by one and tokenized a batch at a time (a fast tokenizer encodes a batch on all
cores), and the ids stream out to an Arrow file that `datasets` memory-maps: memory stays flat however many pairs
there are.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from autotrain.data.columns import RANKED
from autotrain.data.render import RenderedPair, Renderer
from autotrain.data.split import Location, Split
from autotrain.errors import DataError

logger = logging.getLogger("autotrain")

ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# Which completion tokens are trained (1) and which are a context turn's (0). Supervised data has a chosen_mask for
# every row; preference data has both, empty for a completion that is trained whole (the common case costs nothing).
MASK_COLUMN, REJECTED_MASK_COLUMN = "chosen_mask", "rejected_mask"
# Ranked answers only: each pair's weight, 1 / (the pairs kept from its prompt), so each prompt counts once in the
# reduction (autotrain.losses); absent, every pair weighs 1.
WEIGHT_COLUMN = "pair_weight"
# Pairs per tokenizer call: larger batches are no faster (measured), and the encoder holds ~80 bytes per token
# of a batch until the call returns, so this bounds peak memory.
BATCH_PAIRS = 256
RECORD_BYTES = 4 << 20  # ids gathered per Arrow record batch; see _ArrowSink


@dataclass(frozen=True)
class Limits:
    """Token budgets, resolved against the model: block_size is never -1 here."""

    max_prompt_length: int
    max_completion_length: int | None
    block_size: int


@dataclass(frozen=True)
class TokenCounts:
    """What tokenizing a split did, besides its ids: kept in the cache, so a cache hit reports the same."""

    pairs: int  # kept
    rows: int  # read: kept and dropped
    dropped: Counter = field(default_factory=Counter)  # reason -> pairs dropped
    truncated: Counter = field(default_factory=Counter)  # what -> pairs cut
    shape: str | None = None  # "text" or "messages", as the renderer saw the rows
    # What rows became, besides plain pairs: conversations and ranked prompts read, pairs made from them, tied
    # answers skipped, rows that gave no pair (Renderer.made).
    made: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class TokenizedSplit:
    """The pairs of one split: `dataset` is a memory-mapped `datasets.Dataset` with columns ID_COLUMNS."""

    dataset: Any
    dropped: Counter = field(default_factory=Counter)  # reason -> pairs dropped
    truncated: Counter = field(default_factory=Counter)  # what -> pairs cut
    rows: int = 0  # rows read, kept and dropped
    shape: str | None = None  # "text" or "messages", as the renderer saw the rows
    made: Counter = field(default_factory=Counter)  # TokenCounts.made

    @classmethod
    def open(cls, path: Path, counts: TokenCounts) -> TokenizedSplit:
        from datasets import Dataset

        dataset = Dataset.from_file(str(path))
        if len(dataset) != counts.pairs:
            raise ValueError(f"{path}: {len(dataset)} pairs, expected {counts.pairs}")
        return cls(dataset, counts.dropped, counts.truncated, counts.rows, counts.shape, counts.made)

    def __len__(self) -> int:
        return len(self.dataset)

    # Whole columns as lists: for tests and small data; training reads `dataset` row by row.
    @property
    def prompt_ids(self) -> list[list[int]]:
        return self._column("prompt_ids")

    @property
    def chosen_ids(self) -> list[list[int]]:
        return self._column("chosen_ids")

    @property
    def rejected_ids(self) -> list[list[int]]:
        return self._column("rejected_ids")

    def _column(self, name: str) -> list[list[int]]:
        return self.dataset.data.column(name).to_pylist()

    def as_dict(self) -> dict[str, list[list[int]]]:
        return {name: self._column(name) for name in ID_COLUMNS}


def resolve_block_size(block_size: int, model_max: int | None) -> int:
    """-1 means min(model maximum, 1024); a larger block size than the model's maximum is cut to it (as aitraining
    does)."""
    if block_size == -1:
        return min(model_max or 1024, 1024)
    if model_max is not None and block_size > model_max:
        logger.warning("block_size %d is more than the model's maximum length %d; using %d", block_size, model_max,
                       model_max)
        return model_max
    return block_size


def tokenize_split(split: Split, renderer: Renderer, tokenizer: Any, limits: Limits, path: Path,
                   eos: bool = True) -> TokenizedSplit:
    """`write_tokens` to `path`, then memory-map it."""
    return TokenizedSplit.open(path, write_tokens(split, renderer, tokenizer, limits, path, eos=eos))


def write_tokens(split: Split, renderer: Renderer, tokenizer: Any, limits: Limits, path: Path,
                 eos: bool = True) -> TokenCounts:
    """Tokenize every row into an Arrow file at `path`; truncate; drop (and count) pairs that cannot train.
    `eos`: end each completion with EOS where no chat template ends it (aitraining's add_eos_token).

    A bad row raises DataError and leaves `path` incomplete: the caller writes it somewhere it can discard.
    """
    if renderer.template is None and eos and tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token, needed to end completions without a chat template")
    paired = renderer.columns.paired
    renderer.made.clear()  # one renderer reads the training split, then the validation split
    weighted = renderer.columns.shape == RANKED
    dropped, truncated, rows = Counter(), Counter(), 0
    tokenize = partial(_tokenize, tokenizer=tokenizer, templated=renderer.templated, paired=paired, limits=limits,
                       dropped=dropped, truncated=truncated, add_eos=eos, weighted=weighted)
    with _progress(split) as bar, _ArrowSink(path, supervised=not paired, weighted=weighted) as sink:
        batch: list[RenderedPair] = []
        for number, row in split.rows(advance=bar.update):
            rows += 1
            for pair in renderer.pairs(row, Location(split, number)):
                if pair.blank:
                    dropped["completion only whitespace"] += 1
                elif paired and pair.chosen == pair.rejected:
                    dropped["chosen == rejected"] += 1
                else:
                    batch.append(pair)
            if len(batch) >= BATCH_PAIRS:  # between rows: the pairs of one row are weighed together
                sink.add(tokenize(batch))
                batch = []
        sink.add(tokenize(batch))
    counts = TokenCounts(sink.rows, rows, dropped, truncated, renderer.shape, +renderer.made)
    report(split.source, counts)
    return counts


def _tokenize(
    batch: list[RenderedPair], tokenizer: Any, templated: bool, paired: bool, limits: Limits, dropped: Counter,
    truncated: Counter, add_eos: bool = True, weighted: bool = False,
) -> list[list]:
    """The kept pairs of a batch as columns of ids: prompt, chosen, rejected, then the masks (1 for a trained token,
    0 for a context turn's): chosen_mask for supervised rows (not `paired`, whose rejected is empty), chosen_mask
    and rejected_mask for pairs (empty where the whole completion is trained); with `weighted`, each pair's weight,
    1 / (the pairs kept from its row)."""
    columns: list[list[list[int]]] = [[], [], [], [], []] if paired else [[], [], [], []]
    groups: list[int] = []
    if not batch:
        return columns + ([[]] if weighted else [])
    # With a template, the rendered text already holds BOS (if the model uses one) and the turn markers.
    prompts = _encode(tokenizer, [p.prompt for p in batch], special=not templated)
    # Every completion piece in one call (chosen and rejected, or a conversation's turns): one larger batch keeps
    # the tokenizer's threads busier. Pieces are tokenized apart, as prompt and completion are.
    sides = [[p.chosen_pieces or ((p.chosen, True),) for p in batch]]
    if paired:
        sides.append([p.rejected_pieces or ((p.rejected, True),) for p in batch])
    texts = [text for side in sides for row in side for text, _ in row]
    encoded = iter(_encode(tokenizer, texts, special=False))
    eos = [] if templated or not add_eos else [tokenizer.eos_token_id]
    completions: list[list[tuple[list[int], list[int]]]] = []
    for side in sides:
        completions.append([])
        for row in side:
            ids: list[int] = []
            mask: list[int] = []
            for _, trained in row:
                piece = next(encoded)
                ids += piece
                mask += [int(trained)] * len(piece)
            completions[-1].append((ids + eos, mask + [1] * len(eos)))
    for index, prompt in enumerate(prompts):
        (chosen, mask), (rejected, rejected_mask) = completions[0][index], (
            completions[1][index] if paired else ([], []))
        prompt, chosen, rejected = _truncate(prompt, chosen, rejected, limits, truncated)
        mask, rejected_mask = mask[: len(chosen)], rejected_mask[: len(rejected)]
        if not chosen or (paired and not rejected):
            dropped["completion empty after truncation"] += 1
            continue
        if paired and chosen == rejected:  # different texts, cut to the same ids: no preference left to learn
            dropped["chosen == rejected after truncation"] += 1
            continue
        if not any(mask) or (paired and not any(rejected_mask)):
            dropped["no trained token left after truncation"] += 1
            continue
        values = [prompt, chosen, rejected, mask]
        if paired:  # an all-trained mask is stored empty
            values = [prompt, chosen, rejected, [] if all(mask) else mask, [] if all(rejected_mask) else rejected_mask]
        for column, value in zip(columns, values):
            column.append(value)
        groups.append(batch[index].group)
    if weighted:  # after the drops above, so the pairs a prompt keeps always weigh 1 together
        kept = Counter(groups)
        columns.append([1.0 / kept[group] for group in groups])
    return columns


class _ArrowSink:
    """Streams id columns into an Arrow IPC stream file, the format `datasets.Dataset.from_file` memory-maps.

    Record batches are gathered to ~RECORD_BYTES before writing: opening the file maps every batch's header,
    and the kernel maps 64 KB around each page it faults in, so many small batches would bring a large part of
    the file into the process's RSS.
    """

    def __init__(self, path: Path, supervised: bool = False, weighted: bool = False):
        import pyarrow as pa

        self.pa, self.path = pa, path
        fields = [(name, pa.list_(pa.int32())) for name in ID_COLUMNS]
        masks = [MASK_COLUMN] if supervised else [MASK_COLUMN, REJECTED_MASK_COLUMN]
        weights = [(WEIGHT_COLUMN, pa.float32())] if weighted else []
        self.schema = pa.schema(fields + [(name, pa.list_(pa.int8())) for name in masks] + weights)
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.rows = 0

    def __enter__(self) -> _ArrowSink:
        self.file = self.pa.OSFile(str(self.path), "wb")
        self.writer = self.pa.ipc.new_stream(self.file, self.schema)
        return self

    def add(self, columns: list[list]) -> None:
        if not columns[0]:
            return
        arrays = [self.pa.array(c, type=field.type) for c, field in zip(columns, self.schema)]
        batch = self.pa.record_batch(arrays, schema=self.schema)
        self.pending.append(batch)
        self.pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.pending_bytes >= RECORD_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            table = self.pa.Table.from_batches(self.pending, schema=self.schema).combine_chunks()
            for batch in table.to_batches():
                self.writer.write_batch(batch)
        self.pending, self.pending_bytes = [], 0

    def __exit__(self, kind: Any, *rest: Any) -> None:
        try:
            if kind is None:
                self._flush()
            self.writer.close()
        finally:
            self.file.close()


def _encode(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    # verbose=False: no "Token indices sequence length is longer than..." warning, since _truncate cuts every
    # sequence to the run's own limits before any reaches the model.
    encoded = tokenizer(texts, add_special_tokens=special, return_attention_mask=False, return_token_type_ids=False,
                        verbose=False)
    return encoded["input_ids"]


def _truncate(
    prompt: list[int], chosen: list[int], rejected: list[int], limits: Limits, counts: Counter
) -> tuple[list[int], list[int], list[int]]:
    if len(prompt) > limits.max_prompt_length:
        prompt = prompt[-limits.max_prompt_length :]  # keep the end: the question sits next to the answer
        counts["prompt > max_prompt_length"] += 1
    cap = max(limits.block_size - len(prompt), 0)
    if limits.max_completion_length is not None:
        cap = min(cap, limits.max_completion_length)
    if len(chosen) > cap or len(rejected) > cap:
        counts["completion cut to max_completion_length / block_size"] += 1
    return prompt, chosen[:cap], rejected[:cap]


def report(source: str, out: TokenCounts) -> None:
    """Log what was cut and dropped (also on a cache hit, so every run says it); no pair left is an error."""
    if out.rows and not out.pairs:
        why = {**out.dropped, **{k: v for k, v in out.made.items() if "without" in k or "skipped" in k}}
        raise DataError(f"every pair was dropped ({why}); nothing left to train on", path=source)
    for line in made_lines(out.made):
        logger.info("%s: %s", source, line)
    for reason, count in out.truncated.items():
        logger.info("%s: %d of %d pairs truncated (%s)", source, count, out.rows, reason)
    for reason, count in out.dropped.items():
        logger.warning("%s: dropped %d of %d pairs (%s)", source, count, out.rows, reason)


def made_lines(made: Counter) -> list[str]:
    """What rows of several pairs became, in words (the log and the model card)."""
    def counted(count: int, unit: str) -> str:
        return f"{count} {unit if count != 1 else unit.removesuffix('s')}"

    lines = []
    if made["conversations"]:
        lines.append(f"{counted(made['conversations'], 'conversations')} -> {counted(made['pairs'], 'pairs')}, one "
                     "per assistant turn carrying a rejected alternative")
        if made["conversations without a marked turn"]:
            lines.append(f"{counted(made['conversations without a marked turn'], 'conversations')} without a "
                         "marked turn gave no pair")
    if made["prompts"]:
        lines.append(f"{counted(made['prompts'], 'prompts')} with ranked answers -> {counted(made['pairs'], 'pairs')}, "
                     "weighted so that each prompt counts once")
        if made["tied pairs skipped"]:
            lines.append(f"{counted(made['tied pairs skipped'], 'pairs')} of tied answers skipped")
        if made["prompts without an untied pair"]:
            lines.append(f"{counted(made['prompts without an untied pair'], 'prompts')} whose answers all tie gave "
                         "no pair")
    return lines


def _progress(split: Split) -> Any:
    from tqdm.auto import tqdm

    bytes_ = split.progress_unit == "B"
    return tqdm(
        total=split.progress_total(),
        desc=f"tokenizing {Path(split.source).name}",
        unit=split.progress_unit,
        unit_scale=bytes_,
        unit_divisor=1024 if bytes_ else 1000,
        disable=not sys.stderr.isatty(),  # a log file gets the summary lines, not a redrawn bar
        leave=False,
    )
