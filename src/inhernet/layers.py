"""The inherited layers: one shared rank-r down-projection, H gated up-projection heads.

For an input ``x`` (METHOD.md §2)::

    z   = D x                       shared down-projection, r × d_in (a k×k conv for InherConv2d)
    g   = softmax(G(pool(z)))       gate, Linear(r, H); pool = spatial mean (conv) or identity
    y   = Σ_h g_h (B_h z + b_h)     H up-projections B_h: d_out × r (1×1 convs for InherConv2d)

All heads live in one tensor ``up`` of shape ``(H, d_out, r)``:

* linear layers (one gate vector per token) feed the outer product ``g ⊗ z`` (length H·r) through
  the heads concatenated along r: one matmul, no ``(…, H, d_out)`` intermediate. The concatenation
  ``(d_out, H·r)`` is a copy of ``up`` made on every call (no view of ``up`` has that layout); for
  a call with few rows (``< HEADS_LOOP_MAX_ROWS`` tokens, e.g. one decoding step) without autograd
  that copy costs more than the product itself (a permuted copy of H·d_out·r values against H·r·d_out
  multiply-adds per row), so there the heads are accumulated one by one (``addmm`` into one output,
  no copy). With autograd the copy stays: measured at SmolLM2's MLP shapes, H separate products
  make the backward slower than the copy costs, which is under 1 % of a training step on 8 × 128
  tokens (``benchmarks/bench_profile.py``, ``docs/benchmarks/profile.md``).
  :func:`inhernet.optimize_for_inference` stores the heads in the product's layout instead;
* convolutions (one gate vector per sample) mix the head weights per sample first,
  ``W_n = Σ_h g_nh B_h`` (N × d_out × r, cheap), then apply one batched 1×1 product — the same result
  as summing the head outputs, at the cost of a single head.

``structure="symmetric"`` is the ablation with H separate down-projections (``down`` holds H·r rows,
head h reads block h of ``z``). ``gate="none"`` is the ablation with fixed equal weights 1/H.
With H = 1 the softmax is the constant 1, so no gate is built.

Code written for ``nn.Linear`` / ``nn.Conv2d`` that reads ``layer.weight`` (Hugging Face's T5 and
CLIP check its dtype and device) keeps working: ``weight`` is a read-only
:class:`EffectiveWeight`, a tensor of the teacher layer's shape, dtype and device that holds no
memory of its own and turns into the layer's effective dense weight (:meth:`effective_weight`, the
uniform-gate map; at SVD initialisation the rank-r truncation of the teacher's weight) only when an
operation reads its values.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .config import GATES, STRUCTURES
from .errors import ConfigError
from .registry import HEAD_INITS

__all__ = [
    "HEADS_LOOP_MAX_ROWS",
    "INHER_LAYERS",
    "EffectiveWeight",
    "InherConv2d",
    "InherConvNd",
    "InherLayer",
    "InherLinear",
    "batched_product",
    "profile_scope",
    "profile_scopes",
]

#: a linear layer's no-grad call with fewer rows (tokens) than this accumulates its heads one by
#: one instead of copying them into the concatenated layout first (see the module docstring)
HEADS_LOOP_MAX_ROWS = 32

_PROFILE_SCOPES = False
_NO_SCOPE = contextlib.nullcontext()


def profile_scope(name: str) -> contextlib.AbstractContextManager:
    """A ``torch.profiler.record_function(name)`` scope while :func:`profile_scopes` is on, else a
    shared no-op context (about 0.3 µs a scope, measured on the 2-core benchmark machine, against
    tens of microseconds for the smallest layer call). The layers' forward passes use it to name
    their steps — ``inhernet.down``, ``inhernet.gate``, ``inhernet.mix``, ``inhernet.heads``,
    ``inhernet.bias`` — for ``benchmarks/bench_profile.py``."""
    return torch.profiler.record_function(name) if _PROFILE_SCOPES else _NO_SCOPE


def batched_product(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b + bias`` for batched matrices (``torch.bmm`` shapes; ``bias`` broadcast to the product).

    Eager it is one ``torch.baddbmm``. Under ``torch.compile`` / ``torch.export`` it is ``bmm`` then
    an addition: the compiler fuses that addition into the next elementwise kernel (the ReLU or the
    residual sum after a conv), whereas its ``baddbmm`` first copies the broadcast bias into the
    whole output — a full pass over it (13 % of the gated resnet56's ahead-of-time forward at
    batch 64, profiled); this form takes 0.94–0.95× the time (docs/benchmarks/bias_fusion.md).
    Eager the two cost the same (measured), so eager keeps the one call."""
    if bias is None:
        return torch.bmm(a, b)
    if torch.compiler.is_compiling():
        return torch.bmm(a, b) + bias
    return torch.baddbmm(bias, a, b)


@contextlib.contextmanager
def profile_scopes(enabled: bool = True):
    """Turn the named profiler scopes of :func:`profile_scope` on (or off) inside a ``with`` block;
    the previous setting is restored afterwards. Off by default: a scope costs a few microseconds
    per call under the profiler and is not needed otherwise."""
    global _PROFILE_SCOPES
    before, _PROFILE_SCOPES = _PROFILE_SCOPES, bool(enabled)
    try:
        yield
    finally:
        _PROFILE_SCOPES = before


@torch.no_grad()
def _uniform_(tensor: Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    """``tensor ← U(-1/√fan_in, 1/√fan_in)``, what ``kaiming_uniform_(a=√5)`` gives ``nn.Linear``,
    drawn on the CPU (a generator is tied to one device) and copied to ``tensor``'s device."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    if tensor.is_meta:
        return
    draw = torch.empty(tensor.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    tensor.copy_(draw)


class EffectiveWeight(Tensor):
    """Read-only stand-in for the ``weight`` of an inherited layer.

    Its metadata (shape = the teacher weight's ``(d_out, d_in)`` or ``(C_out, C_in, k, k)``, dtype,
    device) costs nothing to read, which is all that model code checking ``proj.weight.dtype`` needs
    (T5 does so on every forward pass). Any operation on its values computes the layer's effective
    dense weight, :meth:`InherLayer.effective_weight` with the uniform gate (the rank-r truncation of
    the teacher's weight at SVD initialisation; after training, the head average), detached: no
    gradient flows back to the factors. With a per-token gate no single dense matrix is what the
    layer computes, so this is a summary, not a substitute for the forward pass.

    In-place operations are refused (train the factors instead); Hugging Face's weight
    initialisation skips it (``_is_hf_initialized``), so ``post_init``/``init_weights`` on an
    inherited model leaves the inherited factors alone.
    """

    _is_hf_initialized = True
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, layer: "InherLayer") -> "EffectiveWeight":
        out = Tensor._make_wrapper_subclass(
            cls, layer.dense_shape, dtype=layer.up.dtype, device=layer.up.device, requires_grad=False
        )
        out._layer = layer
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func._schema.is_mutable:
            raise RuntimeError(
                f"{func.__name__}: the weight of an inherited layer is a read-only view of its effective "
                "dense weight; change its factors (down, up, bias) instead."
            )

        def dense(x):
            return x._layer.effective_weight() if isinstance(x, EffectiveWeight) else x

        return func(*tree_map(dense, args), **tree_map(dense, kwargs or {}))

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"EffectiveWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}; "
                f"read-only view of {type(self._layer).__name__}.effective_weight())")


class InherLayer(nn.Module):
    """The base of every inherited layer: parameters (``down``, ``up``, ``bias``, ``gate``) and head
    mixing, shared by :class:`InherLinear` and the convolutions (:class:`InherConvNd`).

    Subclasses define ``forward`` and ``_pool`` (z → gate input).
    """

    def __init__(
        self,
        d_in_shape: tuple[int, ...],
        d_out: int,
        rank: int,
        heads: int,
        *,
        bias: bool,
        gate: str = "softmax",
        structure: str = "asymmetric",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if rank < 1 or heads < 1:
            raise ConfigError(f"rank ({rank}) and heads ({heads}) must be >= 1.")
        if gate not in GATES or structure not in STRUCTURES:
            raise ConfigError(f"gate must be one of {GATES} and structure one of {STRUCTURES}.")
        factory = {"device": device, "dtype": dtype}
        self.rank, self.heads = rank, heads
        self.gate_mode, self.structure = gate, structure
        down_rows = rank * heads if structure == "symmetric" else rank
        self.down = nn.Parameter(torch.empty(down_rows, *d_in_shape, **factory))
        self.up = nn.Parameter(torch.empty(heads, d_out, rank, **factory))
        self.bias = nn.Parameter(torch.zeros(heads, d_out, **factory)) if bias else None
        # skip_init: nn.Linear's own initialisation would draw from the global RNG
        self.gate = (torch.nn.utils.skip_init(nn.Linear, down_rows, heads, device=self.up.device, dtype=self.up.dtype)
                     if (gate == "softmax" and heads > 1) else None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random factors (the "w.o. SVD" ablation) and gate, initialised like ``nn.Linear`` /
        ``nn.Conv2d`` (uniform in ±1/√fan_in). The values are drawn on the CPU from ``generator``
        (default: the global RNG) and copied, so one seed gives the same layer on every device."""
        _uniform_(self.down, self.down[0].numel(), generator)
        for head in self.up:  # each head gets its own random draw
            _uniform_(head, self.rank, generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.gate is not None:
            fan_in = self.gate.in_features
            _uniform_(self.gate.weight, fan_in, generator)
            _uniform_(self.gate.bias, fan_in, generator)

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """Shape of the teacher weight this layer replaces: ``(d_out, d_in)`` or ``(C_out, C_in, k, k)``."""
        return (self.up.shape[1], *self.down.shape[1:])

    @property
    def weight(self) -> EffectiveWeight:
        """Read-only :class:`EffectiveWeight` (teacher shape, dtype, device; values computed on use)."""
        return EffectiveWeight(self)

    @torch.no_grad()
    def set_factors(self, down: Tensor, up: Tensor, bias: Tensor | None, head_scale: str = "exact") -> None:
        """Load factors ``down`` (r × d_in…) and ``up`` (d_out × r) into every head.

        ``head_scale="paper"`` divides every head (and bias) by H, as in the paper; ``"exact"``
        keeps the layer's initial map equal to ``up @ down`` (+ bias).
        """
        scale = 1.0 / self.heads if head_scale == "paper" else 1.0
        copies = self.heads if self.structure == "symmetric" else 1
        self.down.copy_(down.reshape(self.rank, *self.down.shape[1:]).repeat(copies, *([1] * (self.down.dim() - 1))))
        self.up.copy_((up * scale).unsqueeze(0).expand_as(self.up))
        if self.bias is not None:
            if bias is None:
                self.bias.zero_()
            else:
                self.bias.copy_((bias * scale).unsqueeze(0).expand_as(self.bias))

    def diversify_heads(self, mode: str = "perturbed", scale: float = 0.005,
                        generator: torch.Generator | None = None) -> None:
        """Make the (identical, SVD-initialised) heads differ without changing what the layer
        computes, so the gate gets a gradient: the registered head initialisation ``mode``
        (``"copies"``, ``"perturbed"``, ``"split"``; :mod:`inhernet.factorise.heads`) with
        deviations of relative size ``scale``. One head, or no gate: nothing to do (without a gate
        every head gets the same gradient, so differences would never grow)."""
        init = HEAD_INITS.get(mode)
        if self.heads == 1 or self.gate is None:
            return
        init(self, scale, generator)

    def gate_weights(self, z: Tensor) -> Tensor:
        """Mixing weights g, shape ``(*batch, H)``: softmax gate, or 1/H without a gate."""
        pooled = self._pool(z)
        if self.gate is None:
            return pooled.new_full((*pooled.shape[:-1], self.heads), 1.0 / self.heads)
        return torch.softmax(self.gate(pooled), dim=-1)

    def _heads_concat(self) -> Tensor:
        """Heads side by side: ``(d_out, H·r)``, column ``h·r + j`` is ``up[h, :, j]``."""
        return self.up.permute(1, 0, 2).reshape(self.up.shape[1], -1)

    def _mix_input(self, z: Tensor, g: Tensor, feature_dim: int) -> Tensor:
        """The H·r-wide input of the concatenated heads: ``g ⊗ z`` (shared down) or the blocks of z
        scaled by g (symmetric). ``feature_dim=-1``: z is ``(…, R)`` with a gate per position
        (``(…, H·r)`` out); ``feature_dim=1``: z is ``(N, R, L)`` with a gate per sample."""
        if feature_dim == -1:
            blocks = z.unflatten(-1, (self.heads, self.rank)) if self.structure == "symmetric" else z.unsqueeze(-2)
            return (g.unsqueeze(-1) * blocks).flatten(-2)
        blocks = z.unflatten(1, (self.heads, self.rank)) if self.structure == "symmetric" else z.unsqueeze(1)
        return (g[:, :, None, None] * blocks).flatten(1, 2)

    def _apply_heads(self, mixed: Tensor) -> Tensor:
        """``Σ_h B_h m_h`` for the per-token mixed input ``mixed`` ``(…, H·r)`` (block h = ``m_h``).

        One matmul with the heads concatenated (a copy of ``up`` per call), or, for a no-grad call
        with fewer than :data:`HEADS_LOOP_MAX_ROWS` rows, the heads accumulated one by one into
        one output (``addmm``, reading each ``B_h`` in place): the same sums, in another order."""
        rows = mixed.numel() // max(mixed.shape[-1], 1)
        if rows >= HEADS_LOOP_MAX_ROWS or (torch.is_grad_enabled() and (self.up.requires_grad or mixed.requires_grad)):
            return F.linear(mixed, self._heads_concat())
        flat = mixed.reshape(rows, self.heads, self.rank)
        y = torch.mm(flat[:, 0], self.up[0].t())
        for h in range(1, self.heads):
            y.addmm_(flat[:, h], self.up[h].t())
        return y.view(*mixed.shape[:-1], self.up.shape[1])

    def _mixed_bias(self, g: Tensor) -> Tensor | None:
        return None if self.bias is None else g @ self.bias

    def _folded_heads(self) -> tuple[Tensor, Tensor | None] | None:
        """``(up, bias)`` of the one up-projection the heads amount to when no gate is needed — one
        head, or fixed 1/H weights on a shared down — else None (the gate must run)."""
        if self.heads == 1:
            return self.up[0], None if self.bias is None else self.bias[0]
        if self.gate is None and self.structure == "asymmetric":
            return self.up.mean(0), None if self.bias is None else self.bias.mean(0)
        return None

    @torch.no_grad()
    def effective_weight(self, gate_weights: Tensor | None = None) -> Tensor:
        """The dense weight this layer computes for given head weights (default: uniform), in the
        teacher's layout; with SVD init at any gate value it is the rank-r truncation of W."""
        g = gate_weights if gate_weights is not None else self.up.new_full((self.heads,), 1.0 / self.heads)
        down = self.down.flatten(1)
        if self.structure == "symmetric":
            mixed = torch.einsum("h,hor,hri->oi", g, self.up, down.unflatten(0, (self.heads, self.rank)))
        else:
            mixed = torch.einsum("h,hor->or", g, self.up) @ down
        return mixed.reshape(self.up.shape[1], *self.down.shape[1:])

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, heads={self.heads}, bias={self.bias is not None}, "
            f"gate={self.gate_mode}, structure={self.structure}"
        )


class InherLinear(InherLayer):
    """Inherited ``nn.Linear``: ``(…, in_features) → (…, out_features)``, one gate per position."""

    def __init__(self, in_features: int, out_features: int, rank: int, heads: int = 3, *, bias: bool = True, **kwargs) -> None:
        self.in_features, self.out_features = in_features, out_features
        super().__init__((in_features,), out_features, rank, heads, bias=bias, **kwargs)

    def _pool(self, z: Tensor) -> Tensor:
        return z

    def forward(self, x: Tensor) -> Tensor:
        with profile_scope("inhernet.down"):
            z = F.linear(x, self.down)
        folded = self._folded_heads()
        if folded is not None:
            with profile_scope("inhernet.heads"):
                return F.linear(z, *folded)
        with profile_scope("inhernet.gate"):
            g = self.gate_weights(z)
        with profile_scope("inhernet.mix"):
            mixed = self._mix_input(z, g, feature_dim=-1)
        with profile_scope("inhernet.heads"):
            y = self._apply_heads(mixed)
        if self.bias is None:
            return y
        with profile_scope("inhernet.bias"):
            return y + self._mixed_bias(g)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


class InherConvNd(InherLayer):
    """Inherited ``nn.ConvNd`` (groups = 1), N spatial dimensions (:attr:`spatial_dims`): a k×…×k
    conv ``C_in → r`` with the teacher's stride, padding and dilation, then H gated 1×…×1 convs
    ``r → C_out``; one gate vector per sample (the compressed features averaged over space).
    Subclasses set :attr:`spatial_dims` and :attr:`conv` (``F.conv2d``, ``F.conv1d``)."""

    spatial_dims: int = 2
    conv = staticmethod(F.conv2d)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        rank: int,
        heads: int = 3,
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        bias: bool = True,
        **kwargs,
    ) -> None:
        def tup(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * self.spatial_dims

        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), tup(dilation)
        self.padding = padding if isinstance(padding, str) else tup(padding)
        super().__init__((in_channels, *self.kernel_size), out_channels, rank, heads, bias=bias, **kwargs)

    def _pool(self, z: Tensor) -> Tensor:
        return z.mean(dim=tuple(range(2, z.dim())))

    def forward(self, x: Tensor) -> Tensor:
        with profile_scope("inhernet.down"):
            z = self.conv(x, self.down, None, self.stride, self.padding, self.dilation)
        n, spatial = z.shape[0], z.shape[2:]
        flat = z.flatten(2)  # (N, R, L)
        folded = self._folded_heads()
        if folded is not None:
            up, bias = folded
            with profile_scope("inhernet.heads"):
                if torch.onnx.is_in_onnx_export():  # ONNX Runtime runs a 1×1 Conv faster than Expand + MatMul
                    return self.conv(z, up.reshape(*up.shape, *([1] * self.spatial_dims)), bias)
                # eager PyTorch on CPU: a batched product is ~2× faster than a 1×1 conv at batch 64
                y = torch.bmm(up.expand(n, -1, -1), flat)
                return y.view(n, -1, *spatial) if bias is None else (y + bias[:, None]).view(n, -1, *spatial)
        with profile_scope("inhernet.gate"):
            g = self.gate_weights(z)  # (N, H)
        with profile_scope("inhernet.bias"):
            bias = self._mixed_bias(g)
        if self.structure == "asymmetric":
            # mix the heads per sample (N × d_out × r), then one batched product (+ the mixed bias)
            with profile_scope("inhernet.mix"):
                mixed = (g @ self.up.flatten(1)).view(n, *self.up.shape[1:])
            with profile_scope("inhernet.heads"):
                y = batched_product(mixed, flat, None if bias is None else bias[:, :, None])
        else:
            with profile_scope("inhernet.mix"):
                mixed = self._mix_input(flat, g, feature_dim=1)
            with profile_scope("inhernet.heads"):
                y = torch.matmul(self._heads_concat(), mixed)
            if bias is not None:
                with profile_scope("inhernet.bias"):
                    y = y + bias[:, :, None]
        return y.view(n, -1, *spatial)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, " + super().extra_repr()
        )


class InherConv2d(InherConvNd):
    """Inherited ``nn.Conv2d`` (groups = 1): a k×k conv ``C_in → r`` with the teacher's stride,
    padding and dilation, then H gated 1×1 convs ``r → C_out``; one gate vector per image."""

    spatial_dims = 2
    conv = staticmethod(F.conv2d)


#: every inherited layer type (``isinstance(m, INHER_LAYERS)``), those of kinds added later included
INHER_LAYERS = (InherLayer,)
