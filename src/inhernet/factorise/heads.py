"""Head initialisations: how the H up-projection heads start from the layer's factors
(a registry, :data:`inhernet.registry.HEAD_INITS`; ``InheritConfig.head_init`` names one).

After the factors are loaded every head is a copy of ``B`` (the SVD's up-projection). Identical
heads give the gate the gradient ``g_h (u_h − y)ᵀ ∂L/∂y = 0``, so the paper's copies stay copies
under SGD in the layer's exact arithmetic. The function-preserving inits make the heads differ
without changing what the layer computes: every head ``B_h = B + δ_h`` with ``Σ_h δ_h = 0`` and the
gate zeroed (a zero gate mixes the heads uniformly, so ``Σ_h B_h / H = B``).

* ``copies``: the paper's (nothing changes; the gate keeps its random initialisation);
* ``perturbed``: ``δ_h`` Gaussian (drawn on the CPU from the layer's generator), centred over heads;
* ``split``: head h scales the rank components ``j ≡ h (mod H)`` up and the others down,
  ``δ_h = B·diag(H·1[j ≡ h] − 1)``, so each head leans on a different subset of the kept singular
  directions (deterministic).

Both non-trivial modes are scaled to a mean ``‖δ_h‖ / ‖B‖`` of ``scale`` (``head_init_scale``).
One head, or no gate (every head then gets the same gradient, so differences would never grow):
nothing to do. A new head initialisation is a function ``(layer, scale, generator) -> None`` and a
``HEAD_INITS.register`` call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import HEAD_INITS

__all__ = ["apply_head_deltas", "copies", "perturbed", "split"]


def copies(layer: nn.Module, scale: float, generator: torch.Generator | None) -> None:
    """The paper's start: identical heads, random gate."""


@torch.no_grad()
def apply_head_deltas(layer: nn.Module, delta: Tensor, scale: float) -> None:
    """``up_h ← mean(up) + δ_h`` with the zero-sum ``delta`` (H × d_out × r, float64) scaled to a
    mean ``‖δ_h‖ / ‖B‖`` of ``scale``, and the gate zeroed (uniform mixing: the function is kept)."""
    base = layer.up.mean(0)  # all heads are copies of B here; the mean keeps the function
    size = float(delta.flatten(1).norm(dim=1).mean())
    ref = float(base.double().norm())
    if size > 0 and ref > 0:
        delta = delta * (scale * ref / size)
    layer.up.copy_(base[None] + delta.to(layer.up.dtype).to(layer.up.device))
    layer.gate.weight.zero_()
    layer.gate.bias.zero_()


def perturbed(layer: nn.Module, scale: float, generator: torch.Generator | None) -> None:
    """Zero-sum Gaussian head deviations and a zero gate."""
    noise = torch.randn(layer.up.shape, generator=generator, dtype=torch.float64)
    apply_head_deltas(layer, noise - noise.mean(0, keepdim=True), scale)


def split(layer: nn.Module, scale: float, generator: torch.Generator | None) -> None:
    """Each head leans on the rank components ``j ≡ h (mod H)``; a zero gate."""
    base = layer.up.mean(0).double().cpu()
    owner = torch.arange(layer.rank) % layer.heads  # component j belongs to head j mod H
    mask = (owner[None, :] == torch.arange(layer.heads)[:, None]).double()  # H × r
    apply_head_deltas(layer, base[None] * (layer.heads * mask - 1.0)[:, None, :], scale)


for _name, _fn in (("copies", copies), ("perturbed", perturbed), ("split", split)):
    HEAD_INITS.register(_name, _fn)
