"""Inference form of a model: the same outputs, computed as fast as this library can on one device.

An inherited layer is written for training: a shared down-projection, H up-projection heads, a
softmax gate and head biases, all parameters. At inference much of that structure is dead weight,
and the fastest way to compute the layer depends on the shape and the device, so
:func:`optimize_for_inference` measures instead of guessing. On a deep copy of the model (the model
itself is never changed) it

1. **folds the heads** where no gate has to run — one head, ``gate="none"`` (fixed weights 1/H),
   heads that are all equal (``head_init="copies"`` before any training: whatever the gate says,
   ``Σ_h g_h (B z + b) = B z + b``; exact), or a gate the user freezes at its mean over the example
   input (``freeze_gate``; an approximation, whose deviation on the example is reported) — so the
   layer becomes a plain two-layer pair: a k×k ``nn.Conv2d`` C_in → r and a 1×1 ``nn.Conv2d``
   r → C_out (:class:`FactorisedConv2d`), or two linear layers (an ``nn.Sequential``). A symmetric
   layer folds to a pair of inner width H·r (r when its heads are equal);
2. **multiplies a folded layer back into one dense** ``nn.Conv2d`` / ``nn.Linear`` (the exact product
   of its factors) when the pair is not faster than the dense layer on this device, timed on the
   layer's real input shape (captured from ``example_input`` with forward hooks), or when the pair
   keeps more than ``1 − min_saving`` of the dense parameters (default: more than 80 %);
3. **folds eval-mode BatchNorm** into the layer before it: the standard fold into a dense conv /
   linear and into the up-projection of a pair; for a gated layer BN's per-channel scale and shift go
   into every head's up-projection and bias — exact, because the gate weights sum to one and the
   output is linear in the heads. The BatchNorm module becomes ``nn.Identity``. Pairs come from the
   model's ``torch.fx`` graph (a BatchNorm whose only input is a layer's output that nothing else
   reads); for a model fx cannot trace, from tensor identity seen by forward hooks, each fold kept
   only if, applied alone, it leaves the output on the example unchanged;
4. for a **gated conv** keeps the fastest of three exact kernels: the layer as it is (per-sample
   mixing of the head weights, then one batched product), the same mixing with the head weights
   stored in the layout the product reads (:class:`GatedConv2d`, ``mixing="per-sample"``), and the
   shared-weight formulation (``mixing="shared"``: z scaled by each head's gate, one GEMM over the
   H·r concatenated heads, no per-sample weights);
5. for a **gated linear layer** (one gate per token) keeps the fastest of the layer as it is and
   :class:`GatedLinear` in four forms: one matmul gives the down-projection *and* the gate logits
   (the gate reads z = D x, so ``G·D`` is folded into the down matrix), the heads stored once in the
   layout their product reads (no copy per call), mixed either by the shared-weight trick (z scaled
   by each head's gate, one GEMM over H·r inputs) or per token (every head's output from one GEMM,
   then a weighted sum), each with its weights stored ``out×in`` (``F.linear``) or ``in×out``
   (``x @ W``; often faster for one decoding step on CPU) — :data:`LAYOUTS`. A dense linear layer
   (the teacher's, or one kept dense) is kept as ``nn.Linear`` or stored ``in×out``
   (:class:`InOutLinear`), whichever is faster; a weight tied to another module is left alone;
6. **fuses projections that read the same input** (q/k/v of an attention layer, gate/up of a gated
   MLP; found as linear layers whose every call on the example read the same tensor object): their
   first products — a dense layer's whole weight, a pair's down-projection, a
   :class:`GatedLinear`'s ``[D; G·D]`` — become one matmul (:class:`SharedInputProduct`), each layer
   taking its slice (:class:`SharedInputProjection`); kept only where measured faster
   (``fuse_shared_inputs``). The result works with ``model.generate`` and a KV cache;
7. tries the whole model in ``channels_last`` memory format (convolutional models with a 4-D input;
   oneDNN's convolutions are often several times faster in it) and keeps the faster layout;
8. optionally wraps the result in ``torch.compile``.

Every timing runs the candidates side by side in interleaved rounds (:func:`time_candidates`),
so background load hits every candidate alike, and keeps the fastest round; a layer's times in
isolation need not add up in the whole model (its weights are evicted from the caches between
calls), so when the per-layer choices include fused products or ``in×out`` weights the whole model
is timed against the same model without them and the faster kept (``check_speed``). On a CPU with one
intra-op thread it reads the thread's CPU time (:func:`default_clock`), which the periods another
process holds the core do not inflate. Layers of the same shape share one measurement. The
decisions hold for the device, thread count and input shape of the call: optimise with the batch
size you serve (for generation: a one-token example, the shape of a decoding step).

The result is an inference model: it is in eval mode, its parameters do not require gradients, and
with BatchNorm folded away ``train()`` on it would not train the original network. It carries its
:class:`OptimizationReport` as ``model.inhernet_optimized`` (print it for one row per layer: what it
became, which BatchNorm was folded into it, the measured times).

    >>> fast = inhernet.optimize_for_inference(model, torch.randn(64, 3, 32, 32))
    >>> print(fast.inhernet_optimized)
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import statistics
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError
from .plan import PLAN_ATTR
from .layers import INHER_LAYERS, InherConv2d, InherLinear, profile_scope
from .utils import call_model

__all__ = [
    "DEFAULT_TOLERANCE",
    "REPORT_ATTR",
    "DEFAULT_MIN_SAVING",
    "FactorisedConv2d",
    "GatedConv2d",
    "GatedLinear",
    "HeadMixer",
    "InOutLinear",
    "LAYOUTS",
    "LayerDecision",
    "LONE_LAYER",
    "OptimizationReport",
    "PER_LAYER",
    "PLAIN",
    "SharedInputGroup",
    "SharedInputProduct",
    "SharedInputProjection",
    "optimize_for_inference",
    "as_trained",
    "CLOCKS",
    "default_clock",
    "time_candidates",
]

#: the check of the result: max |optimised − original| on the example ≤ this × max |original|
DEFAULT_TOLERANCE = 1e-4
#: the attribute of the optimised model that holds its :class:`OptimizationReport`
REPORT_ATTR = "inhernet_optimized"
#: an inherited layer whose factorised inference form keeps more than ``1 − this`` of the dense
#: layer's parameters becomes dense (when its heads fold); see ``min_saving``
DEFAULT_MIN_SAVING = 0.2
_MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
#: the whole-model variants ``check_speed`` compares
PER_LAYER, PLAIN = "per-layer choices", "out×in weights, no fusion"
#: the report's name for the layer when ``optimize_for_inference`` is given one inherited layer alone
LONE_LAYER = "(the layer)"
#: a gated linear layer stays as it is only when faster than its best :class:`GatedLinear` form by
#: more than this factor (the inference form can share its first product with its neighbours)
_KEPT_MARGIN = 1.03
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


# ---------------------------------------------------------------------------------------------
# the inference modules


def _is_nhwc(t: Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels-last (and not also plain contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class FactorisedConv2d(nn.Module):
    """The plain two-layer pair a folded inherited conv becomes: ``down`` (a k×k ``nn.Conv2d``
    C_in → r with the layer's stride, padding and dilation) then ``up`` (a 1×1 ``nn.Conv2d``
    r → C_out, with the bias, BatchNorm folded in).

    ``kernel="conv"`` runs ``up`` as the 1×1 conv it is. ``kernel="matmul"`` (the default) runs the
    same weights as one matrix product over the positions — on CPU in eager PyTorch a 1×1 conv with
    few input channels can be ten times slower than the product (measured: batch 64, 8 → 16
    channels, 32×32). For a channels-last input the product reads the NHWC tensor as it is
    (``F.linear`` over the channel dim, no copy). ONNX export always writes the 1×1 Conv.
    """

    def __init__(self, down: nn.Conv2d, up: nn.Conv2d, kernel: str = "matmul") -> None:
        super().__init__()
        if kernel not in ("matmul", "conv"):
            raise ConfigError(f"kernel={kernel!r}: use 'matmul' or 'conv'.")
        self.down, self.up, self.kernel = down, up, kernel

    def forward(self, x: Tensor) -> Tensor:
        with profile_scope("inhernet.down"):
            z = self.down(x)
        with profile_scope("inhernet.heads"):
            if self.kernel == "conv" or torch.onnx.is_in_onnx_export():
                return self.up(z)
            w = self.up.weight.view(self.up.out_channels, self.up.in_channels)
            if _is_nhwc(z):
                return F.linear(z.permute(0, 2, 3, 1), w, self.up.bias).permute(0, 3, 1, 2)
            n, _, h, wd = z.shape
            flat = z.flatten(2)  # (N, r, h·w)
            if self.up.bias is None:
                y = torch.matmul(w, flat)
            else:
                y = torch.baddbmm(self.up.bias[None, :, None], w.expand(n, -1, -1), flat)
            return y.view(n, -1, h, wd)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


class GatedConv2d(nn.Module):
    """A gated inherited conv in inference form: the gate still runs (one softmax per image), the
    head weights are stored in the layout the product reads.

    ``z = down(x)`` (the k×k conv C_in → R), ``g = softmax(gate(mean_hw z))`` (N × H), and
    ``y = Σ_h g_h (B_h z_h + b_h)`` where ``z_h`` is z (shared down, ``structure="asymmetric"``,
    R = r) or its h-th block of r channels (``"symmetric"``, R = H·r). Two formulations, the same
    result:

    * ``mixing="per-sample"`` (shared down only): mix the heads per image,
      ``W_n = Σ_h g_nh B_h`` (N × C_out × r), then one batched product with z — the cost of one head
      plus the mixing;
    * ``mixing="shared"``: scale z by each head's gate and apply the H heads concatenated,
      ``[B_1 … B_H] · [g_1 z_1; …; g_H z_H]``: one GEMM with H·r inputs and weights shared by the
      whole batch (no per-sample weights), which wins where positions are few.

    Channels-last inputs are read as NHWC (``F.linear`` / ``bmm`` over the channel dim, no copy).
    """

    def __init__(self, down: nn.Conv2d, gate: nn.Linear, up: Tensor, bias: Tensor | None, *,
                 structure: str = "asymmetric", mixing: str = "per-sample") -> None:
        super().__init__()
        if mixing not in ("per-sample", "shared"):
            raise ConfigError(f"mixing={mixing!r}: use 'per-sample' or 'shared'.")
        if mixing == "per-sample" and structure != "asymmetric":
            raise ConfigError("mixing='per-sample' needs a shared down-projection (structure='asymmetric').")
        heads, d_out, rank = up.shape
        self.heads, self.rank, self.out_channels = heads, rank, d_out
        self.structure, self.mixing = structure, mixing
        self.down, self.gate = down, gate
        if mixing == "per-sample":  # (H, C_out·r): g @ it is the mixed weight, no copy per call
            weight = up.reshape(heads, d_out * rank)
        else:  # (C_out, H·r): column h·r + j is up[h, :, j]
            weight = up.permute(1, 0, 2).reshape(d_out, heads * rank)
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.contiguous(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        with profile_scope("inhernet.down"):
            z = self.down(x)
        n, _, h, w = z.shape
        with profile_scope("inhernet.gate"):
            g = torch.softmax(self.gate(z.mean(dim=(2, 3))), dim=-1)  # (N, H)
        with profile_scope("inhernet.bias"):
            bias = None if self.bias is None else g @ self.bias  # (N, C_out)
        nhwc = _is_nhwc(z) and not torch.onnx.is_in_onnx_export()
        if self.mixing == "per-sample":
            with profile_scope("inhernet.mix"):
                mixed = (g @ self.weight).view(n, self.out_channels, self.rank)
            with profile_scope("inhernet.heads"):
                if nhwc:
                    flat = z.permute(0, 2, 3, 1).reshape(n, h * w, self.rank)
                    y = (torch.bmm(flat, mixed.transpose(1, 2)) if bias is None
                         else torch.baddbmm(bias[:, None, :], flat, mixed.transpose(1, 2)))
                    return y.view(n, h, w, -1).permute(0, 3, 1, 2)
                flat = z.flatten(2)
                y = torch.bmm(mixed, flat) if bias is None else torch.baddbmm(bias[:, :, None], mixed, flat)
                return y.view(n, -1, h, w)
        if nhwc:
            with profile_scope("inhernet.mix"):
                zt = z.permute(0, 2, 3, 1)  # (N, h, w, R)
                if self.structure == "asymmetric":
                    scaled = (zt.unsqueeze(-2) * g[:, None, None, :, None]).flatten(-2)
                else:
                    scaled = zt * g.repeat_interleave(self.rank, dim=1)[:, None, None, :]
            with profile_scope("inhernet.heads"):
                y = F.linear(scaled, self.weight)
                if bias is not None:
                    y = y + bias[:, None, None, :]
                return y.permute(0, 3, 1, 2)
        with profile_scope("inhernet.mix"):
            if self.structure == "asymmetric":
                scaled = (z.unsqueeze(1) * g[:, :, None, None, None]).flatten(1, 2)
            else:
                scaled = z * g.repeat_interleave(self.rank, dim=1)[:, :, None, None]
        with profile_scope("inhernet.heads"):
            flat = scaled.flatten(2)
            y = torch.matmul(self.weight, flat) if bias is None else torch.baddbmm(
                bias[:, :, None], self.weight.expand(n, -1, -1), flat)
            return y.view(n, -1, h, w)

    def extra_repr(self) -> str:
        return (f"out_channels={self.out_channels}, rank={self.rank}, heads={self.heads}, "
                f"structure={self.structure}, mixing={self.mixing}")


#: how an inference kernel stores a weight: ``"out×in"`` as ``nn.Linear`` does (the product is
#: ``F.linear``, which reads it transposed) or ``"in×out"`` (the product is ``x @ W``, reading it as
#: stored; on CPU often faster for a few rows — one decoding step — measured per shape)
LAYOUTS = ("out×in", "in×out")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r}: use one of {LAYOUTS}.")


def _stored(weight: Tensor, layout: str) -> Tensor:
    """A weight given as ``(out, in)``, in the layout it is stored in, contiguous and detached."""
    return (weight if layout == "out×in" else weight.t()).detach().contiguous()


def _product(x: Tensor, weight: Tensor, bias: Tensor | None, layout: str) -> Tensor:
    """``x W^T + b`` for a weight stored in ``layout`` (:data:`LAYOUTS`), any leading dims."""
    if layout == "out×in":
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.matmul(x, weight)
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return flat.view(*x.shape[:-1], weight.shape[1])


class InOutLinear(nn.Module):
    """A dense linear layer whose weight is stored ``(in, out)`` (``weight_t``): ``y = x @ W^T + b``
    read as stored. The same result as ``nn.Linear`` up to float rounding; ``weight`` gives the
    ``(out, in)`` view for code that reads it."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_t = nn.Parameter(_stored(weight, "in×out"), requires_grad=False)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().contiguous(),
                                                                               requires_grad=False))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "InOutLinear":
        return cls(linear.weight, linear.bias)

    @property
    def weight(self) -> Tensor:
        return self.weight_t.t()

    def forward(self, x: Tensor) -> Tensor:
        return _product(x, self.weight_t, self.bias, "in×out")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class HeadMixer(nn.Module):
    """The gated half of a :class:`GatedLinear`: from the first product ``p = [z; logits]``
    (``(…, R + H)``) to ``y = Σ_h g_h (B_h z_h + b_h)`` with ``g = softmax(logits)``.

    ``z_h`` is z (shared down, R = r) or its h-th block of r features (``structure="symmetric"``,
    R = H·r). The heads are stored once, in the layout the product reads (no copy per call; ``layout``:
    :data:`LAYOUTS`):

    * ``mixing="shared"``: ``W = [B_1 … B_H]`` ``(d_out, H·r)``; z scaled by each head's gate,
      ``[g_1 z_1; …; g_H z_H]``, goes through one GEMM with H·r inputs (+ ``g @ b`` for the biases);
    * ``mixing="per-token"`` (shared down only): ``W = [B_1; …; B_H]`` ``(H·d_out, r)``: one GEMM
      gives every head's output ``B_h z + b_h`` (biases included), then each token's outputs are
      mixed by its gate (a batched ``(1 × H) · (H × d_out)`` product per token).
    """

    def __init__(self, up: Tensor, bias: Tensor | None, *, structure: str = "asymmetric",
                 mixing: str = "shared", layout: str = "out×in") -> None:
        super().__init__()
        if mixing not in ("shared", "per-token"):
            raise ConfigError(f"mixing={mixing!r}: use 'shared' or 'per-token'.")
        if mixing == "per-token" and structure != "asymmetric":
            raise ConfigError("mixing='per-token' needs a shared down-projection (structure='asymmetric').")
        _check_layout(layout)
        heads, d_out, rank = up.shape
        self.heads, self.rank, self.out_features = heads, rank, d_out
        self.structure, self.mixing, self.layout = structure, mixing, layout
        self.inner = heads * rank if structure == "symmetric" else rank
        self._per_token, self._in_out = mixing == "per-token", layout == "in×out"
        self._symmetric = structure == "symmetric"
        if mixing == "shared":  # column h·r + j is up[h, :, j]
            weight = up.permute(1, 0, 2).reshape(d_out, heads * rank)
            flat_bias = bias
        else:  # row h·d_out + o is up[h, o, :]
            weight = up.reshape(heads * d_out, rank)
            flat_bias = None if bias is None else bias.reshape(heads * d_out)
        self.weight = nn.Parameter(_stored(weight, layout), requires_grad=False)
        self.register_parameter("bias", None if flat_bias is None else nn.Parameter(flat_bias.detach().contiguous(),
                                                                                    requires_grad=False))

    def forward(self, p: Tensor) -> Tensor:
        return self.mix2d(p.reshape(-1, p.shape[-1])).view(*p.shape[:-1], self.out_features)

    def mix2d(self, p: Tensor) -> Tensor:
        """The mixing for a 2-D ``p`` (rows × (R + H)). Written lean (parameters read from
        ``_parameters``, no module call): in one decoding step a layer's arithmetic takes tens of
        microseconds and every Python-level step costs about one (measured on the benchmark machine)."""
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        inner = self.inner
        z = p[:, :inner]
        with profile_scope("inhernet.gate"):
            g = torch.softmax(p[:, inner:], -1)
        if self._per_token:
            with profile_scope("inhernet.heads"):
                if not self._in_out:
                    outputs = F.linear(z, weight, bias)  # (N, H·d_out)
                else:
                    outputs = torch.mm(z, weight) if bias is None else torch.addmm(bias, z, weight)
            with profile_scope("inhernet.mix"):
                return torch.bmm(g.unsqueeze(1), outputs.view(-1, self.heads, self.out_features)).squeeze(1)
        with profile_scope("inhernet.mix"):
            blocks = z.view(-1, self.heads, self.rank) if self._symmetric else z.unsqueeze(1)
            scaled = (g.unsqueeze(2) * blocks).flatten(1)
        with profile_scope("inhernet.heads"):
            y = torch.mm(scaled, weight) if self._in_out else F.linear(scaled, weight)
        if bias is None:
            return y
        with profile_scope("inhernet.bias"):
            return torch.addmm(y, g, bias)

    def extra_repr(self) -> str:
        return (f"out_features={self.out_features}, rank={self.rank}, heads={self.heads}, "
                f"structure={self.structure}, mixing={self.mixing}, layout={self.layout}")


class GatedLinear(nn.Module):
    """A gated inherited linear layer in inference form: one matmul gives the down-projection and
    the gate logits together, the heads are stored in the layout their product reads.

    The gate reads z = D x, so its logits ``G z + c = (G D) x + c`` are a linear map of x too:
    ``[D; G·D]`` (``(R + H, d_in)``, folded in float64, stored in ``layout``) with bias ``[0; c]``
    gives ``[z; logits]`` in one product. :class:`HeadMixer` (``mixer``) does the softmax and the
    heads. The same result as the inherited layer up to float rounding (the logits are summed in
    another order).
    """

    def __init__(self, down: Tensor, gate_weight: Tensor, gate_bias: Tensor, up: Tensor, bias: Tensor | None, *,
                 structure: str = "asymmetric", mixing: str = "shared", layout: str = "out×in") -> None:
        super().__init__()
        _check_layout(layout)
        dtype = down.dtype
        wide_down = _wide(down)
        first = torch.cat([wide_down, _wide(gate_weight) @ wide_down]).to(dtype)
        first_bias = torch.cat([torch.zeros(down.shape[0], dtype=gate_bias.dtype, device=gate_bias.device),
                                gate_bias.detach()])
        self.in_features, self.layout, self._in_out = down.shape[1], layout, layout == "in×out"
        self.first_weight = nn.Parameter(_stored(first, layout), requires_grad=False)
        self.first_bias = nn.Parameter(first_bias.to(dtype), requires_grad=False)
        self.mixer = HeadMixer(up, bias, structure=structure, mixing=mixing, layout=layout)
        self.out_features = self.mixer.out_features

    @classmethod
    def from_layer(cls, layer: InherLinear, mixing: str = "shared", layout: str = "out×in") -> "GatedLinear":
        """The inference form of a gated :class:`~inhernet.layers.InherLinear` (its gate must exist)."""
        if layer.gate is None:
            raise ConfigError("GatedLinear.from_layer: the layer has no gate (its heads fold instead).")
        return cls(layer.down.detach(), layer.gate.weight.detach(), layer.gate.bias.detach(), layer.up.detach(),
                   None if layer.bias is None else layer.bias.detach(), structure=layer.structure, mixing=mixing,
                   layout=layout)

    def first_product(self) -> tuple[Tensor, Tensor]:
        """``([D; G·D]`` as ``(out, in)``, its bias``)``: what :class:`SharedInputProduct` fuses."""
        return (self.first_weight if self.layout == "out×in" else self.first_weight.t()), self.first_bias

    def forward(self, x: Tensor) -> Tensor:
        params = self._parameters  # read directly: Module.__getattr__ costs a microsecond a call
        flat = x.reshape(-1, self.in_features)
        with profile_scope("inhernet.down"):
            if self._in_out:
                p = torch.addmm(params["first_bias"], flat, params["first_weight"])
            else:
                p = F.linear(flat, params["first_weight"], params["first_bias"])
        y = self._modules["mixer"].mix2d(p)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, first product: {self.mixer.inner} down + {self.mixer.heads} gate rows"


def _version(x: Tensor) -> int | None:
    """The in-place version counter of ``x`` (None for an inference-mode tensor, which has none)."""
    return None if x.is_inference() else x._version


class SharedInputProduct(nn.Module):
    """One matmul for several projections that read the same input tensor (q/k/v of an attention
    layer, gate/up of a gated MLP): their first products (a dense layer's whole weight, a folded
    pair's down-projection, a :class:`GatedLinear`'s ``[D; G·D]``) concatenated, stored in
    ``layout`` (:data:`LAYOUTS`).

    Each member (:class:`SharedInputProjection`) asks for its slice with :meth:`product`. The first
    member to ask for an input computes the whole product and keeps it; the others read their slice
    of it. The kept product is keyed by the input tensor *object* and its in-place version counter,
    and dropped once every member has read it — a member asking twice for the same input, or for
    another input, recomputes it — so the result is always the product of the tensor given, in any
    calling order, with or without a KV cache. Under ``torch.onnx`` export, ``torch.jit`` tracing
    and ``torch.compile`` each member computes its own slice instead (the same values).
    Not meant for several threads calling one model at once (they would recompute, not mix up).
    """

    def __init__(self, weights: list[Tensor], biases: list[Tensor | None], layout: str = "out×in") -> None:
        super().__init__()
        if len(weights) < 2 or len(weights) != len(biases):
            raise ConfigError("SharedInputProduct needs at least two (weight, bias) pairs.")
        _check_layout(layout)
        self.layout = layout
        weight = torch.cat([w.detach() for w in weights])  # (Σ out, in)
        self.weight = nn.Parameter(_stored(weight, layout), requires_grad=False)
        if all(b is None for b in biases):
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.cat([b.detach() if b is not None else weight.new_zeros(w.shape[0])
                                                for w, b in zip(weights, biases)]), requires_grad=False)
        stops = torch.tensor([w.shape[0] for w in weights]).cumsum(0).tolist()
        self.bounds = list(zip([0, *stops[:-1]], stops))
        self.in_features = weight.shape[1]
        self._kept: tuple | None = None  # (input, version, product, members served)

    def rows(self, index: int) -> tuple[Tensor, Tensor | None]:
        """Member ``index``'s weight (as stored: rows for ``out×in``, columns for ``in×out``) and bias."""
        start, stop = self.bounds[index]
        weight = self.weight[start:stop] if self.layout == "out×in" else self.weight[:, start:stop]
        return weight, None if self.bias is None else self.bias[start:stop]

    def product(self, x: Tensor, index: int) -> Tensor:
        """Member ``index``'s slice of the concatenated product of ``x``."""
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return _product(x, *self.rows(index), self.layout)
        kept, version = self._kept, _version(x)
        if kept is None or kept[0] is not x or kept[1] != version or index in kept[3]:
            params = self._parameters
            with profile_scope("inhernet.shared_input"):
                kept = (x, version, _product(x, params["weight"], params["bias"], self.layout), set())
            self._kept = kept
        kept[3].add(index)
        if len(kept[3]) == len(self.bounds):
            self._kept = None
        start, stop = self.bounds[index]
        return kept[2][..., start:stop]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, members={[stop - start for start, stop in self.bounds]}, "
                f"layout={self.layout}")


class SharedInputProjection(nn.Module):
    """One member of a :class:`SharedInputProduct`: its slice of the shared product, then its
    ``tail`` (a folded pair's up-projection, a :class:`GatedLinear`'s :class:`HeadMixer`; none for a
    dense layer, whose slice is its output, made contiguous as ``nn.Linear``'s would be).
    ``weight`` / ``bias`` (a member without a tail): its ``(out, in)`` rows of the shared weight."""

    def __init__(self, shared: SharedInputProduct, index: int, tail: nn.Module | None) -> None:
        super().__init__()
        self.shared, self.index = shared, index
        self.register_module("tail", tail)
        start, stop = shared.bounds[index]
        self.in_features = shared.in_features
        self.out_features = stop - start if tail is None else tail.out_features

    def _dense_part(self) -> tuple[Tensor, Tensor | None]:
        if self.tail is not None:
            raise AttributeError("a fused projection with a tail has no single dense weight")
        weight, bias = self.shared.rows(self.index)
        return (weight if self.shared.layout == "out×in" else weight.t()), bias

    @property
    def weight(self) -> Tensor:
        return self._dense_part()[0]

    @property
    def bias(self) -> Tensor | None:
        return self._dense_part()[1]

    def forward(self, x: Tensor) -> Tensor:
        modules = self._modules
        p = modules["shared"].product(x, self.index)
        tail = modules["tail"]
        if tail is None:
            return p.contiguous()
        with profile_scope("inhernet.heads"):  # a pair's up-projection (a mixer names its own steps)
            return tail.forward(p)  # a part of this layer: no module call of its own (a microsecond)

    def extra_repr(self) -> str:
        return f"index={self.index}, in_features={self.in_features}, out_features={self.out_features}"


# ---------------------------------------------------------------------------------------------
# timing


def _synchronizer(x: Any) -> Callable[[], None]:
    device = next((t.device for t in _tensors(x)), torch.device("cpu"))
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


#: the clocks :func:`time_candidates` can read
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def default_clock(device: torch.device | str = "cpu") -> str:
    """``"cpu"`` (the calling thread's CPU time) on a CPU device with one intra-op thread — immune
    to the periods other processes hold the core on a shared machine, and with one thread all the
    work is in the calling thread — else ``"wall"``."""
    return "cpu" if torch.device(device).type == "cpu" and torch.get_num_threads() == 1 else "wall"


def time_candidates(candidates: Mapping[str, Callable[[Any], Any]], x: Any, *, rounds: int = 5,
                    min_time_s: float = 2e-3, statistic: str = "median", clock: str = "wall") -> dict[str, float]:
    """Milliseconds per call of each candidate on input ``x``, measured side by side.

    Each candidate is warmed up (first-call allocations, oneDNN primitive creation), then timed in
    ``rounds`` interleaved rounds (the order reversed every other round), each round a loop long
    enough to take about ``min_time_s``; the result per candidate is the median over rounds
    (``statistic="min"``: the fastest round, the estimate least disturbed by other work). Slow or
    fast phases of background load therefore hit every candidate alike. ``clock``: ``"wall"``
    (``time.perf_counter``) or ``"cpu"`` (``time.thread_time``: only this thread's CPU time; right
    for CPU work on one intra-op thread, see :func:`default_clock`). Runs under ``torch.no_grad``;
    synchronises CUDA.
    """
    if statistic not in ("median", "min"):
        raise ConfigError(f"statistic={statistic!r}: use 'median' or 'min'.")
    if clock not in CLOCKS:
        raise ConfigError(f"clock={clock!r}: use one of {sorted(CLOCKS)}.")
    now = CLOCKS[clock]
    sync = _synchronizer(x)
    names = list(candidates)
    iters: dict[str, int] = {}
    samples: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            candidates[name](x)
            sync()
            t0 = now()
            candidates[name](x)
            sync()
            iters[name] = max(1, min(200, math.ceil(min_time_s / max(now() - t0, 1e-7))))
        for i in range(rounds):
            for name in (names if i % 2 == 0 else names[::-1]):
                fn, n = candidates[name], iters[name]
                t0 = now()
                for _ in range(n):
                    fn(x)
                sync()
                samples[name].append((now() - t0) / n * 1e3)
    pick = statistics.median if statistic == "median" else min
    return {name: pick(samples[name]) for name in names}


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class LayerDecision:
    """What one ``Linear`` / ``Conv2d`` / inherited layer became.

    ``became``: ``"dense"`` (one ``nn.Conv2d`` / ``nn.Linear``; for an inherited layer the product
    of its factors), ``"folded pair"``, ``"gated kept"`` (the inherited layer itself),
    ``"gated per-sample"`` / ``"gated shared-weight"`` (:class:`GatedConv2d`, or
    :class:`GatedLinear` for a linear layer), ``"gated per-token"`` (:class:`GatedLinear`), or
    ``"unchanged"`` (a dense layer with no BatchNorm after it). ``batchnorm``: the BatchNorm folded
    into it. ``times_ms``: the candidates timed on ``input_shape`` (the chosen one is ``chosen``; a
    gated layer's ``"dense (reference)"`` is the dense layer of the teacher's shape, timed for
    comparison only: it is not what the layer computes). ``gate_deviation``: for a frozen gate, the
    largest |g − ḡ| of its gate weights over the example input. ``param_fraction``: for an inherited
    layer, the parameters of its factorised inference form (the pair its heads fold to, or the
    gated layer with all heads) over the dense layer's. ``shared_input``: the names of the layers
    whose first products it shares one matmul with (see :class:`SharedInputGroup`), else None.
    """

    name: str
    kind: str
    became: str
    batchnorm: str | None = None
    input_shape: tuple[int, ...] | None = None
    times_ms: dict[str, float] = field(default_factory=dict)
    chosen: str | None = None
    gate_deviation: float | None = None
    note: str = ""
    param_fraction: float | None = None
    shared_input: list[str] | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class SharedInputGroup:
    """Layers that read the same input tensor on the example (q/k/v of an attention layer, gate/up
    of a gated MLP), timed computing their first products separately and as one matmul
    (:class:`SharedInputProduct`); ``fused`` says whether the one matmul was kept (only when faster).
    ``left_out``: members of the group whose form has no first product to share (a kept inherited
    layer)."""

    names: list[str]
    input_shape: tuple[int, ...] | None
    times_ms: dict[str, float]
    fused: bool
    left_out: list[str] = field(default_factory=list)
    chosen: str | None = None


@dataclass
class OptimizationReport:
    """What :func:`optimize_for_inference` did, layer by layer; ``print`` it for a table.

    ``max_abs_diff``: max |optimised − original| on the example input (``reference_scale`` = max
    |original|); exact transforms stay within ``tolerance`` × ``reference_scale``, a frozen gate
    (``approximate``) may not. ``memory_format`` and ``model_times_ms``: the layout kept and the
    whole-model times of the layouts tried. ``shared_inputs``: the groups of layers reading one
    input and whether each was fused. ``variant_times_ms``: the whole model with the per-layer
    choices against ``out×in`` weights without fusion (``check_speed``), when timed.
    """

    layers: list[LayerDecision]
    example_shape: tuple[int, ...] | None
    device: str
    threads: int
    memory_format: str
    model_times_ms: dict[str, float]
    max_abs_diff: float
    reference_scale: float
    tolerance: float
    frozen_gates: list[str]
    removed_batchnorms: list[str]
    batchnorm_pairing: str
    compiled: bool = False
    min_speedup: float = 1.0
    min_saving: float | None = DEFAULT_MIN_SAVING
    shared_inputs: list[SharedInputGroup] = field(default_factory=list)
    variant_times_ms: dict[str, float] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """Which whole-model variant was kept: the per-layer choices, or (when the whole model was
        faster so) ``out×in`` weights without fusion; see ``check_speed``."""
        if not self.variant_times_ms:
            return PER_LAYER
        return min(self.variant_times_ms, key=self.variant_times_ms.get)

    @property
    def approximate(self) -> bool:
        """True when a gate was frozen: the result then only approximates the original."""
        return bool(self.frozen_gates)

    def counts(self) -> Counter:
        """How many inherited layers became what (``"dense"``, ``"folded pair"``, ...)."""
        return Counter(d.became for d in self.layers if d.kind in ("InherConv2d", "InherLinear"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["approximate"] = self.approximate
        return out

    def summary(self) -> str:
        inherited = sum(self.counts().values())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "none"
        times = " vs ".join(f"{k} {v:.3f} ms" for k, v in self.model_times_ms.items())
        lines = [
            f"{inherited} inherited layers: {kinds}; {len(self.removed_batchnorms)} BatchNorm folded "
            f"(pairs found by {self.batchnorm_pairing})",
            f"timed on {self.device}, {self.threads} thread(s), example input {self.example_shape}; memory format "
            f"{self.memory_format}" + (f" ({times})" if len(self.model_times_ms) > 1 else "")
            + ("; torch.compile" if self.compiled else ""),
            f"max |optimised − original| on the example: {self.max_abs_diff:.3g} (outputs up to "
            f"{self.reference_scale:.3g}; exact transforms stay below {self.tolerance:g} × that)",
        ]
        if self.variant_times_ms:
            times = " vs ".join(f"{k} {v:.3f} ms" for k, v in self.variant_times_ms.items())
            lines.append(f"whole model timed: {times}; kept: {self.variant}")
        if self.shared_inputs:
            fused = [g for g in self.shared_inputs if g.fused]
            lines.append(f"{len(self.shared_inputs)} group(s) of layers sharing an input; {len(fused)} fused into one "
                         f"matmul each (kept only where faster)")
        if self.frozen_gates:
            lines.append(f"APPROXIMATE: {len(self.frozen_gates)} gate(s) frozen at their mean over the example "
                         f"input; the deviation above is what freezing costs on it")
        return "\n".join(lines)

    def __str__(self) -> str:
        header = ("layer", "type", "became", "BatchNorm folded", "input", "times (ms; * = kept)", "note")
        rows = []
        for d in self.layers:
            times = " · ".join(f"{k} {v:.3f}{'*' if k == d.chosen else ''}" for k, v in d.times_ms.items())
            note = d.note
            if d.gate_deviation is not None:
                note = (note + "; " if note else "") + f"gate frozen, max |g − ḡ| {d.gate_deviation:.3g}"
            shape = "×".join(map(str, d.input_shape)) if d.input_shape else ""
            rows.append((d.name, d.kind, d.became, d.batchnorm or "", shape, times, note))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r).rstrip() for r in rows]
        return "\n".join(lines) + "\n\n" + self.summary()


# ---------------------------------------------------------------------------------------------
# helpers


def _tensors(obj: Any) -> list[Tensor]:
    """The tensors of a (nested) output: a tensor, tuple/list, dict or dict-like (ModelOutput)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping) or hasattr(obj, "values") and callable(obj.values):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _forward_with_hooks(model: nn.Module, example: Any, handles: list) -> None:
    """One no-grad forward on ``example`` to let the registered hooks record; the hooks are removed
    afterwards, also when the forward raises."""
    try:
        with torch.no_grad():
            call_model(model, example)
    finally:
        for h in handles:
            h.remove()


def _max_diff(out: Any, ref: Any) -> tuple[float, float]:
    """(max |out − ref|, max |ref|) over the tensors of two outputs of the same structure."""
    a, b = _tensors(out), _tensors(ref)
    if len(a) != len(b):
        raise RuntimeError(f"the optimised model returns {len(a)} tensors, the original {len(b)}")
    diff = max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if y.numel()), default=0.0)
    scale = max((float(y.float().abs().max()) for y in b if y.numel()), default=0.0)
    return diff, scale


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered in ``root`` (a module may be registered twice)."""
    for parent in root.modules():
        for child_name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, child_name, new)


def _channels_last_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of a channels-last model: its 4-D tensor input laid out channels-last."""
    if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _wide(t: Tensor) -> Tensor:
    """Folds are computed in float64 (MPS has none: float32 there)."""
    return t.detach().float() if t.device.type == "mps" else t.detach().double()


@dataclass
class _Calls:
    """What the forward hooks saw of one module on the example input."""

    count: int = 0
    input_shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    out_dim: int | None = None
    gates: list[Tensor] = field(default_factory=list)  # frozen layers only: (positions, H)
    inputs: list[int] = field(default_factory=list)  # linear layers: which input tensor each call read


def _capture(model: nn.Module, example: Any, frozen: set[str]) -> dict[str, _Calls]:
    """Run ``model`` once on the example with forward hooks on every Conv2d / Linear / inherited /
    BatchNorm module: call counts, the first input's shape and dtype, the output's rank, for the
    linear layers a serial number of each call's input tensor (the same number: the same tensor
    object; layers with equal lists read one input), and for the layers whose gate is to be frozen
    the gate weights they computed."""
    calls: dict[str, _Calls] = {}
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
            rec = calls.setdefault(name, _Calls())
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
        if isinstance(module, (*INHER_LAYERS, nn.Conv2d, nn.Linear, *_BATCHNORMS)):
            handles.append(module.register_forward_hook(hook(name)))
    _forward_with_hooks(model, example, handles)
    return calls


def _foldable_batchnorm(bn: nn.Module) -> bool:
    return isinstance(bn, _BATCHNORMS) and bn.track_running_stats and bn.running_mean is not None


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.up.shape[1]


def _pair_ok(producer: nn.Module, bn: nn.Module, rec: _Calls | None, bn_rec: _Calls | None) -> bool:
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


def _pairs_by_fx(model: nn.Module, calls: dict[str, _Calls]) -> dict[str, str] | None:
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


def _pairs_by_hooks(model: nn.Module, example: Any, calls: dict[str, _Calls]) -> dict[str, str]:
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
    _forward_with_hooks(model, example, handles)
    modules = dict(model.named_modules())
    return {p: b for p, b in found.items()
            if p in modules and b in modules and _pair_ok(modules[p], modules[b], calls.get(p), calls.get(b))}


def _verified_pairs(model: nn.Module, pairs: dict[str, str], example: Any, reference: Any, tolerance: float,
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
            _fold_bn_into_heads(folded, bn)
        else:
            folded = _fold_bn_into_dense(producer, bn)
        identity = nn.Identity()
        _replace(model, producer, folded)
        _replace(model, bn, identity)
        try:
            with torch.no_grad():
                diff, scale = _max_diff(call_model(model, example), reference)
        finally:
            _replace(model, folded, producer)
            _replace(model, identity, bn)
        if diff <= tolerance * max(scale, 1e-12):
            kept[prod_name] = bn_name
        else:
            dropped.append(bn_name)
    return kept, dropped


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = s ⊙ x + t`` (float64)."""
    s = 1.0 / torch.sqrt(_wide(bn.running_var) + bn.eps)
    if bn.weight is not None:
        s = s * _wide(bn.weight)
    t = -_wide(bn.running_mean) * s
    if bn.bias is not None:
        t = t + _wide(bn.bias)
    return s, t


def _select_frozen(model: nn.Module, freeze_gate: bool | str | Iterable[str]) -> set[str]:
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


# ---------------------------------------------------------------------------------------------
# building the inference model


@dataclass
class _Settings:
    memory_format: str
    min_speedup: float
    rounds: int
    min_saving: float | None = DEFAULT_MIN_SAVING
    fuse_shared_inputs: bool = True
    layouts: tuple[str, ...] = LAYOUTS
    cache: dict = field(default_factory=dict)


def _timing_input(rec: _Calls, device: torch.device, memory_format: str) -> Tensor:
    x = torch.randn(rec.input_shape, dtype=rec.dtype, device=device)
    if memory_format == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _prepare(module: nn.Module, memory_format: str) -> nn.Module:
    module.eval().requires_grad_(False)
    if memory_format == "channels_last":
        module.to(memory_format=torch.channels_last)
    return module


def _timed(key: tuple, candidates: dict[str, Callable], rec: _Calls | None, ref: Tensor, s: _Settings,
           ) -> tuple[dict[str, float], str]:
    """Times of the candidates on the layer's captured input shape, shared by layers of one key."""
    if rec is None or rec.input_shape is None:
        return {}, "not run on the example input: not timed"
    if key in s.cache:
        return s.cache[key], ""
    times = time_candidates(candidates, _timing_input(rec, ref.device, s.memory_format), rounds=s.rounds,
                            statistic="min", clock=default_clock(ref.device))
    s.cache[key] = times
    return times, ""


def _dense_conv(layer: InherConv2d, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                     padding=layer.padding, dilation=layer.dilation, bias=bias is not None,
                     device=layer.up.device, dtype=layer.up.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _identical_heads(layer: nn.Module) -> bool:
    """Whether every head of a gated layer equals the first (up-projection, bias and, for a
    symmetric layer, its block of the down-projection): then ``Σ_h g_h (B z + b) = B z + b`` for any
    gate weights summing to one — the gate does not matter (an untrained InherNet inherited with
    ``head_init="copies"``)."""
    if layer.heads == 1:
        return True
    if not all(torch.equal(layer.up[h], layer.up[0]) for h in range(1, layer.heads)):
        return False
    if layer.bias is not None and not all(torch.equal(layer.bias[h], layer.bias[0]) for h in range(1, layer.heads)):
        return False
    if layer.structure == "symmetric":
        blocks = layer.down.unflatten(0, (layer.heads, layer.rank))
        return all(torch.equal(blocks[h], blocks[0]) for h in range(1, layer.heads))
    return True


def _fixed_gate(layer: nn.Module, rec: _Calls | None, frozen: bool) -> tuple[Tensor | None, float | None, str]:
    """The fixed head weights of a layer whose heads fold (float64, shape H), for a frozen gate its
    largest deviation |g − ḡ| on the example, and why they are fixed: ``"no gate"``, ``"identical
    heads"`` (exact; the weights are then ``(1, 0, …)``: head 0 alone), ``"frozen"``; ``(None, None,
    "")`` when the gate must run."""
    device = layer.up.device
    if layer.gate is None:
        return torch.full((layer.heads,), 1.0 / layer.heads, dtype=torch.float64, device=device), None, "no gate"
    if _identical_heads(layer):
        first = torch.zeros(layer.heads, dtype=torch.float64, device=device)
        first[0] = 1.0
        return first, None, "identical heads"
    if not frozen:
        return None, None, ""
    if rec is None or not rec.gates:
        raise ConfigError("freeze_gate: a layer whose gate is to be frozen was not run on the example input")
    g = torch.cat(rec.gates)
    mean = g.mean(0)
    return (mean / mean.sum()).to(device), float((g - mean).abs().max()), "frozen"


def _folded_factors(layer: nn.Module, g: Tensor, bn: nn.Module | None) -> tuple[Tensor, Tensor | None]:
    """``(up, bias)`` of the one up-projection (d_out × R) the heads amount to under fixed head
    weights ``g``, with BatchNorm folded in (float64): ``Σ_h g_h B_h`` on a shared down, the heads
    ``g_h B_h`` side by side for a symmetric layer (whose down rows are already head by head)."""
    up = _wide(layer.up)
    if layer.structure == "symmetric":
        up_eff = (up * g[:, None, None]).permute(1, 0, 2).reshape(up.shape[1], -1)
    else:
        up_eff = torch.einsum("h,hor->or", g, up)
    bias = None if layer.bias is None else g @ _wide(layer.bias)
    if bn is not None:
        s, t = _bn_affine(bn)
        up_eff = up_eff * s[:, None]
        bias = t if bias is None else bias * s + t
    return up_eff, bias


def _fold_bn_into_heads(layer: nn.Module, bn: nn.Module) -> None:
    """BatchNorm into every head of a gated layer: ``B_h ← s ⊙ B_h``, ``b_h ← s ⊙ b_h + t``; exact
    because ``Σ_h g_h = 1`` and the output is linear in the heads."""
    s, t = _bn_affine(bn)
    with torch.no_grad():
        layer.up.copy_(_wide(layer.up) * s[None, :, None])
        bias = t[None].expand(layer.heads, -1) if layer.bias is None else _wide(layer.bias) * s + t
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.to(layer.up.dtype).contiguous(), requires_grad=False)
        else:
            layer.bias.copy_(bias)


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` ``(out, in)`` and ``bias`` (copies, no gradients)."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.requires_grad_(False)


def _dense_params(layer: nn.Module, bias: bool) -> int:
    return math.prod(layer.dense_shape) + (layer.up.shape[1] if bias else 0)


def _too_large(fraction: float, s: _Settings) -> bool:
    """Whether a factorised form keeping ``fraction`` of the dense parameters saves less than
    ``min_saving``."""
    return s.min_saving is not None and fraction > 1.0 - s.min_saving


def _optimize_inherited(name: str, layer: nn.Module, rec: _Calls | None, bn: nn.Module | None,
                        frozen: bool, s: _Settings) -> tuple[nn.Module, LayerDecision]:
    kind = type(layer).__name__
    decision = LayerDecision(name, kind, "", input_shape=rec.input_shape if rec else None)
    g, deviation, why = _fixed_gate(layer, rec, frozen)
    decision.gate_deviation = deviation
    dtype, device = layer.up.dtype, layer.up.device
    conv = isinstance(layer, InherConv2d)
    base_key = (kind, rec.input_shape if rec else None, rec.dtype if rec else None, s.memory_format,
                layer.dense_shape, layer.rank, layer.heads, layer.structure,
                getattr(layer, "stride", None), getattr(layer, "padding", None), getattr(layer, "dilation", None))
    if g is not None:  # heads fold: a plain pair, or dense when that is not faster
        up, bias = _folded_factors(layer, g, bn)
        down = _wide(layer.down)
        if why == "identical heads" and layer.structure == "symmetric":  # head 0's block alone
            up, down = up[:, : layer.rank], down[: layer.rank]
        dense_w = (up @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]).to(dtype)
        up, down = up.to(dtype), down.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if conv:
            dense = _dense_conv(layer, dense_w, bias)
            down_conv = nn.Conv2d(layer.in_channels, down.shape[0], layer.kernel_size, stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation, bias=False,
                                  device=device, dtype=dtype)
            up_conv = nn.Conv2d(down.shape[0], up.shape[0], 1, bias=bias is not None, device=device, dtype=dtype)
            with torch.no_grad():
                down_conv.weight.copy_(down)
                up_conv.weight.copy_(up[:, :, None, None])
                if bias is not None:
                    up_conv.bias.copy_(bias)
            pairs = {"folded pair": FactorisedConv2d(down_conv, up_conv, "matmul"),
                     "folded pair (1×1 conv)": FactorisedConv2d(down_conv, up_conv, "conv")}
            denses = {"dense": dense}
        else:
            dense = _linear(dense_w, bias)
            denses = {"dense": dense}
            pairs = {"folded pair": nn.Sequential(_linear(down, None), _linear(up, bias))}
            if "in×out" in s.layouts:
                denses["dense (in×out)"] = InOutLinear(dense_w, bias)
                pairs["folded pair (in×out)"] = nn.Sequential(InOutLinear(down, None), InOutLinear(up, bias))
        candidates = {k: _prepare(m, s.memory_format) for k, m in {**denses, **pairs}.items()}
        fraction = (down.numel() + up.numel() + (up.shape[0] if bias is not None else 0)) / _dense_params(
            layer, bias is not None)
        decision.param_fraction = fraction
        too_large = _too_large(fraction, s)  # not worth a factorised kernel: the exact product of its factors
        times, note = _timed((*base_key, "fold", down.shape[0], bias is not None), candidates, rec, layer.up, s)
        if not times:
            chosen = "dense" if too_large else "folded pair"
        else:
            chosen = min(denses, key=lambda k: times[k])
            pair = min(pairs, key=lambda k: times[k])
            if not too_large and times[chosen] >= s.min_speedup * times[pair]:
                chosen = pair
        if too_large:
            note = (note + "; " if note else "") + (f"the pair keeps {fraction:.0%} of the dense parameters, more "
                                                    f"than 1 − min_saving = {1 - s.min_saving:.0%}: dense")
        decision.became = "dense" if chosen in denses else "folded pair"
        decision.times_ms, decision.chosen, decision.note = times, chosen, note
        if why == "identical heads" and layer.heads > 1:
            decision.add_note("heads identical: folded exactly (the gate weights sum to one)")
        if why == "frozen":
            decision.add_note("approximation (gate frozen at its mean)")
        return candidates[chosen], decision

    # gated: the gate must run; BatchNorm goes into every head
    if bn is not None:
        _fold_bn_into_heads(layer, bn)
    _prepare(layer, s.memory_format)
    candidates: dict[str, nn.Module] = {"gated kept": layer}
    up, bias = layer.up.detach(), None if layer.bias is None else layer.bias.detach()
    uniform = torch.full((layer.heads,), 1.0 / layer.heads, dtype=torch.float64, device=device)
    ref_w, ref_b = _folded_factors(layer, uniform, None)
    ref_w, ref_b = (ref_w @ _wide(layer.down).flatten(1)).to(dtype), None if ref_b is None else ref_b.to(dtype)
    if conv:
        down_conv = nn.Conv2d(layer.in_channels, layer.down.shape[0], layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            down_conv.weight.copy_(layer.down)
        if layer.structure == "asymmetric":
            candidates["gated per-sample"] = GatedConv2d(down_conv, copy.deepcopy(layer.gate), up, bias,
                                                         structure=layer.structure, mixing="per-sample")
        candidates["gated shared-weight"] = GatedConv2d(down_conv, copy.deepcopy(layer.gate), up, bias,
                                                        structure=layer.structure, mixing="shared")
        reference = _dense_conv(layer, ref_w, ref_b)
    else:
        mixings = ("shared", "per-token") if layer.structure == "asymmetric" else ("shared",)
        for mixing in mixings:
            label = "gated shared-weight" if mixing == "shared" else "gated per-token"
            for layout in s.layouts:
                suffix = "" if layout == "out×in" else " (in×out)"
                candidates[label + suffix] = GatedLinear.from_layer(layer, mixing=mixing, layout=layout)
        reference = _linear(ref_w, ref_b)
    candidates = {k: _prepare(m, s.memory_format) for k, m in candidates.items()}
    timed = {**candidates, "dense (reference)": _prepare(reference, s.memory_format)}
    times, note = _timed((*base_key, "gated", layer.bias is not None), timed, rec, layer.up, s)
    chosen = min(candidates, key=lambda k: times[k]) if times else "gated kept"
    if not conv and chosen == "gated kept" and len(candidates) > 1:
        # a near tie goes to the inference form: its first product can be fused with its neighbours'
        best = min((k for k in candidates if k != "gated kept"), key=lambda k: times[k])
        if times[best] <= _KEPT_MARGIN * times["gated kept"]:
            chosen = best
    decision.became = chosen.removesuffix(" (in×out)")
    decision.times_ms, decision.chosen, decision.note = times, chosen, note
    if times and times[chosen] > 1.05 * times["dense (reference)"]:
        decision.add_note(f"{times[chosen] / times['dense (reference)']:.2f}× the dense layer's time; "
                          "freeze_gate would let it fold (an approximation)")
    fraction = sum(p.numel() for p in layer.parameters()) / _dense_params(layer, layer.bias is not None)
    decision.param_fraction = fraction
    if _too_large(fraction, s):
        decision.add_note(f"keeps {fraction:.0%} of the dense parameters (min_saving {s.min_saving:g}) but its gate "
                          "runs, so it cannot become one dense layer exactly; InheritConfig(min_saving=...) keeps "
                          "such layers dense at inheritance")
    return candidates[chosen], decision


def _fold_bn_into_dense(module: nn.Module, bn: nn.Module) -> nn.Module:
    """The standard fold: ``W ← s ⊙ W`` (per output channel), ``b ← s ⊙ b + t``; a new module."""
    s, t = _bn_affine(bn)
    new = copy.deepcopy(module)
    shape = (-1,) + (1,) * (module.weight.dim() - 1)
    bias = t if module.bias is None else _wide(module.bias) * s + t
    new.weight = nn.Parameter((_wide(module.weight) * s.view(shape)).to(module.weight.dtype), requires_grad=False)
    new.bias = nn.Parameter(bias.to(module.weight.dtype), requires_grad=False)
    return new


_DENSE_LINEARS = (nn.Linear, InOutLinear)


def _uses_new_forms(model: nn.Module) -> bool:
    """Whether a built model holds fused products or weights stored ``in×out``."""
    return any(isinstance(m, (SharedInputProjection, InOutLinear)) or getattr(m, "layout", None) == "in×out"
               for m in model.modules())


def _first_product(module: nn.Module) -> tuple[Tensor, Tensor | None, nn.Module | None] | None:
    """``(weight (out, in), bias, tail)`` of a layer's form whose output is
    ``tail(F.linear(x, weight, bias))`` (no tail: the product is the output), or None for a form
    that cannot share its first product."""
    if type(module) in _DENSE_LINEARS:
        return module.weight, module.bias, None
    if isinstance(module, GatedLinear):
        return (*module.first_product(), module.mixer)
    if (type(module) is nn.Sequential and len(module) == 2 and all(type(m) in _DENSE_LINEARS for m in module)
            and module[0].bias is None):
        return module[0].weight, None, module[1]
    return None


def _relaid_linear(module: nn.Linear, decision: LayerDecision, rec: _Calls | None, s: _Settings) -> nn.Module:
    """A dense ``nn.Linear`` or the same weight stored in × out (:class:`InOutLinear`), whichever
    is faster on the layer's input (``decision`` records the times and the choice)."""
    candidates = {"dense": module, "dense (in×out)": _prepare(InOutLinear.from_linear(module), s.memory_format)}
    key = ("linear", rec.input_shape if rec else None, rec.dtype if rec else None, tuple(module.weight.shape),
           module.bias is not None)
    times, note = _timed(key, candidates, rec, module.weight, s)
    chosen = min(candidates, key=lambda k: times[k]) if times else "dense"
    decision.times_ms, decision.chosen = times, chosen
    if chosen != "dense":
        decision.became = "dense"
        decision.add_note("weight stored in × out")
    return candidates[chosen]


def _signature(module: nn.Module) -> tuple:
    """What a layer's timing depends on: its type, configuration and parameter shapes."""
    return (type(module).__name__, module.extra_repr(), tuple(tuple(p.shape) for p in module.parameters()))


def _fuse_shared_inputs(work: nn.Module, calls: dict[str, _Calls], decisions: list[LayerDecision],
                        s: _Settings) -> list[SharedInputGroup]:
    """Linear layers that read the same input tensor in every call on the example (their
    :attr:`_Calls.inputs` lists are equal) are timed computing their first products separately and
    as one matmul (:class:`SharedInputProduct`); the fused form replaces them where it is faster."""
    by_inputs: dict[tuple[int, ...], list[str]] = {}
    for d in decisions:
        rec = calls.get(d.name)
        if rec is not None and rec.inputs:
            by_inputs.setdefault(tuple(rec.inputs), []).append(d.name)
    by_name = {d.name: d for d in decisions}
    groups = []
    for names in (n for n in by_inputs.values() if len(n) > 1):
        modules = {n: work.get_submodule(n) for n in names}
        parts = {n: _first_product(m) for n, m in modules.items()}
        members = [n for n in names if parts[n] is not None]
        weights = [parts[n][0] for n in members]
        if len(members) < 2 or len({(w.shape[1], w.dtype, w.device) for w in weights}) != 1:
            continue
        biases = [parts[n][1] for n in members]
        fused = {}
        for layout in s.layouts:
            shared = SharedInputProduct(weights, biases, layout)
            fused["fused" if layout == "out×in" else "fused (in×out)"] = [
                SharedInputProjection(shared, i, parts[n][2]) for i, n in enumerate(members)]
        separate = [modules[n] for n in members]
        rec = calls[members[0]]
        candidates = {"separate": lambda x, ms=separate: [m(x) for m in ms],
                      **{k: (lambda x, ms=ms: [m(x) for m in ms]) for k, ms in fused.items()}}
        key = ("shared input", rec.input_shape, rec.dtype, tuple(_signature(m) for m in separate))
        times, note = _timed(key, candidates, rec, weights[0], s)
        best = min(fused, key=lambda k: times[k]) if times else None
        keep = best is not None and times[best] < times["separate"]
        group = SharedInputGroup(members, rec.input_shape, times, keep, [n for n in names if n not in members],
                                 best if keep else None)
        groups.append(group)
        for i, n in enumerate(members):
            d = by_name[n]
            d.shared_input = [m for m in members if m != n]
            others = ", ".join(m.rpartition(".")[2] or m for m in d.shared_input)
            if keep:
                _replace(work, modules[n], fused[best][i])
                d.add_note(f"first product fused with {others} ({best}: {times[best]:.3f} ms vs "
                           f"{times['separate']:.3f} ms separate)")
            elif times:
                d.add_note(f"shares its input with {others}; fusing was not faster ({times[best]:.3f} vs "
                           f"{times['separate']:.3f} ms)")
    return groups


def _build(base: nn.Module, calls: dict[str, _Calls], pairs: dict[str, str], frozen: set[str],
           s: _Settings) -> tuple[nn.Module, list[LayerDecision], list[str], list[SharedInputGroup]]:
    work = _prepare(copy.deepcopy(base), s.memory_format)
    if s.memory_format == "channels_last":
        work.register_forward_pre_hook(_channels_last_input)
    if hasattr(work, PLAN_ATTR):  # the inheritance plan no longer describes the modules
        delattr(work, PLAN_ATTR)
    modules = dict(work.named_modules())
    decisions: list[LayerDecision] = []
    removed: list[str] = []
    inherited = [n + "." for n, m in modules.items() if isinstance(m, INHER_LAYERS)]
    uses = Counter(id(p) for _, m in work.named_modules(remove_duplicate=False) for p in m.parameters(recurse=False))
    for name, module in list(modules.items()):
        if any(name.startswith(prefix) for prefix in inherited):
            continue  # a part of an inherited layer (its gate), handled with the layer
        bn = modules[pairs[name]] if name in pairs else None
        if isinstance(module, INHER_LAYERS):
            new, decision = _optimize_inherited(name, module, calls.get(name), bn, name in frozen, s)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            rec = calls.get(name)
            new = module if bn is None else _prepare(_fold_bn_into_dense(module, bn), s.memory_format)
            decision = LayerDecision(name, type(module).__name__, "dense" if bn is not None else "unchanged",
                                     input_shape=rec.input_shape if rec else None)
            if type(new) is nn.Linear and uses[id(module.weight)] == 1 and rec is not None and "in×out" in s.layouts:
                new = _relaid_linear(new, decision, rec, s)  # a tied weight stays where it is
        else:
            continue
        if bn is not None:
            decision.batchnorm = pairs[name]
            _replace(work, bn, nn.Identity())
            removed.append(pairs[name])
        if new is not module:
            _replace(work, module, new)
        decisions.append(decision)
    groups = _fuse_shared_inputs(work, calls, decisions, s) if s.fuse_shared_inputs else []
    return work, decisions, removed, groups


def as_trained(model: nn.Module, scale: float = 0.005, seed: int = 0, *, inplace: bool = False) -> nn.Module:
    """A copy of an InherNet (or of one inherited layer) whose gated heads differ, as they do after
    training (``diversify_heads("perturbed", scale)`` on every layer with a gate and several heads):
    what a speed measurement of the trained model needs, since identical heads fold and the gate
    then never runs. The function changes by ``scale`` relative; the speed does not depend on it.
    ``inplace=True`` changes ``model`` itself (for a throwaway model: no copy)."""
    out = model if inplace else copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for m in out.modules():
        if isinstance(m, INHER_LAYERS) and m.gate is not None and m.heads > 1:
            m.diversify_heads("perturbed", scale, gen)
    return out


def optimize_for_inference(model: nn.Module, example_input: Any, *, tolerance: float = DEFAULT_TOLERANCE,
                           freeze_gate: bool | str | Iterable[str] = False, compile: bool = False,
                           min_speedup: float = 1.0, min_saving: float | None = DEFAULT_MIN_SAVING,
                           fuse_shared_inputs: bool = True, check_speed: bool = True,
                           memory_format: str = "auto", rounds: int = 5) -> nn.Module:
    """A new module computing what ``model`` computes in eval mode, as fast as measured on this device.

    Args:
        model: an InherNet or any ``nn.Module``; it is deep-copied and never changed (parameters,
            buffers, module types and training flags stay as they are).
        example_input: one input the model takes (a tensor, a tuple of positional arguments or a
            dict of keyword arguments), on the model's device, of the batch size to optimise for:
            every layer is timed on the input shape it sees when the model runs on it.
        tolerance: the result is checked on ``example_input``: max |optimised − original| must stay
            within ``tolerance`` × max |original| (default 1e-4), else RuntimeError. Every transform
            except ``freeze_gate`` is exact in exact arithmetic; in float32 the outputs agree to
            rounding (about 1e-6 relative on the zoo's ResNets; the tests assert ``rtol=1e-4,
            atol=1e-5`` elementwise on fresh inputs).
        freeze_gate: ``True`` (every gated layer), a layer name / name suffix / regex, or a list of
            them: freeze those gates at their mean over ``example_input``, so the heads fold like
            ``gate="none"`` and the layer can become a pair or a dense layer. **An approximation**:
            the report gives each frozen layer's largest gate deviation |g − ḡ| and the model's
            max output deviation on the example (``report.max_abs_diff``), and the tolerance check
            is not applied.
        compile: wrap the result in ``torch.compile`` (run once on the example to compile it).
        min_speedup: a folded layer stays a factorised pair only when the dense layer takes at least
            ``min_speedup`` × the pair's time; 1.0 (default): whichever is faster, > 1 prefers
            dense layers at near ties.
        min_saving: a layer whose heads fold becomes dense, untimed, when its pair keeps more than
            ``1 − min_saving`` of the dense layer's parameters (default 0.2: a pair must save at least
            20 %; ``None`` turns the rule off, timing alone decides). A gated layer whose gate must
            run cannot become dense exactly: when it keeps more than that (all H heads and the gate
            counted) it stays gated and the report says so. ``InheritConfig(min_saving=0.2)``
            applies the same rule at inheritance time, to the inherited layer with all its heads,
            which then keeps the teacher's own weight.
        fuse_shared_inputs: time fusing the first products of linear layers that read one input
            tensor (q/k/v, gate/up) into one matmul (:class:`SharedInputProduct`) and keep it where
            faster; not with ``compile=True`` (the compiler fuses what it can itself).
        check_speed: when the per-layer choices include fused products or ``in×out`` weights,
            time the whole model against the same model built without them (``out×in`` weights,
            no fusion) on the example, side by side, and keep the faster (both are exact); the
            times are in ``report.variant_times_ms``.
        memory_format: ``"auto"`` (default): for a convolutional model with a 4-D input, build the
            model in both layouts and keep the faster one (timed whole, side by side);
            ``"contiguous"`` / ``"channels_last"``: that layout only.
        rounds: interleaved timing rounds per measurement (the median is kept).

    ``model`` may be one inherited layer alone (:class:`~inhernet.layers.InherLinear` /
    :class:`~inhernet.layers.InherConv2d`): the result is then its inference form, and the report
    names it :data:`LONE_LAYER`.

    Returns the optimised module (eval mode, parameters without gradients) carrying its
    :class:`OptimizationReport` as ``model.inhernet_optimized`` (:data:`REPORT_ATTR`). An
    optimised InherNet carries no inheritance plan any more: save the original, not this.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    if memory_format not in _MEMORY_FORMATS:
        raise ConfigError(f"memory_format={memory_format!r}: use one of {_MEMORY_FORMATS}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r}: give a positive number of timing rounds.")
    if not (isinstance(min_speedup, (int, float)) and min_speedup > 0 and math.isfinite(min_speedup)):
        raise ConfigError(f"min_speedup={min_speedup!r}: give a positive factor (1.0: whichever is faster).")
    if min_saving is not None and (isinstance(min_saving, bool) or not isinstance(min_saving, (int, float))
                                   or not 0 <= min_saving < 1):
        raise ConfigError(f"min_saving={min_saving!r}: give a fraction in [0, 1), or None to turn the rule off.")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"tolerance={tolerance!r}: give a non-negative relative tolerance.")
    if not _tensors(example_input):
        raise ConfigError("example_input must be a tensor, or a tuple / dict holding the model's input tensors.")

    base = copy.deepcopy(model).eval().requires_grad_(False)
    lone = isinstance(base, INHER_LAYERS)  # one inherited layer: optimised as the only child of a container
    if lone:
        base = nn.Sequential(base)
    with torch.no_grad():
        reference = call_model(base, example_input)
    frozen = _select_frozen(base, freeze_gate)
    calls = _capture(base, example_input, frozen)
    pairs = _pairs_by_fx(base, calls)
    pairing = "torch.fx"
    if pairs is None:  # not traceable: pair by tensor identity, keep the folds that keep the output
        pairs, dropped = _verified_pairs(base, _pairs_by_hooks(base, example_input, calls), example_input,
                                         reference, tolerance)
        pairing = "forward hooks" + (f"; {len(dropped)} dropped, folding changed the output: {', '.join(dropped)}"
                                     if dropped else "")

    formats = [memory_format]
    if memory_format == "auto":
        convolutional = any(isinstance(m, (nn.Conv2d, InherConv2d)) for m in base.modules())
        four_d = isinstance(example_input, Tensor) and example_input.dim() == 4
        formats = ["contiguous", "channels_last"] if convolutional and four_d else ["contiguous"]

    timings: dict = {}  # shared by every build: a layer shape is timed once

    def build(fmt: str, pairs: dict[str, str], plain: bool = False):
        settings = _Settings(fmt, float(min_speedup), rounds, None if min_saving is None else float(min_saving),
                             bool(fuse_shared_inputs) and not compile and not plain,
                             ("out×in",) if plain else LAYOUTS, timings)
        work, decisions, removed, groups = _build(base, calls, pairs, frozen, settings)
        with torch.no_grad():
            diff, scale = _max_diff(call_model(work, example_input), reference)
        return work, decisions, removed, diff, scale, groups

    def exact_limit(scale: float) -> float:
        return tolerance * max(scale, 1e-12)

    built = {fmt: build(fmt, pairs) for fmt in formats}
    if (not frozen and pairing.startswith("forward hooks") and pairs
            and any(b[3] > exact_limit(b[4]) for b in built.values())):
        pairing = "forward hooks; all dropped, the folds together changed the output"
        pairs = {}
        built = {fmt: build(fmt, pairs) for fmt in formats}
    model_times: dict[str, float] = {}
    if len(built) > 1:
        model_times = time_candidates({fmt: (lambda x, m=b[0]: call_model(m, x)) for fmt, b in built.items()},
                                      example_input, rounds=rounds, statistic="min",
                                      clock=default_clock(_tensors(example_input)[0].device))
        chosen_format = min(model_times, key=model_times.get)
    else:
        chosen_format = formats[0]
    work, decisions, removed, diff, scale, groups = built[chosen_format]
    variant_times: dict[str, float] = {}
    if check_speed and _uses_new_forms(work):
        # per-layer timings need not add up in the whole model (weights evicted from the caches
        # between calls): keep the per-layer choices only if the whole model is faster with them
        plain = build(chosen_format, pairs, plain=True)
        variant_times = time_candidates({PER_LAYER: lambda x, m=work: call_model(m, x),
                                         PLAIN: lambda x, m=plain[0]: call_model(m, x)},
                                        example_input, rounds=rounds, statistic="min",
                                        clock=default_clock(_tensors(example_input)[0].device))
        if variant_times[PLAIN] < variant_times[PER_LAYER]:
            work, decisions, removed, diff, scale, groups = plain
    if not frozen and diff > exact_limit(scale):
        raise RuntimeError(f"optimize_for_inference: the optimised model differs from the original by {diff:.3g} "
                           f"(outputs up to {scale:.3g}, tolerance {tolerance:g} × that) on the example input; "
                           "please report this model")
    if lone:
        work = work[0]
        for d in decisions:
            d.name = LONE_LAYER
    result: nn.Module = work
    if compile:
        result = torch.compile(work)
        with torch.no_grad():
            diff_c, _ = _max_diff(call_model(result, example_input), reference)
        diff = max(diff, diff_c)
        if not frozen and diff_c > exact_limit(scale):
            raise RuntimeError(f"optimize_for_inference: the compiled model differs from the original by "
                               f"{diff_c:.3g} (outputs up to {scale:.3g}) on the example input")
    first = _tensors(example_input)[0]
    report = OptimizationReport(
        layers=decisions, example_shape=tuple(first.shape) if isinstance(example_input, Tensor) else None,
        device=str(first.device), threads=torch.get_num_threads(), memory_format=chosen_format,
        model_times_ms=model_times, max_abs_diff=diff, reference_scale=scale, tolerance=float(tolerance),
        frozen_gates=sorted(frozen), removed_batchnorms=removed, batchnorm_pairing=pairing, compiled=bool(compile),
        min_speedup=float(min_speedup), min_saving=None if min_saving is None else float(min_saving),
        shared_inputs=groups, variant_times_ms=variant_times,
    )
    setattr(result, REPORT_ATTR, report)
    return result
