"""Which columns a run reads, and what shape of row they make: checked before any tokenizer or model exists.

Preference data comes as:
- pairs: a prompt (or none: full conversations), a chosen and a rejected column;
- per-turn pairs: one conversation column (`messages`, or the one `--text-column` names) whose assistant messages
  may carry a `rejected` alternative (autotrain.data.expand);
- ranked answers: a prompt, a `responses` column and a `scores` (higher is better) or `ranking` (1 is best) column.
Supervised (SFT) data has one completion, text or messages column and maybe a prompt. Any shape may have a `tools`
column (`--tools-column`; `tools` when the data has one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from autotrain.data.split import Split
from autotrain.errors import DataError, ParamsError
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")

PAIRS, TURNS, RANKED, SUPERVISED = "pairs", "turns", "ranked", "supervised"
RANKED_ANSWERS, SCORE_COLUMNS = "responses", ("scores", "ranking")


@dataclass(frozen=True)
class Columns:
    """Which columns hold the prompt, the chosen and the rejected completion (prompt may be absent). `kind` says
    what else: per-turn pairs (the conversation in `chosen`), ranked answers (the answers in `chosen`, their scores
    in `scores`); left empty, pairs when there is a rejected column, else supervised."""

    prompt: str | None
    chosen: str  # the chosen completion; SFT: the completion, text or messages column; per-turn: the conversation
    rejected: str | None  # None for SFT, per-turn pairs and ranked answers
    kind: str = ""
    scores: str | None = None  # ranked answers: the `scores` or `ranking` column
    tools: str | None = None  # the tool definitions the template writes into the prompt

    @property
    def shape(self) -> str:
        return self.kind or (PAIRS if self.rejected is not None else SUPERVISED)

    @property
    def paired(self) -> bool:
        return self.shape != SUPERVISED

    @property
    def unit(self) -> str:
        """What one training item is, for messages and the model card."""
        return "pairs" if self.paired else "examples"

    def check(self, split: Split) -> None:
        present = split.columns
        for name in (self.prompt, self.chosen, self.rejected, self.scores, self.tools):
            if name is not None and name not in present:
                raise DataError(f"missing; columns present: {', '.join(present)}", path=split.source, column=name)

    def describe(self) -> str:
        """The columns line of the model card."""
        tools = f", tools `{self.tools}`" if self.tools else ""
        if self.shape == TURNS:
            return (f"conversations `{self.chosen}` (per-turn pairs: each assistant message carrying a rejected "
                    f"alternative){tools}")
        if self.shape == RANKED:
            return f"prompt `{self.prompt}`, ranked answers `{self.chosen}`, {self.scores} `{self.scores}`{tools}"
        if self.shape == PAIRS:
            return f"prompt `{self.prompt}`, chosen `{self.chosen}`, rejected `{self.rejected}`{tools}"
        return f"prompt `{self.prompt}` (not under the loss), completion `{self.chosen}`{tools}"


# The text_column a run has when the user names none. Defaults are recognised by value, not by whether the field was
# set: a launched process reads every field back from training_params.json, so there every field counts as set.
DEFAULT_TEXT_COLUMN: str = LLMTrainingParams.model_fields["text_column"].default


def resolve_columns(params: LLMTrainingParams, split: Split, paired: bool = True) -> Columns:
    """Pick the columns, falling back to prompt/chosen/rejected when the user named none, and say so."""
    if not paired:
        return _supervised_columns(params, split)
    present = split.columns
    prompt = params.prompt_text_column
    if prompt is None and "prompt" in present:
        prompt = "prompt"
        logger.info("prompt_text_column not given: using the data's 'prompt' column")
    rejected = params.rejected_text_column
    if rejected is None and "rejected" not in present:
        return _checked(_other_shape(params, split, prompt), split)
    chosen = params.text_column
    if chosen == DEFAULT_TEXT_COLUMN and chosen not in present and "chosen" in present:
        chosen = "chosen"
        logger.info("text_column is '%s' (the default) and the data has no such column: using 'chosen'",
                    DEFAULT_TEXT_COLUMN)
    if rejected is None:
        rejected = "rejected"
        logger.info("rejected_text_column not given: using the data's 'rejected' column")
    return _checked(Columns(prompt, chosen, rejected, tools=_tools(params, present)), split)


def _other_shape(params: LLMTrainingParams, split: Split, prompt: str | None) -> Columns:
    """No rejected column: ranked answers or per-turn pairs, or an error saying what the data needs."""
    present, tools = split.columns, _tools(params, present=split.columns)
    scores = next((name for name in SCORE_COLUMNS if name in present), None)
    if RANKED_ANSWERS in present and scores is not None:
        if prompt is None:
            raise DataError(f"ranked answers ('{RANKED_ANSWERS}' and '{scores}') need a prompt column "
                            "(--prompt-text-column)", path=split.source)
        logger.info("no rejected column: reading ranked answers from '%s' with their '%s'", RANKED_ANSWERS, scores)
        return Columns(prompt, RANKED_ANSWERS, None, kind=RANKED, scores=scores, tools=tools)
    named = params.text_column if params.text_column != DEFAULT_TEXT_COLUMN else None
    conversation = named or ("messages" if "messages" in present else None)
    if conversation is None or "chosen" in present or prompt is not None:
        if "chosen" in present or prompt is not None:  # a pair without its rejected side
            raise DataError(f"no rejected column: pass --rejected-text-column; columns present: {', '.join(present)}",
                            path=split.source)
        raise DataError(
            "no rejected column: pass --rejected-text-column, or give per-turn pairs (a 'messages' column whose "
            "assistant messages carry 'rejected') or ranked answers ('responses' with 'scores' or 'ranking'); "
            f"columns present: {', '.join(present)}", path=split.source)
    logger.info("no rejected column: reading per-turn pairs from the conversations in '%s'", conversation)
    return Columns(None, conversation, None, kind=TURNS, tools=tools)


def _tools(params: LLMTrainingParams, present: list[str]) -> str | None:
    if params.tools_column is not None:
        return params.tools_column
    return "tools" if "tools" in present else None


def _checked(columns: Columns, split: Split) -> Columns:
    _distinct(columns)
    columns.check(split)
    return columns


def _distinct(columns: Columns) -> None:
    """Two roles read from one column would train the prompt as its own answer, or an answer against itself."""
    answer = "chosen answer" if columns.rejected is not None else "completion"
    roles = [("prompt", "--prompt-text-column", columns.prompt), (answer, "--text-column", columns.chosen),
             ("rejected answer", "--rejected-text-column", columns.rejected), ("tools", "--tools-column", columns.tools)]
    for i, (role, flag, name) in enumerate(roles):
        for other_role, other_flag, other_name in roles[i + 1 :]:
            if name is not None and name == other_name:
                raise ParamsError(
                    f"{flag} and {other_flag}: the {role} and the {other_role} are both column '{name}'; "
                    "name a different column for each"
                )


# A supervised dataset's completion column when --text-column is left at its default, first match wins.
SFT_COLUMNS = ("text", "messages", "completion", "chosen")


def _supervised_columns(params: LLMTrainingParams, split: Split) -> Columns:
    present = split.columns
    column = params.text_column
    if column == DEFAULT_TEXT_COLUMN and column not in present:
        found = [name for name in SFT_COLUMNS if name in present]
        if not found:
            raise DataError(
                f"no text column for --trainer {params.trainer}: pass --text-column (expected one of "
                f"{', '.join(SFT_COLUMNS)}); columns present: {', '.join(present)}",
                path=split.source,
            )
        column = found[0]
        logger.info("text_column is '%s' (the default) and the data has no such column: using '%s'",
                    DEFAULT_TEXT_COLUMN, column)
    prompt = params.prompt_text_column
    if prompt is None and column in ("completion", "chosen") and "prompt" in present:
        prompt = "prompt"
        logger.info("prompt_text_column not given: using the data's 'prompt' column (not under the loss)")
    return _checked(Columns(prompt, column, None, tools=_tools(params, present)), split)
