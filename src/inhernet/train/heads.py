"""Log during training whether the heads of the inherited layers live (see :mod:`inhernet.diagnostics`).

:class:`HeadDiagnostics` is added by :func:`inhernet.train.fit` to every run whose model has gated
inherited layers. Per epoch it logs, into the metrics that ``metrics.jsonl`` records:

* ``heads/cosine_mean``, ``heads/cosine_max``: the heads' pairwise cosine at the epoch's end (mean
  over layers of the layers' mean over pairs; max over layers and pairs). 1 = the heads are copies.
* ``gate/entropy``: the gates' normalised entropy (1 = uniform mix) over the epoch's training
  forward passes, mean over layers (and over processes when distributed).
* ``gate/grad_ratio``: ``‖∇gate‖ / ‖∇up‖`` per layer, measured before every optimiser step and
  averaged over the epoch, median over layers (also on the progress bar). ≈ 0: the gate gets no
  gradient and cannot learn.

and writes the per-layer numbers of the last finished epoch to ``heads.json`` in the run's folder
(global rank zero). The measurements are detached reads: the trained weights are the same with
and without the callback. Cost: a forward hook on each gate (a softmax over H values per
position) and, per optimiser step, a few norms of the gate and head gradients, kept on the device.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..diagnostics import GateMonitor, HeadReport, gate_grad_ratios, gated_layers
from ..utils import atomic_write

__all__ = ["HeadDiagnostics", "HEADS_NAME"]

HEADS_NAME = "heads.json"


class HeadDiagnostics(Callback):
    """Log head cosine, gate entropy and gate gradient ratio per epoch; write ``heads.json``.

    Args:
        out_dir: where ``heads.json`` goes (default: the trainer's ``default_root_dir``).
        every_n_steps: measure the gate entropy and gradient ratio on one training batch in this many
            (default 1: every batch). On a CPU the cost is well under 1 % of a step; on a GPU, where
            a step is a few milliseconds, the ~6 small kernels per gated layer per batch can matter.

    Its ``on_train_epoch_end`` must run before :class:`~inhernet.train.fit.JsonlMetrics`' for the
    values to land in that epoch's row: put it before in the callback list (``fit`` does).
    """

    def __init__(self, out_dir: Union[str, os.PathLike, None] = None, *, every_n_steps: int = 1) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an int >= 1.")
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.every_n_steps = every_n_steps
        self._measure = True
        self._monitor: Optional[GateMonitor] = None
        self._names: list[str] = []
        self._layers: list[torch.nn.Module] = []
        self._ratio_sum: Optional[torch.Tensor] = None
        self._ratio_count: Optional[torch.Tensor] = None

    @staticmethod
    def _model(pl_module: L.LightningModule) -> torch.nn.Module:
        """The trained network (``DistillModule.model``), so layer names read as in the model."""
        inner = getattr(pl_module, "model", None)
        return inner if isinstance(inner, torch.nn.Module) else pl_module

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = self._model(pl_module)
        named = gated_layers(model)
        self._names = [n for n, _ in named]
        self._layers = [m for _, m in named]
        self._monitor = GateMonitor(model, training_only=True) if named else None

    def _detach(self) -> None:
        if self._monitor is not None:
            self._monitor.remove()
            self._monitor = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._detach()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._detach()  # also after an exception, when on_fit_end does not run

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._monitor is not None:
            self._monitor.reset()
        self._ratio_sum = self._ratio_count = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._measure = batch_idx % self.every_n_steps == 0
        if self._monitor is not None:
            self._monitor.enabled = self._measure

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self._layers or not self._measure:
            return
        ratios = gate_grad_ratios(self._layers)  # on the device: no synchronisation per step
        ok = torch.isfinite(ratios)
        if self._ratio_sum is None:
            self._ratio_sum = torch.zeros_like(ratios)
            self._ratio_count = torch.zeros_like(ratios)
        self._ratio_sum += torch.where(ok, ratios, torch.zeros_like(ratios))
        self._ratio_count += ok.to(ratios.dtype)

    def epoch_report(self, pl_module: L.LightningModule) -> HeadReport:
        """The per-layer report of the epoch so far: weights now, entropy and ratios accumulated."""
        ratios: dict[str, Optional[float]] = {}
        if self._ratio_sum is not None:
            for name, s, c in zip(self._names, self._ratio_sum.tolist(), self._ratio_count.tolist()):
                ratios[name] = s / c if c > 0 else None
        mon = self._monitor
        return HeadReport.from_model(self._model(pl_module), entropy=mon.entropy() if mon else None,
                                     gate_means=mon.gate_means() if mon else None, grad_ratios=ratios)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._monitor is None or trainer.sanity_checking:
            return
        report = self.epoch_report(pl_module)
        s = report.summary()
        # same value on every process (weights and reduced gradients are): no sync needed
        for key, value, bar in (("heads/cosine_mean", s["cosine_mean"], False),
                                ("heads/cosine_max", s["cosine_max"], False),
                                ("gate/grad_ratio", s["grad_ratio"], True)):
            if value is not None and math.isfinite(value):
                pl_module.log(key, float(value), on_step=False, on_epoch=True, prog_bar=bar,
                              batch_size=1)
        if s["entropy"] is not None:  # each process saw its own batches: mean over processes
            pl_module.log("gate/entropy", float(s["entropy"]), on_step=False, on_epoch=True, sync_dist=True,
                          batch_size=1)
        if trainer.is_global_zero:
            folder = self.out_dir or Path(trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / HEADS_NAME, json.dumps({"epoch": trainer.current_epoch, **report.to_dict()},
                                                         indent=2))
