"""What the model does on the example input, seen through forward hooks: per layer its calls,
input shape and dtype, which input tensor each linear layer read (for the shared-input fusion) and
the gate weights of the layers whose gate is to be frozen; plus the small model-surgery and
output-comparison helpers the other passes share."""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError
from ..layers import INHER_LAYERS, InherConv2d, InherLinear
from ..utils import call_model, nested_tensors

__all__ = ["BATCHNORMS", "LayerCalls", "capture_calls", "forward_with_hooks", "max_diff", "replace_module",
           "select_frozen"]

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass
class LayerCalls:
    """What the forward hooks saw of one module on the example input."""

    count: int = 0
    input_shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    out_dim: int | None = None
    gates: list[Tensor] = field(default_factory=list)  # frozen layers only: (positions, H)
    inputs: list[int] = field(default_factory=list)  # linear layers: which input tensor each call read


def capture_calls(model: nn.Module, example: Any, frozen: set[str]) -> dict[str, LayerCalls]:
    """Run ``model`` once on the example with forward hooks on every Conv2d / Linear / inherited /
    BatchNorm module: call counts, the first input's shape and dtype, the output's rank, for the
    linear layers a serial number of each call's input tensor (the same number: the same tensor
    object; layers with equal lists read one input), and for the layers whose gate is to be frozen
    the gate weights they computed."""
    calls: dict[str, LayerCalls] = {}
    handles = []
    serials: dict[int, tuple[weakref.ref, int]] = {}  # id(tensor) → (the tensor, its serial)
    numbers = itertools.count()

    def serial(x: Tensor) -> int:
        seen = serials.get(id(x))
        if seen is None or seen[0]() is not x:  # a new tensor (or a freed one's id, reused): a new number
            seen = serials[id(x)] = (weakref.ref(x), next(numbers))
        return seen[1]

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            rec = calls.setdefault(name, LayerCalls())
            rec.count += 1
            x = args[0] if args and isinstance(args[0], Tensor) else None
            if x is not None and isinstance(module, (nn.Linear, InherLinear)):
                rec.inputs.append(serial(x))
            if rec.input_shape is None and x is not None:
                rec.input_shape, rec.dtype = tuple(x.shape), x.dtype
                rec.out_dim = output.dim() if isinstance(output, Tensor) else None
            if name in frozen and x is not None:
                if isinstance(module, InherConv2d):
                    z = F.conv2d(x, module.down, None, module.stride, module.padding, module.dilation)
                else:
                    z = F.linear(x, module.down)
                rec.gates.append(module.gate_weights(z).reshape(-1, module.heads).double())
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (*INHER_LAYERS, nn.Conv2d, nn.Linear, *BATCHNORMS)):
            handles.append(module.register_forward_hook(hook(name)))
    forward_with_hooks(model, example, handles)
    return calls


def forward_with_hooks(model: nn.Module, example: Any, handles: list) -> None:
    """One no-grad forward on ``example`` to let the registered hooks record; the hooks are removed
    afterwards, also when the forward raises."""
    try:
        with torch.no_grad():
            call_model(model, example)
    finally:
        for h in handles:
            h.remove()


def max_diff(out: Any, ref: Any) -> tuple[float, float]:
    """(max |out − ref|, max |ref|) over the tensors of two outputs of the same structure."""
    a, b = nested_tensors(out), nested_tensors(ref)
    if len(a) != len(b):
        raise RuntimeError(f"the optimised model returns {len(a)} tensors, the original {len(b)}")
    diff = max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if y.numel()), default=0.0)
    scale = max((float(y.float().abs().max()) for y in b if y.numel()), default=0.0)
    return diff, scale


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered in ``root`` (a module may be registered twice)."""
    for parent in root.modules():
        for child_name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, child_name, new)


def select_frozen(model: nn.Module, freeze_gate: bool | str | Iterable[str]) -> set[str]:
    """Names of the gated layers whose gate is frozen: all (True), none (False), or those matching
    the given names / name suffixes / regexes."""
    gated = [n for n, m in model.named_modules() if isinstance(m, INHER_LAYERS) and m.gate is not None]
    if freeze_gate is True:
        return set(gated)
    if freeze_gate is False or freeze_gate is None:
        return set()
    selectors = [freeze_gate] if isinstance(freeze_gate, str) else list(freeze_gate)
    chosen = {n for n in gated for s in selectors
              if n == s or n.endswith("." + s) or re.fullmatch(s, n) is not None}
    if not chosen:
        raise ConfigError(f"freeze_gate={freeze_gate!r} matches no gated layer; gated layers: "
                          f"{', '.join(gated[:8]) or 'none'}{' ...' if len(gated) > 8 else ''}")
    return chosen
