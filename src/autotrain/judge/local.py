"""Local judges: a causal LM read from its next-token log-probs, and a reward model.

- `LogProbJudge`: the judge prompt (autotrain.judge.spec) as one user message through the judge's own chat template
  (without one, the prompt as text), and the log-probability of each label as the next token: log P(A) - log P(B),
  each the log-sum-exp over the label's one-token spellings ("A", " A"). No sampling: the same answers always get
  the same verdict, and one forward pass costs what one token of generation costs.
- `RewardJudge`: the question and one answer as a user and an assistant message through the judge's chat template
  (without one: question, newline, answer), the score its single logit; the higher wins. A reward model sees one
  answer at a time, so the order cannot sway it: each answer is scored once and both orders read the same scores.

Either way a difference under autotrain.judge.base.TIE_MARGIN is a tie. A judge prompt longer than the judge's
positions cannot be read: that order's reply is None (counted as unreadable), not a truncated prompt's verdict.
"""

from __future__ import annotations

from typing import Any

import torch

from autotrain.errors import ModelError
from autotrain.judge.base import Reply, by_score
from autotrain.judge.spec import fill, judge_kind

LABELS = ("A", "B")


def load(model: str, template: str) -> LogProbJudge | RewardJudge:
    from autotrain import defaults, model_files, models

    path = defaults.resolve_model(model)
    reward = judge_kind(path) == "reward"
    with model_files.loading(path):
        net, tokenizer = models.load_judge(path, reward)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    return RewardJudge(net, tokenizer) if reward else LogProbJudge(net, tokenizer, template)


def _ids(tokenizer: Any, messages: list[dict[str, str]], plain: str, generation: bool) -> list[int]:
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return list(tokenizer(plain)["input_ids"])


def _too_long(net: Any, ids: list[int]) -> Reply | None:
    """No verdict, saying why, when `ids` are more than the judge's positions."""
    from autotrain.models import model_max_length

    positions = model_max_length(net.config)
    if positions is None or len(ids) <= positions:
        return None
    return Reply(None, text=f"the judge's input is {len(ids)} tokens and it reads at most {positions}")


class LogProbJudge:
    describe, calls_per_pair = "judge forward pass", 2

    def __init__(self, net: Any, tokenizer: Any, template: str):
        self.net, self.tokenizer, self.template = net, tokenizer, template
        self.labels = [self._spellings(label) for label in LABELS]
        if not all(self.labels) or set(self.labels[0]) & set(self.labels[1]):
            raise ModelError("judge: its tokenizer has no distinct one-token spellings of A and B, the labels its "
                             "verdict is read from")

    def _spellings(self, label: str) -> list[int]:
        """The one-token spellings of `label` (with and without a leading space)."""
        found = []
        for text in (label, " " + label):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in found:
                found.append(ids[0])
        return found

    def prefer(self, question: str, answer_a: str, answer_b: str) -> Reply:
        text = fill(self.template, question, answer_a, answer_b)
        ids = _ids(self.tokenizer, [{"role": "user", "content": text}], text + "\n", generation=True)
        too_long = _too_long(self.net, ids)
        if too_long is not None:
            return too_long
        device = next(self.net.parameters()).device
        with torch.no_grad():
            logits = self.net(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
        logps = logits.log_softmax(-1)
        a, b = (torch.logsumexp(logps[spellings], 0).item() for spellings in self.labels)
        return by_score(a - b)


class RewardJudge:
    describe, calls_per_pair = "reward scoring pass", 2

    def __init__(self, net: Any, tokenizer: Any):
        self.net, self.tokenizer = net, tokenizer
        self._scores: dict[tuple[str, str], float | Reply] = {}

    def score(self, question: str, answer: str) -> float | Reply:
        """The answer's reward, or a Reply saying why there is none."""
        key = (question, answer)
        if key not in self._scores:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            ids = _ids(self.tokenizer, messages, question + "\n" + answer, generation=False)
            too_long = _too_long(self.net, ids)
            if too_long is not None:
                self._scores[key] = too_long
            else:
                device = next(self.net.parameters()).device
                with torch.no_grad():
                    self._scores[key] = self.net(input_ids=torch.tensor([ids], device=device)).logits[0, 0].item()
        return self._scores[key]

    def prefer(self, question: str, answer_a: str, answer_b: str) -> Reply:
        a, b = self.score(question, answer_a), self.score(question, answer_b)
        for score in (a, b):
            if isinstance(score, Reply):
                return score
        return by_score(a - b)
