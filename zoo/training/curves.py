"""Training curves as a PNG, the picture people look at first (nnU-Net's progress.png)."""

from __future__ import annotations

import io
from collections.abc import Sequence


def curves_png(history: Sequence[dict[str, float]], title: str) -> bytes:
    """Loss (left axis) and any validation metric (right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    from matplotlib import pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        loss_key = "train_loss" if history and "train_loss" in history[0] else "loss"
        ax.plot(epochs, [r.get(loss_key, float("nan")) for r in history], color="tab:blue",
                marker="o", markersize=3, label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="tab:blue")
        metrics = sorted({k for r in history for k in r if k.startswith("val_")})
        if metrics:
            right = ax.twinx()
            for key, colour in zip(metrics, ("tab:orange", "tab:green", "tab:red"),
                                   strict=False):
                right.plot(epochs, [r.get(key, float("nan")) for r in history], color=colour,
                           marker="s", markersize=3, label=key.replace("_", " "))
            right.set_ylabel("validation", color="tab:orange")
            right.legend(loc="lower right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)
