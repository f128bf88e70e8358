"""Input statistics for the activation-aware (``init="whitened"``) factorisation: the math.

A truncated SVD of a weight ``W`` keeps the directions with the most *weight* energy, whatever
inputs the layer actually sees; on transformers, whose activations concentrate in a few channels,
that loses what matters. SVD-LLM's fix: with ``G = E[x xᵀ]`` the layer's input second moment and
``L`` its Cholesky factor (``G = L Lᵀ``), ``‖(W − W_r) x‖`` averaged over the data equals
``‖(W − W_r) L‖_F``, so the best rank-r map for those inputs is the truncated SVD of ``W L``,
mapped back by ``L⁻¹`` (:func:`inhernet.factorise.svd.truncated_svd` with ``whiten=L``).

:class:`GramAccumulator` sums ``xᵀx`` in float64 (a bounded number of rows converted at a time);
:func:`cholesky_factor` damps and factorises the mean. A singular moment (a dead input channel,
fewer calibration rows than input features) is handled by the damping, which grows until the
factorisation succeeds: it never crashes. How the rows are collected (one pass, block by block)
is :mod:`inhernet.calibrate`'s business.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DAMPING", "GramAccumulator", "cholesky_factor"]

#: relative damping added to the diagonal of ``G`` before the Cholesky factorisation (inputs that
#: never vary, e.g. a dead channel, would make ``G`` singular): ``G + DAMPING · mean(diag G) · I``
DAMPING = 1e-4
#: the damping grows ×10 per failed factorisation up to this (float64 round-off on a huge ``G``)
MAX_DAMPING = 1.0

#: rows converted to float64 at a time when accumulating ``xᵀx`` (bounds the float64 copy of a
#: large batch of Conv2d patches to ~128 MiB)
ROWS_PER_CHUNK = 1 << 24


class GramAccumulator:
    """Running ``Σ xᵀx`` (float64, ``d_in × d_in``) and row count of one layer's inputs."""

    def __init__(self) -> None:
        self.sum: Tensor | None = None
        self.rows = 0

    def add(self, rows: Tensor) -> bool:
        """Add the rows ``(n, d_in)``; returns False (adding nothing) when they are not finite, so
        the caller can name the batch. The product accumulates in place (``addmm_``): no
        ``d_in × d_in`` temporary beside the sum."""
        if rows.shape[0] == 0:
            return True
        if not torch.isfinite(rows).all():
            return False
        if self.sum is None:
            self.sum = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
        step = max(1, ROWS_PER_CHUNK // max(1, rows.shape[1]))
        for i in range(0, rows.shape[0], step):
            chunk = rows[i:i + step].double()
            self.sum.addmm_(chunk.T, chunk)
        self.rows += rows.shape[0]
        return True

    @property
    def nbytes(self) -> int:
        return 0 if self.sum is None else self.sum.numel() * self.sum.element_size()

    def mean(self) -> Tensor:
        """``E[x xᵀ]`` over the rows added (``ValueError`` when there are none)."""
        if self.sum is None or self.rows == 0:
            raise ValueError("no rows were added")
        return self.sum / self.rows

    def factor(self) -> Tensor:
        """:func:`cholesky_factor` of the mean, consuming the sum (freed: the accumulator is spent),
        so the peak is one ``d_in × d_in`` matrix and its factor."""
        if self.sum is None or self.rows == 0:
            raise ValueError("no rows were added")
        g, self.sum = self.sum.div_(self.rows), None
        return cholesky_factor(g, overwrite=True)


def cholesky_factor(second_moment: Tensor, *, overwrite: bool = False) -> Tensor:
    """Lower-triangular ``L`` (float64) with ``L Lᵀ = G + δ·mean(diag G)·I``, ``δ = DAMPING``, raised
    ×10 while the factorisation fails (a singular or numerically indefinite ``G``), up to
    ``MAX_DAMPING``; an all-zero ``G`` (a layer whose input is always zero) gives ``L = I``.
    ``overwrite``: damp ``second_moment`` itself (a float64 tensor the caller no longer needs)
    instead of a copy, so the peak is ``G`` and ``L``, not three ``d_in × d_in`` matrices."""
    g = second_moment.double()
    if not torch.isfinite(g).all():
        raise ValueError("the input second moment has non-finite entries; the calibration statistics are damaged")
    scale = float(g.diagonal().mean())
    if not scale > 0:
        return torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    damping, added = DAMPING, 0.0
    work = g if overwrite and g is second_moment else g.clone()
    while True:
        work.diagonal().add_(damping * scale - added)  # in place: no d_in × d_in temporaries
        added = damping * scale
        factor, info = torch.linalg.cholesky_ex(work)
        if int(info) == 0 or damping >= MAX_DAMPING:
            break
        damping *= 10
    if int(info) != 0:  # not even the largest damping helped: G is not a second moment (NaN-free by then)
        raise ValueError("the input second moment is not positive semi-definite; the calibration statistics are damaged")
    return factor
