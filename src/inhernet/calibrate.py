"""Activation statistics for the activation-aware (``init="whitened"``) initialisation.

A truncated SVD of a weight ``W`` keeps the directions with the most *weight* energy, whatever
inputs the layer actually sees; on transformers, whose activations concentrate in a few channels,
that loses what matters (a plain rank-r SmolLM2 or MiniLM is broken before fine-tuning). SVD-LLM's
fix: with ``G = E[x xᵀ]`` the layer's input second moment and ``L`` its Cholesky factor
(``G = L Lᵀ``), ``‖(W − W_r) x‖`` averaged over the data equals ``‖(W − W_r) L‖_F``, so the best
rank-r map for those inputs is the truncated SVD of ``W L``, mapped back by ``L⁻¹``.

:func:`input_second_moments` runs the teacher on calibration batches and accumulates ``G`` for the
chosen layers with forward pre-hooks; :func:`cholesky_factor` damps and factorises it. For a Conv2d
the "inputs" are the patches its kernel sees (:func:`layer_inputs`, the columns of ``F.unfold``), so
``G`` is ``C_in·k·k`` square and matches the ``C_out × C_in·k·k`` matrix the SVD factorises.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError

#: relative damping added to the diagonal of ``G`` before the Cholesky factorisation (inputs that
#: never vary, e.g. a dead channel, would make ``G`` singular)
DAMPING = 1e-4

#: rows converted to float64 at a time when accumulating ``xᵀx`` (bounds the float64 copy of a
#: large batch of Conv2d patches to ~128 MiB)
_ROWS_PER_CHUNK = 1 << 24


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows ``(n, d_in)`` that ``module``'s weight matrix multiplies for the input ``x``: the
    feature vectors of a Linear / Conv1D, the ``C_in·k·k`` patches of a Conv2d (padded as its
    forward pads them: zeros, reflect, replicate or circular, ``"same"`` included), in the order
    of ``weight.reshape(C_out, -1)``."""
    if isinstance(module, nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (N, d_in, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def _gram(rows: Tensor) -> Tensor:
    """``rowsᵀ rows`` in float64, converting a bounded number of rows at a time."""
    step = max(1, _ROWS_PER_CHUNK // max(1, rows.shape[1]))
    total = None
    for i in range(0, rows.shape[0], step):
        chunk = rows[i:i + step].double()
        total = chunk.T @ chunk if total is None else total + chunk.T @ chunk
    return total


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def input_second_moments(model: nn.Module, layers: dict[str, nn.Module], calibration: Iterable[Any]) -> dict[str, Tensor]:
    """``{name: E[x xᵀ]}`` (float64, ``d_in × d_in``) of each layer's input (:func:`layer_inputs`)
    over every position of every calibration batch. A batch is passed as ``model(**batch)`` if it is a dict, ``model(*batch)``
    if a tuple or list, else ``model(batch)``. The model runs in eval mode and is restored after."""
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def hook(name: str):
        def accumulate(module: nn.Module, args: tuple) -> None:
            rows = layer_inputs(module, args[0].detach())
            gram = _gram(rows)
            sums[name] = sums[name] + gram if name in sums else gram
            counts[name] += rows.shape[0]
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
