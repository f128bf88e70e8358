"""Small helpers shared across the package that change nothing the caller owns.

``stable_hash`` is the one identity hash of runs and caches (compare's runs, the teacher cache,
``finetune`` / ``train-teacher`` run records). ``eval_mode`` runs a block with a module in eval mode and puts every submodule back in the mode it
had (``module.train(was_training)`` would not: it sets one flag on all of them), so library code
can evaluate, calibrate or distil from a model without leaving a trace on it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import hashlib
import json
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from .targets import is_transformers_model

__all__ = ["atomic_write", "call_model", "model_inputs", "count_parameters", "cpu_name", "did_you_mean", "eval_mode",
           "machine_record", "markdown_table", "nested_tensors", "on_device", "read_json", "set_submodule", "write_json",
           "sha256_file", "stable_hash", "state_dict_problems", "tensor_digest", "text_table", "tied_names",
           "weights_digest"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, each shared (tied) tensor counted once (``nn.Module.parameters``
    yields a tied tensor once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """``name → every name of the same tensor`` for the parameters and buffers registered under
    several names (tied: GPT-2's LM head and word embeddings); untied tensors are not in it."""
    by_id: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), []).append(name)
    return {n: names for names in by_id.values() if len(names) > 1 for n in names}


def state_dict_problems(model: nn.Module, state: Mapping[str, Any],
                        shared: Optional[Mapping[str, list[str]]] = None, *, examples: int = 3) -> list[str]:
    """What keeps ``state`` from loading strictly into ``model``, as phrases for an error message:
    ``"N shape mismatch(es), e.g. name: saved vs model; ..."``, ``"N missing key(s), e.g. ..."``,
    ``"N unexpected key(s), e.g. ..."`` (each with up to ``examples`` names), or ``[]`` when every
    entry of ``model.state_dict()`` is in ``state`` with its shape and nothing else is.

    The one strict check of saved weights against a model, so that every loader reports a misfit
    the same way (and before ``load_state_dict``, whose message is long and names no file).
    ``shared`` maps the name of a tensor registered under several names to all of them (default
    :func:`tied_names` of ``model``): such a tensor counts as present when any one of its names is
    in ``state``, as in a file saved without duplicate tensors. A value of ``state`` that is not a
    tensor counts as a shape mismatch."""
    own = model.state_dict(keep_vars=True)
    shared = tied_names(model) if shared is None else shared
    missing = [k for k in own if k not in state and not any(n in state for n in shared.get(k, ()))]
    unexpected = [k for k in state if k not in own]
    shapes = []
    for k, t in own.items():
        if k not in state:
            continue
        got = getattr(state[k], "shape", None)
        if got is None:
            shapes.append(f"{k}: a {type(state[k]).__name__}, not a tensor")
        elif tuple(got) != tuple(t.shape):
            shapes.append(f"{k}: {tuple(got)} vs {tuple(t.shape)}")
    problems = []
    for names, what in ((shapes, "shape mismatch(es)"), (missing, "missing key(s)"),
                        (unexpected, "unexpected key(s)")):
        if names:
            sep = "; " if names is shapes else ", "
            problems.append(f"{len(names)} {what}, e.g. {sep.join(names[:examples])}")
    return problems


def did_you_mean(name: Any, valid: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid`` to ``name``, or ``""`` when none is close:
    the hint every "unknown key / name" message carries."""
    close = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=cutoff)
    if not close:
        return ""
    return f" (did you mean {' or '.join(map(repr, close))}?)"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any] | str | bytes) -> Path:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one: ``write``
    (a function given the temporary path, or the text / bytes themselves) writes ``path.tmp``, which
    then replaces ``path``. The temporary file is removed if writing fails."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(write, str):
            tmp.write_text(write)
        elif isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` (a qualified name, not ``""``) of ``model`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def nested_tensors(obj: Any) -> list[Tensor]:
    """The tensors of a (nested) output: a tensor, tuple/list, dict or dict-like (ModelOutput)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping) or hasattr(obj, "values") and callable(obj.values):
        return [t for v in obj.values() for t in nested_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in nested_tensors(v)]
    return []


def call_model(model: nn.Module, example: Any) -> Any:
    """Run ``model`` on one example or batch, unpacked by :func:`model_inputs`: the one rule by which
    counting, diagnostics, optimisation and calibration call a model."""
    args, kwargs = model_inputs(model, example)
    return model(*args, **kwargs)


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
    """``(args, kwargs)`` that a ``batch`` (a calibration batch, an example input) is passed to ``model`` with.

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
        if len(batch) == 2 and isinstance(batch[1], Tensor) and not is_transformers_model(model):
            second = _second_positional(model)
            if second == "none" or (second == "optional" and _is_class_labels(batch[1], batch[0])):
                return (batch[0],), {}
        return tuple(batch), {}
    return (batch,), {}


def text_table(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    """Lines of a plain-text table: columns padded to their widest cell, those in ``left`` left-aligned
    (names), the others right-aligned (numbers), a dashed rule under the header."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        parts = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table (``|`` inside cells escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short SHA-256 of a JSON-able object (sorted keys): the cache / run identity."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model): ...`` — ``model`` is in eval mode inside the block; afterwards each of
    its submodules has its own earlier ``training`` flag again (also when the block raises)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (parents created; non-JSON values as ``str``)."""
    import json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, json.dumps(obj, indent=2, default=str))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable (a file cut short by a kill)."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def on_device(module: nn.Module, device: torch.device, *, memory_format: Optional[torch.memory_format] = None
              ) -> nn.Module:
    """``module`` itself when its parameters are on ``device`` already, else a private copy moved
    there (and put in ``memory_format``): a frozen teacher follows the training device without the
    caller's object ever being moved."""
    import copy

    ref = next(iter(module.parameters()), None)
    if ref is None or ref.device == torch.device(device):
        return module
    private = copy.deepcopy(module).to(device)
    if memory_format is not None:
        private.to(memory_format=memory_format)
    return private


def tensor_digest(tensors: Iterable[Tensor]) -> str:
    """Short SHA-256 of tensors' values (and shapes / dtypes), in the given order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def weights_digest(model: nn.Module) -> str:
    """Short SHA-256 of a model's state dict (names, shapes, dtypes and values, in name order): two
    models have the same digest exactly when they hold the same weights bit for bit. The comparison
    runner records its teacher's digest in every run, so a run counts only with the teacher it was
    trained against."""
    sd = model.state_dict()
    names = sorted(sd)
    h = hashlib.sha256(repr(names).encode())
    h.update(tensor_digest(sd[n] for n in names).encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """``/proc/cpuinfo`` (empty where there is none), read once per process: the CPU does not change."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """This machine's CPU model (``/proc/cpuinfo``'s "model name"; else what :mod:`platform` says)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_isa() -> str:
    """The widest x86 vector extension this CPU offers (the one oneDNN and ATen pick kernels for)."""
    flags = next((ln.split(":", 1)[1].split() for ln in _cpuinfo().splitlines() if ln.startswith("flags")), [])
    for isa in ("avx512f", "avx2", "avx", "sse4_2"):
        if isa in flags:
            return isa
    return platform.machine()


def machine_record() -> dict:
    """What a CPU training's exact numbers depend on besides its inputs: CPU model, vector extension,
    intra-op threads and torch build. Kept with a trained teacher, so that a retraining elsewhere can
    say why it does not repeat (floating-point sums differ between these)."""
    return {"cpu": cpu_name(), "isa": _cpu_isa(), "threads": torch.get_num_threads(), "torch": torch.__version__}
