"""GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear layer whose weight is stored transposed.

``Conv1D(nf, nx)`` computes ``y = x @ W + b`` with ``W`` of shape ``(nx, nf)`` = ``(in, out)``, the
transpose of ``nn.Linear``'s ``(out, in)``. The engine factorises ``Wᵀ`` (``out × in``) and replaces
the layer by an :class:`~inhernet.layers.InherLinear` ``nx → nf``, which computes the same map.

Nothing here imports transformers: a model that holds a ``Conv1D`` has already imported it.
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

KIND = "Conv1D"


def conv1d_class() -> type | None:
    """transformers' ``Conv1D`` class if transformers is loaded, else ``None``."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    cls = conv1d_class()
    return cls is not None and isinstance(module, cls)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Conv1D."""
    return module.nx, module.nf


def weight_matrix(weight: Tensor, kind: str) -> Tensor:
    """A layer's weight in the ``out × in`` (PyTorch Linear) layout: transposed for a Conv1D."""
    return weight.t() if kind == KIND else weight
