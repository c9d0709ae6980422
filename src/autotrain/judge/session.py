"""The judging of one comparison: the cost said up front, the progress, each verdict kept as it comes, the summary.

`judge(folder, answers, ...)` judges the pairs of `answers` (the subject's and the baseline's answer to each
prompt) in both orders, the subject shown first and then second. What it costs is said before the first call:
how many pairs, how many of them identical (a tie, never sent to the judge), how many judge calls. Each judged pair
is appended to the verdicts file at once; a pair whose verdicts are already there (the same judge, judge prompt,
question and answers) is not asked again, so running the same judging after a stop asks only what remains. A judge
that fails (a server down, a model that cannot load) raises `JudgingStopped`, which names what was done, what
remains and how to finish; judge.json then says the judging is incomplete, and no metric is reported from part of
the pairs (they are the first ones, not a sample).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrain.errors import AutoTrainError, ParamsError
from autotrain.judge import stats
from autotrain.judge.base import A, B, TIE, Judge, Reply
from autotrain.judge.report import ANSWERS_FILE, SUMMARY_FILE, VERDICTS_FILE, describe, table
from autotrain.judge.spec import JudgeSpec, parse, read_template, served_model

logger = logging.getLogger("autotrain")

CALLS_PER_PAIR = 2  # both orders


class JudgingStopped(AutoTrainError):
    """The judge failed part-way; the verdicts so far are kept (exit 1: what was trained or answered is finished)."""

    exit_code = 1


@dataclass(frozen=True)
class Answers:
    """The prompts (as the judge reads them) and each side's answers; `names`: (subject, baseline)."""

    prompts: list[str]
    subject: list[str]
    baseline: list[str]
    names: tuple[str, str] = ("after", "before")

    def write(self, folder: Path) -> None:
        lines = [json.dumps({"prompt": p, self.names[0]: s, self.names[1]: b}, ensure_ascii=False)
                 for p, s, b in zip(self.prompts, self.subject, self.baseline)]
        _publish(folder / ANSWERS_FILE, "".join(line + "\n" for line in lines))


def _publish(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _key(judge: str, template: str, prompt: str, subject: str, baseline: str) -> str:
    text = json.dumps([judge, template, prompt, subject, baseline], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _kept(path: Path) -> dict[str, dict[str, Any]]:
    """The verdicts a file holds, by key; a line cut short by a crash is not one."""
    kept = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "key" in record:
                kept[record["key"]] = record
    return kept


def open_judge(spec: JudgeSpec, template: str) -> Judge:
    """The judge `spec` names, loaded (a local model) or connected (a URL: its model named, or asked)."""
    if spec.remote:
        from autotrain.judge.chat import ChatJudge

        return ChatJudge(spec.url, spec.model or served_model(spec), template)
    from autotrain.judge.local import load

    return load(spec.model, template)


# One order's reply as the answer it preferred: the subject shown as A (first), or as B (second).
_AS_FIRST = {A: stats.SUBJECT, B: stats.BASELINE, TIE: stats.TIE}
_AS_SECOND = {A: stats.BASELINE, B: stats.SUBJECT, TIE: stats.TIE}


def judge(folder: Path, answers: Answers, judge_text: str, template_file: str | None, finish: str,
          opened: Judge | None = None, stream: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Judge `answers` into `folder` (report's files) and return judge.json's content. `finish`: the command that
    judges what remains after a stop; `opened`: a judge already open (tests), else `judge_text`'s is opened when
    there is something to ask; `extra`: more to record in judge.json (the compared runs)."""
    template = read_template(template_file)
    spec = parse(judge_text)
    if not answers.prompts:
        raise ParamsError("judge: there are no prompts to judge")
    folder.mkdir(parents=True, exist_ok=True)
    answers.write(folder)
    verdicts = folder / VERDICTS_FILE
    kept = _kept(verdicts)
    keys = [_key(judge_text, template, *row) for row in zip(answers.prompts, answers.subject, answers.baseline)]
    identical = [s == b for s, b in zip(answers.subject, answers.baseline)]
    todo = [i for i, key in enumerate(keys) if not identical[i] and key not in kept]
    n, calls = len(keys), len(todo) * CALLS_PER_PAIR
    logger.info("judge: %s, %d prompts: %d pairs of identical answers (ties, not asked), %d judged already, %d to "
                "judge in both orders: %d judge calls", judge_text, n, sum(identical),
                n - sum(identical) - len(todo), len(todo), calls)
    record = {"judge": judge_text, "template": template_file or "default", "subject": answers.names[0],
              "baseline": answers.names[1], "finish": finish, **(extra or {})}
    done = 0
    if todo:
        progress = _Progress(calls, stream or sys.stdout)
        try:
            judge_now = opened or open_judge(spec, template)
            with verdicts.open("a") as handle:
                for i in todo:
                    replies = [judge_now.prefer(answers.prompts[i], answers.subject[i], answers.baseline[i])]
                    progress.advance()
                    replies.append(judge_now.prefer(answers.prompts[i], answers.baseline[i], answers.subject[i]))
                    progress.advance()
                    kept[keys[i]] = _verdict(i, keys[i], answers.prompts[i], replies)
                    handle.write(json.dumps(kept[keys[i]], ensure_ascii=False) + "\n")
                    handle.flush()
                    done += 1
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - any failure: keep what was judged, say so
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _publish(folder / SUMMARY_FILE, json.dumps({**record, "complete": False, "judged": done,
                                                        "to_judge": len(todo), "reason": reason}, indent=2) + "\n")
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise JudgingStopped(
                f"judge: {judge_text} stopped after {done} of {len(todo)} pairs ({reason}); the {done} verdicts are "
                f"kept in {verdicts}, {len(todo) - done} remain: judge them with `{finish}`") from exc
        finally:
            progress.close()
    pairs = []
    lines = []
    for i, key in enumerate(keys):
        subject, baseline = answers.subject[i], answers.baseline[i]
        if identical[i]:
            pairs.append(stats.Pair(len(subject), len(baseline), identical=True))
            lines.append({"index": i, "key": key, "prompt": answers.prompts[i], "identical": True, "verdict": stats.TIE})
            continue
        found = kept[key]
        pairs.append(stats.Pair(len(subject), len(baseline), found["subject_first"], found["subject_second"]))
        lines.append({**found, "index": i})
    _publish(verdicts, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    unread = [(line.get("replies") or [None, None])[k] for line in lines if not line.get("identical")
              for k, side in enumerate(("subject_first", "subject_second")) if line.get(side) is None]
    if unread:
        logger.warning("judge: %d of %d replies named neither answer, so their pairs are ties; the first: %r",
                       len(unread), 2 * (n - sum(identical)), unread[0])
    summary = {**record, "complete": True, "calls": calls, "metrics": stats.summarise(pairs).metrics(answers.names)}
    _publish(folder / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    logger.info("%s", "\n".join([describe(summary), *table(summary)]))
    return summary


def _verdict(index: int, key: str, prompt: str, replies: list[Reply]) -> dict[str, Any]:
    first, second = (_AS_FIRST.get(replies[0].choice), _AS_SECOND.get(replies[1].choice))
    return {"index": index, "key": key, "prompt": prompt, "subject_first": first, "subject_second": second,
            "verdict": stats.combine(first, second), "scores": [r.score for r in replies],
            **({"replies": [r.text for r in replies]} if any(r.text is not None for r in replies) else {})}


class _Progress:
    """Judge calls done of `total`: a tqdm bar on a terminal; elsewhere a line at each tenth (and the last)."""

    def __init__(self, total: int, stream: Any, clock: Callable[[], float] = time.monotonic):
        from tqdm import tqdm

        self.total, self.stream, self.clock, self.done, self.start = total, stream, clock, 0, clock()
        self.bar = tqdm(total=total, unit="call", desc="judge", file=stream, dynamic_ncols=True) if (
            getattr(stream, "isatty", lambda: False)()) else None
        self.next_line = max(1, total // 10)

    def advance(self) -> None:
        from autotrain.progress import format_duration

        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.done >= self.next_line or self.done == self.total:
            self.next_line += max(1, self.total // 10)
            eta = (self.clock() - self.start) / self.done * (self.total - self.done)
            self.stream.write(f"judge {self.done}/{self.total} calls ({100 * self.done // self.total}%) | ETA "
                              f"{format_duration(eta)}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def metrics_record(summary: dict[str, Any], step: int) -> str:
    """The line metrics.jsonl gets: the eval_judge_* numbers (None where not finite) at the run's last step."""
    return json.dumps({**summary["metrics"], "step": step}, allow_nan=False) + "\n"
