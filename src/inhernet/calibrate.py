"""Running calibration batches through a teacher to measure its layers' input statistics
(``init="whitened"``), in one pass or block by block.

Calibration takes what users have at hand: a list of input tensors, a ``DataLoader`` of tensors or
of ``(input, label)`` pairs (the labels are ignored), dicts of keyword inputs for Hugging Face models
(:func:`inhernet.hf.calibration.text_calibration` builds them from text), or one tensor or dict as a single
batch; :func:`model_inputs` states the rule. Batches with NaN/Inf, a teacher whose activations become
non-finite on them, and an empty calibration set raise a ``ConfigError`` that names the batch and the
fix.

Two ways to collect (``InheritConfig.calibration_mode``; :func:`calibration_plan` picks):

* **one pass** (:class:`OnePass`): hooks on every chosen layer, the whole teacher run once per
  batch; the statistics of all layers are held at once (memory grows with depth);
* **sequential** (:class:`Sequential`, SVD-LLM): the batches are run up to the first of the model's
  repeated blocks and its inputs (and keyword arguments: masks, rotary tables) are kept; then block by
  block: the block's layers' statistics are measured on its cached inputs, the pipeline inherits the
  block, and the *inherited* block's outputs become the next block's inputs. Peak memory is one
  block's statistics + the calibration activations at one block, whatever the depth; a streamed
  checkpoint materialises each block only while it is processed. Layers before the blocks are
  calibrated (and inherited) first; layers after them last, in one pass over the model (in memory
  only: a streamed checkpoint has released its blocks by then).

The math (float64 Gram sums, damped Cholesky) is in :mod:`inhernet.factorise.whitening`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .factorise.whitening import GramAccumulator
from .kinds import LayerKind, kind_of
from .targets import is_transformers_model
from .utils import eval_mode, model_inputs

def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _tensors(args: tuple, kwargs: dict) -> Iterator[tuple[str, Tensor]]:
    """``(where, tensor)`` of every tensor argument, ``where`` naming it for a message."""
    for i, value in enumerate(args):
        if isinstance(value, Tensor):
            yield f"positional input {i}", value
    for key, value in kwargs.items():
        if isinstance(value, Tensor):
            yield f"input {key!r}", value


def _device(model: nn.Module) -> torch.device | None:
    """Where the model's values live (the first real parameter's device; a streamed skeleton's
    parameters on the meta device do not count)."""
    p = next((p for p in model.parameters() if not p.is_meta), None)
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
    if is_transformers_model(model) and "use_cache" not in kwargs and _accepts(model, "use_cache"):
        kwargs["use_cache"] = False  # a key/value cache would grow with every block re-run
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




# ---------------------------------------------------------------------------------------------
# collecting statistics: the walk the pipeline drives


@dataclass
class Unit:
    """One step of the pipeline's walk: the layers inherited at this step and the module (a name
    prefix; ``""`` = the whole model) that must hold real values while it runs (``None``: nothing
    needs to run, the layers' own tensors are enough)."""

    layers: list[str]
    prefix: str | None


@dataclass
class CalibrationRecord:
    """How a calibration ran, for the plan (``InheritPlan.calibration``) and the benchmarks."""

    mode: str
    batches: int = 0
    rows: int = 0  # input rows (positions) the first calibrated layer saw
    blocks: int = 0
    block_list: str | None = None
    peak_statistics_bytes: int = 0  # the most Gram-matrix memory held at once
    peak_activation_bytes: int = 0  # the most cached block-input memory held at once

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Host(Protocol):
    """What a collector needs from the pipeline's weight source: the model (real or a meta skeleton)
    and a way to give a submodule (``prefix``, ``""`` the whole model), or everything but one, real
    values before it runs — at once, or as each module outside ``prefix`` is first called — and to
    drop them again."""

    model: nn.Module

    def materialise(self, prefix: str) -> None: ...

    def materialise_on_use(self, prefix: str) -> AbstractContextManager: ...

    def release_except(self, prefix: str) -> None: ...


#: what the pipeline does with a unit: ``visit(unit, factors)`` inherits its layers (``factors``:
#: layer name → input Cholesky factor, empty without calibration); ``done(unit)`` is called once the
#: unit is final (the sink writes it, a streamed source releases it)
Visit = Callable[[Unit, dict[str, Tensor]], None]
Done = Callable[[Unit], None]


class NoCalibration:
    """No statistics (``init`` svd / random): one unit per layer, nothing runs."""

    mode = "none"

    def __init__(self, layers: list[str]) -> None:
        self.layers = layers
        self.record = None

    def walk(self, host: Host, visit: Visit, done: Done) -> None:
        for name in self.layers:
            unit = Unit([name], None)
            visit(unit, {})
            done(unit)


class _Stop(Exception):
    """Raised by the hook on the first block to stop a forward pass once its inputs are captured."""


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, Mapping):
        return sum(_nbytes(o) for o in obj.values())
    return 0


class _Statistics:
    """Forward pre-hooks that accumulate the input Gram matrix of each chosen layer.

    Linear layers that read the very same input tensor (a transformer's q/k/v projections, a gated
    MLP's gate/up) share one accumulator, so each distinct input's statistics are held once."""

    def __init__(self, model: nn.Module, layers: dict[str, LayerKind]) -> None:
        self.kinds = layers
        self.modules = {name: model.get_submodule(name) for name in layers}
        self.acc = {name: GramAccumulator() for name in layers}
        self.alias: dict[str, str] = {}  # layer → the layer whose accumulator it shares
        self.batch = -1
        self._handles: list[Any] = []
        self._inputs: dict[str, Tensor] = {}  # this batch's input of each linear layer (kept alive)
        self._inputs_batch = -1

    def __enter__(self) -> "_Statistics":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._inputs = {}

    def _owner(self, name: str, x: Tensor) -> str | None:
        """The earlier layer of this batch that read ``x`` itself (a linear kind only), if any."""
        if self._inputs_batch != self.batch:
            self._inputs, self._inputs_batch = {}, self.batch
        if not self.kinds[name].linear:
            return None
        owner = next((n for n, t in self._inputs.items() if t is x), None)
        self._inputs[name] = x
        return owner

    def _hook(self, name: str):
        kind = self.kinds[name]

        def accumulate(module: nn.Module, args: tuple) -> None:
            x = args[0]
            owner = self._owner(name, x)
            if self.acc[name].rows == 0 and name not in self.alias and owner is not None:
                self.alias[name] = self.alias.get(owner, owner)  # same input: share the statistics
                self.acc[name] = self.acc[owner]
            if name in self.alias:
                if owner is None or self.alias.get(owner, owner) != self.alias[name]:
                    raise RuntimeError(f"layer {name!r} no longer reads the input of {self.alias[name]!r} "
                                       "on every batch; cannot share its statistics")
                return
            if not self.acc[name].add(kind.layer_inputs(module, x.detach())):
                raise ConfigError(
                    f"calibration batch {self.batch}: the input of layer {name!r} is non-finite (NaN/Inf): "
                    "the teacher overflows or produces NaN on this batch. Check "
                    "that the batch is preprocessed like the teacher's training data, that the teacher's "
                    "weights are finite, and run it in float32 rather than float16."
                )
        return accumulate

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in {id(a): a for a in self.acc.values()}.values())

    def factors(self, names: Iterable[str] | None = None) -> "Factors":
        """Each layer's (of ``names``, default all) input Cholesky factor, made on first use from
        the sum it consumes (:class:`Factors`)."""
        chosen = {name: self.acc[name] for name in (self.acc if names is None else names)}
        missing = [name for name, a in chosen.items() if a.rows == 0]
        if missing:
            raise ConfigError(f"the calibration batches never reached {len(missing)} layer(s) (e.g. {missing[0]!r}); "
                              "give batches the model's forward accepts, with samples in them, that run those layers.")
        return Factors(chosen)

    def means(self) -> dict[str, Tensor]:
        return {name: acc.mean() for name, acc in self.acc.items()}


class Factors(Mapping):
    """``layer name → input Cholesky factor``, each made when first asked for (consuming its Gram
    sum) and dropped by :meth:`done` once every layer that reads that input is inherited: a block's
    statistics turn into factors one input at a time instead of all at once."""

    def __init__(self, accumulators: dict[str, GramAccumulator]) -> None:
        self._acc = accumulators
        self._made: dict[int, Tensor] = {}
        self._left: dict[int, int] = {}
        for acc in accumulators.values():
            self._left[id(acc)] = self._left.get(id(acc), 0) + 1

    def __getitem__(self, name: str) -> Tensor:
        acc = self._acc[name]
        if id(acc) not in self._made:
            self._made[id(acc)] = acc.factor()
        return self._made[id(acc)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acc)

    def __len__(self) -> int:
        return len(self._acc)

    def done(self, name: str) -> None:
        """``name`` is inherited: its factor is dropped once no other layer still needs it."""
        acc = self._acc.get(name)
        if acc is None:
            return
        self._left[id(acc)] -= 1
        if self._left[id(acc)] == 0:
            self._made.pop(id(acc), None)


def _run_batches(model: nn.Module, calibration: Any, on_batch: Callable[[int], None] | None = None,
                 stop_ok: bool = False, progress: str | None = None) -> int:
    """Run every calibration batch through ``model`` (no grad, eval mode); returns how many.
    ``stop_ok``: a :class:`_Stop` raised by a hook ends the batch's forward pass normally.
    ``progress``: the description of a progress bar over the batches (None: no bar)."""
    index = -1
    batches = _batches(calibration)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(batches, total=total, desc=progress, unit="batch", disable=progress is None, leave=False, delay=1.0)
    for index, batch in enumerate(bar):
        if on_batch is not None:
            on_batch(index)
        args, kwargs = _prepare(model, batch, index)
        try:
            model(*args, **kwargs)
        except _Stop:
            if not stop_ok:
                raise
        except ConfigError:
            raise
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as err:
            raise ConfigError(
                f"calibration batch {index} ({_describe(batch)}) cannot be run through the model: "
                f"{type(err).__name__}: {err}. Give batches the model's forward accepts: a tensor, an "
                "(input, label) pair, a tuple of positional inputs, or a dict of keyword inputs."
            ) from err
    if index < 0:
        raise ConfigError("the calibration data is empty (no batches); init='whitened' needs a few batches of "
                          "real inputs, e.g. calibration=[x[:64], x[64:128]] or a DataLoader over training data.")
    return index + 1


def _measure(model: nn.Module, layers: dict[str, LayerKind], calibration: Any,
             record: CalibrationRecord, progress: bool = False) -> dict[str, Tensor]:
    """Input Cholesky factors of ``layers``, from one pass of the whole ``model`` over the batches."""
    stats = _Statistics(model, layers)
    with torch.no_grad(), eval_mode(model), stats:
        record.batches = _run_batches(model, calibration, on_batch=lambda i: setattr(stats, "batch", i),
                                      progress="calibrating" if progress else None)
    record.peak_statistics_bytes = max(record.peak_statistics_bytes, stats.nbytes)
    record.rows = record.rows or next(iter(stats.acc.values())).rows
    return stats.factors()


class OnePass:
    """Every layer's statistics from the teacher in one pass (hooks on the whole model)."""

    mode = "one_pass"

    def __init__(self, layers: dict[str, LayerKind], calibration: Any, *, progress: bool = False) -> None:
        self.layers, self.calibration, self.progress = layers, calibration, progress
        self.record = CalibrationRecord(self.mode)

    def walk(self, host: Host, visit: Visit, done: Done) -> None:
        host.materialise("")
        factors = _measure(host.model, self.layers, self.calibration, self.record, self.progress)
        unit = Unit(list(self.layers), "")
        visit(unit, factors)
        done(unit)


def find_block_list(model: nn.Module, layer_names: Iterable[str]) -> tuple[str | None, list[str]]:
    """``(name, [])`` of the one ``nn.ModuleList`` of ≥ 2 repeated blocks that holds inherited layers
    (outermost lists only: a mixture-of-experts list inside a block does not count), or
    ``(None, names)`` with the names of every such list when there is not exactly one."""
    names = list(layer_names)
    holding = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) >= 2 and n
               and any(layer.startswith(n + ".") for layer in names)]
    outer = [n for n in holding if not any(n.startswith(o + ".") for o in holding if o != n)]
    return (outer[0], []) if len(outer) == 1 else (None, outer)


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class Sequential:
    """Block by block through the model's list of repeated blocks (SVD-LLM): each block's layers are
    measured on the outputs of the blocks before it, as already inherited."""

    mode = "sequential"

    def __init__(self, model: nn.Module, layers: dict[str, LayerKind], calibration: Any, block_list: str,
                 *, whole_model_ok: bool, progress: bool = False) -> None:
        self.layers, self.calibration, self.block_list, self.progress = layers, calibration, block_list, progress
        self.blocks = [f"{block_list}.{i}" for i in range(len(model.get_submodule(block_list)))]
        self.inside = {b: [n for n in layers if n.startswith(b + ".")] for b in self.blocks}
        inside = {n for names in self.inside.values() for n in names}
        self.outside = [n for n in layers if n not in inside]
        self.whole_model_ok = whole_model_ok
        self.record = CalibrationRecord(self.mode, blocks=len(self.blocks), block_list=block_list)

    def _capture(self, model: nn.Module, stats: _Statistics | None) -> list[tuple[tuple, dict]]:
        """The first block's ``(args, kwargs)`` for every batch (the forward stops there)."""
        captured: list[tuple[tuple, dict]] = []

        def catch(module: nn.Module, args: tuple, kwargs: dict):
            captured.append((args, kwargs))
            raise _Stop

        handle = model.get_submodule(self.blocks[0]).register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad(), eval_mode(model):
                if stats is None:
                    self.record.batches = _run_batches(model, self.calibration, stop_ok=True)
                else:
                    with stats:
                        self.record.batches = _run_batches(model, self.calibration, stop_ok=True,
                                                           on_batch=lambda i: setattr(stats, "batch", i))
        finally:
            handle.remove()
        if len(captured) != self.record.batches:
            raise ConfigError(f"the calibration batches never reached the first block {self.blocks[0]!r}; give "
                              "batches the model's forward accepts.")
        return captured

    def walk(self, host: Host, visit: Visit, done: Done) -> None:
        model = host.model
        # what runs before the first block (embeddings, rotary tables) gets real values as it is
        # called; what never runs before it (the final norm, the LM head) stays on the meta device
        stats = _Statistics(model, {n: self.layers[n] for n in self.outside})
        with host.materialise_on_use(self.block_list):
            inputs = self._capture(model, stats)
            # layers outside the blocks that run before the first block: measured (and inherited) first
            pre = [n for n in self.outside if stats.acc[n].rows > 0]
            post = [n for n in self.outside if stats.acc[n].rows == 0]
            if post and not self.whole_model_ok:
                raise ConfigError(
                    f"calibration_mode='sequential' on a streamed checkpoint cannot calibrate layers that run after "
                    f"the blocks of {self.block_list!r} (e.g. {post[0]!r}): their inputs need the whole inherited "
                    "model. Exclude them (exclude_modules), use calibration_mode='one_pass' (loads the whole "
                    "teacher), or inherit the loaded model in memory.")
            if pre:
                self.record.peak_statistics_bytes = max(self.record.peak_statistics_bytes, stats.nbytes)
                unit = Unit(pre, None)
                visit(unit, stats.factors(pre))
                inputs = self._capture(model, None)  # the first block's inputs, through the inherited layers
                done(unit)
        del stats
        host.release_except(self.block_list)
        self.record.peak_activation_bytes = _nbytes(inputs)
        for block_name in tqdm(self.blocks, desc="calibrating blocks", unit="block", disable=not self.progress,
                               leave=False, delay=1.0):
            host.materialise(block_name)
            block = model.get_submodule(block_name)
            names = self.inside[block_name]
            if names:
                stats = _Statistics(model, {n: self.layers[n] for n in names})
                with torch.no_grad(), eval_mode(block), stats:
                    for i, (args, kwargs) in enumerate(inputs):
                        stats.batch = i
                        block(*args, **kwargs)
                self.record.peak_statistics_bytes = max(self.record.peak_statistics_bytes, stats.nbytes)
                self.record.rows = self.record.rows or stats.acc[names[0]].rows
                factors = stats.factors()
                del stats
                visit(Unit(names, block_name), factors)
                del factors
                block = model.get_submodule(block_name)
            if block_name != self.blocks[-1]:
                with torch.no_grad(), eval_mode(block):
                    for i, (args, kwargs) in enumerate(inputs):  # in place: one batch's outputs beside the inputs
                        out = block(*args, **kwargs)
                        inputs[i] = _with_hidden(args, kwargs, out[0] if isinstance(out, tuple) else out)
                        del args, kwargs, out
                self.record.peak_activation_bytes = max(self.record.peak_activation_bytes, _nbytes(inputs))
            done(Unit(names, block_name))
        del inputs
        if post:  # after the blocks: one pass over the (inherited) model
            factors = _measure(model, {n: self.layers[n] for n in post}, self.calibration, self.record, self.progress)
            unit = Unit(post, "")
            visit(unit, factors)
            done(unit)


def calibration_plan(model: nn.Module, layers: dict[str, LayerKind], calibration: Any, mode: str,
                     *, whole_model_ok: bool = True, progress: bool = False):
    """The collector for ``init="whitened"`` in ``mode`` (``auto`` resolved: sequential when the
    model has exactly one list of repeated blocks holding the layers, one pass otherwise)."""
    block_list, found = find_block_list(model, layers)
    if mode == "sequential" and block_list is None:
        where = (f"its layers lie in {len(found)} block lists ({', '.join(map(repr, found))})" if found
                 else "it has no nn.ModuleList of repeated blocks holding the inherited layers")
        raise ConfigError(f"calibration_mode='sequential' needs one list of repeated blocks, but {where}; use "
                          "calibration_mode='one_pass' (or 'auto', which picks it for such models).")
    if mode == "one_pass" or (mode == "auto" and block_list is None):
        return OnePass(layers, calibration, progress=progress)
    return Sequential(model, layers, calibration, block_list, whole_model_ok=whole_model_ok, progress=progress)


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows ``(n, d_in)`` that ``module``'s weight matrix multiplies for the input ``x`` (its
    layer kind says how: feature vectors of a Linear / Conv1D, the patches of a conv)."""
    kind = kind_of(module)
    if kind is None:
        raise ConfigError(f"{type(module).__name__} is not a registered layer kind")
    return kind.layer_inputs(module, x)


def input_second_moments(model: nn.Module, layers: dict[str, nn.Module], calibration: Any) -> dict[str, Tensor]:
    """``{name: E[x xᵀ]}`` (float64, ``d_in × d_in``) of each layer's input over every position of
    every calibration batch, from one pass of ``model`` (the statistics of ``calibration_mode=
    "one_pass"``). ``layers`` maps names (as in ``model.named_modules()``) to the modules."""
    kinds = {}
    for name, module in layers.items():
        kind = kind_of(module)
        if kind is None:
            raise ConfigError(f"layer {name!r} ({type(module).__name__}) is not of a registered layer kind")
        kinds[name] = kind
    stats = _Statistics(model, kinds)
    with torch.no_grad(), eval_mode(model), stats:
        _run_batches(model, calibration, on_batch=lambda i: setattr(stats, "batch", i))
    missing = [name for name, a in stats.acc.items() if a.rows == 0]
    if missing:
        raise ConfigError(f"the calibration batches never reached {len(missing)} layer(s) (e.g. {missing[0]!r}); "
                          "give batches the model's forward accepts, with samples in them, that run those layers.")
    return stats.means()
