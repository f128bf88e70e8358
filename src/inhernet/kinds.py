"""Layer kinds: which modules can be inherited, and how (a registry, :data:`inhernet.registry.LAYER_KINDS`).

A :class:`LayerKind` tells the pipeline everything it needs about one module type:

* :meth:`~LayerKind.matches` — whether a module is of this kind;
* :meth:`~LayerKind.matrix` — its weight as the ``d_out × d_in…`` matrix the SVD factorises
  (transposed for transformers' ``Conv1D``, which stores ``in × out``);
* :meth:`~LayerKind.skip_reason` — why an instance cannot be inherited (a grouped conv);
* :meth:`~LayerKind.build` — an empty inherited replacement with the same map's structure;
* :meth:`~LayerKind.layer_inputs` — the rows its weight multiplies, for activation statistics.

Built in: ``Linear`` (``nn.Linear``), ``Conv2d`` (``nn.Conv2d``), ``Conv1D`` (transformers'
GPT-2 ``Conv1D``, recognised by duck typing: nothing here imports transformers) and ``Conv1d``
(``nn.Conv1d``, in :mod:`inhernet.conv1d`: a new kind is one such file and one
``LAYER_KINDS.register`` call).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import InherConv2d, InherLinear
from .registry import LAYER_KINDS

__all__ = ["ConvKind", "LayerKind", "kind_of", "layer_kinds"]


class LayerKind:
    """One eligible module type. Subclasses set :attr:`name` and override what differs."""

    #: the name configs use (``layer_types``) and plans record
    name: str = ""
    #: a linear map of feature vectors (``Linear``, ``Conv1D``): what ``target_modules="all-linear"``
    #: selects and what counts as a network's output layer
    linear: bool = False
    #: dimensions of the stored weight (2 for a linear map, 4 for a Conv2d kernel)
    weight_dims: int = 2

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def matrix(self, weight: Tensor) -> Tensor:
        """The stored ``weight`` in the ``d_out × …`` layout (first dim = outputs)."""
        return weight

    def dims(self, weight: Tensor) -> tuple[int, int]:
        """``(d_in, d_out)`` of the matrix the SVD sees (``d_in`` = C_in·k·k for a conv)."""
        m = self.matrix(weight)
        return m[0].numel(), m.shape[0]

    def skip_reason(self, module: nn.Module) -> str:
        """Why this instance stays dense whatever the config ("" when it can be inherited)."""
        return ""

    def build(self, module: nn.Module, rank: int, heads: int, **common: Any) -> nn.Module:
        """An inherited layer computing ``module``'s kind of map at ``rank`` with ``heads`` heads;
        ``common``: bias, gate, structure, device, dtype, generator."""
        raise NotImplementedError

    def layer_inputs(self, module: nn.Module, x: Tensor) -> Tensor:
        """The rows ``(n, d_in)`` that the weight matrix multiplies for the input ``x``."""
        return x.reshape(-1, x.shape[-1])

    def __repr__(self) -> str:
        return f"<layer kind {self.name}>"


class LinearKind(LayerKind):
    name, linear = "Linear", True

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def build(self, module: nn.Module, rank: int, heads: int, **common: Any) -> nn.Module:
        return InherLinear(module.in_features, module.out_features, rank, heads, **common)


class TransformersConv1DKind(LayerKind):
    """transformers' ``Conv1D`` (GPT-2): ``y = x @ W + b`` with ``W`` stored ``(in, out)``, the
    transpose of ``nn.Linear``'s; inherited as an :class:`~inhernet.layers.InherLinear` ``in → out``.
    Recognised by its class name and its ``nf`` / ``nx`` attributes, so the core never imports
    transformers (a model holding one has imported it already)."""

    name, linear = "Conv1D", True

    def matches(self, module: nn.Module) -> bool:
        return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")
                and isinstance(getattr(module, "weight", None), Tensor))

    def matrix(self, weight: Tensor) -> Tensor:
        return weight.t()

    def build(self, module: nn.Module, rank: int, heads: int, **common: Any) -> nn.Module:
        return InherLinear(module.nx, module.nf, rank, heads, **common)


class ConvKind(LayerKind):
    """An ``nn.ConvNd`` kind (groups = 1, zero padding); subclasses set :attr:`module_type`,
    :attr:`layer_class` (an :class:`~inhernet.layers.InherConvNd`) and :meth:`layer_inputs`."""

    module_type: type = nn.Conv2d
    layer_class: type = InherConv2d

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_type)

    def skip_reason(self, module: nn.Module) -> str:
        if module.groups != 1:
            return f"grouped/depthwise conv (groups={module.groups}) is not factorised"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only 'zeros' is supported)"
        return ""

    def build(self, module: nn.Module, rank: int, heads: int, **common: Any) -> nn.Module:
        return self.layer_class(module.in_channels, module.out_channels, module.kernel_size, rank, heads,
                                stride=module.stride, padding=module.padding, dilation=module.dilation, **common)


class Conv2dKind(ConvKind):
    name, weight_dims = "Conv2d", 4
    module_type, layer_class = nn.Conv2d, InherConv2d

    def layer_inputs(self, module: nn.Module, x: Tensor) -> Tensor:
        """The ``C_in·k·k`` patches the kernel sees (padded as the forward pads them), in the order
        of ``weight.reshape(C_out, -1)``."""
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (N, d_in, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])


for _kind in (LinearKind(), Conv2dKind(), TransformersConv1DKind()):
    LAYER_KINDS.register(_kind.name, _kind)


def layer_kinds() -> tuple[str, ...]:
    """The names of every registered kind (the default ``layer_types``)."""
    return LAYER_KINDS.names()


def kind_of(module: nn.Module) -> LayerKind | None:
    """The registered kind ``module`` is of (the first that matches), or ``None``."""
    for kind in LAYER_KINDS.values():
        if kind.matches(module):
            return kind
    return None
