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
    ("reward margin", "rewards/margins", "eval_rewards/margins"),
)


def plot_training(project: Path, records: list[dict[str, Any]]) -> Path | None:
    """Draw loss, NLL, log-odds ratio, train/eval accuracy and margin against step, each panel the method logs
    (SFT logs no preference metrics, DPO no log-odds ratio); None when nothing was logged."""
    panels = [p for p in PANELS if any(p[1] in r or p[2] in r for r in records)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), constrained_layout=True, squeeze=False)
    for axis, (title, train_key, eval_key) in zip(axes[0], panels):
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
