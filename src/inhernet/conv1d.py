"""``nn.Conv1d`` as a layer kind: the whole of what a new kind takes (its inherited layer and its
:class:`~inhernet.kinds.LayerKind`, registered under ``"Conv1d"``).

An ``nn.Conv1d`` (``C_out × C_in × k``, groups = 1) becomes an :class:`InherConv1d`: a width-k conv
``C_in → r`` with the teacher's stride, padding and dilation, then H gated width-1 convs
``r → C_out``, one gate vector per sequence. (transformers' GPT-2 ``Conv1D`` is a different thing,
a transposed Linear: kind ``"Conv1D"``.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .kinds import ConvKind
from .layers import InherConvNd
from .registry import LAYER_KINDS

__all__ = ["Conv1dKind", "InherConv1d"]


class InherConv1d(InherConvNd):
    """Inherited ``nn.Conv1d`` (groups = 1): input ``(N, C_in, L)``, output ``(N, C_out, L')``."""

    spatial_dims = 1
    conv = staticmethod(F.conv1d)


class Conv1dKind(ConvKind):
    name, weight_dims = "Conv1d", 3
    module_type, layer_class = nn.Conv1d, InherConv1d

    def layer_inputs(self, module: nn.Module, x: Tensor) -> Tensor:
        """The ``C_in·k`` windows the kernel sees, in the order of ``weight.reshape(C_out, -1)``."""
        x = F.pad(x, module._reversed_padding_repeated_twice)
        # (N, C_in, L) → (N, C_in, 1, L): a 1-row image, so unfold gives the windows
        patches = F.unfold(x.unsqueeze(2), (1, module.kernel_size[0]), dilation=(1, module.dilation[0]),
                           stride=(1, module.stride[0]))
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])


LAYER_KINDS.register(Conv1dKind.name, Conv1dKind())
