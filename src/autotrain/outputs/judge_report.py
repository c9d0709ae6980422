"""What a judged comparison leaves and shows: its files, its table, its part of the model card.

In the project (a training run with --judge) or the comparison's folder (--compare):
- `judge_answers.jsonl`: each prompt and the two answers, under the sides' names (after/before, or the two runs');
- `judge_verdicts.jsonl`: each pair's verdicts, one line as each pair is judged (so a judge that stops keeps
  them): which answer each order preferred (`subject_first`: the subject's answer shown first), the judge's scores
  or replies, and the verdict; when the judging completes it is rewritten with one line per prompt, in order;
- `judge.json`: what was compared and by which judge, whether it completed, and the numbers (`eval_judge_*`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

ANSWERS_FILE, VERDICTS_FILE, SUMMARY_FILE = "judge_answers.jsonl", "judge_verdicts.jsonl", "judge.json"
PREFIX = "eval_judge_"


def read_summary(folder: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _rate(metrics: dict[str, Any], name: str) -> tuple[str, str]:
    value, low, high = (metrics.get(f"{PREFIX}{name}{suffix}") for suffix in ("", "_ci_low", "_ci_high"))
    shown = "—" if not _number(value) else f"{value:.3f}"
    interval = f"{low:.3f} – {high:.3f}" if _number(low) and _number(high) else "—"
    return shown, interval


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def table(summary: dict[str, Any]) -> list[str]:
    """The Markdown table of a completed comparison (judge.json's content)."""
    metrics, subject, baseline = summary["metrics"], summary["subject"], summary["baseline"]
    rows = [("win (both orders prefer " + subject + ")", "win"), ("tie (a flip, a tie or no verdict)", "tie"),
            (f"loss (both orders prefer {baseline})", "loss"), ("win rate (ties count half)", "win_rate"),
            ("length-controlled win rate", "lc_win_rate")]
    lines = [f"| {subject} vs {baseline} | value | 95% interval |", "|---|---|---|"]
    lines += [f"| {label} | {' | '.join(_rate(metrics, name))} |" for label, name in rows]
    consistency, first = metrics.get(f"{PREFIX}position_consistency"), metrics.get(f"{PREFIX}first_position")
    lines.append(f"| position consistency | {f'{consistency:.3f}' if _number(consistency) else '—'} | |")
    lines.append(f"| share of verdicts for the answer shown first | {f'{first:.3f}' if _number(first) else '—'} | |")
    lengths = (metrics[f"{PREFIX}length_{subject}"], metrics[f"{PREFIX}length_{baseline}"])
    lines.append(f"| mean answer length, characters ({subject} / {baseline}) | {lengths[0]:.1f} / {lengths[1]:.1f} | |")
    return lines


def describe(summary: dict[str, Any]) -> str:
    """One sentence: how many pairs, which judge, and what was not asked or not read."""
    metrics = summary["metrics"]
    pairs, identical = metrics[f"{PREFIX}pairs"], metrics[f"{PREFIX}identical"]
    unreadable = metrics[f"{PREFIX}unreadable"]
    said = (f"{pairs} prompts judged by `{summary['judge']}` ({summary['template']} judge prompt), each pair in both "
            f"orders: a win needs both")
    if identical:
        said += f"; {identical} pairs of identical answers are ties without a judge call"
    if unreadable:
        said += f"; {unreadable} replies named neither answer (that pair is a tie)"
    return said + "."


# The card's judged section lies between these, so that finishing a stopped judging can replace it in place.
CARD_START, CARD_END = "<!-- judge -->", "<!-- /judge -->"


def card_section(folder: Path) -> list[str]:
    """The model card's judged section, between its markers; nothing when the run was not judged."""
    lines = card_lines(folder)
    return ["", CARD_START, *lines[1:], CARD_END] if lines else []


def replace_card_section(card: Path, folder: Path) -> None:
    """Rewrite the judged section of an existing card (after its judging was finished)."""
    text = card.read_text()
    if CARD_START not in text or CARD_END not in text:
        return
    head, rest = text.split(CARD_START, 1)
    tail = rest.split(CARD_END, 1)[1]
    card.write_text(head + "\n".join(card_section(folder)[1:]) + tail)


def card_lines(folder: Path) -> list[str]:
    """The model card's section: the table of a completed judging, or what stopped it."""
    summary = read_summary(folder)
    if summary is None:
        return []
    lines = ["", "## Judged answers: after vs before training", ""]
    if not summary.get("complete"):
        return lines + [f"Judging by `{summary['judge']}` stopped after {summary['judged']} of {summary['to_judge']} "
                        f"pairs ({summary['reason']}); the verdicts so far are in {VERDICTS_FILE}, and the rest can "
                        f"be judged with `{summary['finish']}`."]
    lines += [describe(summary), "", *table(summary)]
    return lines + ["", "The length-controlled win rate is the win probability at equal length, from a logistic fit "
                    "on the length difference as in AlpacaEval-LC (aitraining's docs/evaluation.md, 'Judged win rates')."]
