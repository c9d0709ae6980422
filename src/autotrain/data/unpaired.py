"""Labelled examples for kto: unpaired rows read, pairs unpaired, and each example's mismatched KL completion.

KTO trains on single answers, each desirable or not. They come as TRL's unpaired rows (a prompt, a completion and a
`label`, true for a desirable answer), or as pairs (and per-turn pairs), each of which becomes one desirable example
(its chosen answer) and one undesirable one (its rejected answer). As TRL's `unpair_preference_dataset` orders them,
the chosen answers of a run of pairs come first, then their rejected answers: here each tokenized batch of pairs
(autotrain.data.tokenize's BATCH_PAIRS; TRL's runs are 1,000 rows), so that neighbouring examples rarely share a prompt.

Every example is stored as the batch contract's two sequences (autotrain.batch.contract): its completion where a pair
has its chosen answer, and its KL completion where a pair has its rejected one, so that both layouts (padded, and
packed with the prompt shared) and the precomputed reference log-probs carry it unchanged:

    prompt_ids | chosen_ids: the completion | rejected_ids: the KL completion | label: desirable

The KL completion is KTO's mismatched answer y' for the example's prompt x, from which its KL reference point z0 is
estimated (autotrain.train.losses.kl_baseline). TRL 1.16's KTOTrainer builds them by rotating the completions by one within
each run of `per_device_train_batch_size` examples of the dataset, in order: (x1, yn), (x2, y1), ..., (xn, yn-1);
it then needs sequential sampling, so that each micro-batch is one such run. Here the rotation runs over the whole
split, in order: the same pairs as TRL's for a split that is one batch (the parity test's), and the same for every
batch size, accumulation and process count, so that z0 of a step does not depend on how the step is split; with the
shuffled order training uses, a micro-batch's KL completions are its examples' neighbours in the data rather than
its own completions. As in TRL, an example whose neighbour answers the same prompt gets a matched pair (a split of
one example is refused: its KL completion would be its own).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from autotrain.data.messages import short
from autotrain.errors import DataError

LABEL_COLUMN = "label"
# A label as a CSV or a hand-written file may give it, besides JSON's true and false.
_WORDS = {"true": True, "false": False, "1": True, "0": False}


def label_value(row: dict[str, Any], column: str, where: object) -> bool:
    """The row's label: true (a desirable completion) or false; 1 and 0, and the words, as CSV cells give them."""
    value = row.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise DataError(f"{where}, column '{column}': expected true (a desirable completion) or false, got {short(value)}")


def examples(columns: list[list], from_pairs: bool, made: Counter) -> list[list]:
    """A tokenized batch's columns as labelled examples: prompt, completion, KL completion (empty until
    `add_kl_completions`), their masks (empty where every token is trained), label.

    `from_pairs`: the columns are pairs' (prompt, chosen, rejected, chosen_mask, rejected_mask), which become the
    batch's chosen answers (desirable), then its rejected ones; else unpaired rows' (prompt, completion, rejected,
    mask, label), whose mask is kept full (SFT's layout). `made` counts the desirable and undesirable examples."""
    if from_pairs:
        prompts, chosen, rejected, chosen_mask, rejected_mask = columns
        count = len(prompts)
        columns = [prompts + prompts, chosen + rejected, [], chosen_mask + rejected_mask, [],
                   [True] * count + [False] * count]
        made["pairs unpaired"] += count
    else:
        prompts, completions, _, masks, labels = columns
        columns = [prompts, completions, [], [[] if all(mask) else mask for mask in masks], [], labels]
    count = len(columns[0])
    columns[2], columns[4] = [[] for _ in range(count)], [[] for _ in range(count)]
    made["desirable"] += sum(columns[5])
    made["undesirable"] += count - sum(columns[5])
    return columns


def add_kl_completions(path: Path, source: str) -> None:
    """Rewrite the examples' Arrow file at `path` with each example's KL completion: the completion (and its mask) of
    the example before it, the first example's the last one's (see the module docstring)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as mapped:
        table = pa.ipc.open_stream(mapped).read_all()
        rows = table.num_rows
        if rows < 2:
            raise DataError(f"{rows} example: kto's KL reference point reads each example's prompt with another "
                            "example's completion, so it needs two or more (or --loss-type apo_zero_unpaired, which "
                            "has none)", path=source)
        for column, into in (("chosen_ids", "rejected_ids"), ("chosen_mask", "rejected_mask")):
            values = table.column(column)
            rotated = pa.chunked_array(values.slice(rows - 1).chunks + values.slice(0, rows - 1).chunks)
            table = table.set_column(table.schema.get_field_index(into), into, rotated)
        written = path.with_name(path.name + ".kl")
        with pa.OSFile(str(written), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches():
                writer.write_batch(batch)
    os.replace(written, path)


def example_lines(made: Counter) -> list[str]:
    """What the examples are, in words (the log and the model card)."""
    if not made["desirable"] and not made["undesirable"]:
        return []
    lines = []
    if made["pairs unpaired"]:
        lines.append(f"{made['pairs unpaired']} pairs -> {2 * made['pairs unpaired']} examples: each pair's chosen "
                     "answer desirable, its rejected answer undesirable")
    lines.append(f"{made['desirable']} desirable and {made['undesirable']} undesirable examples")
    return lines


def weight_advice(desirable: int, undesirable: int, desirable_weight: float, undesirable_weight: float) -> str | None:
    """TRL's KTOTrainer warning, from the KTO paper's eq. 8 (lambda_D n_D / (lambda_U n_U) in [1, 4/3]): with classes of
    unequal size and neither weight in the range it advises, which ranges to give one of them; else None. The same
    counts (TRL's: the desirable count at least 1, the rest at least 1) and rounding as TRL."""
    wanted = max(desirable, 1)
    unwanted = max(desirable + undesirable - wanted, 1)
    if wanted == unwanted:
        return None
    low_d = round(unwanted * undesirable_weight / wanted, 2)
    high_d = round(unwanted * undesirable_weight / wanted * 1.33, 2)
    low_u = round(wanted * desirable_weight / unwanted / 1.33, 2)
    high_u = round(wanted * desirable_weight / unwanted, 2)
    if low_d <= desirable_weight <= high_d or low_u <= undesirable_weight <= high_u:
        return None
    return (f"{desirable} desirable and {undesirable} undesirable examples, weighted {desirable_weight:g} and "
            f"{undesirable_weight:g}: the KTO paper (eq. 8) advises --desirable-weight in [{low_d:g}, {high_d:g}] or "
            f"--undesirable-weight in [{low_u:g}, {high_u:g}] (one of them, not both)")
