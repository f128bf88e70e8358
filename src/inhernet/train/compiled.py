"""``torch.compile`` for the training steps of :class:`~inhernet.train.module.DistillModule` (vision
:func:`~inhernet.train.fit`, ``inhernet compare``) and :class:`~inhernet.train.text.TextTaskModule`
(Hugging Face :func:`~inhernet.train.finetune.finetune`).

What is compiled: the trained model's forward (and, through AOT autograd, its backward) inside the
training step; the loss, the metrics, the optimiser and the evaluation passes stay eager (evaluation
runs under ``no_grad`` in eval mode, a second graph per batch shape for a small share of the time).
Lightning's own recipe (``trainer.fit(torch.compile(lightning_module))``) compiles the whole
``training_step``, logging and metric updates included, which breaks the graph at every ``self.log``;
compiling the network alone keeps one graph per step.

Why a wrapper held beside the model rather than ``torch.compile(model)`` in its place: the compiled
module (``OptimizedModule``) registers the model under ``_orig_mod``, so its ``state_dict`` keys would
carry an ``_orig_mod.`` prefix. :class:`CompiledModel` keeps the compiled wrapper outside the
registered children (not in the checkpoint, not moved, not wrapped by DDP); the LightningModule's
``self.model`` stays the plain module, so checkpoints hold the usual ``model.`` keys, load into an
uncompiled model, and the returned / saved model is the plain module. The wrapper shares the model's
parameters, so a restored checkpoint (resume) is what the compiled code runs.

Shapes: ``dynamic=False`` (the default here) compiles one static graph per input shape (a last,
smaller batch adds one), so a step's kernels depend on its shapes alone and a resumed run computes
exactly what an uninterrupted one does; padded classification batches, whose length varies from
batch to batch, use ``dynamic=None`` (torch's automatic dynamic shapes) instead.

Modes (:data:`~inhernet.train.validate.COMPILE_MODES`): ``"default"``; ``"reduce-overhead"`` adds
CUDA graphs (one replay per step instead of hundreds of kernel launches: the many small kernels of
the factorised layers are what it removes), only meaningful on a CUDA device with static shapes, so
on any other device it compiles as ``"default"`` (with a warning); ``"max-autotune"`` also searches
matmul / convolution kernels (long first compile; without CUDA its CUDA-graph part is dropped).
The first steps are slow (compilation: seconds on a CPU for a small network, a minute or more for a
transformer); measure speed after them (``benchmarks/bench_train_step.py``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["CompiledModel", "device_compile_mode"]


def device_compile_mode(mode: str, device: torch.device) -> str:
    """The ``torch.compile`` mode used on ``device`` for a requested ``mode``: CUDA graphs
    (``reduce-overhead``, and the CUDA-graph part of ``max-autotune``) exist on CUDA devices only,
    so elsewhere ``reduce-overhead`` becomes ``default`` (warned) and ``max-autotune`` becomes
    ``max-autotune-no-cudagraphs``."""
    if torch.device(device).type == "cuda":
        return mode
    if mode == "reduce-overhead":
        warnings.warn(f"compile='reduce-overhead' adds CUDA graphs, which need a CUDA device; training on "
                      f"{torch.device(device).type}, it compiles with mode 'default' instead", stacklevel=2)
        return "default"
    return "max-autotune-no-cudagraphs" if mode == "max-autotune" else mode


class CompiledModel:
    """What a training step calls instead of ``model``: its ``torch.compile`` wrapper, or the model
    itself when ``mode`` is ``None`` (eager).

    Not an ``nn.Module``, so a LightningModule holding one does not register the wrapper: see the
    module docstring. :meth:`setup` builds the wrapper on the training device (Lightning's
    ``on_fit_start``, after the strategy has moved and wrapped the model; a ``ddp_spawn`` worker
    builds its own, the wrapper is never pickled).
    """

    def __init__(self, mode: Optional[str], *, dynamic: Optional[bool] = False) -> None:
        self.mode, self.dynamic = mode, dynamic
        self._compiled: Optional[Callable[..., Any]] = None

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Compile ``model`` for ``device`` (lazily: the first call traces and compiles)."""
        self._compiled = None
        if self.mode is not None:
            self._compiled = torch.compile(model, mode=device_compile_mode(self.mode, device), dynamic=self.dynamic)

    def __call__(self, model: nn.Module) -> Callable[..., Any]:
        """The callable that runs ``model``: the compiled wrapper once :meth:`setup` made one."""
        return self._compiled if self._compiled is not None else model

    def __getstate__(self) -> dict:
        return {"mode": self.mode, "dynamic": self.dynamic, "_compiled": None}
