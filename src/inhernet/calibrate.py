"""Activation statistics for the activation-aware (``init="whitened"``) initialisation.

A truncated SVD of a weight ``W`` keeps the directions with the most *weight* energy, whatever
inputs the layer actually sees; on transformers, whose activations concentrate in a few channels,
that loses what matters (a plain rank-r SmolLM2 or MiniLM is broken before fine-tuning). SVD-LLM's
fix: with ``G = E[x xᵀ]`` the layer's input second moment and ``L`` its Cholesky factor
(``G = L Lᵀ``), ``‖(W − W_r) x‖`` averaged over the data equals ``‖(W − W_r) L‖_F``, so the best
rank-r map for those inputs is the truncated SVD of ``W L``, mapped back by ``L⁻¹``.

:func:`input_second_moments` runs the teacher on calibration batches and accumulates ``G`` for the
chosen layers with forward pre-hooks; :func:`cholesky_factor` damps and factorises it.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .config import ConfigError

#: relative damping added to the diagonal of ``G`` before the Cholesky factorisation (inputs that
#: never vary, e.g. a dead channel, would make ``G`` singular)
DAMPING = 1e-4


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def input_second_moments(model: nn.Module, layers: dict[str, nn.Module], calibration: Iterable[Any]) -> dict[str, Tensor]:
    """``{name: E[x xᵀ]}`` (float64, ``d_in × d_in``) of each layer's input over every position of
    every calibration batch. A batch is passed as ``model(**batch)`` if it is a dict, ``model(*batch)``
    if a tuple or list, else ``model(batch)``. The model runs in eval mode and is restored after."""
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def hook(name: str):
        def accumulate(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            counts[name] += x.shape[0]
        return accumulate

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in calibration:
            _call(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise ConfigError(f"the calibration batches never reached {len(missing)} layer(s) (e.g. {missing[0]!r}); "
                          "give batches the model's forward accepts and that run those layers.")
    return {name: sums[name] / counts[name] for name in layers}


def cholesky_factor(second_moment: Tensor) -> Tensor:
    """Lower-triangular ``L`` with ``L Lᵀ = G + δ·mean(diag G)·I`` (float64)."""
    g = second_moment.double()
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    damp = DAMPING * g.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.cholesky(g + damp * eye)
