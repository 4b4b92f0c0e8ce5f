"""Per-epoch training metrics into the active MLflow run, and a progress tick: the ``on_epoch`` of
:func:`models.training.train` in every job."""

from __future__ import annotations

__all__ = ["EpochLogger"]


class EpochLogger:
    """Per-epoch metrics into the active MLflow child run, and a progress tick."""

    def __init__(self, tracker, advance, prefix: str = ""):
        self.tracker, self.advance, self.prefix = tracker, advance, prefix

    def __call__(self, epoch, train_loss, val_loss, lr, *rest):
        p = self.prefix
        self.tracker.metrics({f"{p}val_loss": val_loss, f"{p}train_loss": train_loss, f"{p}lr": lr}, step=epoch)
        if self.advance is not None:
            self.advance(1)
