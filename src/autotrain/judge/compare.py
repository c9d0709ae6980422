"""`aitraining llm --compare DIR_A DIR_B --judge SPEC`, and `aitraining llm --judge SPEC --project-name DIR`.

- `--compare`: two finished runs answer the same prompts (greedy, the sample answers' loop: autotrain.answers),
  each through its own saved chat template, and the judge compares each pair in both orders, DIR_A's answer as the
  subject ("a") and DIR_B's as the baseline ("b"): a win is a pair where both orders prefer DIR_A's. The prompts
  are `--judge-prompts FILE`, else the validation prompts of the runs' own data (their training_params.json), as
  training rendered them; the two runs must have been validated on the same prompts. The table is printed, and
  `--compare-output DIR` (default `compare-<A>-vs-<B>`) holds judge.json, the answers and the verdicts. The same
  command run again after a judge stopped asks only the pairs it has no verdict for.
- `--judge SPEC --project-name DIR` (no --train): finish the judging of a finished run that stopped part-way (or
  judge it again with another judge), from the answers the run kept; its metrics.jsonl record and its card's judged
  section are replaced.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError

logger = logging.getLogger("autotrain")

JUDGE_FLAGS = ("judge", "judge_prompts", "judge_template", "judge_max_prompts")


def add_flags(parser: Any) -> None:
    parser.add_argument("--compare", nargs=2, metavar=("DIR", "DIR"), default=argparse.SUPPRESS,
                        help="Judge two finished runs' answers against each other (with --judge SPEC; the prompts: "
                        "--judge-prompts FILE, else their validation prompts). DIR_A's wins are reported.")
    parser.add_argument("--compare-output", metavar="DIR", default=argparse.SUPPRESS,
                        help="With --compare: the folder for judge.json, the answers and the verdicts (default "
                        "compare-<A>-vs-<B>).")


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a comparison, or for a finished run's judging (--judge without --train)."""
    typed = vars(args)
    return "compare" in typed or (not typed.get("train") and not typed.get("inference") and "judge" in typed)


def command(args: argparse.Namespace, argv: list[str]) -> int:
    from autotrain.params.judge import JudgeParams

    typed = {k: v for k, v in vars(args).items() if v is not None or k in JUDGE_FLAGS}
    compare = typed.get("compare")
    allowed = {*JUDGE_FLAGS, "compare", "compare_output", "command", "train", "inference", "verbose"}
    if compare is None:
        allowed = {"judge", "judge_template", "project_name", "command", "train", "inference", "verbose"}
    stray = sorted(k for k in typed if k not in allowed and typed[k] not in (False, None))
    if stray:
        what = ("--compare takes --judge, --judge-prompts, --judge-template, --judge-max-prompts and --compare-output"
                if compare is not None else "--judge without --train judges a finished run and takes "
                "--project-name and --judge-template")
        raise ParamsError(f"--{stray[0].replace('_', '-')}: {what}")
    if "judge" not in typed:
        raise ParamsError("--compare needs --judge SPEC (a local model, a reward model or an OpenAI-compatible URL)")
    if compare is None and "project_name" not in typed:
        raise ParamsError("--judge without --train judges a finished run: add --project-name DIR (or --train)")
    settings = JudgeParams(**{k: typed[k] for k in JUDGE_FLAGS if k in typed})
    again = "aitraining " + " ".join(shlex.quote(arg) for arg in argv)
    from autotrain import quiet

    with quiet.libraries(args.verbose):
        if compare is None:
            return finish_run(Path(typed["project_name"]).expanduser(), settings, again)
        return compare_runs([Path(d).expanduser() for d in compare], settings, typed.get("compare_output"), again)


def _check(settings: Any) -> None:
    from autotrain.judge.before_after import read_judge_prompts
    from autotrain.judge.spec import check
    from autotrain.params import DEFAULT_MODEL

    check(settings.judge, settings.judge_template, embedded=settings.judge == DEFAULT_MODEL)
    if settings.judge_prompts:
        read_judge_prompts(settings.judge_prompts)


def compare_runs(runs: list[Path], settings: Any, output: str | None, again: str) -> int:
    from autotrain.inference import check_finished
    from autotrain.judge.report import SUMMARY_FILE
    from autotrain.judge.session import Answers, judge

    for run in runs:
        if not run.is_dir():
            raise ParamsError(f"compare: {run} does not exist")
        check_finished(run)
    folder = Path(output).expanduser() if output else Path(f"compare-{runs[0].name}-vs-{runs[1].name}")
    if folder.exists() and any(p.name not in _OURS for p in folder.iterdir()):
        raise ParamsError(f"compare_output: {folder} holds other files; name a new folder with --compare-output")
    _check(settings)
    prompts, answered = None, []
    for run in runs:
        texts, answers = _answer(run, settings)
        if prompts is not None and texts != prompts:
            raise ParamsError(f"compare: {runs[0]} and {run} were validated on different prompts; give the prompts "
                              "to compare on as --judge-prompts FILE")
        prompts = texts
        answered.append(answers)
    summary = judge(folder, Answers(prompts, answered[0], answered[1], names=("a", "b")), settings.judge,
                    settings.judge_template, again, extra={"runs": {"a": str(runs[0]), "b": str(runs[1])}})
    print(f"a: {runs[0]}\nb: {runs[1]}\nwin: both orders prefer a's answer; written: {folder / SUMMARY_FILE}")
    del summary
    return 0


_OURS = frozenset({"judge.json", "judge_answers.jsonl", "judge_verdicts.jsonl", ".judge.json.tmp",
                   ".judge_answers.jsonl.tmp", ".judge_verdicts.jsonl.tmp"})


def _answer(run: Path, settings: Any) -> tuple[list[str], list[str]]:
    """`run`'s greedy answers to the prompts (the file's, or its validation prompts), and the prompts as read."""
    import torch

    from autotrain import answers, models
    from autotrain.data.templates import stop_ids
    from autotrain.inference import checked_inputs, trained_with_remote_code
    from autotrain.judge.before_after import read_judge_prompts

    trust = trained_with_remote_code(run)
    model, tokenizer = models.load_trained(run, trust)
    template = tokenizer.chat_template or None
    if settings.judge_prompts:
        positions = models.model_max_length(model.config)
        ids = [checked_inputs(tokenizer, prompt, positions)["input_ids"][0].tolist()
               for prompt in read_judge_prompts(settings.judge_prompts)]
    else:
        ids = _validation_prompts(run, tokenizer, model)
    ids = ids[: settings.judge_max_prompts]
    logger.info("compare: %s answers %d prompts (greedy); then the judge compares each pair in both orders: at most "
                "%d judge calls", run, len(ids), 2 * len(ids))
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    own_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    said = answers.answer(model, tokenizer, ids, stop_ids(tokenizer, template, also=own_eos))
    texts = answers.prompt_texts(tokenizer, ids, template)
    del model
    gc.collect()
    return texts, said


def _validation_prompts(run: Path, tokenizer: Any, model: Any) -> list[list[int]]:
    from autotrain import methods, models
    from autotrain.data.prepare import prepare_data
    from autotrain.params import LLMTrainingParams
    from autotrain.project_folder import PARAMS_FILE

    params = LLMTrainingParams.load_json(run / PARAMS_FILE)
    if not params.valid_split:
        raise ParamsError(f"compare: {run} was trained without a validation split; give the prompts to compare on "
                          "as --judge-prompts FILE")
    data = prepare_data(params, tokenizer, models.model_max_length(model.config),
                        paired=methods.spec(params.trainer).paired)
    return [list(p) for p in dict.fromkeys(map(tuple, data.valid.prompt_ids))]  # ranked answers share a prompt


def finish_run(project: Path, settings: Any, again: str) -> int:
    """Judge a finished run from the answers it kept (module docstring)."""
    from autotrain.judge.report import ANSWERS_FILE, replace_card_section
    from autotrain.judge.session import Answers, judge, metrics_record
    from autotrain.project_folder import CARD_FILE, METRICS_FILE, owned, unfinished

    with owned(project):
        why = unfinished(project)
        if why is not None:
            raise ParamsError(f"project_name: nothing to judge: {why}")
        try:
            rows = [json.loads(line) for line in (project / ANSWERS_FILE).read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            rows = []
        if not rows or not all(isinstance(r.get("after"), str) and isinstance(r.get("before"), str) for r in rows):
            raise ParamsError(f"project_name: {project} kept no answers before and after training to judge (it was "
                              f"trained without --judge); compare finished runs with --compare")
        _check(settings)
        answers = Answers([r["prompt"] for r in rows], [r["after"] for r in rows], [r["before"] for r in rows])
        try:
            summary = judge(project, answers, settings.judge, settings.judge_template, again)
        finally:
            replace_card_section(project / CARD_FILE, project)
        metrics = project / METRICS_FILE
        kept = [line for line in metrics.read_text().splitlines(keepends=True)
                if line.strip() and '"eval_judge_' not in line] if metrics.exists() else []
        step = max((json.loads(line).get("step", 0) for line in kept), default=0)
        temp = metrics.with_name(f".{metrics.name}.tmp")
        temp.write_text("".join(kept) + metrics_record(summary, step))
        os.replace(temp, metrics)
    return 0
