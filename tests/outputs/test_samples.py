"""The bundled sample preference pairs: shape, splits, and that the chosen answer really is the right one.

Answers are recomputed here from the prompt text (arithmetic, comparisons, letter counts, parity, day and month
order), independently of scripts/make_samples.py, so a wrong generator fails these tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "src" / "autotrain" / "data" / "samples"
GENERATOR = ROOT / "scripts" / "make_samples.py"
SPLITS = {"train": 300, "validation": 60}  # split -> minimum number of pairs
CATEGORIES = ("arithmetic", "counting", "dates", "concise", "facts")

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth"]


def load(split: str) -> list[dict]:
    rows = []
    raw = (SAMPLES / f"{split}.jsonl").read_bytes()
    text = raw.decode("utf-8")  # strict: invalid UTF-8 fails here
    assert not text.startswith("\ufeff"), "no byte-order mark"
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        assert isinstance(row, dict), f"{split}:{number} is not an object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return {split: load(split) for split in SPLITS}


# --- Recomputing answers from the prompt ------------------------------------------------------------------

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
WORD_OPS = {"plus": "+", "minus": "-", "times": "×", "sum": "+", "product": "×", "add": "+", "multiply": "×"}


def parse_arithmetic(prompt: str) -> tuple[int, str, int] | None:
    """(a, op, b) for an arithmetic prompt, or None."""
    m = re.search(r"(\d+)\s*([+\-×])\s*(\d+)", prompt)
    if m:
        return int(m[1]), m[2], int(m[3])
    m = re.search(r"(\d+) (plus|minus|times) (\d+)", prompt)
    if m:
        return int(m[1]), WORD_OPS[m[2]], int(m[3])
    m = re.search(r"(?i)\b(sum|product) of (\d+) and (\d+)", prompt) or re.search(
        r"(?i)\b(add) (\d+) and (\d+)", prompt) or re.search(r"(?i)\b(multiply) (\d+) by (\d+)", prompt)
    if m:
        return int(m[2]), WORD_OPS[m[1].lower()], int(m[3])
    m = re.search(r"(?i)\bsubtract (\d+) from (\d+)", prompt)
    if m:
        return int(m[2]), "-", int(m[1])
    return None


def numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def category(row: dict) -> str:
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if parse_arithmetic(prompt):
        return "arithmetic"
    if re.search(r"letters .*'[a-z]+'|'[a-z]+' have\?", prompt) or re.search(r"\b(even or odd|odd or even)\b", prompt) \
            or re.search(r"\d+ or \d+\?", prompt):
        return "counting"
    if re.search(r"\b(day|month)\b", prompt) and any(m in prompt for m in DAYS + MONTHS + ORDINALS):
        return "dates"
    body = chosen.rstrip(".")
    if body[1:] in rejected and len(rejected.split()) > len(chosen.split()) + 8:
        return "concise"
    return "facts"


def check_row(row: dict) -> None:
    """Assert that the chosen answer is right and the rejected one is not, where it can be recomputed."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    kind = category(row)
    if kind == "arithmetic":
        a, op, b = parse_arithmetic(prompt)
        answer = OPS[op](a, b)
        assert answer in numbers(chosen), f"{prompt!r}: chosen {chosen!r} lacks {answer}"
        assert answer not in numbers(rejected), f"{prompt!r}: rejected {rejected!r} contains {answer}"
    elif kind == "counting":
        word = re.search(r"'([a-z]+)'", prompt)
        pair = re.search(r"(\d+) or (\d+)\?", prompt)
        parity = re.search(r"(\d+) (?:even or odd|odd or even)", prompt)
        if parity:
            right = "even" if int(parity[1]) % 2 == 0 else "odd"
            wrong = "odd" if right == "even" else "even"
            assert has_word(chosen, right) and not has_word(chosen, wrong), (prompt, chosen)
            assert has_word(rejected, wrong) and not has_word(rejected, right), (prompt, rejected)
        elif pair:
            a, b = int(pair[1]), int(pair[2])
            if re.search(r"\b(larger|bigger|greater)\b", prompt):
                right, wrong = max(a, b), min(a, b)
            else:
                assert re.search(r"\b(smaller|less)\b", prompt), prompt
                right, wrong = min(a, b), max(a, b)
            assert numbers(chosen)[0] == right, (prompt, chosen)
            assert numbers(rejected)[0] == wrong, (prompt, rejected)
        else:
            assert word, prompt
            count = len(word[1])
            assert count in numbers(chosen), (prompt, chosen)
            assert count not in numbers(rejected), (prompt, rejected)
    elif kind == "dates":
        seq = DAYS if re.search(r"\bday\b", prompt) else MONTHS
        nth = re.search(r"\b(" + "|".join(ORDINALS) + r")\b", prompt)
        name = next((n for n in seq if has_word(prompt, n)), None)
        if name is not None:
            step = 1 if has_word(prompt, "after") else -1
            assert step == 1 or has_word(prompt, "before"), prompt
            right = seq[(seq.index(name) + step) % len(seq)]
        else:
            assert nth, prompt
            right = MONTHS[ORDINALS.index(nth[1])]
        assert has_word(chosen, right), (prompt, chosen)
        assert not has_word(rejected, right), (prompt, rejected)
    elif kind == "concise":
        assert chosen.rstrip(".")[1:] in rejected, "the rambling answer must carry the same answer"


# --- Tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_count_and_shape(data, split):
    rows = data[split]
    assert len(rows) >= SPLITS[split]
    for i, row in enumerate(rows):
        assert set(row) == {"prompt", "chosen", "rejected"}, f"{split} row {i}: keys {sorted(row)}"
        for key, value in row.items():
            assert isinstance(value, str) and value.strip(), f"{split} row {i}: {key} empty or not a string"
            assert value == value.strip(), f"{split} row {i}: {key} has surrounding whitespace"
        assert row["chosen"] != row["rejected"], f"{split} row {i}: chosen == rejected"


@pytest.mark.parametrize("split", SPLITS)
def test_short(data, split):
    for row in data[split]:
        for key in ("chosen", "rejected"):
            assert len(row[key].split()) <= 40, row[key]
        assert len(row["prompt"].split()) <= 25, row["prompt"]


@pytest.mark.parametrize("split", SPLITS)
def test_no_duplicate_prompts(data, split):
    counts = Counter(row["prompt"] for row in data[split])
    assert [p for p, n in counts.items() if n > 1] == []


def test_splits_disjoint(data):
    train = {row["prompt"] for row in data["train"]}
    validation = {row["prompt"] for row in data["validation"]}
    assert train.isdisjoint(validation), sorted(train & validation)[:5]


def test_categories_in_both_splits(data):
    for split, rows in data.items():
        counts = Counter(category(row) for row in rows)
        for kind in CATEGORIES:
            assert counts[kind] >= 3, f"{split}: only {counts[kind]} {kind} pairs ({dict(counts)})"
    # proportional: each category's share of validation is close to its share of train
    train = Counter(category(r) for r in data["train"])
    val = Counter(category(r) for r in data["validation"])
    for kind in CATEGORIES:
        share_t, share_v = train[kind] / len(data["train"]), val[kind] / len(data["validation"])
        assert abs(share_t - share_v) < 0.08, (kind, share_t, share_v)


def test_arithmetic_is_present_and_parsed(data):
    for split, rows in data.items():
        arithmetic = [r for r in rows if category(r) == "arithmetic"]
        assert len(arithmetic) >= SPLITS[split] // 5
        assert {parse_arithmetic(r["prompt"])[1] for r in arithmetic} == {"+", "-", "×"}


@pytest.mark.parametrize("split", SPLITS)
def test_chosen_is_correct(data, split):
    for row in data[split]:
        check_row(row)


def test_recompute_catches_a_wrong_pair():
    """The checks above are not vacuous: a pair with the answers swapped fails them."""
    good = {"prompt": "What is 7 + 5?", "chosen": "7 + 5 = 12.", "rejected": "7 + 5 = 13."}
    check_row(good)
    for bad in (
        {**good, "chosen": good["rejected"], "rejected": good["chosen"]},
        {"prompt": "Subtract 4 from 19.", "chosen": "19 - 4 = 14.", "rejected": "19 - 4 = 15."},
        {"prompt": "Which is smaller, 47 or 74?", "chosen": "74.", "rejected": "47."},
        {"prompt": "How many letters are in the word 'apple'?", "chosen": "4 letters.", "rejected": "5 letters."},
        {"prompt": "Which day comes after Sunday?", "chosen": "Tuesday.", "rejected": "Monday."},
    ):
        with pytest.raises(AssertionError):
            check_row(bad)


def test_generator_reproduces_files(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--out-dir", str(tmp_path)], check=True, capture_output=True)
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (SAMPLES / f"{split}.jsonl").read_bytes(), (
            f"{split}.jsonl is stale: run python scripts/make_samples.py"
        )
