"""Non-finite training is an error, not a result.

A run whose loss or gradients become NaN/Inf has diverged: every later step trains on garbage, and
the model that comes out (once saved and reported at chance accuracy) is not a result of the method.
:class:`NonFiniteGuard` checks the loss before each backward pass and the gradients before each
optimiser step, so the weights are never updated from a non-finite step, and stops the run with a
:class:`TrainingDivergedError` that names the run, the step and the likely fixes. The checkpoint of
the last finished epoch stays as it was.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from inhernet.errors import TrainingError

__all__ = ["NonFiniteGuard", "TrainingDivergedError", "FIXES"]

#: what usually makes a run diverge, in the order to try
FIXES = ("lower the learning rate (e.g. lr / 10)", "train without KD (loss ce / kd: false) to see whether the "
         "distillation term diverges", "check the teacher: its logits must be finite on the training data")


class TrainingDivergedError(TrainingError):
    """A training run produced a non-finite loss or gradient; the message names run, step and fixes.

    A :class:`inhernet.errors.TrainingError` (so also a ``RuntimeError``, as before)."""

    def __init__(self, run: str, step: int, epoch: int, what: str, lr: Optional[float] = None) -> None:
        self.run, self.step, self.epoch, self.what, self.lr = run, step, epoch, what, lr
        lr_txt = f" (lr {lr:g})" if lr is not None else ""
        super().__init__(
            f"run {run}: training diverged at step {step} (epoch {epoch}){lr_txt}: {what}. The run is stopped "
            f"and not reported as a result. Likely fixes: {'; '.join(FIXES)}.")

    @property
    def reason(self) -> str:
        """One line for results tables: what went non-finite, where."""
        return f"diverged at step {self.step} (epoch {self.epoch}): {self.what}"


def _lr(trainer: L.Trainer) -> Optional[float]:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError):
        return None


class NonFiniteGuard(Callback):
    """Stop training on the first non-finite loss (before backward) or gradient (before the step)."""

    def __init__(self, run: str) -> None:
        self.run = str(run)

    def _fail(self, trainer: L.Trainer, what: str) -> None:
        raise TrainingDivergedError(self.run, trainer.global_step, trainer.current_epoch, what, _lr(trainer))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            self._fail(trainer, f"the loss is {value}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = float(torch.nn.utils.get_total_norm(grads))
        if not math.isfinite(norm):
            bad = next(n for n, p in pl_module.named_parameters()
                       if p.grad is not None and not torch.isfinite(p.grad).all())
            self._fail(trainer, f"the gradient norm is {norm} (first non-finite gradient: {bad})")
