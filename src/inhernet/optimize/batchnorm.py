"""BatchNorm folding: which eval-mode BatchNorm follows which conv / linear / inherited layer
(from the ``torch.fx`` graph, or for a model fx cannot trace from tensor identity, each such fold
verified alone), and the exact folds — into a dense layer's weight, into every head of a gated layer."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import INHER_LAYERS, InherConv2d
from ..utils import call_model
from .capture import BATCHNORMS, LayerCalls, forward_with_hooks, max_diff, replace_module
from .forms import wide

__all__ = ["bn_affine", "fold_bn_into_dense", "fold_bn_into_heads", "pairs_by_fx", "pairs_by_hooks", "verified_pairs"]


def _foldable_batchnorm(bn: nn.Module) -> bool:
    return isinstance(bn, BATCHNORMS) and bn.track_running_stats and bn.running_mean is not None


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.up.shape[1]


def _pair_ok(producer: nn.Module, bn: nn.Module, rec: LayerCalls | None, bn_rec: LayerCalls | None) -> bool:
    """Whether BatchNorm ``bn`` right after ``producer`` can be folded into it: both ran once, BN
    normalises the producer's output features (a conv's channels; a linear layer's features only
    when its output is N × features, which is what BatchNorm1d then normalises)."""
    if rec is None or bn_rec is None or rec.count != 1 or bn_rec.count != 1 or not _foldable_batchnorm(bn):
        return False
    if isinstance(producer, (nn.Conv2d, InherConv2d)):
        conv_ok = isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)) and rec.out_dim == 4
    else:
        conv_ok = isinstance(bn, (nn.BatchNorm1d, nn.SyncBatchNorm)) and rec.out_dim == 2
    return conv_ok and bn.num_features == _out_features(producer)


_PRODUCERS = (nn.Conv2d, nn.Linear, *INHER_LAYERS)


def pairs_by_fx(model: nn.Module, calls: dict[str, LayerCalls]) -> dict[str, str] | None:
    """``{producer name: BatchNorm name}`` from the model's ``torch.fx`` graph: a BatchNorm whose
    only input is the output of a conv / linear / inherited layer that nothing else reads. None when
    the model cannot be traced symbolically."""

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, INHER_LAYERS) or super().is_leaf_module(m, qualname)

    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: use the hook fallback
        return None
    modules = dict(model.named_modules(remove_duplicate=False))
    uses = Counter(id(modules[n.target]) for n in graph.nodes if n.op == "call_module" and n.target in modules)
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_batchnorm(modules.get(node.target)):
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        prod = node.args[0]
        if prod.op != "call_module" or len(prod.users) != 1 or prod.target not in modules:
            continue
        producer, bn = modules[prod.target], modules[node.target]
        if (isinstance(producer, _PRODUCERS) and uses[id(producer)] == 1 and uses[id(bn)] == 1
                and _pair_ok(producer, bn, calls.get(prod.target), calls.get(node.target))):
            pairs[prod.target] = node.target
    return pairs


def pairs_by_hooks(model: nn.Module, example: Any, calls: dict[str, LayerCalls]) -> dict[str, str]:
    """Fallback for models ``torch.fx`` cannot trace: a BatchNorm whose input tensor *is* the output
    tensor of a conv / linear / inherited layer. Hooks cannot see whether something else also reads
    that tensor, so these folds are verified by the final output check (and dropped if it fails)."""
    produced: dict[int, tuple[str, Tensor]] = {}
    found: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _PRODUCERS):
            def out_hook(m, args, out, name=name):
                if isinstance(out, Tensor):
                    produced[id(out)] = (name, out)
            handles.append(module.register_forward_hook(out_hook))
        elif _foldable_batchnorm(module):
            def in_hook(m, args, name=name):
                if args and isinstance(args[0], Tensor) and id(args[0]) in produced:
                    prod_name, t = produced[id(args[0])]
                    if t is args[0]:
                        found[prod_name] = name
            handles.append(module.register_forward_pre_hook(in_hook))
    forward_with_hooks(model, example, handles)
    modules = dict(model.named_modules())
    return {p: b for p, b in found.items()
            if p in modules and b in modules and _pair_ok(modules[p], modules[b], calls.get(p), calls.get(b))}


def verified_pairs(model: nn.Module, pairs: dict[str, str], example: Any, reference: Any, tolerance: float,
                    ) -> tuple[dict[str, str], list[str]]:
    """The hook-found pairs whose fold, applied alone, leaves the output on the example within the
    tolerance (a fold whose producer's output is also read elsewhere changes it), and the names of
    the BatchNorms dropped. ``model`` is put back as it was after each trial."""
    modules = dict(model.named_modules())
    kept, dropped = {}, []
    for prod_name, bn_name in pairs.items():
        producer, bn = modules[prod_name], modules[bn_name]
        if isinstance(producer, INHER_LAYERS):
            folded = copy.deepcopy(producer)
            fold_bn_into_heads(folded, bn)
        else:
            folded = fold_bn_into_dense(producer, bn)
        identity = nn.Identity()
        replace_module(model, producer, folded)
        replace_module(model, bn, identity)
        try:
            with torch.no_grad():
                diff, scale = max_diff(call_model(model, example), reference)
        finally:
            replace_module(model, folded, producer)
            replace_module(model, identity, bn)
        if diff <= tolerance * max(scale, 1e-12):
            kept[prod_name] = bn_name
        else:
            dropped.append(bn_name)
    return kept, dropped


def bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = s ⊙ x + t`` (float64)."""
    s = 1.0 / torch.sqrt(wide(bn.running_var) + bn.eps)
    if bn.weight is not None:
        s = s * wide(bn.weight)
    t = -wide(bn.running_mean) * s
    if bn.bias is not None:
        t = t + wide(bn.bias)
    return s, t


def fold_bn_into_heads(layer: nn.Module, bn: nn.Module) -> None:
    """BatchNorm into every head of a gated layer: ``B_h ← s ⊙ B_h``, ``b_h ← s ⊙ b_h + t``; exact
    because ``Σ_h g_h = 1`` and the output is linear in the heads."""
    s, t = bn_affine(bn)
    with torch.no_grad():
        layer.up.copy_(wide(layer.up) * s[None, :, None])
        bias = t[None].expand(layer.heads, -1) if layer.bias is None else wide(layer.bias) * s + t
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.to(layer.up.dtype).contiguous(), requires_grad=False)
        else:
            layer.bias.copy_(bias)


def fold_bn_into_dense(module: nn.Module, bn: nn.Module) -> nn.Module:
    """The standard fold: ``W ← s ⊙ W`` (per output channel), ``b ← s ⊙ b + t``; a new module."""
    s, t = bn_affine(bn)
    new = copy.deepcopy(module)
    shape = (-1,) + (1,) * (module.weight.dim() - 1)
    bias = t if module.bias is None else wide(module.bias) * s + t
    new.weight = nn.Parameter((wide(module.weight) * s.view(shape)).to(module.weight.dtype), requires_grad=False)
    new.bias = nn.Parameter(bias.to(module.weight.dtype), requires_grad=False)
    return new
