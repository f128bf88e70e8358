"""Initialisations: how an inherited layer's factors start (a registry,
:data:`inhernet.registry.INITS`; ``InheritConfig.init`` names one).

* ``svd``: the truncated SVD of the teacher's weight (the paper's);
* ``whitened``: the truncated SVD of ``W·L``, ``L`` the Cholesky factor of the layer's input second
  moment on calibration data, mapped back by ``L⁻¹`` (SVD-LLM; :mod:`inhernet.factorise.whitening`);
* ``random``: random factors (the paper's "w.o. SVD" ablation), the bias still inherited.

An :class:`Init` declares whether it needs calibration statistics (the pipeline then collects
them, one pass or block by block) and fills a freshly built layer. A new one is an ``Init`` and an
``INITS.register`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..config import InheritConfig
from ..registry import INITS
from .svd import truncated_svd

__all__ = ["Init", "init_random", "init_svd"]


@dataclass(frozen=True)
class Init:
    """``fill(layer, matrix, bias, rank, cfg, generator, whiten) -> energy_kept`` sets the factors of
    ``layer`` (built with random factors and gate from ``generator``) from the teacher's ``matrix``
    (``d_out × d_in…``) and ``bias``; ``whiten`` is the input Cholesky factor when
    ``needs_calibration``, else None. Returns the fraction of spectrum energy kept (None when it
    has no meaning)."""

    name: str
    fill: Callable[..., float | None]
    needs_calibration: bool = False


def init_svd(layer: nn.Module, matrix: Tensor, bias: Tensor | None, rank: int, cfg: InheritConfig,
             generator: torch.Generator, whiten: Tensor | None = None) -> float:
    """Truncated SVD of ``matrix`` (of ``matrix·L`` with ``whiten=L``) into every head, then the
    configured head initialisation."""
    fact = truncated_svd(matrix, rank, method=cfg.svd, niter=cfg.svd_niter, whiten=whiten, generator=generator)
    down, up = fact.factors()
    layer.set_factors(down.to(matrix.dtype), up.to(matrix.dtype), bias, cfg.head_scale)
    layer.diversify_heads(cfg.head_init, cfg.head_init_scale, generator=generator)
    return fact.energy_kept


@torch.no_grad()
def init_random(layer: nn.Module, matrix: Tensor, bias: Tensor | None, rank: int, cfg: InheritConfig,
                generator: torch.Generator, whiten: Tensor | None = None) -> None:
    """Keep the random factors ``layer`` was built with; inherit the bias into every head."""
    if bias is not None:
        layer.bias.copy_(bias.unsqueeze(0).expand_as(layer.bias))
    return None


for _init in (Init("svd", init_svd), Init("whitened", init_svd, needs_calibration=True), Init("random", init_random)):
    INITS.register(_init.name, _init)
