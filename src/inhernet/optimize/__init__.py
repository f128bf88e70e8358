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
8. optionally wraps the result in ``torch.compile`` (``compile=True``: with the TorchInductor options
   measured fastest for inference on the device, :data:`COMPILE_OPTIONS` — on a CPU the C++ wrapper),
   or compiles it ahead of time (``compile="aot"``: ``torch.export`` + AOTInductor into a ``.pt2``
   package, no Python per call — the fastest form at batch 1 on a CPU; :mod:`~inhernet.optimize.aot`).

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

The package: :mod:`~inhernet.optimize.forms` (the inference modules), :mod:`~inhernet.optimize.timing`
(side-by-side timing), :mod:`~inhernet.optimize.capture` (what the model does on the example, seen by
hooks), :mod:`~inhernet.optimize.batchnorm` (pairing and folding), :mod:`~inhernet.optimize.build`
(the passes and :func:`optimize_for_inference`), :mod:`~inhernet.optimize.aot` (ahead-of-time compilation), :mod:`~inhernet.optimize.report` (the report).
"""

from .aot import AotCompiledModel
from .build import COMPILE_OPTIONS, as_trained, optimize_for_inference
from .forms import (LAYOUTS, FactorisedConv2d, GatedConv2d, GatedLinear, HeadMixer, InOutLinear, SharedInputProduct,
                    SharedInputProjection)
from .report import (DEFAULT_MIN_SAVING, DEFAULT_TOLERANCE, LONE_LAYER, PER_LAYER, PLAIN, REPORT_ATTR, LayerDecision,
                     OptimizationReport, SharedInputGroup)
from .timing import CLOCKS, default_clock, time_candidates

__all__ = [
    "AotCompiledModel",
    "COMPILE_OPTIONS",
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
