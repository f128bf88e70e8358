"""Training losses: cross-entropy, Hinton KD, DKD and logit-standardised KD.

All distillation losses take raw logits ``student`` and ``teacher`` of shape ``(N, C)`` and integer
targets ``target`` of shape ``(N,)``, and return a scalar averaged over the batch ("batchmean").

* Hinton KD (Hinton et al. 2015)::

      L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

  ``ce_weight`` / ``kd_weight`` override ``1 - alpha`` / ``alpha`` when a recipe is not a convex
  combination (e.g. the ``0.1 * CE + 9 * T^2 * KL`` recipe of METHOD.md §5).

* DKD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"). With temperature-T probabilities
  ``p = softmax(z / T)`` and ``p_t`` the probability of the target class:

  - binary distribution ``b = [p_t, 1 - p_t]``; ``TCKD = KL(b^T || b^S)``;
  - non-target distribution ``p_hat_i = p_i / (1 - p_t)`` for ``i != t`` (equal to the softmax of the
    non-target logits); ``NCKD = KL(p_hat^T || p_hat^S)``;
  - the paper's identity ``KL(p^T || p^S) = TCKD + (1 - p_t^T) * NCKD`` (per sample);
  - ``DKD = T^2 * (alpha * TCKD + beta * NCKD)`` (T^2 as in the authors' code, mdistiller), and the
    training loss is ``ce_weight * CE + warmup * DKD``. mdistiller ramps ``warmup`` linearly over the
    first 20 of 240 epochs (``min(epoch / 20, 1)``); here the ramp covers the same *fraction* of the
    run, measured in optimisation steps (``min(progress / warmup_fraction, 1)``, ``progress`` = share
    of the run's steps done), so that short schedules keep a real warm-up.

* Logit-standardised KD (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation"):
  both logit vectors are z-scored per sample, ``(z - mean(z)) / (std(z) + 1e-7)`` (unbiased std, as in
  the authors' code), then Hinton KD is applied with temperature ``T``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inhernet.errors import ConfigError

__all__ = [
    "LOSS_KINDS",
    "DistillLoss",
    "ce_loss",
    "dkd_loss",
    "dkd_parts",
    "kd_kl",
    "kd_loss",
    "lskd_loss",
    "standardize_logits",
]

LOSS_KINDS = ("ce", "kd", "dkd", "lskd")


def ce_loss(student: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Plain cross-entropy, averaged over the batch."""
    return F.cross_entropy(student, target, label_smoothing=label_smoothing)


def kd_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, summed over classes and averaged over the batch."""
    t = float(temperature)
    log_ps = F.log_softmax(student / t, dim=1)
    log_pt = F.log_softmax(teacher / t, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return kl * (t * t)


def kd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    alpha: float = 0.9,
    temperature: float = 4.0,
    ce_weight: Optional[float] = None,
    kd_weight: Optional[float] = None,
    standardize: bool = False,
) -> Tensor:
    """Hinton KD: ``(1-alpha) * CE + alpha * T^2 * KL(p_t^T || p_s^T)`` (weights overridable).

    ``standardize=True`` distils z-scored logits (logit-standardised KD); CE uses the raw logits.
    """
    cw = (1.0 - alpha) if ce_weight is None else ce_weight
    kw = alpha if kd_weight is None else kd_weight
    s, t = (standardize_logits(student), standardize_logits(teacher)) if standardize else (student, teacher)
    loss = kw * kd_kl(s, t, temperature)
    if cw:
        loss = loss + cw * F.cross_entropy(student, target)
    return loss


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of the logits (Sun et al. 2024): ``(z - mean) / (std + eps)``, unbiased std."""
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)
    return (z - mean) / (std + eps)


def lskd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    alpha: float = 0.9,
    temperature: float = 2.0,
    ce_weight: Optional[float] = None,
    kd_weight: Optional[float] = None,
) -> Tensor:
    """KD on z-scored logits (Sun et al. 2024). The CE term uses the raw student logits."""
    return kd_loss(student, teacher, target, alpha, temperature, ce_weight, kd_weight, standardize=True)


def _binary_and_rest(logits: Tensor, target: Tensor, temperature: float):
    """log of the binary [p_t, 1-p_t] distribution and log-softmax over the non-target classes."""
    z = logits / temperature
    gt = F.one_hot(target, z.shape[1]).bool()
    log_p = F.log_softmax(z, dim=1)
    log_pt = log_p.gather(1, target[:, None])  # (N, 1)
    # log(1 - p_t) = logsumexp over non-target of log p, computed stably.
    log_rest = torch.logsumexp(log_p.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
    log_b = torch.cat([log_pt, log_rest], dim=1)  # (N, 2)
    # non-target softmax: logits of the target class removed (set to -inf).
    log_hat = F.log_softmax(z.masked_fill(gt, float("-inf")), dim=1)
    return log_b, log_hat, gt


def dkd_parts(student: Tensor, teacher: Tensor, target: Tensor, temperature: float = 4.0):
    """Per-sample ``(TCKD, NCKD, p_t^T)`` with no ``T^2`` factor, each of shape ``(N,)``."""
    t = float(temperature)
    log_bs, log_hs, gt = _binary_and_rest(student, target, t)
    log_bt, log_ht, _ = _binary_and_rest(teacher, target, t)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(dim=1)
    pt_hat = log_ht.exp()  # zero at the target class
    diff = (log_ht - log_hs).masked_fill(gt, 0.0)
    nckd = (pt_hat * diff).sum(dim=1)
    return tckd, nckd, log_bt[:, 0].exp()


def dkd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    ce_weight: float = 1.0,
    warmup: float = 1.0,
) -> Tensor:
    """``ce_weight * CE + warmup * T^2 * (alpha * TCKD + beta * NCKD)`` (batch mean)."""
    tckd, nckd, _ = dkd_parts(student, teacher, target, temperature)
    t2 = float(temperature) ** 2
    loss = warmup * t2 * (alpha * tckd.mean() + beta * nckd.mean())
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(student, target)
    return loss


@dataclass
class DistillLoss:
    """A training objective, configured once and called as ``loss(student, teacher, target)``.

    ``kind``: ``"ce"`` (no teacher needed), ``"kd"`` (Hinton), ``"dkd"`` or ``"lskd"``.
    Defaults follow the papers' CIFAR recipes: KD ``alpha=0.9, T=4``; DKD ``alpha=1, beta=8, T=4``,
    CE weight 1 and a linear warm-up of the DKD term over ``warmup_fraction`` of the run
    (20 of 240 epochs in mdistiller); LSKD ``T=2``.
    """

    kind: str = "ce"
    alpha: Optional[float] = None
    beta: float = 8.0
    temperature: Optional[float] = None
    ce_weight: Optional[float] = None
    kd_weight: Optional[float] = None
    warmup_fraction: float = 20 / 240
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"unknown loss kind {self.kind!r}; expected one of {', '.join(LOSS_KINDS)}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")

    @classmethod
    def from_dict(cls, d: dict) -> "DistillLoss":
        valid = {f.name for f in fields(cls)}
        bad = sorted(set(d) - valid)
        if bad:
            raise ConfigError(f"unknown loss option(s) {bad}; valid: {sorted(valid)}")
        return cls(**d)

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "ce"

    def resolved(self) -> dict:
        """The effective hyper-parameters (defaults filled in), for logs and configs."""
        k = self.kind
        if k == "ce":
            return {"kind": k, "label_smoothing": self.label_smoothing}
        if k in ("kd", "lskd"):
            alpha = 0.9 if self.alpha is None else self.alpha
            t = (4.0 if k == "kd" else 2.0) if self.temperature is None else self.temperature
            cw = 1.0 - alpha if self.ce_weight is None else self.ce_weight
            kw = alpha if self.kd_weight is None else self.kd_weight
            return {"kind": k, "temperature": t, "ce_weight": cw, "kd_weight": kw}
        alpha = 1.0 if self.alpha is None else self.alpha
        t = 4.0 if self.temperature is None else self.temperature
        cw = 1.0 if self.ce_weight is None else self.ce_weight
        return {"kind": k, "alpha": alpha, "beta": self.beta, "temperature": t, "ce_weight": cw,
                "warmup_fraction": self.warmup_fraction}

    def warmup_factor(self, progress: float) -> float:
        """DKD warm-up factor ``min(progress / warmup_fraction, 1)``; ``progress`` in (0, 1] is the share
        of the run's optimisation steps done (1.0 = no warm-up)."""
        if self.kind != "dkd" or self.warmup_fraction <= 0:
            return 1.0
        return min(max(progress, 0.0) / self.warmup_fraction, 1.0)

    def __call__(self, student: Tensor, teacher: Optional[Tensor], target: Tensor, *,
                 progress: float = 1.0) -> Tensor:
        r = self.resolved()
        if self.kind == "ce":
            return ce_loss(student, target, self.label_smoothing)
        if teacher is None:
            raise ValueError(f"loss kind {self.kind!r} needs teacher logits")
        if self.kind == "kd":
            return kd_loss(student, teacher, target, temperature=r["temperature"],
                           ce_weight=r["ce_weight"], kd_weight=r["kd_weight"])
        if self.kind == "lskd":
            return lskd_loss(student, teacher, target, temperature=r["temperature"],
                             ce_weight=r["ce_weight"], kd_weight=r["kd_weight"])
        return dkd_loss(student, teacher, target, alpha=r["alpha"], beta=r["beta"],
                        temperature=r["temperature"], ce_weight=r["ce_weight"],
                        warmup=self.warmup_factor(progress))


class DistillLossModule(nn.Module):
    """``nn.Module`` wrapper of :class:`DistillLoss` (no parameters)."""

    def __init__(self, kind: str = "ce", **kwargs) -> None:
        super().__init__()
        self.loss = DistillLoss(kind=kind, **kwargs)

    def forward(self, student: Tensor, teacher: Optional[Tensor], target: Tensor, progress: float = 1.0) -> Tensor:
        return self.loss(student, teacher, target, progress=progress)
