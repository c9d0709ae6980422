"""The prompts a training run answers before and after training: the sample answers' and the judge's.

Both are answered by the sample answers' one generate loop (autotrain.answers.answer: greedy, at most 64 new
tokens, stopped where the training template ends a turn), in one pass over their union: with both taken from the
validation split, the first max(--sample-answers, judged) validation prompts; with --judge-prompts FILE, the
sample prompts and then the file's prompts, rendered with the training template as training renders a prompt.

The judge's answers before training are kept in the project as soon as the folder exists
(judge_answers.jsonl, `after` still null), so a resumed run, whose untrained model is gone, still has them; after
training, autotrain.judge.session judges them and the run's metrics.jsonl gets the `eval_judge_*` record.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError

logger = logging.getLogger("autotrain")


def read_judge_prompts(path: str) -> list[Any]:
    """The prompts of --judge-prompts (autotrain.inference's file formats); it must name a file. Torch-free: checked
    before the data stage."""
    from autotrain.inference import read_prompts

    if not Path(path).expanduser().is_file():
        raise ParamsError(f"judge_prompts: {path}: no such file (it names a file of prompts: .txt, .jsonl or .json)")
    return read_prompts(str(Path(path).expanduser()))


def finish_command(params: Any) -> str:
    """The command that judges a finished run's remaining pairs."""
    words = ["aitraining", "llm", "--judge", params.judge, "--project-name", params.project_name]
    if params.judge_template:
        words += ["--judge-template", params.judge_template]
    return " ".join(shlex.quote(word) for word in words)


class BeforeAfter:
    """The prompts to answer before and after training (module docstring). `asks`: this process generates (the
    main one, or every one when the weights are sharded)."""

    def __init__(self, params: Any, data: Any, tokenizer: Any, model: Any, asks: bool):
        from autotrain.data.templates import stop_ids
        from autotrain.models import model_max_length

        self.params, self.tokenizer, self.template = params, tokenizer, data.template
        # Distinct prompts: ranked answers and per-turn pairs give several pairs one prompt.
        valid = [list(p) for p in dict.fromkeys(map(tuple, data.valid.prompt_ids))] if data.valid is not None else []
        self.samples = min(params.sample_answers, len(valid)) if asks else 0
        judged: list[list[int]] = []
        if asks and params.judge:
            if params.judge_prompts:
                positions = model_max_length(model.config)
                from autotrain.inference import checked_inputs

                judged = [checked_inputs(tokenizer, prompt, positions, data.template)["input_ids"][0].tolist()
                          for prompt in read_judge_prompts(params.judge_prompts)]
            else:
                judged = list(valid)
            judged = judged[: params.judge_max_prompts]
        if params.judge_prompts:
            self.ids, self.judged = list(valid[: self.samples]) + judged, slice(self.samples, None)
        else:
            self.ids, self.judged = list(valid[: max(self.samples, len(judged))]), slice(0, len(judged))
        own_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.stops = stop_ids(tokenizer, data.template, also=own_eos) if self.ids else None
        if judged:
            logger.info("judge: after training, %d prompts are answered before and after training (%d answers, "
                        "greedy) and judged in both orders by %s: at most %d judge calls", len(judged),
                        2 * len(judged), params.judge, 2 * len(judged))

    def answer(self, model: Any, device: Any) -> list[str] | None:
        """Every prompt's greedy answer by `model` (the model to train, or the trainer's after training)."""
        from autotrain import answers, models

        if not self.ids:
            return None
        with models.whole_on(model, device):  # under ZeRO-3 the full weights gathered
            return answers.answer(models.unwrap(model, peft=False), self.tokenizer, self.ids, self.stops)

    def _texts(self) -> list[str]:
        from autotrain.answers import prompt_texts

        return prompt_texts(self.tokenizer, self.ids[self.judged], self.template)

    def keep(self, project: Path, before: list[str] | None) -> None:
        """The judge's answers before training, in the project, for a resumed run (which has no untrained model)."""
        from autotrain.judge.report import ANSWERS_FILE

        if before is not None and self.ids[self.judged]:
            rows = [{"prompt": p, "after": None, "before": b} for p, b in zip(self._texts(), before[self.judged])]
            (project / ANSWERS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def _kept(self, project: Path) -> list[str] | None:
        from autotrain.judge.report import ANSWERS_FILE

        try:
            rows = [json.loads(line) for line in (project / ANSWERS_FILE).read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            return None
        if [r.get("prompt") for r in rows] != self._texts() or not all(isinstance(r.get("before"), str) for r in rows):
            return None
        return [r["before"] for r in rows]

    def write(self, project: Path, before: list[str] | None, after: list[str] | None) -> None:
        """The sample answers (samples.jsonl)."""
        from autotrain import answers

        if self.samples and after is not None:
            ids = self.ids[: self.samples]
            answers.write(project, answers.prompt_texts(self.tokenizer, ids, self.template),
                          before[: self.samples] if before is not None else None, after[: self.samples])

    def judge(self, project: Path, before: list[str] | None, after: list[str] | None) -> Exception | None:
        """Judge the answers after against before; the error to raise once the run's card is written, if the
        judging stopped (the trained run itself is finished by then)."""
        from autotrain.judge.session import Answers, JudgingStopped, judge, metrics_record
        from autotrain.project_folder import METRICS_FILE

        if not self.params.judge or after is None or not self.ids[self.judged]:
            return None
        before_judged = before[self.judged] if before is not None else self._kept(project)
        if before_judged is None:
            logger.warning("judge: not judged: this resumed run has no answers from before training (it began "
                           "without --judge); compare two finished runs with aitraining llm --compare")
            return None
        answers = Answers(self._texts(), after[self.judged], before_judged)
        try:
            summary = judge(project, answers, self.params.judge, self.params.judge_template,
                            finish_command(self.params))
        except JudgingStopped as exc:
            return exc
        logged = (project / METRICS_FILE).read_text().splitlines() if (project / METRICS_FILE).exists() else []
        step = max((json.loads(line).get("step", 0) for line in logged if line.strip()), default=0)
        with (project / METRICS_FILE).open("a") as handle:
            handle.write(metrics_record(summary, step))
        return None
