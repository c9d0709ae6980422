"""Preference rows -> (prompt, chosen, rejected) strings, through the chat template.

The prompt is rendered once, with `add_generation_prompt=True`. A completion is what the template writes after
that prompt when the assistant turn follows: the assistant content plus whatever closes the turn. The prompt
therefore appears exactly once in each sequence, and never under the completion's loss.

A prompt whose last message is the assistant's (a partial answer: "The answer is") is continued, as TRL renders
it: the prompt ends at the end of that message's text (`continue_final_message`), and the completion is the answer
joined onto that message plus what closes the turn, the same sequence generation from that prompt produces. (TRL's
completion instead closes the partial message and opens a second assistant turn.)

An answer that is empty or only whitespace is not rendered: the row comes back `blank`, to be dropped and counted.

Supervised (SFT) rows have no rejected side, and come as a `text` column (plain text, trained on whole, no
template), a prompt and a completion column (rendered as above, the prompt excluded from the loss), or a `messages`
conversation (the turns before the first assistant message are the prompt; every assistant turn is trained, and
the user or tool turns between them are context, not under the loss).

An answer of several turns (a preference answer that goes on after its first assistant message, or an SFT
completion given as such a list) is trained the same way: its assistant turns with what closes them, never the
user's later turns (autotrain.data.turns).

A chat template that refuses a conversation (`raise_exception`, as Mistral's and Gemma's do when roles do not
alternate) is reported as one line naming the row, the column and the template's own message.

Preference rows come in three shapes, all three accepted:
- strings: {"prompt": "2+2?", "chosen": "4", "rejected": "5"};
- conversational: the prompt is a message list, chosen/rejected an assistant message (a list or a string);
- full conversations: chosen and rejected are whole message lists that share the prompt as a common prefix
  (with or without a prompt column).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from autotrain.data.split import QUOTE_IT, Row, Split
from autotrain.data.templates import CHATML_TEMPLATE, NAMED_TEMPLATES, ZEPHYR_TEMPLATE, pick_template, render
from autotrain.data.turns import Messages, Pieces, as_answer, pieces, split_pair
from autotrain.errors import DataError, ParamsError
from autotrain.params import LLMTrainingParams

__all__ = ["CHATML_TEMPLATE", "NAMED_TEMPLATES", "ZEPHYR_TEMPLATE", "Columns", "RenderedPair", "Renderer",
           "checked_value", "pick_template", "resolve_columns"]

logger = logging.getLogger("autotrain")

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Columns:
    """Which columns hold the prompt, the chosen and the rejected completion (prompt may be absent)."""

    prompt: str | None
    chosen: str  # the chosen completion; for SFT, the completion, text or messages column
    rejected: str | None  # None for SFT

    @property
    def unit(self) -> str:
        """What one row is, for messages and the model card."""
        return "pairs" if self.rejected is not None else "examples"

    def check(self, split: Split) -> None:
        present = split.columns
        for name in (self.prompt, self.chosen, self.rejected):
            if name is not None and name not in present:
                raise DataError(f"missing; columns present: {', '.join(present)}", path=split.source, column=name)


# The text_column a run has when the user names none. Defaults are recognised by value, not by whether the field was
# set: a launched process reads every field back from training_params.json, so there every field counts as set.
DEFAULT_TEXT_COLUMN: str = LLMTrainingParams.model_fields["text_column"].default


def resolve_columns(params: LLMTrainingParams, split: Split, paired: bool = True) -> Columns:
    """Pick the columns, falling back to prompt/chosen/rejected when the user named none, and say so."""
    if not paired:
        return _supervised_columns(params, split)
    present = split.columns
    chosen = params.text_column
    if chosen == DEFAULT_TEXT_COLUMN and chosen not in present and "chosen" in present:
        chosen = "chosen"
        logger.info("text_column is '%s' (the default) and the data has no such column: using 'chosen'",
                    DEFAULT_TEXT_COLUMN)
    prompt = params.prompt_text_column
    if prompt is None and "prompt" in present:
        prompt = "prompt"
        logger.info("prompt_text_column not given: using the data's 'prompt' column")
    rejected = params.rejected_text_column
    if rejected is None:
        if "rejected" not in present:
            raise DataError(
                f"no rejected column: pass --rejected-text-column; columns present: {', '.join(present)}",
                path=split.source,
            )
        rejected = "rejected"
        logger.info("rejected_text_column not given: using the data's 'rejected' column")
    columns = Columns(prompt, chosen, rejected)
    _distinct(columns)
    columns.check(split)
    return columns


def _distinct(columns: Columns) -> None:
    """Two roles read from one column would train the prompt as its own answer, or an answer against itself."""
    answer = "chosen answer" if columns.rejected is not None else "completion"
    roles = [("prompt", "--prompt-text-column", columns.prompt), (answer, "--text-column", columns.chosen),
             ("rejected answer", "--rejected-text-column", columns.rejected)]
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
    columns = Columns(prompt, column, None)
    _distinct(columns)
    columns.check(split)
    return columns


@dataclass(frozen=True)
class RenderedPair:
    prompt: str
    chosen: str
    rejected: str
    # A completion of several turns: its text cut into (text, trained) pieces, the assistant turns trained and the
    # user/tool turns between them context (autotrain.data.turns). None: the whole completion is trained.
    chosen_pieces: Pieces | None = None
    # An answer (chosen, rejected or the SFT completion) that is only whitespace: nothing to learn, so the pair is
    # dropped and counted rather than trained as if it were an answer. Its texts are then left empty.
    blank: bool = False
    rejected_pieces: Pieces | None = None


class Renderer:
    """Turns rows into strings with one template; checks the shape of every value on the way."""

    def __init__(self, tokenizer: Any, template: str | None, columns: Columns):
        self.tokenizer, self.template, self.columns = tokenizer, template, columns
        self.shape: str | None = None  # "text" or "messages": one dataset uses one shape, set by its first row

    @property
    def plain_text(self) -> bool:
        """Supervised rows of plain text: trained on whole, with the tokenizer's BOS/EOS and no chat template."""
        return self.columns.rejected is None and self.columns.prompt is None and self.shape == "text"

    @property
    def templated(self) -> bool:
        """The rendered strings carry the chat template's markers (so BOS/EOS come from the template)."""
        return self.template is not None and not self.plain_text

    def __call__(self, row: Row, where: object) -> RenderedPair:
        """Render one row; `where` names it in errors (`file:line`, or `file, row N of M`)."""
        cols = self.columns
        prompt = checked_value(row, cols.prompt, where) if cols.prompt else None
        chosen = checked_value(row, cols.chosen, where, answer=True)
        if cols.rejected is None:
            return self._supervised(prompt, chosen, where)
        rejected = checked_value(row, cols.rejected, where, answer=True)
        conversational = any(isinstance(v, list) for v in (prompt, chosen, rejected))
        self._check_shape("messages" if conversational else "text", where)
        if _blank(chosen) or _blank(rejected):
            return BLANK
        if not conversational:
            if prompt is None:
                raise DataError(f"{where}: plain-string rows need a prompt column (--prompt-text-column)")
            if self.template is None:
                return RenderedPair(prompt, chosen, rejected)
            prompt = [{"role": "user", "content": prompt}]
        if self.template is None:
            raise _no_template(where)
        prompt_msgs, chosen_msgs, rejected_msgs = split_pair(prompt, chosen, rejected, (cols.chosen, cols.rejected),
                                                             where)
        prompt_text = self._prompt(prompt_msgs, where)
        chosen_cut = self._completion(prompt_msgs, prompt_text, chosen_msgs, cols.chosen, where)
        rejected_cut = self._completion(prompt_msgs, prompt_text, rejected_msgs, cols.rejected, where)
        return RenderedPair(prompt_text, _joined(chosen_cut), _joined(rejected_cut), chosen_pieces=_mixed(chosen_cut),
                            rejected_pieces=_mixed(rejected_cut))

    def _supervised(self, prompt: str | Messages | None, completion: str | Messages, where: object) -> RenderedPair:
        self._check_shape("messages" if isinstance(completion, list) or isinstance(prompt, list) else "text", where)
        if _blank(completion):
            return BLANK
        if prompt is None and isinstance(completion, str):
            return RenderedPair("", completion, "")  # plain text, trained on whole
        if self.template is None:
            if isinstance(completion, str) and isinstance(prompt, str):
                return RenderedPair(prompt, completion, "")
            raise _no_template(where)
        if prompt is None:  # a whole conversation: every assistant turn is trained, everything else is context
            return self._conversation(completion, where)
        prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        prompt_text = self._prompt(prompt_msgs, where)
        cut = self._completion(prompt_msgs, prompt_text, as_answer(completion), self.columns.chosen, where)
        return RenderedPair(prompt_text, _joined(cut), "", _mixed(cut))

    def _conversation(self, messages: Messages, where: object) -> RenderedPair:
        """Prompt: the turns before the first assistant message. Completion: the rest, in pieces; each assistant
        turn (with what closes it) is trained, each run of other turns between them (with the next generation
        prompt) is context."""
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), 0)
        if first == 0 or messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}, column '{self.columns.chosen}': a conversation must start with a non-assistant message "
                "and end with an assistant message"
            )
        column = self.columns.chosen
        prompt_text = self._render(messages[:first], True, column, where)
        cut = pieces(lambda msgs, generation: self._render(msgs, generation, column, where), messages, first,
                     prompt_text, where)
        return RenderedPair(prompt_text, _joined(cut), "", cut)

    def _check_shape(self, shape: str, where: object) -> None:
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise DataError(
                f"{where}: mixes plain-string and conversational rows; earlier rows are "
                f"{'conversational' if self.shape == 'messages' else 'plain strings'}"
            )

    def _render(self, messages: Messages, generation: bool, column: str | None, where: object,
                continue_final: bool = False) -> str:
        """`messages` (read from `column`) through the template; a template that refuses them is a DataError."""
        from jinja2 import TemplateError, TemplateSyntaxError

        try:
            return render(self.tokenizer, self.template, messages, generation, continue_final=continue_final)
        except TemplateSyntaxError as exc:
            raise DataError(f"the chat template has a syntax error (its line {exc.lineno}): {exc.message}") from None
        except TemplateError as exc:  # raise_exception("Conversation roles must alternate ..."), an undefined name
            place = f"{where}, column '{column}'" if column else str(where)
            raise DataError(f"{place}: the chat template refuses this conversation: {exc.message or exc}") from None

    def _prompt(self, prompt_msgs: Messages, where: object) -> str:
        """The prompt's text: up to the generation prompt; or, when it ends with an assistant message, up to the
        end of that message's text, which the answer then continues (TRL renders this prompt the same way)."""
        column = self.columns.prompt or self.columns.chosen  # no prompt column: the conversations' shared turns
        if not _continues(prompt_msgs):
            return self._render(prompt_msgs, True, column, where)
        try:
            return self._render(prompt_msgs, False, column, where, continue_final=True)
        except ValueError as exc:  # transformers: the template does not write the final message's text as given
            raise DataError(
                f"{where}, column '{self.columns.prompt}': the prompt ends with an assistant message for the answer "
                "to continue, but the chat template does not render that message's text as given; end the prompt "
                "with a user message or pass --chat-template chatml"
            ) from exc

    def _completion(self, prompt_msgs: Messages, prompt_text: str, answer: Messages, column: str,
                    where: object) -> Pieces:
        """What the template writes after `prompt_text` for `answer` (read from `column`), as (text, trained)
        pieces: one trained piece for an answer of assistant messages; several when user or tool turns follow."""
        messages, start = prompt_msgs + answer, len(prompt_msgs)
        if _continues(prompt_msgs):  # the answer's first message continues the prompt's final one: one message
            if answer[0]["role"] != "assistant":
                raise DataError(f"{where}, column '{column}': the answer must start with an assistant message")
            final = prompt_msgs[-1]
            merged = {**final, "content": final["content"] + answer[0]["content"]}
            messages, start = [*prompt_msgs[:-1], merged, *answer[1:]], len(prompt_msgs) - 1
        return pieces(lambda msgs, generation: self._render(msgs, generation, column, where), messages, start,
                      prompt_text, where)


def _joined(cut: Pieces) -> str:
    return "".join(text for text, _ in cut)


def _mixed(cut: Pieces) -> Pieces | None:
    """The pieces when some are context; None when the whole completion is trained (the common case)."""
    return cut if not all(trained for _, trained in cut) else None


BLANK = RenderedPair("", "", "", blank=True)


def _blank(answer: str | Messages) -> bool:
    """Only whitespace: a string, or a message list whose assistant messages hold nothing else."""
    if isinstance(answer, str):
        return not answer.strip()
    said = [m["content"] for m in answer if m["role"] == "assistant"]  # none: not an answer, reported later
    return bool(said) and not any(text.strip() for text in said)


def _continues(prompt_msgs: Messages) -> bool:
    return bool(prompt_msgs) and prompt_msgs[-1]["role"] == "assistant"


def _no_template(where: object) -> DataError:
    return DataError(
        f"{where}: conversational rows need a chat template and this tokenizer has none; "
        "pass --chat-template chatml (or zephyr)"
    )


def checked_value(row: Row, column: str, where: object, answer: bool = False,
                  needs: str = "every pair needs a text here") -> str | Messages:
    """The row's value in `column`, checked: a text or a list of messages. An `answer` (chosen, rejected, the SFT
    completion) may be "": blank, it is dropped and counted like a whitespace-only answer (`_blank`); an empty
    prompt or list is an error (`needs` says why)."""
    if column not in row:
        raise DataError(f"{where}, column '{column}': missing from this row (it has: {', '.join(row)})")
    value = row[column]
    if value is None:
        raise DataError(f"{where}, column '{column}': null value; {needs}")
    if answer and value == "":
        return value
    if isinstance(value, str | list) and len(value) == 0:
        raise DataError(f"{where}, column '{column}': empty value; {needs}")
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        for message in value:
            _check_message(message, column, where)
        return value
    advice = where.value_advice(column) if hasattr(where, "value_advice") else QUOTE_IT
    raise DataError(
        f"{where}, column '{column}': expected text or a list of messages, got {type(value).__name__} "
        f"{_short(value)}; {advice}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_message(message: Any, column: str, where: object) -> None:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise DataError(f"{where}, column '{column}': each message needs 'role' and 'content', got {_short(message)}")
    if message["role"] not in ROLES:
        raise DataError(
            f"{where}, column '{column}': unknown role {_short(message['role'])}; expected one of {', '.join(ROLES)}"
        )
    if not isinstance(message["content"], str):
        raise DataError(
            f"{where}, column '{column}': message content must be text, got {_short(message['content'])}"
        )
