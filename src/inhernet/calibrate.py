"""Activation statistics for the activation-aware (``init="whitened"``) initialisation.

A truncated SVD of a weight ``W`` keeps the directions with the most *weight* energy, whatever
inputs the layer actually sees; on transformers, whose activations concentrate in a few channels,
that loses what matters (a plain rank-r SmolLM2 or MiniLM is broken before fine-tuning). SVD-LLM's
fix: with ``G = E[x xᵀ]`` the layer's input second moment and ``L`` its Cholesky factor
(``G = L Lᵀ``), ``‖(W − W_r) x‖`` averaged over the data equals ``‖(W − W_r) L‖_F``, so the best
rank-r map for those inputs is the truncated SVD of ``W L``, mapped back by ``L⁻¹``.

:func:`input_second_moments` runs the teacher on calibration batches and accumulates ``G`` for the
chosen layers with forward pre-hooks; :func:`cholesky_factor` damps and factorises it. For a Conv2d
the "inputs" are the patches its kernel sees (:func:`layer_inputs`, the columns of ``F.unfold``), so
``G`` is ``C_in·k·k`` square and matches the ``C_out × C_in·k·k`` matrix the SVD factorises.

Calibration takes what users have at hand: a list of input tensors, a ``DataLoader`` of tensors or
of ``(input, label)`` pairs (the labels are ignored), dicts of keyword inputs for Hugging Face models
(:func:`inhernet.hf.calibration.text_calibration` builds them from text), or one tensor or dict as a single
batch; :func:`model_inputs` states the rule. Batches with NaN/Inf, a teacher whose activations become
non-finite on them, and an empty calibration set raise a ``ConfigError`` that names the batch and the
fix — a non-finite second moment would otherwise surface as an obscure Cholesky failure.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError

#: relative damping added to the diagonal of ``G`` before the Cholesky factorisation (inputs that
#: never vary, e.g. a dead channel, would make ``G`` singular)
DAMPING = 1e-4

#: rows converted to float64 at a time when accumulating ``xᵀx`` (bounds the float64 copy of a
#: large batch of Conv2d patches to ~128 MiB)
_ROWS_PER_CHUNK = 1 << 24


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows ``(n, d_in)`` that ``module``'s weight matrix multiplies for the input ``x``: the
    feature vectors of a Linear / Conv1D, the ``C_in·k·k`` patches of a Conv2d (padded as its
    forward pads them: zeros, reflect, replicate or circular, ``"same"`` included), in the order
    of ``weight.reshape(C_out, -1)``."""
    if isinstance(module, nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (N, d_in, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def _gram(rows: Tensor) -> Tensor:
    """``rowsᵀ rows`` in float64, converting a bounded number of rows at a time."""
    step = max(1, _ROWS_PER_CHUNK // max(1, rows.shape[1]))
    total = None
    for i in range(0, rows.shape[0], step):
        chunk = rows[i:i + step].double()
        total = chunk.T @ chunk if total is None else total + chunk.T @ chunk
    return total


def _is_class_labels(item: Any, first: Any) -> bool:
    """Whether ``item`` looks like the class labels of the batch ``first``: a 1-D integer tensor with
    one entry per sample."""
    return (isinstance(item, Tensor) and isinstance(first, Tensor) and first.dim() > 0 and item.dim() == 1
            and item.shape[0] == first.shape[0] and not item.is_floating_point() and not item.is_complex()
            and item.dtype != torch.bool)


def _second_positional(model: nn.Module) -> str:
    """What ``model``'s forward does with a second positional argument: ``"required"``,
    ``"optional"`` or ``"none"`` (``"optional"`` when the signature cannot be read)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature
        return "optional"
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return "optional"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return "none"
    return "required" if positional[1].default is inspect.Parameter.empty else "optional"


def model_inputs(model: nn.Module, batch: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` that a calibration ``batch`` is passed to ``model`` with.

    The rule:

    * a mapping (a dict, a tokenizer's ``BatchEncoding``) is keyword arguments: ``model(**batch)``
      (Hugging Face models);
    * a tensor is the input: ``model(batch)``;
    * a tuple or list is positional arguments, ``model(*batch)``, with one exception, for a plain
      ``nn.Module`` (not a Hugging Face ``PreTrainedModel``): a pair ``(x, y)`` with ``y`` a tensor,
      as a ``DataLoader`` over a ``TensorDataset(x, y)`` yields it, is an input and its targets,
      run as ``model(x)`` with ``y`` unused — unless the model's forward needs a second input: it
      requires a second positional argument, or it accepts an optional one and ``y`` is not a 1-D
      integer tensor of class labels. To be explicit, give dicts of keyword inputs.
    """
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        from .hf import is_hf_model

        if len(batch) == 2 and isinstance(batch[1], Tensor) and not is_hf_model(model):
            second = _second_positional(model)
            if second == "none" or (second == "optional" and _is_class_labels(batch[1], batch[0])):
                return (batch[0],), {}
        return tuple(batch), {}
    return (batch,), {}


def _tensors(args: tuple, kwargs: dict) -> Iterator[tuple[str, Tensor]]:
    """``(where, tensor)`` of every tensor argument, ``where`` naming it for a message."""
    for i, value in enumerate(args):
        if isinstance(value, Tensor):
            yield f"positional input {i}", value
    for key, value in kwargs.items():
        if isinstance(value, Tensor):
            yield f"input {key!r}", value


def _device(model: nn.Module) -> torch.device | None:
    p = next(iter(model.parameters()), None)
    return None if p is None else p.device


def _prepare(model: nn.Module, batch: Any, index: int) -> tuple[tuple, dict]:
    """The batch's arguments, on the model's device, checked to be finite."""
    args, kwargs = model_inputs(model, batch)
    for where, t in _tensors(args, kwargs):
        if t.is_floating_point() or t.is_complex():
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise ConfigError(
                    f"calibration batch {index} has {bad} non-finite value(s) (NaN/Inf) in its {where}; "
                    "calibration batches must be real, finite inputs: drop or repair those samples "
                    "(missing values, a failed normalisation) before passing calibration=."
                )
    device = _device(model)
    if device is not None:
        args = tuple(a.to(device) if isinstance(a, Tensor) else a for a in args)
        kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    return args, kwargs


def _batches(calibration: Any) -> Iterable[Any]:
    """The calibration batches: an iterable of batches, or a single tensor / mapping as one batch."""
    if isinstance(calibration, (Tensor, Mapping)):
        return [calibration]
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise ConfigError(
            f"calibration={type(calibration).__name__!r} is not a collection of batches; give a list of input "
            "tensors, a DataLoader (of tensors or (input, label) pairs), or dicts of keyword inputs for a "
            "Hugging Face model (see inhernet.hf.calibration.text_calibration)."
        )
    return calibration


@torch.no_grad()
def input_second_moments(model: nn.Module, layers: dict[str, nn.Module], calibration: Any) -> dict[str, Tensor]:
    """``{name: E[x xᵀ]}`` (float64, ``d_in × d_in``) of each layer's input (:func:`layer_inputs`)
    over every position of every calibration batch.

    ``calibration`` is an iterable of batches (a list, a ``DataLoader``), or one tensor or dict taken
    as a single batch; :func:`model_inputs` says how a batch is passed to the model (dicts as
    keywords, ``(input, label)`` pairs as the input alone). Tensors are moved to the model's device.
    The model runs in eval mode and is restored after.

    Raises ``ConfigError`` when there are no batches, when a batch holds NaN/Inf, when a layer's
    input becomes non-finite on a batch (the teacher overflows or produces NaN there), when the
    model cannot run a batch, or when a layer is never reached.
    """
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(layers, 0)
    index = -1  # the batch being run, for messages

    def hook(name: str):
        def accumulate(module: nn.Module, args: tuple) -> None:
            rows = layer_inputs(module, args[0].detach())
            if rows.shape[0] == 0:  # an empty batch adds nothing
                return
            gram = _gram(rows)
            if not torch.isfinite(gram).all():
                raise ConfigError(
                    f"calibration batch {index}: the input of layer {name!r} is non-finite (NaN/Inf): "
                    "the teacher overflows or produces NaN on this batch. Check "
                    "that the batch is preprocessed like the teacher's training data, that the teacher's "
                    "weights are finite, and run it in float32 rather than float16."
                )
            sums[name] = sums[name] + gram if name in sums else gram
            counts[name] += rows.shape[0]
        return accumulate

    batches = _batches(calibration)
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(batches):
            args, kwargs = _prepare(model, batch, index)
            try:
                model(*args, **kwargs)
            except ConfigError:
                raise
            except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as err:
                raise ConfigError(
                    f"calibration batch {index} ({_describe(batch)}) cannot be run through the model: "
                    f"{type(err).__name__}: {err}. Give batches the model's forward accepts: a tensor, an "
                    "(input, label) pair, a tuple of positional inputs, or a dict of keyword inputs."
                ) from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if index < 0:
        raise ConfigError("the calibration data is empty (no batches); init='whitened' needs a few batches of "
                          "real inputs, e.g. calibration=[x[:64], x[64:128]] or a DataLoader over training data.")
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise ConfigError(f"the calibration batches never reached {len(missing)} layer(s) (e.g. {missing[0]!r}); "
                          "give batches the model's forward accepts, with samples in them, that run those layers.")
    return {name: sums[name] / counts[name] for name in layers}


def _describe(batch: Any) -> str:
    """A short description of a batch for a message: its type and the shapes of its tensors."""
    if isinstance(batch, Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "a dict with keys " + ", ".join(map(repr, batch))
    if isinstance(batch, (tuple, list)):
        parts = [f"{tuple(b.shape)}" if isinstance(b, Tensor) else type(b).__name__ for b in batch]
        return f"a {type(batch).__name__} of {len(batch)}: " + ", ".join(parts)
    return f"a {type(batch).__name__}"


def cholesky_factor(second_moment: Tensor) -> Tensor:
    """Lower-triangular ``L`` with ``L Lᵀ = G + δ·mean(diag G)·I`` (float64)."""
    g = second_moment.double()
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    damp = DAMPING * g.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.cholesky(g + damp * eye)
