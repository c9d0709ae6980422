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

Preference rows come in these shapes (autotrain.data.columns picks which):
- strings: {"prompt": "2+2?", "chosen": "4", "rejected": "5"};
- conversational: the prompt is a message list, chosen/rejected an assistant message (a list or a string);
- full conversations: chosen and rejected are whole message lists that share the prompt as a common prefix
  (with or without a prompt column);
- per-turn pairs and ranked answers: several pairs from one row (autotrain.data.expand), each rendered as above.

Messages may call tools and carry reasoning (autotrain.data.messages); a `tools` column is given to the template
for every text of its row. What a template does not write is refused, never trained silently without it: tool
definitions absent from the prompt, a tool call absent from the text, reasoning absent from a trained turn
(autotrain.data.thinking, which also keeps think blocks out of the loss as --reasoning-loss says).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from autotrain.data.columns import RANKED, TURNS, Columns, resolve_columns
from autotrain.data.expand import marked_turns, ranked_pairs, ranked_values
from autotrain.data.messages import (REJECTED_KEY, Messages, checked, checked_value, has_calls, said,
                                     tools_value)
from autotrain.data.templates import CHATML_TEMPLATE, NAMED_TEMPLATES, ZEPHYR_TEMPLATE, pick_template, render
from autotrain.data.thinking import turn_pieces, writes_reasoning
from autotrain.data.turns import Pieces, as_answer, pieces, split_pair
from autotrain.errors import DataError

__all__ = ["CHATML_TEMPLATE", "NAMED_TEMPLATES", "ZEPHYR_TEMPLATE", "Columns", "RenderedPair", "Renderer",
           "checked_value", "pick_template", "resolve_columns"]

logger = logging.getLogger("autotrain")


@dataclass(frozen=True)
class RenderedPair:
    prompt: str
    chosen: str
    rejected: str
    # A completion cut into (text, trained) pieces: the assistant turns trained, the user/tool turns between them
    # and empty or excluded think blocks context (autotrain.data.turns, .thinking). None: all of it is trained.
    chosen_pieces: Pieces | None = None
    # An answer (chosen, rejected or the SFT completion) that is only whitespace: nothing to learn, so the pair is
    # dropped and counted rather than trained as if it were an answer. Its texts are then left empty.
    blank: bool = False
    rejected_pieces: Pieces | None = None
    # Ranked answers: the pairs of one row share a group, and weigh 1 / (their number kept) together. -1: weight 1.
    group: int = -1


class Renderer:
    """Turns rows into strings with one template; checks the shape of every value on the way.

    `reasoning_loss`: whether think blocks holding reasoning are trained ("include") or context ("exclude");
    `ranked`: which pairs ranked answers make ("best" or "all", autotrain.data.expand). `made` counts what rows
    became (conversations, ranked prompts, pairs made, ties skipped) for the log and the model card.
    """

    def __init__(self, tokenizer: Any, template: str | None, columns: Columns, reasoning_loss: str = "include",
                 ranked: str = "best"):
        self.tokenizer, self.template, self.columns = tokenizer, template, columns
        self.include_reasoning, self.ranked = reasoning_loss == "include", ranked
        self.shape: str | None = None  # "text" or "messages": one dataset uses one shape, set by its first row
        self.made: Counter = Counter()
        self._tools: list[dict] | None = None  # the tool definitions of the row being rendered
        self._thinks: bool | None = None  # whether the template writes reasoning at all, probed on first need
        self._rows = 0

    @property
    def plain_text(self) -> bool:
        """Supervised rows of plain text: trained on whole, with the tokenizer's BOS/EOS and no chat template."""
        return not self.columns.paired and self.columns.prompt is None and self.shape == "text"

    @property
    def templated(self) -> bool:
        """The rendered strings carry the chat template's markers (so BOS/EOS come from the template)."""
        return self.template is not None and not self.plain_text

    def pairs(self, row: dict[str, Any], where: object) -> list[RenderedPair]:
        """Every pair (or supervised example) of one row; `where` names it in errors (`file:line`, or
        `file, row N of M`)."""
        self._rows += 1
        kind = self.columns.shape
        if kind == TURNS:
            return self._turn_pairs(row, where)
        if kind == RANKED:
            return self._ranked_pairs(row, where)
        return [self(row, where)]

    def __call__(self, row: dict[str, Any], where: object) -> RenderedPair:
        """Render one row of one pair (or one supervised example)."""
        cols = self.columns
        self._read_tools(row, where)
        prompt = checked_value(row, cols.prompt, where) if cols.prompt else None
        chosen = checked_value(row, cols.chosen, where, answer=True, marks=not cols.paired)
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
        return self._pair(prompt_msgs, chosen_msgs, rejected_msgs, (cols.chosen, cols.rejected), where)

    def _pair(self, prompt_msgs: Messages, chosen_msgs: Messages, rejected_msgs: Messages, names: tuple[str, str],
              where: object) -> RenderedPair:
        prompt_text = self._prompt(prompt_msgs, where)
        chosen_cut = self._completion(prompt_msgs, prompt_text, chosen_msgs, names[0], where)
        rejected_cut = self._completion(prompt_msgs, prompt_text, rejected_msgs, names[1], where)
        return RenderedPair(prompt_text, _joined(chosen_cut), _joined(rejected_cut), chosen_pieces=_mixed(chosen_cut),
                            rejected_pieces=_mixed(rejected_cut))

    def _turn_pairs(self, row: dict[str, Any], where: object) -> list[RenderedPair]:
        """One pair per assistant turn that carries a rejected alternative (autotrain.data.expand)."""
        column = self.columns.chosen
        self._read_tools(row, where)
        conversation = checked_value(row, column, where, marks=True, needs="per-turn pairs need a conversation")
        if isinstance(conversation, str):
            raise DataError(f"{where}, column '{column}': per-turn pairs need a conversation (a list of messages "
                            "whose assistant turns may carry 'rejected'), got text")
        self._check_shape("messages", where)
        self.made["conversations"] += 1
        marked = marked_turns(conversation, column, where)
        if not marked:
            self.made["conversations without a marked turn"] += 1
        if marked and self.template is None:
            raise _no_template(where)
        out = [self._pair(prompt, [chosen], [rejected], (column, column), where)
               if said(chosen) and said(rejected) else BLANK for prompt, chosen, rejected in marked]
        self.made["pairs"] += len(out)
        return out

    def _ranked_pairs(self, row: dict[str, Any], where: object) -> list[RenderedPair]:
        """The pairs of one prompt's ranked answers, one group (autotrain.data.expand)."""
        cols = self.columns
        self._read_tools(row, where)
        prompt = checked_value(row, cols.prompt, where)
        given, scores = ranked_values(row, cols.chosen, cols.scores, where)
        answers = [checked(value, cols.chosen, where, answer=True) for value in given]
        conversational = isinstance(prompt, list) or any(isinstance(a, list) for a in answers)
        self._check_shape("messages" if conversational else "text", where)
        chosen_rejected, ties = ranked_pairs(scores, self.ranked, lower_better=cols.scores == "ranking")
        self.made.update({"prompts": 1, "pairs": len(chosen_rejected), "tied pairs skipped": ties,
                          "prompts without an untied pair": int(not chosen_rejected)})
        group = self._rows
        if not conversational and self.template is None:
            return [BLANK if _blank(answers[i]) or _blank(answers[j]) else
                    RenderedPair(prompt, answers[i], answers[j], group=group) for i, j in chosen_rejected]
        if self.template is None:
            raise _no_template(where)
        prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        prompt_text = self._prompt(prompt_msgs, where) if chosen_rejected else ""
        done: dict[int, Pieces] = {}  # each answer rendered once, however many pairs it is in
        out = []
        for i, j in chosen_rejected:
            if _blank(answers[i]) or _blank(answers[j]):
                out.append(BLANK)
                continue
            _, chosen_msgs, rejected_msgs = split_pair(prompt_msgs, answers[i], answers[j], (cols.chosen, cols.chosen),
                                                       where)
            for index, msgs in ((i, chosen_msgs), (j, rejected_msgs)):
                if index not in done:
                    done[index] = self._completion(prompt_msgs, prompt_text, msgs, cols.chosen, where)
            out.append(RenderedPair(prompt_text, _joined(done[i]), _joined(done[j]), chosen_pieces=_mixed(done[i]),
                                    rejected_pieces=_mixed(done[j]), group=group))
        return out

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
        if isinstance(completion, list):  # a per-turn dataset's rejected alternatives: SFT trains the chosen turns
            completion = [{k: v for k, v in m.items() if k != REJECTED_KEY} for m in completion]
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
        prompt_text = self._prompt(messages[:first], where)
        cut = self._pieces(messages, first, prompt_text, self.columns.chosen, where)
        return RenderedPair(prompt_text, _joined(cut), "", cut)

    def _read_tools(self, row: dict[str, Any], where: object) -> None:
        """The row's tool definitions, for every text of the row; without a template nothing could write them."""
        self._tools = tools_value(row, self.columns.tools, where)
        if self._tools is not None and self.template is None:
            raise DataError(f"{where}, column '{self.columns.tools}': tool definitions need a chat template that "
                            "writes them, and this run has none")

    def _check_shape(self, shape: str, where: object) -> None:
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise DataError(
                f"{where}: mixes plain-string and conversational rows; earlier rows are "
                f"{'conversational' if self.shape == 'messages' else 'plain strings'}"
            )

    def _render(self, messages: Messages, generation: bool, column: str | None, where: object,
                continue_final: bool = False, tools: bool = True) -> str:
        """`messages` (read from `column`) through the template, with the row's tools; a template that refuses them
        is a DataError."""
        from jinja2 import TemplateError, TemplateSyntaxError

        try:
            return render(self.tokenizer, self.template, messages, generation, continue_final=continue_final,
                          tools=self._tools if tools else None)
        except TemplateSyntaxError as exc:
            raise DataError(f"the chat template has a syntax error (its line {exc.lineno}): {exc.message}") from None
        except (TemplateError, TypeError) as exc:  # raise_exception(...), an undefined name, None + text
            place = f"{where}, column '{column}'" if column else str(where)
            reason = exc.message if isinstance(exc, TemplateError) and exc.message else str(exc)
            raise DataError(f"{place}: the chat template refuses this conversation: {reason}") from None

    def _prompt(self, prompt_msgs: Messages, where: object) -> str:
        """The prompt's text: up to the generation prompt; or, when it ends with an assistant message, up to the
        end of that message's text, which the answer then continues (TRL renders this prompt the same way)."""
        column = self.columns.prompt or self.columns.chosen  # no prompt column: the conversations' shared turns
        self._check_calls(prompt_msgs, 0, column, where)
        continues = _continues(prompt_msgs)
        if not continues:
            text = self._render(prompt_msgs, True, column, where)
        else:
            try:
                text = self._render(prompt_msgs, False, column, where, continue_final=True)
            except ValueError as exc:  # transformers: the template does not write the final message's text as given
                raise DataError(
                    f"{where}, column '{self.columns.prompt}': the prompt ends with an assistant message for the "
                    "answer to continue, but the chat template does not render that message's text as given; end "
                    "the prompt with a user message or pass --chat-template chatml"
                ) from exc
        if self._tools is not None and text == self._render(prompt_msgs, not continues, column, where, continues,
                                                             tools=False):
            raise DataError(f"{where}, column '{self.columns.tools}': the chat template does not write tool "
                            "definitions into the prompt (it has no tool support), so the model would be trained "
                            "without them; use a template that renders tools (the model's own, where it has one)")
        return text

    def _check_calls(self, messages: Messages, start: int, column: str, where: object) -> None:
        """Each tool call from `messages[start]` (the first message of `column`) on must reach the text: a template that writes the same text with
        and without a message's calls, or fails on them, has no tool support; the turn would train without its
        call."""
        for index in range(start, len(messages)):
            if not has_calls(messages[index]):
                continue
            bare = [*messages[:index], {k: v for k, v in messages[index].items() if k != "tool_calls"}]
            try:
                written = self._render(messages[: index + 1], False, column, where)
            except DataError as exc:  # e.g. text + None: a template that writes every message's content as text
                raise _no_calls(where, column, index - start, f": {str(exc).partition('conversation: ')[2]}") from None
            try:
                same = written == self._render(bare, False, column, where)
            except DataError:  # refused without its calls (content null): the calls are what it writes
                same = False
            if same:
                raise _no_calls(where, column, index - start, "")

    def _completion(self, prompt_msgs: Messages, prompt_text: str, answer: Messages, column: str,
                    where: object) -> Pieces:
        """What the template writes after `prompt_text` for `answer` (read from `column`), as (text, trained)
        pieces: one trained piece for an answer of assistant messages; several when user or tool turns follow or a
        think block is context."""
        messages, start = prompt_msgs + answer, len(prompt_msgs)
        if _continues(prompt_msgs):  # the answer's first message continues the prompt's final one: one message
            if answer[0]["role"] != "assistant":
                raise DataError(f"{where}, column '{column}': the answer must start with an assistant message")
            final = prompt_msgs[-1]
            merged = {**final, **answer[0], "content": (final.get("content") or "") + (answer[0].get("content") or "")}
            messages, start = [*prompt_msgs[:-1], merged, *answer[1:]], len(prompt_msgs) - 1
        self._check_calls(messages, start, column, where)
        return self._pieces(messages, start, prompt_text, column, where)

    def _pieces(self, messages: Messages, start: int, done: str, column: str, where: object) -> Pieces:
        def draw(msgs: Messages, generation: bool) -> str:
            return self._render(msgs, generation, column, where)

        if self._thinks is None:
            self._thinks = writes_reasoning(draw)
        include, thinks, place = self.include_reasoning, self._thinks, f"{where}, column '{column}'"
        return pieces(draw, messages, start, done, where,
                      lambda msgs, before, text: turn_pieces(draw, msgs, before, text, include, thinks, place))


def _joined(cut: Pieces) -> str:
    return "".join(text for text, _ in cut)


def _mixed(cut: Pieces) -> Pieces | None:
    """The pieces when some are context; None when the whole completion is trained (the common case)."""
    return cut if not all(trained for _, trained in cut) else None


BLANK = RenderedPair("", "", "", blank=True)


def _blank(answer: str | Messages) -> bool:
    """Nothing to learn: a string of whitespace, or a message list whose assistant messages hold no text, tool call
    or reasoning."""
    if isinstance(answer, str):
        return not answer.strip()
    spoken = [m for m in answer if m["role"] == "assistant"]  # none: not an answer, reported later
    return bool(spoken) and not any(said(m) for m in spoken)


def _continues(prompt_msgs: Messages) -> bool:
    return bool(prompt_msgs) and prompt_msgs[-1]["role"] == "assistant"


def _no_calls(where: object, column: str, index: int, reason: str) -> DataError:
    return DataError(f"{where}, column '{column}': message {index + 1} calls a tool, but the chat template does not "
                     f"write tool calls (it has no tool support{reason}), so the turn would be trained without its "
                     "call; use a template that renders tool_calls (the model's own, where it has one)")


def _no_template(where: object) -> DataError:
    return DataError(
        f"{where}: conversational rows need a chat template and this tokenizer has none; "
        "pass --chat-template chatml (or zephyr)"
    )
