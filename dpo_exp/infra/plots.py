"""PNG plots of a run's metrics.jsonl: loss, reward accuracy, margins, chosen vs rejected rewards."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAINING_PLOTS = {
    "loss": ["loss"],
    "reward_accuracy": ["rewards/accuracies"],
    "reward_margins": ["rewards/margins"],
    "rewards_chosen_rejected": ["rewards/chosen", "rewards/rejected"],
}


def save_figure(fig, path: Path, **savefig_kwargs) -> Path:
    """Lay out, write (creating the folder) and close a figure; every PNG of the project goes through here."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, **savefig_kwargs)
    plt.close(fig)
    return path


def _series(rows: list[dict], split: str, key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get("split") == split and r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per metric family, train and eval curves per optimiser step."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys in TRAINING_PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for key in keys:
            for split, style in (("train", "-"), ("eval", "o--")):
                xs, ys = _series(rows, split, key)
                if xs:
                    ax.plot(xs, ys, style, label=f"{split} {key}", markersize=4)
                    drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(save_figure(fig, out_dir / f"{name}.png"))
    return written
