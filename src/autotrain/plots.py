"""plots/training.png: the training curves a user checks first, drawn from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_FILE = "plots/training.png"
PANELS = (
    ("loss", "loss", "eval_loss"),
    ("NLL", "nll_loss", "eval_nll_loss"),
    ("log-odds ratio (log sigmoid)", "log_odds_ratio", "eval_log_odds_ratio"),
    ("preference accuracy", "rewards/accuracies", "eval_rewards/accuracies"),
)


def plot_training(project: Path, records: list[dict[str, Any]]) -> Path | None:
    """Draw loss, NLL, log-odds ratio and train/eval accuracy against step; None when nothing was logged."""
    if not any("nll_loss" in r or "eval_loss" in r for r in records):
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2), constrained_layout=True)
    for axis, (title, train_key, eval_key) in zip(axes, PANELS):
        for key, label, style in ((train_key, "train", "-"), (eval_key, "eval", "o--")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                axis.plot(*zip(*points), style, label=label)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend()
    path = project / PLOT_FILE
    path.parent.mkdir(exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
