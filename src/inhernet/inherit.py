"""The front doors of the pipeline: :func:`inherit` (a model in memory) and
:func:`inherit_checkpoint` (a safetensors checkpoint on disk, tensor by tensor).

Both run the one loop of :mod:`inhernet.pipeline` with the same options and give the same
tensors, plan and report; they differ only in where the teacher's weights come from and where the
result goes. The steps (selection, rank policy, initialisation) are documented in
:mod:`inhernet.pipeline`; the result carries an :class:`~inhernet.plan.InheritPlan`
(``model.inhernet_plan``) that ``layer_report`` and ``save`` read.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .config import InheritConfig
from .errors import ConfigError
from .io import after_inherit, check_save_target, recorded_weight_files, remove_stale_weights, write_meta
from .pipeline import CheckpointSource, ModuleSink, ModuleSource, ShardSink, check_materialised, merge_config, run
from .plan import PLAN_ATTR
from .latency import latency_example, latency_summary, measure_latency, time_models
from .optimize import as_trained, optimize_for_inference
from .shards import checkpoint_index, parse_size

__all__ = ["inherit", "inherit_checkpoint"]


def inherit(teacher: nn.Module, config: InheritConfig | None = None, *, inplace: bool = False,
            progress: bool = True, calibration: Any = None, example_input: Any = None, **overrides: Any) -> nn.Module:
    """Build an InherNet from ``teacher``.

    Args:
        teacher: any ``nn.Module``; it is deep-copied first (unless ``inplace=True``) and never changed.
            Every parameter of the result is trainable (``requires_grad=True``), whatever flags the
            teacher's carry: freeze parts of the InherNet afterwards if you want them frozen.
        config: an :class:`InheritConfig`; ``overrides`` (e.g. ``rank=16``) are applied on top, so
            ``inherit(teacher, rank=8, heads=3)`` works too.
        inplace: replace the layers of ``teacher`` itself (saves memory on very large models).
        progress: show a progress bar over the factorised layers.
        calibration: for ``init="whitened"`` only: the input batches the teacher is run on to
            measure each layer's input statistics (``calibration_mode``: one pass, or block by block
            on a model with a list of repeated blocks): a list of tensors, a ``DataLoader`` (of
            tensors, or of ``(x, y)`` pairs, whose labels ``y`` a plain module is not given), dicts
            passed as ``model(**batch)``, or one tensor as one batch (the rule:
            :func:`inhernet.calibrate.model_inputs`). Batches with NaN/Inf are refused.
        example_input: for ``budget_metric="latency"`` only: the input the teacher is timed on (a
            tensor, a tuple of positional inputs, a dict of keyword inputs), instead of a random one
            of ``latency_input``'s shape. Time it at the batch size you will serve.

    Returns:
        the inherited model, with ``model.inhernet_plan`` describing every Linear/Conv layer.
        Under a latency budget the plan also holds each layer's predicted time and the whole
        model's predicted and measured times against the teacher's (:mod:`inhernet.latency`).

    Deterministic without global state: every random draw comes from a per-layer
    :func:`~inhernet.pipeline.layer_generator` seeded by ``config.seed``; the global RNG is left as
    it was, and calls from several threads at once give the same models as one after the other.

    On a Hugging Face ``PreTrainedModel``, ``target_modules=None`` selects the architecture's
    attention and MLP projections (:func:`inhernet.select.resolve_config`); the plan records the
    resolved regex.
    """
    cfg = merge_config(config, overrides)
    check_materialised(teacher)  # refuse a meta-device teacher before copying it
    model = teacher if inplace else copy.deepcopy(teacher)
    # trainable whatever flags the teacher carries (a frozen teacher, e.g. one used for KD)
    model.requires_grad_(True)
    table = example = None
    if cfg.budget_metric == "latency":
        example = latency_example(model, cfg, example_input)
        table = measure_latency(model, cfg, example, progress=progress)
    elif example_input is not None:
        raise ConfigError("example_input is only used to time the teacher for a latency budget; pass "
                          "budget_metric='latency' with a budget, or drop example_input.")
    plan = run(ModuleSource(model), ModuleSink(), cfg, calibration, progress=progress, latency=table)
    setattr(model, PLAN_ATTR, plan)
    model = after_inherit(model)
    if table is not None:  # the prediction checked: the whole models timed side by side
        models = {"inherited": model} if inplace else {"teacher": teacher, "inherited": model}
        if cfg.latency_form == "optimized":  # what the budget was for: the trained model, optimised
            models["optimized"] = optimize_for_inference(as_trained(model), example)
        latency_summary(plan, table, cfg, time_models(models, example))
    return model


def inherit_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, config: InheritConfig | None = None, *,
                       model: nn.Module, calibration: Any = None, max_shard_size: int | str = "1GB",
                       progress: bool = True, overwrite: bool = False, hf: dict[str, Any] | None = None,
                       on_success: Callable[[Path], None] | None = None, **overrides: Any) -> Path:
    """Inherit the safetensors checkpoint in ``src`` into ``dst`` without loading the teacher.

    Args:
        src: a folder with safetensors weights (``model.safetensors``, or shards with
            ``model.safetensors.index.json``), or one ``.safetensors`` file, holding ``model``'s
            state dict (a tied tensor under any one of its names).
        dst: the output folder (created); afterwards ``inhernet.load(dst, base_model=...)`` loads
            the InherNet (``inhernet.load(dst)`` alone for a Hugging Face model).
        config: an :class:`~inhernet.InheritConfig`; ``overrides`` apply on top, as in ``inherit``.
        model: the teacher's architecture; its values are ignored, so build it on the meta device
            (``with torch.device("meta"): model = Net()``) to use no memory. For a Hugging Face
            folder :func:`inhernet.hf.inherit_checkpoint` builds it from ``config.json``.
        calibration: for ``init="whitened"``: the same batches as :func:`inherit` takes. Block by
            block (``calibration_mode="sequential"``, the default on a model with a list of
            repeated blocks), each block is read from the checkpoint only when it is reached.
        max_shard_size: the largest output shard, in bytes or as ``"500MB"``/``"2GB"``; it bounds
            the output side of the peak memory.
        progress: show a progress bar over the eligible layers.
        overwrite: replace a model already saved in ``dst`` (refused otherwise, with
            :class:`~inhernet.errors.ModelExistsError`, before any work); other files there are kept.
        hf, on_success: used by :func:`inhernet.hf.inherit_checkpoint`: the ``"hf"`` record for
            ``inhernet_config.json``, and a callback run on ``dst`` once the model is written
            (copying the tokenizer files).

    Peak memory: one output shard + one layer (or, calibrating block by block, one block, its
    statistics and the calibration activations at it) + the skeleton's buffers. On any error
    ``dst`` is left as it was: no partial shard remains, an overwritten model is intact.

    Returns the path of ``dst``.
    """
    src, dst = Path(src), Path(dst)
    folder = src.parent if src.is_file() else src
    if folder.resolve() == dst.resolve():
        raise ConfigError("dst must differ from src: the source checkpoint is read while dst is written.")
    check_save_target(dst, overwrite=overwrite)
    old_weights = recorded_weight_files(dst)
    cfg = merge_config(config, overrides)
    max_bytes = parse_size(max_shard_size)
    index = {k: src.name for k in checkpoint_index(folder, only=src.name)} if src.is_file() else checkpoint_index(folder)
    source = CheckpointSource(model, folder, index)
    created = not dst.exists()
    dst.mkdir(parents=True, exist_ok=True)
    sink = ShardSink(source, dst, max_bytes)
    try:
        plan = run(source, sink, cfg, calibration, progress=progress)
        files = sink.finish()
    except BaseException:
        sink.abort()
        if created:
            try:
                dst.rmdir()  # empty again: leave no folder behind
            except OSError:
                pass
        raise
    write_meta(dst, plan, files, base_model_class=f"{type(model).__module__}.{type(model).__qualname__}", hf=hf)
    remove_stale_weights(dst, old_weights, files)
    if on_success is not None:
        on_success(dst)
    return dst
