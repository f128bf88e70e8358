"""Truncated SVD of layer weights and the InherNet factors built from it.

A weight ``W`` (``d_out × d_in``; a conv kernel reshaped to ``C_out × C_in·k·k``) is factorised as
``W ≈ U_r Σ_r V_rᵀ`` (Eckart–Young: the best rank-r approximation in Frobenius norm, with error
``sqrt(Σ_{i>r} σ_i²)``). InherNet splits the singular values evenly between the two sides:
``down = Σ_r^{1/2} V_rᵀ`` (r × d_in) and ``up = U_r Σ_r^{1/2}`` (d_out × r).

The SVD runs in float32 (or float64 for float64 weights) whatever the weight's dtype, so half
precision teachers factorise accurately; the factors are cast back to the weight's dtype.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

#: extra columns sampled by the randomized SVD beyond the target rank (Halko et al.)
OVERSAMPLE = 10
#: below this many elements a CPU SVD runs on one thread: LAPACK's threading only costs there, and
#: on a busy machine it costs a lot (a 64×576 SVD: 2 ms on one thread, up to 2 s on two busy cores)
SINGLE_THREAD_NUMEL = 1 << 20


_THREADS_LOCK = threading.Lock()


@contextmanager
def _lapack_threads(matrix: Tensor) -> Iterator[None]:
    """Run a small CPU SVD on one thread. ``torch.set_num_threads`` is process-wide, so the switch
    and its undo happen under a lock: concurrent calls (threads) serialise their small SVDs instead
    of restoring each other's thread count wrongly."""
    if matrix.is_cuda or matrix.numel() >= SINGLE_THREAD_NUMEL:
        yield
        return
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def as_matrix(weight: Tensor) -> Tensor:
    """``d_out × d_in`` view of a Linear weight or a Conv2d kernel (``C_out × C_in·k·k``)."""
    return weight.reshape(weight.shape[0], -1)


def _compute_dtype(weight: Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


@dataclass
class Factorisation:
    """Top-r singular triplets of one weight matrix, and its total spectrum energy ``‖W‖_F²``."""

    U: Tensor  # d_out × r
    S: Tensor  # r
    Vh: Tensor  # r × d_in
    total_energy: float

    @property
    def energy_kept(self) -> float:
        """Fraction of ``‖W‖_F²`` captured by the kept singular values."""
        return float((self.S.double() ** 2).sum() / self.total_energy) if self.total_energy > 0 else 1.0

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(down, up)`` with ``up @ down = U_r Σ_r Vh``, balanced: column i of ``up`` and row i of
        ``down`` get the same norm. For a plain SVD (orthonormal rows of ``Vh``) that is the even
        split ``√σ_i`` on each side; for a whitened one (rows ``v_iᵀL⁻¹``, of norm ``n_i ≠ 1``) it is
        ``√(σ_i n_i) u_i`` and ``√(σ_i / n_i) v_iᵀL⁻¹``. Unbalanced factors (34× apart on resnet56,
        docs/benchmarks/whitened_init.md) train worse with SGD, whose step on one factor scales with
        the other's norm."""
        norms = self.Vh.norm(dim=1).clamp_min(torch.finfo(self.Vh.dtype).tiny)
        return (self.S / norms).sqrt()[:, None] * self.Vh, self.U * (self.S * norms).sqrt()[None, :]


def _whitened(weight: Tensor, whiten: Tensor | None) -> Tensor:
    """``W`` as a ``d_out × d_in`` matrix in the compute dtype, times ``whiten`` (``L``) when given."""
    if whiten is None:
        return as_matrix(weight).to(_compute_dtype(weight))
    return (as_matrix(weight).double() @ whiten.double()).to(_compute_dtype(weight))


def singular_values(weight: Tensor, whiten: Tensor | None = None) -> Tensor:
    """All singular values of a layer weight (of ``W·L`` with ``whiten=L``), descending
    (float32/64, on the weight's device)."""
    matrix = _whitened(weight, whiten)
    with _lapack_threads(matrix):
        return torch.linalg.svdvals(matrix)


def truncated_svd(weight: Tensor, rank: int, *, method: str = "exact", niter: int = 4, seed: int = 0,
                  whiten: Tensor | None = None, generator: torch.Generator | None = None) -> Factorisation:
    """Top-``rank`` SVD of a layer weight.

    ``method="exact"`` uses ``torch.linalg.svd``; ``"randomized"`` is Halko et al.'s range finder
    with ``rank + OVERSAMPLE`` columns and ``niter`` power iterations, its Gaussian test matrix drawn
    from ``generator`` (a CPU ``torch.Generator``; default one seeded with ``seed``), never from the
    global RNG, so results repeat and concurrent calls do not disturb each other.
    With ``whiten=L`` (lower-triangular, :func:`inhernet.factorise.whitening.cholesky_factor`) it factorises
    ``W·L`` and returns ``Vh·L⁻¹`` as ``Vh``: ``U_r Σ_r Vh`` is then the rank-r map with the least
    output error on inputs of second moment ``L Lᵀ``, and the energies are those of ``W·L``.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    fact = _truncated_svd(_whitened(weight, whiten), rank, method, niter, generator)
    if whiten is not None:
        L = whiten.double()
        vh = torch.linalg.solve_triangular(L.T, fact.Vh.double().T, upper=True).T  # Vh·L⁻¹
        fact.Vh = vh.to(fact.Vh.dtype)
    return fact


def _truncated_svd(matrix: Tensor, rank: int, method: str, niter: int, generator: torch.Generator) -> Factorisation:
    full = min(matrix.shape)
    if not 1 <= rank <= full:
        raise ValueError(f"rank {rank} is outside 1..{full} for a {tuple(matrix.shape)} matrix.")
    total = float(matrix.double().pow(2).sum())
    if method == "exact":
        with _lapack_threads(matrix):
            U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
        return Factorisation(U[:, :rank], S[:rank], Vh[:rank], total)
    if method != "randomized":
        raise ValueError(f"unknown SVD method {method!r}; use 'exact' or 'randomized'.")
    with _lapack_threads(matrix):
        U, S, Vh = randomized_svd(matrix, min(rank + OVERSAMPLE, full), niter, generator)
    return Factorisation(U[:, :rank], S[:rank], Vh[:rank], total)


def randomized_svd(matrix: Tensor, q: int, niter: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``(U, S, Vh)`` of the top ``q`` singular triplets, approximately (Halko, Martinsson & Tropp
    2011, Alg. 4.4: a Gaussian range finder with ``niter`` QR-stabilised power iterations), as
    ``torch.svd_lowrank`` computes them but with the test matrix drawn on the CPU from ``generator``."""
    a = matrix
    omega = torch.randn(a.shape[1], q, generator=generator, dtype=torch.float64).to(a.device, a.dtype)
    basis = torch.linalg.qr(a @ omega).Q
    for _ in range(niter):
        basis = torch.linalg.qr(a.mT @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    u_small, S, Vh = torch.linalg.svd(basis.mT @ a, full_matrices=False)
    return basis @ u_small, S, Vh


def tail_error(S_all: Tensor, rank: int) -> float:
    """Eckart–Young error ``‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²)`` from the full spectrum."""
    return float(S_all[rank:].double().pow(2).sum().sqrt())
