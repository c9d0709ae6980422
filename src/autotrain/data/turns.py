"""Conversations cut at their turns: which text of a completion is trained and which is context.

A completion that holds several turns (an SFT conversation, or a preference answer that goes on after its first
assistant message) is trained on its assistant turns only, each with what the template writes to close it, exactly
as a single-turn completion is. The turns between them (user, tool, system), with the next assistant turn's
opening (the generation prompt), are context: read by the model, never under the loss, so a model never learns to
write the user's next message. `pieces` cuts the rendered text into (text, trained) pieces; the tokenizer turns
them into a mask (autotrain.data.tokenize) that both collators honour (autotrain.data.batch).

A preference pair compares two answers to one conversation: `split_pair` finds the shared prompt and the two
answers, and refuses a pair whose conversations first differ in a message that is not the assistant's.
"""

from __future__ import annotations

from collections.abc import Callable

from autotrain.data.messages import Messages
from autotrain.errors import DataError

Pieces = tuple[tuple[str, bool], ...]

# How the earlier text failed to be a prefix of the later one, for the first piece and for the later ones.
_PREFIX_LOST = (
    "the chat template renders the prompt differently once an answer follows, so the completion cannot be "
    "separated from it; pass --chat-template chatml",
    "the chat template renders the conversation's earlier turns differently once later turns follow, so the turns "
    "cannot be separated; pass --chat-template chatml",
)


# (messages up to an assistant turn, the text before it, the text it adds) -> that turn as (text, trained) pieces: its
# think block apart (autotrain.data.thinking). None: the whole turn is trained.
TurnSplit = Callable[[Messages, str, str], Pieces]


def pieces(render: Callable[[Messages, bool], str], messages: Messages, start: int, done: str,
           where: object, turn: TurnSplit | None = None) -> Pieces:
    """`messages[start:]` as (text, trained) pieces of what the template writes after `done` (the text of what
    precedes them). Each assistant message renders closed and is trained (`turn` may cut out its think block); each
    run of other messages renders up to the next assistant turn's opening (the generation prompt) and is context."""
    cut: list[tuple[str, bool]] = []
    i = start
    while i < len(messages):
        trained = messages[i]["role"] == "assistant"
        end = i + 1
        while not trained and end < len(messages) and messages[end]["role"] != "assistant":
            end += 1
        upto = render(messages[:end], not trained)
        if not upto.startswith(done):
            raise DataError(f"{where}: {_PREFIX_LOST[bool(cut)]}")
        text = upto[len(done) :]
        cut += turn(messages[:end], done, text) if trained and turn is not None else [(text, trained)]
        done, i = upto, end
    return tuple(cut)


def as_answer(value: str | Messages) -> Messages:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def split_pair(prompt: str | Messages | None, chosen: str | Messages, rejected: str | Messages,
               names: tuple[str, str], where: object) -> tuple[Messages, Messages, Messages]:
    """(prompt messages, chosen answer messages, rejected answer messages); `names`: the chosen and rejected
    columns, for errors."""
    chosen_msgs, rejected_msgs = as_answer(chosen), as_answer(rejected)
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
        _first_difference_is_an_answer(chosen_msgs, rejected_msgs, 0, where)
        prompt_msgs = chosen_msgs[:shared]
    else:
        prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    answers = []
    for name, msgs in zip(names, (chosen_msgs, rejected_msgs)):
        if msgs[: len(prompt_msgs)] == prompt_msgs and len(msgs) > len(prompt_msgs):
            msgs = msgs[len(prompt_msgs) :]  # a full conversation that repeats the prompt
        if msgs[0]["role"] != "assistant":
            raise DataError(f"{where}, column '{name}': the answer must start with an assistant message")
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}, column '{name}': the answer must end with an assistant message (a "
                            f"{msgs[-1]['role']} turn after the last answer has nothing to train)")
        answers.append(msgs)
    if prompt is not None:
        _first_difference_is_an_answer(answers[0], answers[1], len(prompt_msgs), where)
    return prompt_msgs, answers[0], answers[1]


def _first_difference_is_an_answer(chosen: Messages, rejected: Messages, offset: int, where: object) -> None:
    """Refuse a pair whose conversations first differ in a message that is not the assistant's: from there on the
    two sides answer different conversations, so neither answer is preferred over the other. `offset`: how many
    prompt messages come before these lists (for the message number in the error)."""
    for index, (ours, theirs) in enumerate(zip(chosen, rejected)):
        if ours == theirs:
            continue
        if ours["role"] == "assistant" and theirs["role"] == "assistant":
            return
        roles = ours["role"] if ours["role"] == theirs["role"] else f"{ours['role']} / {theirs['role']}"
        raise DataError(
            f"{where}: chosen and rejected first differ at message {offset + index + 1}, a {roles} message; a "
            "preference pair compares two answers to one conversation, so the first message that differs must be "
            "the assistant's"
        )
