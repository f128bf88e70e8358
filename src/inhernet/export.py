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

from .errors import ConfigError, DependencyError
from .utils import atomic_write

__all__ = ["ExportDependencyError", "OnnxModule", "check_opset", "export_onnx"]

#: largest |ONNX Runtime − PyTorch| accepted by the check, relative to max |PyTorch output|
CHECK_TOLERANCE = 1e-4
#: the lowest ONNX opset asked for that is tried at all: the exporter writes opset 18 and converts
#: down from there; below 7 (2018) no converter path exists for these models
MIN_OPSET = 7


class ExportDependencyError(DependencyError):
    """A package the ONNX export needs is not installed (a :class:`inhernet.errors.DependencyError`,
    so also an ``ImportError``, as before)."""


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportDependencyError(f"ONNX export needs {', '.join(missing)}: pip install 'inhernet[export]' "
                          "(onnx, onnxscript, onnxruntime)")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what the exporter logs that is not about the user's model: notices that torchvision
    (not a dependency) is missing, and pytree deprecation warnings raised inside torch."""
    # torch.onnx: notices about torchvision; onnxscript's version converter: a warning with a full
    # traceback when it cannot convert to the asked opset (export_onnx reports that itself)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript.version_converter")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _dynamic_shapes(example: Tensor, dynamic_spatial: bool) -> tuple[dict[int, Any], ...]:
    """``torch.export`` dynamic dimensions of the single input: the batch, and H, W when asked."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if dynamic_spatial:
        if example.dim() != 4:
            raise ConfigError(f"dynamic_spatial needs an N×C×H×W input, got shape {tuple(example.shape)}")
        dims.update({2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)})
    return (dims,)


def check_opset(opset: Any) -> None:
    """ConfigError unless ``opset`` is an int between :data:`MIN_OPSET` and the newest opset the
    installed ``onnx`` knows (whether the model converts to it is only known after the export)."""
    newest = _newest_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not (MIN_OPSET <= opset <= newest):
        raise ConfigError(f"opset={opset!r} cannot be written: give an ONNX opset from {MIN_OPSET} to {newest} (the "
                          "installed onnx's newest), or leave it out for the exporter's default (18).")


def _newest_opset() -> int:
    try:
        import onnx

        return int(onnx.defs.onnx_opset_version())
    except ImportError:  # the export itself reports the missing package
        return 10**6


def _check_example(model: nn.Module, example: Tensor) -> None:
    """ConfigError when the example input is empty or the model cannot run on it, before exporting
    (the exporter would fail with a long trace far from the cause)."""
    if example.numel() == 0 or any(d < 1 for d in example.shape):
        raise ConfigError(f"the example input has shape {tuple(example.shape)}: every size must be at least 1.")
    try:
        with torch.no_grad():
            model(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ConfigError(f"the model cannot run on an input of shape {tuple(example.shape)} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); give the input shape the model takes "
                          "(on the command line: --input-shape C H W).") from err


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor, *, dynamic_spatial: bool = False,
                check: bool = True, opset: int | None = None, optimize: bool = True) -> dict[str, Any]:
    """Write ``model`` (evaluated in eval mode; its own mode is restored) to the ONNX file ``path``.

    ``example`` is one input tensor (its batch size is made dynamic; with ``dynamic_spatial`` also
    its height and width). With ``optimize`` (default) what is written is
    :func:`inhernet.optimize_for_inference` of the model for ``example`` (heads folded where no
    gate runs, layers not faster factorised multiplied back, BatchNorm folded; contiguous layout);
    ``optimize=False`` writes the model's modules as they are. With ``check`` (default) the file is
    run in ONNX Runtime on a new random input with a different batch size and compared with the
    *original* model in PyTorch; a difference above ``CHECK_TOLERANCE`` × max |output| raises
    RuntimeError. The file is written beside ``path`` and moved there only once checked, so a failed
    export leaves an existing ``path`` as it was. Returns ``{"path", "bytes", "opset",
    "max_abs_diff", "optimized"}`` (``max_abs_diff`` None without the check; ``optimized`` the
    :class:`inhernet.optimize.OptimizationReport`, or None).

    ``opset`` outside :func:`check_opset`'s range, an opset the model cannot be converted to, an
    empty example and an example the model cannot run on raise ``ConfigError``; nothing is written.
    """
    _require("onnx", "onnxscript", *(["onnxruntime"] if check else []))
    if not isinstance(example, Tensor):
        raise ConfigError(f"example must be one input tensor, got {type(example).__name__}")
    if opset is not None:
        check_opset(opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    diff = None
    model.eval()
    try:
        _check_example(model, example)
        target, report = model, None
        if optimize:
            from .optimize import REPORT_ATTR, optimize_for_inference

            # the timings of eager PyTorch do not carry over to ONNX Runtime's layouts: keep NCHW
            target = optimize_for_inference(model, example, memory_format="contiguous")
            report = getattr(target, REPORT_ATTR)
        with _quiet_exporter():
            program = torch.onnx.export(target, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=_dynamic_shapes(example, dynamic_spatial),
                                        input_names=["input"], output_names=["output"], verbose=False)
        opset_used = _opset_of(program)
        if opset is not None and opset_used != opset:
            raise ConfigError(f"opset={opset}: the exporter could not convert this model to opset {opset} (some of "
                              f"its operators have no opset-{opset} form; it stayed at {opset_used}); give a higher "
                              f"opset ({opset_used} works) or leave it out. Nothing was written.")

        def write_checked(tmp: Path) -> None:
            """Save the program to the temporary file and check it there: a file that computes
            something else never replaces ``path``."""
            nonlocal diff
            program.save(str(tmp))
            diff = _check(model, tmp, example) if check else None

        atomic_write(path, write_checked)
    finally:
        model.train(was_training)
    return {"path": str(path), "bytes": path.stat().st_size, "opset": opset_used, "max_abs_diff": diff,
            "optimized": report}


def _opset_of(program: Any) -> int | None:
    """The default-domain opset an ONNX program was written in."""
    return program.model.opset_imports.get("", program.model.opset_imports.get("ai.onnx"))


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
