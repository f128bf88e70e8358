"""The inference modules :func:`inhernet.optimize_for_inference` builds: a folded pair
(:class:`FactorisedConv2d`), gated layers with their heads stored in the layout the product reads
(:class:`GatedConv2d`, :class:`GatedLinear` with its :class:`HeadMixer`), dense weights stored
``in×out`` (:class:`InOutLinear`) and one product shared by projections that read one input
(:class:`SharedInputProduct`, :class:`SharedInputProjection`). Each computes what the layer it
replaces computes (up to float rounding); choosing between them is :mod:`inhernet.optimize.build`'s."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError
from ..layers import InherLinear, batched_product, profile_scope

__all__ = ["FactorisedConv2d", "GatedConv2d", "GatedLinear", "HeadMixer", "InOutLinear", "LAYOUTS",
           "SharedInputProduct", "SharedInputProjection", "wide"]


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
                y = batched_product(w.expand(n, -1, -1), flat, self.up.bias[None, :, None])
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
                    y = batched_product(flat, mixed.transpose(1, 2), None if bias is None else bias[:, None, :])
                    return y.view(n, h, w, -1).permute(0, 3, 1, 2)
                flat = z.flatten(2)
                y = batched_product(mixed, flat, None if bias is None else bias[:, :, None])
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
            y = torch.matmul(self.weight, flat) if bias is None else batched_product(
                self.weight.expand(n, -1, -1), flat, bias[:, :, None])
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


def wide(t: Tensor) -> Tensor:
    """Folds are computed in float64 (MPS has none: float32 there)."""
    return t.detach().float() if t.device.type == "mps" else t.detach().double()


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
        wide_down = wide(down)
        first = torch.cat([wide_down, wide(gate_weight) @ wide_down]).to(dtype)
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
