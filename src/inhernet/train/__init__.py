"""Training: losses, the Lightning module, the ``fit`` function and model files.

Needs the ``train`` extra (``lightning``, ``torchmetrics``); :mod:`inhernet.train.losses` needs torch only.
"""

from .losses import (
    LOSS_KINDS,
    DistillLoss,
    DistillLossModule,
    ce_loss,
    dkd_loss,
    dkd_parts,
    kd_kl,
    kd_loss,
    lskd_loss,
    standardize_logits,
)
from ..data.loader import TensorLoader, resolve_augment
from .module import DistillModule, make_loss, scaled_milestones
from .fit import FitResult, JsonlMetrics, TensorDataModule, fit, global_rank, read_metrics
from .store import (
    ArchitectureMismatchError,
    ModelLoadError,
    load_model,
    save_model,
)
from .evaluate import evaluate, measure_latency
from .guard import NonFiniteGuard, TrainingDivergedError
from .heads import HeadDiagnostics
from .text import StepRecorder, TextDataModule, TextTaskModule, lr_factor
from ..hf.folders import load_text_model, save_text_model
from .finetune import FinetuneResult, finetune

__all__ = [
    "LOSS_KINDS",
    "ArchitectureMismatchError",
    "DistillLoss",
    "DistillLossModule",
    "DistillModule",
    "FinetuneResult",
    "FitResult",
    "HeadDiagnostics",
    "JsonlMetrics",
    "ModelLoadError",
    "NonFiniteGuard",
    "StepRecorder",
    "TensorDataModule",
    "TensorLoader",
    "TextDataModule",
    "TextTaskModule",
    "TrainingDivergedError",
    "ce_loss",
    "dkd_loss",
    "dkd_parts",
    "evaluate",
    "finetune",
    "fit",
    "global_rank",
    "kd_kl",
    "kd_loss",
    "load_model",
    "load_text_model",
    "lr_factor",
    "lskd_loss",
    "make_loss",
    "measure_latency",
    "read_metrics",
    "resolve_augment",
    "save_model",
    "save_text_model",
    "scaled_milestones",
    "standardize_logits",
]
