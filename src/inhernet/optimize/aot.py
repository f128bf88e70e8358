"""Ahead-of-time compilation of an optimised model: ``optimize_for_inference(..., compile="aot")``.

``torch.export`` captures the model's graph at the example's shapes and AOTInductor compiles it into a
package (a ``.pt2`` file: generated C++, compiled, and the weights), which is loaded back and wrapped
as an ``nn.Module`` (:class:`AotCompiledModel`). Unlike ``torch.compile``, nothing runs in Python per
call — no guard check over every parameter, no graph dispatch — which at batch 1 on a CPU is a large
share of a small network's time: resnet56 → InherNet rank 8, H = 3 with heads that differ, batch 1,
one thread, 1.32× the eager teacher under ``torch.compile`` (C++ wrapper) against 1.73× as a package
(``benchmarks/bench_compile_options.py``, docs/benchmarks/compile_options.md). The price: the package
takes the example's shapes only (another batch size is refused with the fix: optimise again with it),
and compiling takes tens of seconds (a CNN's two memory layouts are each compiled and timed).

The package is a deployment artefact of its own: ``torch._inductor.aoti_load_package(path)`` loads it
without this library (and AOTInductor's C++ runtime without Python); ``package_path`` keeps it.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..utils import model_inputs, nested_tensors

__all__ = ["AotCompiledModel", "aot_compile", "package_file"]


def _signature(tensors: list[Tensor]) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.device.type) for t in tensors]


class AotCompiledModel(nn.Module):
    """A model compiled ahead of time by AOTInductor, loaded from its package (``package_path``).

    Called like the model it was compiled from, with inputs of the example's shapes, dtypes and
    device; other shapes are refused with a :class:`~inhernet.errors.ConfigError` that names them
    (the compiled code is specialised to the example's). It holds no parameters of its own (the
    weights are inside the package), so ``state_dict()`` is empty and it cannot be trained."""

    def __init__(self, runner: Any, package_path: Path | None, example_args: tuple, example_kwargs: dict) -> None:
        super().__init__()
        self._runner = runner
        self.package_path = package_path
        self._expected = _signature(nested_tensors((example_args, example_kwargs)))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        got = _signature(nested_tensors((args, kwargs)))
        if got != self._expected:
            raise ConfigError(
                f"this model was compiled ahead of time for inputs {self._shown(self._expected)}; got "
                f"{self._shown(got)}. A package takes the example's shapes only: optimise again with an "
                "example of the shape you serve, or use compile=True (torch.compile recompiles per shape).")
        return self._runner(*args, **kwargs)

    @staticmethod
    def _shown(sig: list[tuple]) -> str:
        return ", ".join(f"{tuple(s)} {str(d).removeprefix('torch.')} on {dev}" for s, d, dev in sig) or "none"

    def extra_repr(self) -> str:
        return f"package={self.package_path or '(temporary, removed after loading)'}"


def _compile_and_load(exported: Any, path: Path) -> Any:
    """AOTInductor: ``exported`` compiled into the package ``path``, loaded back (its runner). torch
    2.13 warns about its own use of a deprecated pytree class (``LeafSpec``) on the way, which says
    nothing to the user: that one warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path))
        return torch._inductor.aoti_load_package(str(path))


def package_file(package_path: str | Path) -> Path:
    """``package_path`` as the path of a new package file, checked before any work: a ``.pt2`` name
    that is not there yet (an existing file is never overwritten)."""
    path = Path(package_path)
    if path.suffix != ".pt2":
        raise ConfigError(f"package_path={str(package_path)!r}: an AOTInductor package is a .pt2 file; "
                          "give a path ending in .pt2.")
    if path.exists():
        raise ConfigError(f"package_path={str(package_path)!r} exists; remove it or give another path "
                          "(a package is never written over a file).")
    return path


def aot_compile(model: nn.Module, example_input: Any, package_path: str | Path | None = None) -> AotCompiledModel:
    """``model`` exported at ``example_input``'s shapes and compiled by AOTInductor into a package,
    loaded back (:class:`AotCompiledModel`). ``package_path``: where the ``.pt2`` file is written
    (kept); default a temporary file, removed once loaded. A model ``torch.export`` cannot capture
    (data-dependent control flow, unsupported Python) raises a ConfigError that says so."""
    args, kwargs = model_inputs(model, example_input)
    try:
        exported = torch.export.export(model, tuple(args), kwargs or None, strict=False)
    except Exception as err:  # noqa: BLE001 - export's failures have many types; name the way out
        raise ConfigError(f"compile='aot': torch.export could not capture this model ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); use compile=True (torch.compile "
                          "runs what it cannot capture in Python).") from err
    if package_path is not None:
        path = package_file(package_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        runner = _compile_and_load(exported, path)
        return AotCompiledModel(runner, path, tuple(args), kwargs)
    with tempfile.TemporaryDirectory(prefix="inhernet-aot-") as tmp:
        path = Path(tmp) / "model.pt2"
        runner = _compile_and_load(exported, path)
    return AotCompiledModel(runner, None, tuple(args), kwargs)
