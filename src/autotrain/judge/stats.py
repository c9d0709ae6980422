"""What a list of judged pairs says: win / tie / loss rates with 95% intervals, position consistency, lengths, and a
length-controlled win rate. Standard library only: pure functions of the verdicts, tested against direct
computations.

Each pair (a prompt, the subject's answer, the baseline's answer; in a training run the model after and before
training) is judged twice, the subject shown first and then second. `combine` turns the two verdicts into one, as
MT-Bench's "conservative" swap does (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena",
arXiv 2306.05685, section 3.4): a win only when the same answer is preferred in both orders; a verdict that flips
with the order (or a tie, or an unreadable reply, in either order) is a tie.

The length-controlled win rate follows AlpacaEval-LC (Dubois et al. 2024, "Length-Controlled AlpacaEval",
arXiv 2404.04475; alpaca_eval/metrics/glm_winrate.py, GLM `length_controlled_v1`): a logistic model of the
subject's preference y_i (1 win, 0.5 tie, 0 loss, fitted with the log loss of fractional targets, as AlpacaEval
does) on

    logit P(subject wins pair i) = theta + phi * tanh(d_i / sd(d)),   d_i = len(subject_i) - len(baseline_i)

(lengths in characters, sd with ddof 1, as AlpacaEval's `std_delta_len`), and the win rate at equal length,
sigmoid(theta). AlpacaEval's model also has an instruction-difficulty term and is regularised towards "gamed"
baselines (the same model prompted to be verbose or concise), both fitted on its leaderboard's many models: one
pair of models has neither. What keeps the fit finite here instead: theta has a N(0, 1) prior (an L2 penalty of
weight 1, `THETA_PRIOR`), phi none, only the bound |phi| <= `PHI_BOUND` (where the logistic is a step). When the
lengths alone separate the verdicts (the longer answer always wins), the fit puts the effect on length and theta,
which the data then cannot identify, stays at its prior 0: the win rate at equal length is a coin flip, with a wide
interval. The interval is Wald's on theta (its variance from the penalised fit's Hessian), mapped through sigmoid.

Rates: Wilson score intervals (Wilson 1927) for the win, tie and loss shares, each a binomial proportion; the win
rate with ties as half a win (AlpacaEval's `win_rate`) with a normal interval from the sample standard deviation
of the per-pair scores (AlpacaEval reports that standard error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
THETA_PRIOR = 1.0
PHI_BOUND = 100.0
SUBJECT, BASELINE, TIE = "subject", "baseline", "tie"  # which answer one order's verdict preferred
WIN, LOSS = "win", "loss"  # a pair's verdict, from the subject's side (TIE as above)


@dataclass(frozen=True)
class Pair:
    """One judged pair: the answers' lengths (characters) and what each order said (SUBJECT, BASELINE, TIE, or None
    for a reply that named neither); `identical`: the two answers were the same text, a tie without a judge call."""

    subject_length: int
    baseline_length: int
    subject_first: str | None = None  # the verdict with the subject's answer shown first
    subject_second: str | None = None  # ... and shown second
    identical: bool = False

    @property
    def verdict(self) -> str:
        return combine(self.subject_first, self.subject_second) if not self.identical else TIE

    @property
    def consistent(self) -> bool | None:
        """Whether both orders preferred the same answer (or both saw a tie); None when not judged or unreadable."""
        if self.identical or self.subject_first is None or self.subject_second is None:
            return None
        return self.subject_first == self.subject_second


def combine(first: str | None, second: str | None) -> str:
    """One verdict from both orders: WIN or LOSS only when both orders agree; anything else is a TIE."""
    if first == second == SUBJECT:
        return WIN
    if first == second == BASELINE:
        return LOSS
    return TIE


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """The mean and its normal interval (sample standard deviation, ddof 1), clipped to [0, 1]."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n < 2:
        return (mean, math.nan, math.nan)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return (mean, max(0.0, mean - half), min(1.0, mean + half))


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _objective(y: Sequence[float], x: Sequence[float], theta: float, phi: float) -> float:
    """Fractional-target log loss plus theta's prior."""
    total = THETA_PRIOR * theta * theta / 2
    for yi, xi in zip(y, x):
        z = theta + phi * xi
        # log(1 + e^-z) and log(1 + e^z), stable for any z
        total += yi * (max(-z, 0) + math.log1p(math.exp(-abs(z)))) + (1 - yi) * (max(z, 0) + math.log1p(
            math.exp(-abs(z))))
    return total


def length_features(deltas: Sequence[float]) -> list[float] | None:
    """tanh(d / sd(d)) for each length difference; None when they are all equal and not all zero (length and the
    intercept are then the same column: nothing tells them apart)."""
    n = len(deltas)
    if n < 2:
        return None
    mean = sum(deltas) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    if sd == 0:
        return [0.0] * n if all(d == 0 for d in deltas) else None
    return [math.tanh(d / sd) for d in deltas]


def fit_length_model(y: Sequence[float], x: Sequence[float]) -> tuple[float, float, float]:
    """(theta, phi, variance of theta) of the model in the module docstring: Newton steps with backtracking on the
    penalised log loss, phi kept within +-PHI_BOUND."""
    theta = phi = 0.0
    current = _objective(y, x, theta, phi)
    h00 = THETA_PRIOR
    h01 = h11 = 0.0
    for _ in range(200):
        g0, g1, h00, h01, h11 = THETA_PRIOR * theta, 0.0, THETA_PRIOR, 0.0, 0.0
        for yi, xi in zip(y, x):
            p = _sigmoid(theta + phi * xi)
            r, w = p - yi, p * (1 - p)
            g0, g1, h00, h01, h11 = g0 + r, g1 + r * xi, h00 + w, h01 + w * xi, h11 + w * xi * xi
        at_bound = abs(phi) >= PHI_BOUND and g1 * phi < 0  # the objective still falls past the bound
        if at_bound or h11 < 1e-12:
            step_theta, step_phi = g0 / h00, 0.0
        else:
            det = h00 * h11 - h01 * h01
            step_theta, step_phi = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        size = 1.0
        while size > 1e-8:
            new_theta = theta - size * step_theta
            new_phi = max(-PHI_BOUND, min(PHI_BOUND, phi - size * step_phi))
            value = _objective(y, x, new_theta, new_phi)
            if value <= current + 1e-15:
                break
            size /= 2
        else:
            break
        moved = abs(new_theta - theta) + abs(new_phi - phi)
        theta, phi, current = new_theta, new_phi, value
        if moved < 1e-10:
            break
    # theta's variance: from the 2x2 Hessian, or from its own entry when phi sits on the bound (fixed there).
    det = h00 * h11 - h01 * h01
    on_bound = abs(phi) >= PHI_BOUND
    variance = 1 / h00 if on_bound or det <= 1e-12 * h00 * max(h11, 1e-300) else h11 / det
    return theta, phi, variance


@dataclass(frozen=True)
class Summary:
    """The numbers a judged comparison reports (`metrics` names them as metrics.jsonl does)."""

    pairs: int
    identical: int
    wins: int
    ties: int
    losses: int
    win: tuple[float, float, float]  # share, interval low, high
    tie: tuple[float, float, float]
    loss: tuple[float, float, float]
    win_rate: tuple[float, float, float]  # ties as half a win
    lc_win_rate: tuple[float, float, float] | None
    position_consistency: float | None
    first_position: float | None  # share of readable single-order verdicts that preferred the answer shown first
    unreadable: int
    length_subject: float
    length_baseline: float

    def metrics(self, sides: tuple[str, str] = ("after", "before"), prefix: str = "eval_judge_"
                ) -> dict[str, float | int | None]:
        """The numbers by name; `sides` name the subject's and the baseline's mean lengths (length_after ...)."""
        out: dict[str, float | int | None] = {"pairs": self.pairs, "identical": self.identical,
                                              "unreadable": self.unreadable}
        for name in ("win", "tie", "loss", "win_rate", "lc_win_rate"):
            value = getattr(self, name)
            low_high = (None, None, None) if value is None else value
            out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (_finite(v) for v in low_high)
        out["position_consistency"] = self.position_consistency
        out["first_position"] = self.first_position
        out[f"length_{sides[0]}"], out[f"length_{sides[1]}"] = self.length_subject, self.length_baseline
        return {prefix + key: value for key, value in out.items()}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def summarise(pairs: Sequence[Pair]) -> Summary:
    """The Summary of judged pairs (at least one)."""
    n = len(pairs)
    verdicts = [p.verdict for p in pairs]
    counts = {v: verdicts.count(v) for v in (WIN, TIE, LOSS)}

    def share(kind: str) -> tuple[float, float, float]:
        return (counts[kind] / n, *wilson(counts[kind], n))

    scores = [{WIN: 1.0, TIE: 0.5, LOSS: 0.0}[v] for v in verdicts]
    consistent = [c for c in (p.consistent for p in pairs) if c is not None]
    firsts = [v == SUBJECT for p in pairs if not p.identical and (v := p.subject_first) in (SUBJECT, BASELINE)]
    firsts += [v == BASELINE for p in pairs if not p.identical and (v := p.subject_second) in (SUBJECT, BASELINE)]
    unreadable = sum((p.subject_first is None) + (p.subject_second is None) for p in pairs if not p.identical)
    return Summary(
        pairs=n, identical=sum(p.identical for p in pairs), wins=counts[WIN], ties=counts[TIE],
        losses=counts[LOSS], win=share(WIN), tie=share(TIE), loss=share(LOSS),
        win_rate=mean_interval(scores), lc_win_rate=length_controlled(pairs, scores),
        position_consistency=sum(consistent) / len(consistent) if consistent else None,
        first_position=sum(firsts) / len(firsts) if firsts else None, unreadable=unreadable,
        length_subject=sum(p.subject_length for p in pairs) / n,
        length_baseline=sum(p.baseline_length for p in pairs) / n,
    )


def length_controlled(pairs: Sequence[Pair], scores: Sequence[float]) -> tuple[float, float, float] | None:
    """The win rate at equal length and its interval (module docstring); None when the lengths cannot be told from
    the answers' own merit (fewer than two pairs, or every pair differing by the same nonzero amount)."""
    x = length_features([p.subject_length - p.baseline_length for p in pairs])
    if x is None:
        return None
    theta, _, variance = fit_length_model(scores, x)
    half = Z95 * math.sqrt(variance)
    return (_sigmoid(theta), _sigmoid(theta - half), _sigmoid(theta + half))


def _metric_names() -> tuple[str, ...]:
    nothing = (0.0, 0.0, 0.0)
    return tuple(Summary(1, 0, 0, 0, 0, nothing, nothing, nothing, nothing, nothing, 0.0, 0.0, 0, 0.0, 0.0).metrics())


# What a judged comparison logs (metrics.jsonl, a sweep's metric), and which of those a sweep maximises.
METRICS: tuple[str, ...] = _metric_names()
HIGHER_IS_BETTER: frozenset[str] = frozenset(
    name for name in METRICS if name.removeprefix("eval_judge_").startswith(("win", "lc_win_rate")))

