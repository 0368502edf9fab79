"""What a fine-tuning run reports: per-step stats, the metrics log, the loss curve."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from facetrack import storage

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    """What one optimizer step did, summed over all workers."""

    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float | None
    samples: int
    tokens: int
    tokens_cut: int
    seconds: float
    """Wall time of the step on rank 0: loading its micro-batches, forward, backward, optimizer."""

    def row(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "samples": self.samples,
            "tokens": self.tokens,
            "tokens_cut": self.tokens_cut,
            "step_seconds": round(self.seconds, 4),
            "samples_per_s": round(self.samples / self.seconds, 4) if self.seconds > 0 else None,
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds > 0 else None,
        }


class MetricsLog:
    """Rows of per-step metrics, kept by rank 0 and written as JSONL (the whole file, atomically)."""

    def __init__(self, uri: str, rows: list[dict[str, Any]] | None = None) -> None:
        self.uri = uri
        self.rows = list(rows or [])

    @staticmethod
    def parse(text: str, up_to_step: int) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r for r in rows if int(r["step"]) <= up_to_step]

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.rows)

    def flush(self) -> None:
        storage.write_text(self.uri, self.text())


def plot_loss(metrics_text: str, title: str) -> bytes | None:
    """A PNG of loss (and learning rate) per step, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no loss curve: matplotlib is missing (pip install 'facetrack[eval]')")
        return None
    import io

    rows = [json.loads(line) for line in metrics_text.splitlines() if line.strip()]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    (loss_line,) = ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax2 = ax.twinx()
    (lr_line,) = ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    ax.legend(handles=[loss_line, lr_line], loc="upper right", framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
