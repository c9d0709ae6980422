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
from autotrain.errors import DataError, ParamsError
from autotrain.params import LLMTrainingParams

__all__ = ["CHATML_TEMPLATE", "NAMED_TEMPLATES", "ZEPHYR_TEMPLATE", "Columns", "RenderedPair", "Renderer",
           "pick_template", "resolve_columns"]

logger = logging.getLogger("autotrain")

ROLES = ("system", "user", "assistant", "tool")

Messages = list[dict[str, str]]


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
    # A multi-turn SFT conversation: the chosen text cut into (text, trained) pieces, the assistant turns trained
    # and the user/tool turns between them context. None: the whole chosen text is trained.
    chosen_pieces: tuple[tuple[str, bool], ...] | None = None
    # An answer (chosen, rejected or the SFT completion) that is only whitespace: nothing to learn, so the pair is
    # dropped and counted rather than trained as if it were an answer. Its texts are then left empty.
    blank: bool = False


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
        prompt = _value(row, cols.prompt, where) if cols.prompt else None
        chosen = _value(row, cols.chosen, where, answer=True)
        if cols.rejected is None:
            return self._supervised(prompt, chosen, where)
        rejected = _value(row, cols.rejected, where, answer=True)
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
        prompt_msgs, chosen_msgs, rejected_msgs = _split_conversation(prompt, chosen, rejected, cols, where)
        prompt_text = self._prompt(prompt_msgs, where)
        return RenderedPair(
            prompt_text,
            self._completion(prompt_msgs, prompt_text, chosen_msgs, where),
            self._completion(prompt_msgs, prompt_text, rejected_msgs, where),
        )

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
        return RenderedPair(prompt_text, self._completion(prompt_msgs, prompt_text, _as_answer(completion), where), "")

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
        prompt_text = self._render(messages[:first], generation=True)
        pieces: list[tuple[str, bool]] = []
        done = prompt_text  # what the pieces so far render to, prompt included
        i = first
        while i < len(messages):
            trained = messages[i]["role"] == "assistant"
            end = i
            while end < len(messages) and (messages[end]["role"] == "assistant") == trained:
                end += 1
            # An assistant run renders closed; a context run renders up to the next assistant turn's opening.
            upto = self._render(messages[:end], generation=not trained)
            if not upto.startswith(done):
                raise DataError(
                    f"{where}: the chat template renders the conversation's earlier turns differently once later "
                    "turns follow, so the turns cannot be separated; pass --chat-template chatml"
                )
            pieces.append((upto[len(done) :], trained))
            done, i = upto, end
        return RenderedPair(prompt_text, "".join(text for text, _ in pieces), "", tuple(pieces))

    def _check_shape(self, shape: str, where: object) -> None:
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise DataError(
                f"{where}: mixes plain-string and conversational rows; earlier rows are "
                f"{'conversational' if self.shape == 'messages' else 'plain strings'}"
            )

    def _render(self, messages: Messages, generation: bool) -> str:
        return render(self.tokenizer, self.template, messages, generation)

    def _prompt(self, prompt_msgs: Messages, where: object) -> str:
        """The prompt's text: up to the generation prompt; or, when it ends with an assistant message, up to the
        end of that message's text, which the answer then continues (TRL renders this prompt the same way)."""
        if not _continues(prompt_msgs):
            return self._render(prompt_msgs, generation=True)
        try:
            return render(self.tokenizer, self.template, prompt_msgs, generation=False, continue_final=True)
        except ValueError as exc:  # transformers: the template does not write the final message's text as given
            raise DataError(
                f"{where}, column '{self.columns.prompt}': the prompt ends with an assistant message for the answer "
                "to continue, but the chat template does not render that message's text as given; end the prompt "
                "with a user message or pass --chat-template chatml"
            ) from exc

    def _completion(self, prompt_msgs: Messages, prompt_text: str, answer: Messages, where: object) -> str:
        if _continues(prompt_msgs):  # the answer's first message continues the prompt's final one: one message
            if answer[0]["role"] != "assistant":
                raise DataError(f"{where}, column '{self.columns.chosen}': the answer must start with an assistant "
                                "message")
            final = prompt_msgs[-1]
            merged = {**final, "content": final["content"] + answer[0]["content"]}
            full = self._render([*prompt_msgs[:-1], merged, *answer[1:]], generation=False)
        else:
            full = self._render(prompt_msgs + answer, generation=False)
        if not full.startswith(prompt_text):
            raise DataError(
                f"{where}: the chat template renders the prompt differently once an answer follows, so the "
                "completion cannot be separated from it; pass --chat-template chatml"
            )
        return full[len(prompt_text) :]


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


def _value(row: Row, column: str, where: object, answer: bool = False) -> str | Messages:
    """The row's value in `column`, checked. An `answer` (chosen, rejected, the SFT completion) may be "": blank,
    it is dropped and counted like a whitespace-only answer (`_blank`); an empty prompt or list is an error."""
    if column not in row:
        raise DataError(f"{where}, column '{column}': missing from this row (it has: {', '.join(row)})")
    value = row[column]
    if value is None:
        raise DataError(f"{where}, column '{column}': null value; every pair needs a text here")
    if answer and value == "":
        return value
    if isinstance(value, str | list) and len(value) == 0:
        raise DataError(f"{where}, column '{column}': empty value; every pair needs a text here")
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


def _as_answer(value: str | Messages) -> Messages:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def _split_conversation(
    prompt: str | Messages | None, chosen: str | Messages, rejected: str | Messages, cols: Columns, where: object
) -> tuple[Messages, Messages, Messages]:
    """Split into (prompt messages, chosen answer messages, rejected answer messages)."""
    chosen_msgs, rejected_msgs = _as_answer(chosen), _as_answer(rejected)
    if prompt is None:
        # Full conversations: the prompt is the longest common prefix that ends before an assistant turn.
        shared = 0
        while (
            shared < min(len(chosen_msgs), len(rejected_msgs)) - 1
            and chosen_msgs[shared] == rejected_msgs[shared]
        ):
            shared += 1
        while shared > 0 and chosen_msgs[shared - 1]["role"] == "assistant":
            shared -= 1
        if shared == 0:
            raise DataError(
                f"{where}: with no prompt column, chosen and rejected must be conversations that share the "
                "prompt turns as a common prefix"
            )
        prompt_msgs = chosen_msgs[:shared]
    else:
        prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    answers = []
    for name, msgs in ((cols.chosen, chosen_msgs), (cols.rejected, rejected_msgs)):
        if msgs[: len(prompt_msgs)] == prompt_msgs and len(msgs) > len(prompt_msgs):
            msgs = msgs[len(prompt_msgs) :]  # a full conversation that repeats the prompt
        if msgs[0]["role"] != "assistant":
            raise DataError(f"{where}, column '{name}': the answer must start with an assistant message")
        answers.append(msgs)
    return prompt_msgs, answers[0], answers[1]
