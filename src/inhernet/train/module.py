"""One LightningModule for every method: the task loss, optionally distilled from a frozen teacher.

The paper's recipe (METHOD.md §5): SGD, momentum 0.9, weight decay 5e-4, lr 0.05, lr x0.1 at epochs
150/180/210 of 240 -- the milestones are scaled to the epoch count of the run.

The teacher is held outside the module's registered children: it is not wrapped by DDP, gets no
gradients (its forward runs under ``no_grad``), runs in eval mode, and is not written into the
checkpoint (the checkpoint's ``state_dict`` holds the trained model only, under ``model.``).
**The teacher object is never changed**: no ``requires_grad_``, no ``eval()`` that outlives its
forward (:func:`inhernet.utils.eval_mode` restores every submodule's flag), no device move — on
another device the module distils from a private copy. So one teacher can serve several methods in
one process, in any order, with the same results (a KD method once froze the shared teacher's
parameters, and every InherNet inherited after it trained with frozen BatchNorm and classifier).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Optional, Sequence, Union

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..utils import eval_mode, on_device
from .compiled import CompiledModel
from .groups import check_gate_lr_scale, gate_parameter_groups
from .guard import TrainingDivergedError
from .losses import DistillLoss

__all__ = ["DistillModule", "PAPER_MILESTONES", "PAPER_EPOCHS", "scaled_milestones", "make_loss"]

PAPER_EPOCHS = 240
PAPER_MILESTONES = (150, 180, 210)


def scaled_milestones(epochs: int, milestones: Sequence[int] = PAPER_MILESTONES,
                      base_epochs: int = PAPER_EPOCHS) -> list[int]:
    """The paper's lr milestones scaled to ``epochs`` (rounded half up; those at or past the end dropped).

    >>> scaled_milestones(240), scaled_milestones(24), scaled_milestones(10)
    ([150, 180, 210], [15, 18, 21], [6, 8, 9])
    """
    out = sorted({max(1, int(math.floor(m * epochs / base_epochs + 0.5))) for m in milestones})
    return [m for m in out if m < epochs]


def make_loss(loss: Union[str, dict, DistillLoss, None]) -> DistillLoss:
    """``"kd"`` / ``{"kind": "kd", "temperature": 2}`` / a :class:`DistillLoss` -> a :class:`DistillLoss`."""
    if loss is None:
        return DistillLoss("ce")
    if isinstance(loss, DistillLoss):
        return loss
    if isinstance(loss, str):
        return DistillLoss(loss)
    if isinstance(loss, dict):
        return DistillLoss.from_dict(dict(loss))
    raise TypeError(f"cannot make a loss from {loss!r}")


class DistillModule(L.LightningModule):
    """Train ``model`` with ``loss`` (optionally against ``teacher``'s logits).

    Logged per epoch (reduced across processes): ``train/loss``, ``train/acc``, ``val/loss``,
    ``val/acc``, ``test/loss``, ``test/acc`` (the names of the evaluation loaders are given by
    ``eval_names``, in the order of the validation dataloaders).

    ``channels_last``: every step puts its batch's images in the channels-last memory format, the
    format :func:`~inhernet.train.fit` put the model's convolutions in (and so is the private teacher
    copy made for another device).

    ``compile``: a ``torch.compile`` mode (:data:`~inhernet.train.validate.COMPILE_MODES`) or
    ``None``: the training steps run the model compiled (:class:`~inhernet.train.compiled.CompiledModel`:
    ``self.model`` and the checkpoint stay those of the plain model; evaluation stays eager).

    ``gate_lr_scale``: the gates of the inherited layers learn at ``lr × gate_lr_scale``
    (:mod:`inhernet.train.groups`: their gradient is tiny while the heads are near-copies).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        teacher: Optional[nn.Module] = None,
        loss: Union[str, dict, DistillLoss, None] = "ce",
        epochs: int = PAPER_EPOCHS,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        milestones: Optional[Sequence[int]] = None,
        gamma: float = 0.1,
        eval_names: Sequence[str] = ("val", "test"),
        model_meta: Optional[dict] = None,
        channels_last: bool = False,
        compile: Optional[str] = None,
        gate_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        # like channels_last, not a hyperparameter: it changes speed (and rounding), not what is learned
        self.compiled = CompiledModel(compile)
        # inputs in channels-last memory format (the model is converted by fit()); not a hyperparameter:
        # it changes speed, not what is learned, and is absent from checkpoints
        self.channels_last = bool(channels_last)
        self.loss_fn = make_loss(loss)
        if self.loss_fn.needs_teacher and teacher is None:
            raise ValueError(f"loss {self.loss_fn.kind!r} distils from a teacher, but no teacher was given")
        # a tuple keeps the teacher out of the registered children (no DDP, no checkpoint, no .train())
        self._teacher: tuple = (teacher,) if teacher is not None else ()
        self.run_name = "(unnamed)"  # set by fit(): how errors name the run
        self.milestones = list(milestones) if milestones is not None else scaled_milestones(epochs)
        self.eval_names = list(eval_names)
        self.save_hyperparameters(
            {
                "num_classes": int(num_classes),
                "loss": asdict(self.loss_fn),
                "epochs": int(epochs),
                "lr": lr,
                "momentum": momentum,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "milestones": self.milestones,
                "gamma": gamma,
                "gate_lr_scale": check_gate_lr_scale(gate_lr_scale, model),
                "model_meta": dict(model_meta or {}),
            }
        )
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.eval_acc = nn.ModuleList(MulticlassAccuracy(num_classes=num_classes, average="micro")
                                      for _ in self.eval_names)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0] if self._teacher else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        self.compiled.setup(self.model, self.device)
        t = self.teacher
        if t is None:
            return
        # a private copy on the training device: the caller's teacher stays where it is
        self._teacher = (on_device(t, self.device, memory_format=torch.channels_last if self.channels_last else None),)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch's images in the memory format the model was put in (a no-op unless channels_last)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x``: eval mode, no gradients, the teacher left as it was."""
        with torch.no_grad(), eval_mode(self.teacher):
            logits = self.teacher(x)
        if not torch.isfinite(logits).all():
            raise TrainingDivergedError(self.run_name, self.global_step, self.current_epoch,
                                        "the teacher's logits are non-finite (NaN/Inf) on a training batch; "
                                        "check the teacher's weights")
        return logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = self._inputs(x)
        logits = self.compiled(self.model)(x)
        t_logits = None
        if self.loss_fn.needs_teacher:
            t_logits = self.teacher_logits(x)
        loss = self.loss_fn(logits, t_logits, y, progress=self._progress())
        n = y.shape[0]
        self.train_acc(logits.detach(), y)
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _progress(self) -> float:
        """Share of the run's optimisation steps done, counting the current one (for the DKD warm-up)."""
        try:
            total = self.trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - no trainer attached
            return 1.0
        if not total or total == float("inf"):
            return 1.0
        return min((self.global_step + 1) / float(total), 1.0)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        x = self._inputs(x)
        logits = self.model(x)
        name = self.eval_names[dataloader_idx]
        metric = self.eval_acc[dataloader_idx]
        metric(logits, y)
        n = y.shape[0]
        self.log(f"{name}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=n,
                 add_dataloader_idx=False)
        self.log(f"{name}/acc", metric, on_epoch=True, prog_bar=(dataloader_idx == 0), batch_size=n,
                 add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = gate_parameter_groups(self.model, [{"params": self.model.parameters()}], hp.lr,
                                       hp.get("gate_lr_scale", 1.0))
        opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.nesterov)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self.milestones, gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
