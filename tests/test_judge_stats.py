"""The judged comparison's numbers (autotrain.judge.stats), through the judging loop (autotrain.judge.session) with
stub judges: intervals against a direct computation on a hand-made verdict list, the length-controlled win rate
when only length differs, a judge that always picks position A, identical answers."""

from __future__ import annotations

import io
import json
import math
import random
import statistics

import pytest

from autotrain.judge import stats
from autotrain.judge.base import Reply
from autotrain.judge.report import SUMMARY_FILE, VERDICTS_FILE
from autotrain.judge.session import Answers, judge

Z = statistics.NormalDist().inv_cdf(0.975)


class Stub:
    """A judge given as a function of (question, answer A, answer B) -> "A", "B" or "tie"; counts its calls."""

    describe, calls_per_pair = "stub call", 2

    def __init__(self, choose):
        self.choose, self.calls = choose, 0

    def prefer(self, question: str, answer_a: str, answer_b: str) -> Reply:
        self.calls += 1
        return Reply(self.choose(question, answer_a, answer_b))


def longer(question, a, b):
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


def run_judge(tmp_path, after, before, choose, prompts=None):
    stub = Stub(choose)
    prompts = prompts or [f"question {i}" for i in range(len(after))]
    summary = judge(tmp_path / "judged", Answers(prompts, after, before), "stub", None, "again", opened=stub,
                    stream=io.StringIO())
    return summary["metrics"], stub


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    # Wilson (1927): the p solving (p_hat - p)^2 = z^2 p (1 - p) / n, the quadratic's two roots.
    p_hat = k / n
    a, b, c = 1 + Z * Z / n, -(2 * p_hat + Z * Z / n), p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return ((-b - root) / (2 * a), (-b + root) / (2 * a))


def test_intervals_match_a_direct_computation_on_a_hand_made_verdict_list():
    S, B, T = stats.SUBJECT, stats.BASELINE, stats.TIE
    # (subject shown first, subject shown second): 6 wins, 2 losses, and 4 ties (a flip each way, a tie, no reply)
    orders = [(S, S)] * 6 + [(B, B)] * 2 + [(S, B), (B, S), (T, T), (S, None)]
    pairs = [stats.Pair(10, 10, first, second) for first, second in orders]
    summary = stats.summarise(pairs)
    assert (summary.wins, summary.ties, summary.losses) == (6, 4, 2)
    for share, k in ((summary.win, 6), (summary.tie, 4), (summary.loss, 2)):
        assert share[0] == pytest.approx(k / 12)
        assert share[1:] == pytest.approx(wilson_by_hand(k, 12), abs=1e-12)
    scores = [1.0] * 6 + [0.0] * 2 + [0.5] * 4
    half = Z * statistics.stdev(scores) / math.sqrt(12)
    assert summary.win_rate == pytest.approx((8 / 12, 8 / 12 - half, 8 / 12 + half), abs=1e-12)
    # Consistent: the 8 agreeing pairs and the tie/tie; the pair with no reply is left out.
    assert summary.position_consistency == pytest.approx(9 / 11)
    assert summary.unreadable == 1


def test_a_judge_that_prefers_the_longer_answer_is_length_controlled_to_a_coin_flip(tmp_path):
    rng = random.Random(0)
    base = [rng.randint(20, 120) for _ in range(40)]
    # Length is all that differs: the same text, longer after training in 36 pairs, shorter in 4.
    grow = [rng.randint(5, 60) for _ in range(36)] + [-rng.randint(5, 15) for _ in range(4)]
    before = ["word " * (n // 5) for n in base]
    after = [text + "x" * g if g > 0 else text[:g] for text, g in zip(before, grow)]
    metrics, stub = run_judge(tmp_path, after, before, longer)
    assert stub.calls == 80
    assert metrics["eval_judge_win_rate"] == pytest.approx(36 / 40)
    assert metrics["eval_judge_win"] == pytest.approx(36 / 40)
    assert abs(metrics["eval_judge_lc_win_rate"] - 0.5) < 0.05
    assert metrics["eval_judge_position_consistency"] == 1.0


def test_a_preference_unrelated_to_length_survives_the_length_control(tmp_path):
    """The fit must not simply return 0.5: a judge that prefers the answer saying "good", whatever the lengths,
    keeps about its raw win rate."""
    rng = random.Random(1)
    good = [i % 4 != 0 for i in range(40)]  # 30 of 40 after answers are the good ones
    after = [("good " if g else "bad ") + "y" * rng.randint(0, 80) for g in good]
    before = [("bad " if g else "good ") + "y" * rng.randint(0, 80) for g in good]

    def likes_good(question, a, b):
        return "A" if a.startswith("good") else "B"

    metrics, _ = run_judge(tmp_path, after, before, likes_good)
    assert metrics["eval_judge_win_rate"] == pytest.approx(0.75)
    assert abs(metrics["eval_judge_lc_win_rate"] - 0.75) < 0.06
    low, high = metrics["eval_judge_lc_win_rate_ci_low"], metrics["eval_judge_lc_win_rate_ci_high"]
    assert 0.5 < low < metrics["eval_judge_lc_win_rate"] < high


def test_a_judge_that_always_picks_position_a_is_inconsistent_and_gives_only_ties(tmp_path):
    after = [f"after answer {i}" for i in range(8)]
    before = [f"before {i}" for i in range(8)]
    metrics, _ = run_judge(tmp_path, after, before, lambda q, a, b: "A")
    assert metrics["eval_judge_position_consistency"] == 0.0
    assert metrics["eval_judge_tie"] == 1.0 and metrics["eval_judge_win"] == metrics["eval_judge_loss"] == 0.0
    assert metrics["eval_judge_first_position"] == 1.0
    verdicts = [json.loads(line) for line in (tmp_path / "judged" / VERDICTS_FILE).read_text().splitlines()]
    assert [(v["subject_first"], v["subject_second"], v["verdict"]) for v in verdicts] == [
        ("subject", "baseline", "tie")] * 8


def test_identical_answers_are_ties_without_a_judge_call(tmp_path):
    answers = [f"the same answer {i}" for i in range(6)]

    def never(question, a, b):
        raise AssertionError("identical answers were sent to the judge")

    metrics, stub = run_judge(tmp_path, answers, list(answers), never)
    assert stub.calls == 0
    assert metrics["eval_judge_tie"] == 1.0 and metrics["eval_judge_identical"] == 6
    assert metrics["eval_judge_win_rate"] == 0.5
    assert metrics["eval_judge_position_consistency"] is None


def test_the_cost_is_said_up_front_and_progress_is_shown(tmp_path, caplog):
    stream = io.StringIO()
    after, before = [f"a{i}" * 3 for i in range(5)], [f"b{i}" for i in range(4)] + ["a4" * 3]
    with caplog.at_level("INFO", logger="autotrain"):
        judge(tmp_path / "j", Answers([f"q{i}" for i in range(5)], after, before), "stub", None, "again",
              opened=Stub(longer), stream=stream)
    assert "5 prompts: 1 pairs of identical answers (ties, not asked), 0 judged already, 4 to judge in both " \
           "orders: 8 judge calls" in caplog.text
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("judge 8/8 calls (100%)") and len(lines) == 8
    assert json.loads((tmp_path / "j" / SUMMARY_FILE).read_text())["complete"] is True
