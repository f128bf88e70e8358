"""Export a model (an InherNet or any dense one) to ONNX, checked against PyTorch with ONNX Runtime.

InherNet layers are plain tensor programs (a conv / matmul down, a softmax gate, one matmul over
the concatenated heads), so they export with PyTorch's own exporter (``torch.onnx.export``, the
``torch.export``-based one) and need no custom operator: any ONNX runtime can serve the result.
:func:`export_onnx` exports with a dynamic batch dimension (and, optionally, dynamic height and
width for CNNs), then runs the file in ONNX Runtime on a fresh input of another batch size and
compares with PyTorch, so a file that computes something else is never written silently.

    >>> export_onnx(model, "model.onnx", torch.randn(1, 3, 32, 32))
    {'path': 'model.onnx', 'max_abs_diff': 4e-08, ...}

Needs ``onnx`` and ``onnxscript`` (the exporter) and ``onnxruntime`` (the check):
``pip install inhernet[export]``. Models with one tensor input (image classifiers, the zoo); for
Hugging Face models use their own export tooling.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConfigError

__all__ = ["ExportDependencyError", "OnnxModule", "export_onnx"]

#: largest |ONNX Runtime − PyTorch| accepted by the check, relative to max |PyTorch output|
CHECK_TOLERANCE = 1e-4


class ExportDependencyError(ImportError):
    """A package the ONNX export needs is not installed."""


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportDependencyError(f"ONNX export needs {', '.join(missing)}: pip install 'inhernet[export]' "
                          "(onnx, onnxscript, onnxruntime)")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what the exporter logs that is not about the user's model: notices that torchvision
    (not a dependency) is missing, and pytree deprecation warnings raised inside torch."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes(example: Tensor, dynamic_spatial: bool) -> tuple[dict[int, Any], ...]:
    """``torch.export`` dynamic dimensions of the single input: the batch, and H, W when asked."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if dynamic_spatial:
        if example.dim() != 4:
            raise ConfigError(f"dynamic_spatial needs an N×C×H×W input, got shape {tuple(example.shape)}")
        dims.update({2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)})
    return (dims,)


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor, *, dynamic_spatial: bool = False,
                check: bool = True, opset: int | None = None) -> dict[str, Any]:
    """Write ``model`` (evaluated in eval mode; its own mode is restored) to the ONNX file ``path``.

    ``example`` is one input tensor (its batch size is made dynamic; with ``dynamic_spatial`` also
    its height and width). With ``check`` (default) the file is run in ONNX Runtime on a new random
    input with a different batch size and compared with PyTorch; a difference above
    ``CHECK_TOLERANCE`` × max |output| raises RuntimeError. The file is written beside ``path`` and
    moved there only once checked, so a failed export leaves an existing ``path`` as it was. Returns
    ``{"path", "bytes", "opset", "max_abs_diff"}`` (``max_abs_diff`` None without the check).
    """
    _require("onnx", "onnxscript", *(["onnxruntime"] if check else []))
    if not isinstance(example, Tensor):
        raise ConfigError(f"example must be one input tensor, got {type(example).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=_dynamic_shapes(example, dynamic_spatial),
                                        input_names=["input"], output_names=["output"], verbose=False)
        program.save(str(partial))
        diff = _check(model, partial, example) if check else None
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        model.train(was_training)
    opset_used = program.model.opset_imports.get("", program.model.opset_imports.get("ai.onnx"))
    return {"path": str(path), "bytes": path.stat().st_size, "opset": opset_used, "max_abs_diff": diff}


class OnnxModule(nn.Module):
    """An exported file run by ONNX Runtime (CPU) behind the ``nn.Module`` call interface: tensor
    in, tensor out, so it can be evaluated or timed beside the PyTorch models
    (e.g. :func:`inhernet.train.measure_latency`). No parameters, no gradients."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        super().__init__()
        _require("onnxruntime")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0])


def _check(model: nn.Module, path: Path, example: Tensor) -> float:
    """Max |ONNX Runtime − PyTorch| on a fresh input of another batch size; RuntimeError when above
    the tolerance."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((example.shape[0] + 2, *example.shape[1:]), generator=g, dtype=example.dtype)
    with torch.no_grad():
        ref = model(x)
    out = OnnxModule(path)(x)
    diff = float((out - ref).abs().max())
    scale = float(ref.abs().max().clamp_min(1e-12))
    if not diff <= CHECK_TOLERANCE * scale:
        raise RuntimeError(f"the exported ONNX model differs from PyTorch by {diff:.3g} (outputs up to "
                           f"{scale:.3g}) on a batch of {x.shape[0]}; nothing was written")
    return diff
