"""Train one model for one method: a Lightning ``Trainer`` on one process or many.

    from inhernet.train import fit
    result = fit(model, data, loss="kd", teacher=teacher, epochs=10, seed=0, out_dir="runs/x")

``out_dir`` receives ``checkpoints/last.ckpt`` (written every epoch, once, by the global-rank-zero
process) and ``metrics.jsonl`` (one JSON object per epoch, rank zero only); a model with gated inherited layers
also logs ``heads/cosine_mean``, ``heads/cosine_max``, ``gate/entropy``, ``gate/grad_ratio`` and writes
``heads.json`` (:class:`~inhernet.train.heads.HeadDiagnostics`). With ``resume=True`` a
run whose ``last.ckpt`` exists continues from it; batch order and augmentation depend only on
``(seed, epoch, rank)``, so a resumed run ends with the weights of an uninterrupted one.

Distributed: ``devices``, ``num_nodes`` and ``strategy`` go to the Trainer (``"ddp"`` re-launches the
running script once per device; ``"ddp_spawn"`` starts the workers from Python, which works from any
caller, notebooks and tests included). ``batch_size`` is per process.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from ..data.loader import TensorLoader
from ..diagnostics import has_gated_layers
from ..utils import atomic_write
from .groups import check_gate_lr_scale
from .guard import NonFiniteGuard
from .heads import HeadDiagnostics
from .losses import DistillLoss
from .module import DistillModule
from .signals import stop_cleanly
from .validate import check_flag, check_precision, check_progress, check_training_options, compile_mode, \
    shows_bar

__all__ = ["EpochLog", "FitResult", "JsonlMetrics", "TensorDataModule", "fit", "global_rank", "read_metrics", "CHECKPOINT_DIR",
           "CHECKPOINT_NAME"]

#: where ``fit`` keeps a run's checkpoint: ``out_dir/CHECKPOINT_DIR/CHECKPOINT_NAME``
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "last.ckpt"
METRICS_NAME = "metrics.jsonl"


class TensorDataModule(L.LightningDataModule):
    """Train / validation / test loaders over in-memory tensor data (``.train``, ``.val``, ``.test``).

    ``data_on_device``: the loaders hold their split on the training device (the Trainer's root
    device) and augment there, so no batch is copied from the host; ``None``: on when that device is
    not the CPU. The batches are the same either way (:class:`~inhernet.data.loader.TensorLoader`).
    """

    def __init__(self, data: Any, batch_size: int = 64, eval_batch_size: int = 512, augment: Any = "default",
                 seed: int = 0, data_on_device: Optional[bool] = None) -> None:
        super().__init__()
        self.data = data
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.augment, self.seed = augment, int(seed)
        self.data_on_device = data_on_device
        self.eval_splits = [s for s in ("val", "test") if getattr(data, s, None) is not None
                            and len(getattr(data, s).y) > 0]

    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def device(self) -> Optional[torch.device]:
        """Where the loaders keep the data: the training device, or ``None`` (where it already is)."""
        t = self.trainer
        if t is None:
            return None
        root = t.strategy.root_device
        on = self.data_on_device if self.data_on_device is not None else root.type != "cpu"
        return root if on else None

    def train_dataloader(self) -> TensorLoader:
        rank, world = self._dist()
        train = self.data.train
        per_rank = len(train.y) // world if world > 1 else len(train.y)
        # BatchNorm cannot train on a last batch of a single sample
        drop_last = per_rank % self.batch_size == 1
        return TensorLoader(train, self.batch_size, shuffle=True, augment=self._augment_spec(), seed=self.seed,
                            drop_last=drop_last, rank=rank, world_size=world, device=self.device())

    def _augment_spec(self) -> Any:
        if self.augment == "default":
            return getattr(self.data, "default_augment", None)
        return self.augment

    def val_dataloader(self) -> list[TensorLoader]:
        rank, world = self._dist()
        device = self.device()
        return [TensorLoader(getattr(self.data, s), self.eval_batch_size, shuffle=False, rank=rank,
                             world_size=world, device=device) for s in self.eval_splits]


def _to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu().item()) if v.numel() == 1 else v.detach().cpu().tolist()
    return v


def read_metrics(path: Union[str, Path]) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (a partial last line, from a killed writer, is ignored)."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_NAME
    rows = []
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class JsonlMetrics(Callback):
    """Append one JSON line per epoch (global rank zero only): epoch, lr, time and every logged metric.

    On (re)start, rows of epochs that will be trained again are dropped, so a resumed run's file has
    exactly one row per epoch.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self._t0 = 0.0
        self._lr: Optional[float] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        start = trainer.current_epoch
        keep = [r for r in read_metrics(self.path) if r.get("epoch", 0) < start]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        # the lr used during this epoch (epoch-interval schedulers step before on_train_epoch_end)
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        if self._lr is not None:
            row["lr"] = self._lr
        row["epoch_time_s"] = round(time.perf_counter() - self._t0, 3)
        for k, v in sorted(trainer.callback_metrics.items()):
            if k == "loss":
                continue
            row[k] = _to_float(v)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _shown_value(key: str, value: float) -> str:
    """A metric as a log line shows it: accuracies in per cent, head cosines to 6 digits (they sit
    just below 1, where 4 digits say nothing), the rest to 4."""
    if key.endswith("/acc"):
        return f"{100 * value:.2f} %"
    return f"{value:.6f}" if "cosine" in key else f"{value:.4g}"


class EpochLog(Callback):
    """``progress="log"``: one printed line per finished epoch (global rank zero), for a run whose output
    goes to a log file — a background comparison, a cluster job — where a progress bar's carriage
    returns make the file unreadable and ``False`` would leave no sign of life for hours::

        h3_copies/seed0: epoch 3/10, lr 0.05, 89 s: train loss 0.412, train acc 85.20 %, val acc 86.33 %

    It prints the epoch's row of ``metrics.jsonl`` as :class:`JsonlMetrics` (before it in the
    callback list) has just written it: accuracies in per cent, the rest as logged."""

    def __init__(self, name: str, metrics_path: Union[str, Path]) -> None:
        self.name = name
        self.path = Path(metrics_path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = [r for r in read_metrics(self.path) if r.get("epoch") == trainer.current_epoch]
        row = rows[-1] if rows else {}
        parts = [f"{k.replace('/', ' ')} {_shown_value(k, v)}" for k, v in row.items()
                 if "/" in k and isinstance(v, (int, float))]
        lr = f", lr {row['lr']:.3g}" if row.get("lr") is not None else ""
        took = f", {row['epoch_time_s']:.0f} s" if "epoch_time_s" in row else ""
        print(f"{self.name}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}{lr}{took}: "
              + (", ".join(parts) or "no metrics"), flush=True)


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (on CPU), the per-epoch metrics and the paths."""

    model: nn.Module
    metrics: list[dict]
    out_dir: Path
    checkpoint: Optional[Path]
    resumed_from_epoch: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def global_rank() -> int:
    """This process's global rank: 0 when not distributed (any non-zero value means "not rank zero").

    Works before the process group exists (from the launchers' environment variables: torchrun's
    ``RANK``, SLURM's ``SLURM_PROCID``, Lightning's ``LOCAL_RANK`` / ``NODE_RANK``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    for key in ("RANK", "SLURM_PROCID", "PMI_RANK"):
        if os.environ.get(key, "").strip().isdigit():
            return int(os.environ[key])
    local = os.environ.get("LOCAL_RANK", "0").strip()
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")).strip()
    local_i = int(local) if local.isdigit() else 0
    node_i = int(node) if node.isdigit() else 0
    return node_i * 1000 + local_i


def _checkpoint_epoch(path: Path) -> Optional[int]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        return int(ck.get("epoch", -1)) + 1
    except Exception as err:  # noqa: BLE001 - a truncated checkpoint from a killed run
        warnings.warn(f"cannot read {path}: {err}")
        return None


def fit(
    model: nn.Module,
    data: Any,
    *,
    out_dir: Union[str, Path],
    teacher: Optional[nn.Module] = None,
    loss: Union[str, dict, DistillLoss, None] = "ce",
    epochs: int = 10,
    batch_size: int = 64,
    eval_batch_size: int = 512,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    milestones: Optional[Sequence[int]] = None,
    gamma: float = 0.1,
    gate_lr_scale: float = 1.0,
    augment: Any = "default",
    seed: int = 0,
    resume: bool = True,
    devices: Union[int, str, Sequence[int]] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "cpu",
    precision: Any = None,
    channels_last: bool = False,
    data_on_device: Optional[bool] = None,
    compile: Union[bool, str, None] = None,
    progress: Union[bool, str] = True,
    callbacks: Iterable[Callback] = (),
    run_name: Optional[str] = None,
    num_classes: Optional[int] = None,
    model_meta: Optional[dict] = None,
    limit_train_batches: Union[int, float, None] = None,
    limit_val_batches: Union[int, float, None] = None,
    quiet: bool = True,
    deterministic: bool = False,
) -> FitResult:
    """Train ``model`` on ``data`` (``.train``/``.val``/``.test`` tensor splits) for ``epochs`` epochs.

    Args:
        loss: ``"ce"``, ``"kd"``, ``"dkd"``, ``"lskd"``, a dict of :class:`DistillLoss` fields, or one.
        teacher: frozen teacher for the distillation losses.
        milestones: lr milestones; default the paper's 150/180/210 of 240 scaled to ``epochs``.
        gate_lr_scale: the gates of the inherited layers learn at ``lr × gate_lr_scale`` (default 1:
            like every parameter); see :mod:`inhernet.train.groups`. Needs gated layers when not 1.
        augment: ``"default"`` (the data set's ``default_augment``), ``"none"``, ``"crop_flip"``, ...
        resume: continue from ``out_dir/checkpoints/last.ckpt`` if present; ``False`` starts over
            (the old checkpoint and metrics are replaced).
        precision: Lightning's precision: ``None`` (32-bit), ``"bf16-mixed"`` (bfloat16 autocast, on a
            CPU too), ``"16-mixed"`` (GPUs); see :func:`inhernet.train.validate.check_precision`.
        channels_last: train the model, and feed it inputs, in the channels-last memory format
            (faster convolutions on GPUs); the returned model is back in the usual format.
        data_on_device: keep the splits on the training device and augment there (no host-to-device
            copy per batch); ``None``: on when training on a GPU. The batches are the same either way,
            so on a CPU the result is bit-identical to ``False``.
        compile: ``torch.compile`` the model for the training steps: ``True`` (mode ``"default"``),
            a mode (``"reduce-overhead"``: CUDA graphs, GPUs only, ``"default"`` elsewhere;
            ``"max-autotune"``; :data:`~inhernet.train.validate.COMPILE_MODES`), or ``None`` /
            ``False`` (eager). The checkpoint and the returned model are the plain model's; the first
            steps include the compilation (see :mod:`inhernet.train.compiled`).
        progress: ``True``/``"tqdm"`` (Lightning's TQDM bar), ``"rich"``, ``"log"`` (one printed line
            per epoch: :class:`EpochLog`, for a log file), or ``False`` (nothing).
        callbacks: extra Lightning callbacks.
        run_name: how errors name this run (default: ``out_dir``). A non-finite loss or gradient
            stops training with a :class:`~inhernet.train.guard.TrainingDivergedError` naming the
            run, the step and the likely fixes; the last epoch's checkpoint is kept.
        quiet: hide Lightning's info messages (warnings still show).
        deterministic: ``torch.use_deterministic_algorithms`` (off by default: on CPU it makes
            convolutions 5-10x slower, and CPU runs with the same thread count already repeat exactly).
    Returns:
        :class:`FitResult` with the trained model (the same object as ``model``, weights updated).
    Raises:
        inhernet.config.ConfigError: an invalid option (epochs < 1, lr <= 0, ...; see
            :mod:`inhernet.train.validate`), raised before anything is written.
        inhernet.train.signals.TrainingInterrupted: SIGTERM or Ctrl-C; the checkpoint of the last
            finished epoch is kept and ``resume=True`` continues from it.
    """
    # every bad option fails here, before anything is created or trained
    check_training_options(epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, lr=lr,
                           momentum=momentum, weight_decay=weight_decay, milestones=milestones, gamma=gamma)
    check_gate_lr_scale(gate_lr_scale, model)
    check_precision("precision", precision, accelerator=accelerator)
    check_flag("channels_last", channels_last)
    check_flag("data_on_device", data_on_device, none_ok=True)
    check_progress("progress", progress)
    mode = compile_mode(compile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    ckpt_path = ckpt_dir / CHECKPOINT_NAME
    metrics_path = out / METRICS_NAME
    if num_classes is None:
        num_classes = getattr(data, "num_classes", None)
        if num_classes is None:
            num_classes = int(torch.cat([data.train.y, data.test.y]).max()) + 1

    resume_from: Optional[Path] = None
    resumed_epoch: Optional[int] = None
    rank0 = global_rank() == 0  # with strategy="ddp" every process runs this code; only one deletes
    if ckpt_path.exists():
        if resume:
            resumed_epoch = _checkpoint_epoch(ckpt_path)
            if resumed_epoch is None:
                warnings.warn(f"{ckpt_path} is unreadable (interrupted while writing?); starting over")
                if rank0:
                    ckpt_path.unlink(missing_ok=True)
            else:
                resume_from = ckpt_path
        elif rank0:
            ckpt_path.unlink(missing_ok=True)
    if resume_from is None and metrics_path.exists() and rank0:
        metrics_path.unlink(missing_ok=True)

    L.seed_everything(seed, workers=True, verbose=False)
    model.train()  # e.g. a model inherited from a teacher in eval mode
    if channels_last:  # the 4-D weights (convolutions); the inputs follow in DistillModule
        model.to(memory_format=torch.channels_last)
    dm = TensorDataModule(data, batch_size=batch_size, eval_batch_size=eval_batch_size, augment=augment, seed=seed,
                          data_on_device=data_on_device)
    module = DistillModule(
        model, num_classes=num_classes, teacher=teacher, loss=loss, epochs=epochs, lr=lr, momentum=momentum,
        weight_decay=weight_decay, nesterov=nesterov, milestones=milestones, gamma=gamma,
        eval_names=dm.eval_splits, model_meta=model_meta, channels_last=channels_last, compile=mode,
        gate_lr_scale=gate_lr_scale,
    )
    module.run_name = run_name or str(out)

    cbs: list[Callback] = [
        NonFiniteGuard(run_name or str(out)),  # a NaN/Inf loss or gradient stops the run: TrainingDivergedError
        # gated inherited layers: head cosine, gate entropy and gradient ratio per epoch (+ heads.json);
        # before JsonlMetrics, so they are in the same epoch's row
        *([HeadDiagnostics(out)] if has_gated_layers(model) else []),
        JsonlMetrics(metrics_path),
        # monitor=None + save_top_k=1: the latest epoch's checkpoint, always under the same name
        ModelCheckpoint(dirpath=ckpt_dir, filename=CHECKPOINT_NAME[: -len(".ckpt")], monitor=None, save_top_k=1,
                        save_last=False, every_n_epochs=1, save_on_train_epoch_end=True,
                        enable_version_counter=False),
    ]
    if progress == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        cbs.append(RichProgressBar())
    elif progress == "log":
        cbs.append(EpochLog(run_name or str(out), metrics_path))
    elif progress:
        from lightning.pytorch.callbacks import TQDMProgressBar

        cbs.append(TQDMProgressBar(refresh_rate=max(1, _progress_refresh())))
    cbs.extend(callbacks)

    trainer_kwargs: dict[str, Any] = dict(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        callbacks=cbs,
        logger=False,
        enable_progress_bar=shows_bar(progress),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # TensorLoader shards by rank itself
        deterministic=deterministic,
        default_root_dir=str(out),
    )
    if precision is not None:
        trainer_kwargs["precision"] = precision
    if limit_train_batches is not None:
        trainer_kwargs["limit_train_batches"] = limit_train_batches
    if limit_val_batches is not None:
        trainer_kwargs["limit_val_batches"] = limit_val_batches
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    if quiet:  # Lightning's info lines (GPU available, tips, "max_epochs reached")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        # SIGTERM / Ctrl-C: the checkpoint of the last finished epoch is kept, TrainingInterrupted is raised
        with stop_cleanly(out, ckpt_path):
            trainer = _run_trainer(trainer_kwargs, module, dm, resume_from)
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if channels_last:  # back to the usual format (also when interrupted): safetensors wants contiguous weights
            module.model.to(memory_format=torch.contiguous_format)
    model = module.model.cpu()
    return FitResult(model=model, metrics=read_metrics(metrics_path), out_dir=out,
                     checkpoint=ckpt_path if ckpt_path.exists() else None, resumed_from_epoch=resumed_epoch,
                     extra={"is_global_zero": trainer.is_global_zero, "world_size": trainer.world_size})


def _run_trainer(trainer_kwargs: dict, module: DistillModule, dm: TensorDataModule,
                 resume_from: Optional[Path]) -> L.Trainer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
        warnings.filterwarnings("ignore", message=".*deterministic.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        trainer = L.Trainer(**trainer_kwargs)
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
    return trainer


def _progress_refresh() -> int:
    try:
        return int(os.environ.get("INHERNET_PROGRESS_REFRESH", "1"))
    except ValueError:
        return 1
