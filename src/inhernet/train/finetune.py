"""Fine-tune a Hugging Face text model (dense or inherited) for a number of optimiser steps.

    from inhernet.train.finetune import finetune
    res = finetune(model, lm_data, task="causal-lm", out_dir="runs/ft", max_steps=500, lr=5e-5,
                   teacher=teacher, kd_alpha=0.5, tokenizer=tok)
    res.final            # {"eval/nll": ..., "eval/ppl": ..., "eval/tokens": ...}
    res.model            # the trained model, on the CPU; also saved in runs/ft/model

One Lightning path for both text tasks (the pieces are in :mod:`inhernet.train.text`): AdamW with a
linear warm-up and a cosine / linear / constant decay stepped every optimiser step, gradient
accumulation, gradient clipping, bf16 autocast, gradient checkpointing, optional distillation from a
frozen teacher, one process or several (DDP; FSDP2, on CPUs and GPUs).

``out_dir`` receives ``metrics.jsonl`` (one row per optimiser step, global rank zero),
``checkpoints/last.ckpt`` (every ``checkpoint_every`` steps and at the end), ``finetune.json`` (the
settings of the run, so that a resume with other settings is refused), ``teacher_logits.pt`` when
the teacher's logits are cached, and ``model/`` (the trained model: :func:`inhernet.hf.folders.save_text_model`).

**Exact resume.** The micro-batches depend only on ``(seed, micro-batch index, rank)`` and the
training loader starts at the restored step (see :mod:`inhernet.train.text`); dropout is re-seeded
per micro-batch; the optimiser, the lr schedule and the counters are in the checkpoint. So a run
stopped (``KeyboardInterrupt``, SIGTERM: :func:`~inhernet.train.signals.stop_cleanly` keeps the last
checkpoint) and resumed with the same settings ends with the weights and metrics rows of an
uninterrupted run, bit for bit on a CPU with the same thread count (``time_s`` aside).

**FSDP** (``strategy="fsdp"``): FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's
``ModelParallelStrategy`` (:class:`~inhernet.train.fsdp.FSDP2Strategy`: every process one data-parallel
shard), on CPUs (gloo) and GPUs (nccl). Each transformer block (:func:`inhernet.hf.prune.block_list`;
a model without one is a ConfigError) and then the rest of the model are sharded in
``configure_model()``, before the optimiser is made; the KD teacher is not sharded. Like ``"ddp"`` it
re-launches the running script once per further process. Gradient clipping, the non-finite guard,
evaluation, the teacher's logits cache, exact resume and the metrics rows work as on one process (two
gloo processes train like one of the doubled batch within 1e-5; a resumed run ends bit-identical).
The checkpoint is one full-state file (parameter names as in the model), so
:func:`load_checkpoint_weights` reads it. The model passed in is sharded in place (its parameters
become DTensor shards); the returned ``model`` is a clean, unsharded copy that holds the trained
weights (read back from the final checkpoint), tied weights tied again.

FSDP2 replaces FSDP1 (Lightning's ``FSDPStrategy``, what ``"fsdp"`` meant before) rather than
standing beside it: FSDP1 refuses a CPU (Lightning 2.6: ``The strategy `fsdp` requires a GPU
accelerator``; torch: ``FSDP needs a non-CPU accelerator device``), so a ``"fsdp1"`` choice would be a
GPU-only path no test here can run; FSDP2 runs on the same GPUs, keeps the parameters' names (no flat
parameters to rename for weight decay or the checkpoint), and is the one torch's documentation
recommends.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from ..errors import ConfigError
from ..hf.folders import save_text_model
from ..utils import atomic_write
from .fit import CHECKPOINT_NAME, METRICS_NAME, global_rank, read_metrics
from .fsdp import FSDP2Strategy, transformer_blocks
from .groups import check_gate_lr_scale
from .guard import NonFiniteGuard
from .signals import stop_cleanly
from .text import (
    CAUSAL_LM,
    SCHEDULES,
    TASKS,
    TEACHER_CACHE_MAX_BYTES,
    TEACHER_CACHE_NAME,
    TEACHER_LOGITS,
    StepProgressBar,
    StepRecorder,
    TextDataModule,
    TextTaskModule,
    eval_splits,
    quiet_lightning,
)
from .validate import Option, check_accelerator, check_batch_size, check_count, check_learning_rate, \
    check_non_negative, check_precision, check_progress, compile_mode, plain_option, \
    shows_bar

__all__ = ["FINETUNE_RECORD", "STRATEGIES", "FinetuneResult", "check_finetune_options", "default_checkpoint_every",
           "finetune", "load_checkpoint_weights", "meta_copy", "resolve_warmup"]

#: the settings of a run, in ``out_dir``: a resume with other settings is refused
FINETUNE_RECORD = "finetune.json"
#: the strategies this path knows (a Lightning ``Strategy`` object is passed through as it is)
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
MODEL_DIR = "model"


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    ``model``: the trained model, on the CPU. ``metrics``: the rows of ``metrics.jsonl`` (one per
    optimiser step). ``checkpoint``: ``out_dir/checkpoints/last.ckpt`` (or ``None``). ``tokens_seen``
    and ``train_time_s``: over the whole run, resumed parts included. ``final``: the last
    evaluation's metrics (``{"eval/nll", "eval/ppl", "eval/tokens"}`` or ``{"val/acc", "val/loss",
    "test/acc", "test/loss"}``; ``{}`` without evaluation data). ``model_dir``: where the model was
    saved (``None`` when it could not be: not a Hugging Face model; or on a non-zero rank).
    """

    model: nn.Module
    metrics: list[dict]
    out_dir: Path
    checkpoint: Optional[Path]
    tokens_seen: int
    train_time_s: float
    final: dict
    model_dir: Optional[Path] = None


# ------------------------------------------------------------------------------------------ options
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def resolve_warmup(warmup: Any, max_steps: int, *, option: Option = plain_option) -> int:
    """The warm-up in optimiser steps: an int is a step count (``0 <= warmup <= max_steps``), a
    float in ``[0, 1)`` a fraction of ``max_steps`` (rounded)."""
    name = option("warmup")
    if _is_int(warmup):
        if not 0 <= warmup <= max_steps:
            raise ConfigError(f"{name}={warmup!r}: a warm-up step count must be in [0, {option('max_steps')}="
                              f"{max_steps}].")
        return int(warmup)
    if _is_real(warmup) and math.isfinite(warmup):
        if not 0 <= warmup < 1:
            raise ConfigError(f"{name}={warmup!r}: a float is a fraction of {option('max_steps')} and must be in "
                              "[0, 1); give an int for a number of steps.")
        return int(round(warmup * max_steps))
    raise ConfigError(f"{name}={warmup!r} must be an int (steps) or a float in [0, 1) (a fraction of "
                      f"{option('max_steps')}).")


def default_checkpoint_every(max_steps: int) -> int:
    """About ten checkpoints per run, and at least one every 50 steps: ``clip(ceil(max_steps / 10), 1, 50)``."""
    return max(1, min(50, math.ceil(max_steps / 10)))


def check_finetune_options(*, task: Any, max_steps: Any, batch_size: Any, grad_accum: Any, lr: Any,
                           weight_decay: Any, schedule: Any, warmup: Any, kd_alpha: Any, temperature: Any,
                           teacher: Any, max_grad_norm: Any, eval_every: Any, eval_batch_size: Any,
                           checkpoint_every: Any, teacher_logits: Any, strategy: Any, accelerator: Any,
                           precision: Any, compile: Any = None, option: Option = plain_option) -> None:
    """Every rule on :func:`finetune`'s options; a :class:`~inhernet.errors.ConfigError` naming the
    option (in the caller's spelling: ``option``, e.g. :func:`inhernet.train.validate.cli_option`)
    and the fix. Nothing is read or written."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not known; choose one of {', '.join(TASKS)}.")
    check_count("max_steps", max_steps, option=option, what="optimiser steps to train")
    check_batch_size("batch_size", batch_size, option=option)
    check_count("grad_accum", grad_accum, option=option, what="micro-batches per optimiser step")
    check_learning_rate("lr", lr, option=option)
    check_non_negative("weight_decay", weight_decay, option=option, what="AdamW weight decay")
    if schedule not in SCHEDULES:
        raise ConfigError(f"{option('schedule')}={schedule!r} is not known; choose one of {', '.join(SCHEDULES)}.")
    resolve_warmup(warmup, max_steps, option=option)
    if not _is_real(kd_alpha) or not 0 <= kd_alpha <= 1:
        raise ConfigError(f"{option('kd_alpha')}={kd_alpha!r} must be a number in [0, 1] (the weight of the "
                          "distillation term).")
    if kd_alpha > 0 and teacher is None:
        raise ConfigError(f"{option('kd_alpha')}={kd_alpha!r} distils from a teacher, but no teacher was given; give "
                          f"{option('teacher')} or set {option('kd_alpha')}=0.")
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"{option('temperature')}={temperature!r} must be a finite number > 0.")
    if max_grad_norm is not None and (not _is_real(max_grad_norm) or not math.isfinite(max_grad_norm)
                                      or max_grad_norm <= 0):
        raise ConfigError(f"{option('max_grad_norm')}={max_grad_norm!r} must be a finite number > 0, or None (no "
                          "clipping).")
    for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if value is not None:
            check_count(name, value, option=option, what="optimiser steps; or None for the default")
    check_batch_size("eval_batch_size", eval_batch_size, option=option)
    if teacher_logits not in TEACHER_LOGITS:
        raise ConfigError(f"{option('teacher_logits')}={teacher_logits!r} is not known; choose one of "
                          f"{', '.join(TEACHER_LOGITS)}.")
    check_accelerator("accelerator", accelerator, option=option)
    check_precision("precision", precision, accelerator=accelerator, option=option)
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ConfigError(f"{option('strategy')}={strategy!r} is not known; choose one of {', '.join(STRATEGIES)} "
                              "(or pass a Lightning Strategy object).")
    if compile_mode(compile, option=option) is not None and strategy == "fsdp":
        raise ConfigError(f"{option('compile')}={compile!r} with strategy='fsdp' is not supported here (compiling "
                          "FSDP-sharded blocks is untested in this project); use strategy='ddp', or drop "
                          f"{option('compile')}.")


def _check_data(task: str, data: Any, batch_size: int, model: nn.Module) -> None:
    if task == CAUSAL_LM:
        train = getattr(data, "train", None)
        if not isinstance(train, torch.Tensor) or train.dim() != 2 or train.dtype not in (torch.int64, torch.int32):
            raise ConfigError("task='causal-lm' needs data.train, an integer tensor (n, seq_len) of token blocks "
                              "(inhernet.hf.textdata.load_lm_data makes one).")
        if train.shape[1] < 2:
            raise ConfigError(f"causal-lm blocks of {train.shape[1]} token(s) predict nothing: seq_len must be >= 2.")
        if train.shape[0] < batch_size:
            raise ConfigError(f"the causal-lm data has {train.shape[0]} training block(s), fewer than batch_size="
                              f"{batch_size}: give more text, shorter blocks (seq_len) or a smaller batch_size.")
        held = getattr(data, "held_out", None)
        if held is not None and held.numel() and (held.dim() != 2 or held.shape[1] != train.shape[1]):
            raise ConfigError(f"data.held_out has shape {tuple(held.shape)}; it must be (m, {train.shape[1]}) blocks "
                              "like data.train (or empty).")
        return
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    for name in ("train", "val", "test"):
        split = getattr(data, name, None)
        if split is None:
            if name == "train":
                raise ConfigError("task='sequence-classification' needs data.train (an EncodedSplit).")
            continue
        labels = getattr(split, "labels", None)
        ids = getattr(split, "input_ids", None)
        if labels is None or ids is None or len(labels) != len(ids) or (name == "train" and not len(labels)):
            n_labels, n_ids = (None if x is None else len(x) for x in (labels, ids))
            raise ConfigError(f"data.{name} has no labels for its examples (labels: {n_labels}, examples: {n_ids}); "
                              "sequence classification needs one integer label per example "
                              "(inhernet.hf.textdata.encode_classification makes them).")
        if any(len(x) == 0 for x in ids):
            raise ConfigError(f"data.{name} has an example of no tokens; every example needs at least one token.")
        bad = [y for y in labels if not _is_int(y) or y < 0 or (num_labels is not None and y >= num_labels)]
        if bad:
            raise ConfigError(f"data.{name} has label {bad[0]!r}, but the model has num_labels={num_labels}: labels "
                              "must be integers in [0, num_labels); load the model with num_labels=len(labels).")


# -------------------------------------------------------------------------------------------- helpers
def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are on the meta device (no memory; buffers are copied):
    the clean module FSDP-trained weights are loaded into (:func:`load_checkpoint_weights`)."""
    memo = {id(p): nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def load_checkpoint_weights(skeleton: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Put the trained weights of a :func:`finetune` checkpoint (``last.ckpt``; a full state dict,
    also under FSDP) into ``skeleton`` (e.g. a :func:`meta_copy`), tied weights tied again."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    skeleton.load_state_dict(state, strict=True, assign=True)
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    return skeleton


def _readable_checkpoint(path: Path) -> bool:
    """A checkpoint torch can open (a killed writer leaves a zip without its central directory)."""
    return zipfile.is_zipfile(path)


def _differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys
                     if old.get(k) != new.get(k))


def _strategy(strategy: Any, model: nn.Module) -> Any:
    """Lightning's strategy for ``strategy``: ``"fsdp"`` is :class:`~inhernet.train.fsdp.FSDP2Strategy`
    (a model without a list of transformer blocks is a ConfigError, before anything is written)."""
    if strategy != "fsdp":
        return strategy
    transformer_blocks(model)
    return FSDP2Strategy()


def _check_gradient_checkpointing(model: nn.Module) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False) or not (
            hasattr(model, "activation_checkpointing_enable") or hasattr(model, "gradient_checkpointing_enable")):
        raise ConfigError(f"gradient_checkpointing=True: {type(model).__name__} does not support gradient "
                          "checkpointing (no gradient_checkpointing_enable / supports_gradient_checkpointing); "
                          "set gradient_checkpointing=False.")


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    """Gradient (activation) checkpointing on: transformers' ``activation_checkpointing_enable``
    (its name since 5.x; ``gradient_checkpointing_enable`` before), non-reentrant."""
    _check_gradient_checkpointing(model)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _disable_gradient_checkpointing(model: nn.Module) -> None:
    disable = getattr(model, "activation_checkpointing_disable", None) or getattr(
        model, "gradient_checkpointing_disable", None)
    if disable is not None:
        disable()


def _teacher_vocab(teacher: nn.Module) -> Optional[int]:
    return getattr(getattr(teacher, "config", None), "vocab_size", None)


def _teacher_logits_mode(mode: str, task: str, data: Any, teacher: Optional[nn.Module]) -> str:
    if teacher is None or mode != "auto":
        return "on_the_fly" if mode == "auto" else mode
    if task != CAUSAL_LM:
        return "cache"
    vocab = _teacher_vocab(teacher)
    if vocab is None:
        return "on_the_fly"
    n, length = data.train.shape
    return "cache" if n * length * vocab * 2 <= TEACHER_CACHE_MAX_BYTES else "on_the_fly"


# ------------------------------------------------------------------------------------------- finetune
def finetune(
    model: nn.Module,
    data: Any,
    *,
    task: str,
    out_dir: Union[str, Path],
    teacher: Optional[nn.Module] = None,
    kd_alpha: float = 0.0,
    temperature: float = 2.0,
    max_steps: int = 100,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 5e-5,
    weight_decay: float = 0.01,
    schedule: str = "cosine",
    warmup: Union[float, int] = 0.05,
    gate_lr_scale: float = 1.0,
    max_grad_norm: Optional[float] = 1.0,
    precision: Any = None,
    compile: Union[bool, str, None] = None,
    gradient_checkpointing: bool = False,
    eval_every: Optional[int] = None,
    eval_batch_size: int = 8,
    checkpoint_every: Optional[int] = None,
    seed: int = 0,
    resume: bool = True,
    devices: Union[int, str, Sequence[int]] = 1,
    num_nodes: int = 1,
    strategy: Any = "auto",
    accelerator: str = "cpu",
    progress: bool = True,
    run_name: Optional[str] = None,
    teacher_logits: str = "auto",
    quiet: bool = True,
    tokenizer: Any = None,
    callbacks: Iterable[Callback] = (),
) -> FinetuneResult:
    """Fine-tune a Hugging Face ``model`` on ``data`` for ``max_steps`` optimiser steps.

    Args:
        task: ``"causal-lm"`` (``data.train`` ``(n, L)`` token blocks, ``data.held_out`` ``(m, L)``
            or empty: :class:`inhernet.hf.textdata.LMData`; loss: mean next-token cross-entropy of
            ``model(input_ids=ids).logits``) or ``"sequence-classification"`` (``data.train`` /
            ``.val`` / ``.test`` :class:`inhernet.hf.textdata.EncodedSplit`, padded per batch to
            its longest example with an attention mask; ``model(input_ids=, attention_mask=)``
            returning ``.logits`` or a tensor). A classifier whose ``config.pad_token_id`` is unset
            gets the data's pad id (Llama-style classifiers find the last token by it).
        teacher, kd_alpha, temperature: with a teacher and ``kd_alpha > 0`` the loss is
            ``(1 - kd_alpha) * task + kd_alpha * T^2 * KL(teacher || student)`` at temperature ``T``
            (:func:`inhernet.train.losses.kd_kl`; per predicted token for a causal LM). The teacher
            is never changed (eval mode and ``no_grad`` inside its forward only; on another device,
            a private copy). With ``kd_alpha=0`` it is not used.
        teacher_logits: ``"auto"``: classification caches the teacher's logits of the training
            split once; a causal LM caches them (bf16) when ``n * L * V * 2`` bytes is at most
            512 MiB, else runs the teacher on every batch; ``"cache"`` / ``"on_the_fly"`` force it.
            The cache is kept in ``out_dir/teacher_logits.pt`` with a key of the data and the
            teacher's weights.
        max_steps: optimiser steps; ``batch_size`` is per process and micro-batch, ``grad_accum``
            micro-batches make one step (Lightning's ``accumulate_grad_batches``).
        schedule, warmup: ``cosine`` / ``linear`` / ``constant`` after a linear warm-up of
            ``warmup`` steps (an int) or of that fraction of ``max_steps`` (a float < 1); see
            :func:`inhernet.train.text.lr_factor`.
        gate_lr_scale: the gates of the inherited layers learn at ``lr × gate_lr_scale`` (default 1:
            like every parameter; :mod:`inhernet.train.groups`). Needs gated layers when not 1.
        max_grad_norm: clip the gradient norm (``None``: no clipping).
        precision: ``None`` (32-bit) or ``"bf16-mixed"`` (also on a CPU); see
            :func:`inhernet.train.validate.check_precision`.
        compile: ``torch.compile`` the model for the training steps: ``True`` (mode ``"default"``), a
            mode of :data:`~inhernet.train.validate.COMPILE_MODES` (``"reduce-overhead"``: CUDA
            graphs, GPUs only, ``"default"`` elsewhere), or ``None`` / ``False`` (eager). Not with
            FSDP. The checkpoint and the returned model are the plain model's; evaluation stays
            eager; the first steps include the compilation (see :mod:`inhernet.train.compiled`).
        gradient_checkpointing: ``model.activation_checkpointing_enable()`` (transformers 5's name
            of ``gradient_checkpointing_enable``) during training, switched off again afterwards; a
            model without it is a ConfigError naming its class.
        eval_every: evaluate every that many steps, and always at the last step (``None``: at the
            last step only). ``eval_batch_size``: per process.
        checkpoint_every: write ``last.ckpt`` every that many steps and at the end (default
            :func:`default_checkpoint_every`: about ten per run, at least every 50 steps).
        resume: continue from ``out_dir/checkpoints/last.ckpt`` when there is one (a run of other
            settings is a ConfigError; ``finetune.json`` holds them); ``False`` starts over (the old
            checkpoint and metrics go). A micro-batch's items depend on ``batch_size * processes``
            only, so a run may resume on another number of processes with the per-process batch
            scaled to keep that product (``grad_accum`` must stay; bit-identical only with the same
            layout).
        devices, num_nodes, strategy, accelerator: Lightning's; ``strategy`` ``"auto"``, ``"ddp"``
            (re-launches the running script per process), ``"ddp_spawn"`` (spawns from Python; CPU
            + gloo works), ``"fsdp"`` (FSDP2, see the module docstring; re-launches like ``"ddp"``;
            CPU + gloo works). The data is sharded by rank so that ``P``
            processes of ``batch_size`` B train like one of ``P * B``.
        progress: Lightning's TQDM bar (loss, tokens/s); ``"log"``: no bar, one printed line per
            evaluation and checkpoint step (for a log file); ``False``: silent.
        run_name: how errors name the run (default ``out_dir``); a non-finite loss or gradient
            stops it with :class:`~inhernet.train.guard.TrainingDivergedError`.
        quiet: hide Lightning's info messages.
        tokenizer: saved beside the model in ``out_dir/model``.
        callbacks: extra Lightning callbacks (after this function's own).
    Returns:
        :class:`FinetuneResult`; the model is trained in place and returned on the CPU (under FSDP
        the model passed in is left sharded and a clean copy with the trained weights is returned); global rank zero saves it in ``out_dir/model`` (:func:`inhernet.hf.folders.save_text_model`).
    Raises:
        inhernet.errors.ConfigError: a bad option or data (before anything is written).
        inhernet.train.signals.TrainingInterrupted: SIGTERM / Ctrl-C; the last checkpoint is kept
            and ``resume=True`` continues from it.
    """
    check_finetune_options(task=task, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                           weight_decay=weight_decay, schedule=schedule, warmup=warmup, kd_alpha=kd_alpha,
                           temperature=temperature, teacher=teacher, max_grad_norm=max_grad_norm,
                           eval_every=eval_every, eval_batch_size=eval_batch_size,
                           checkpoint_every=checkpoint_every, teacher_logits=teacher_logits, strategy=strategy,
                           accelerator=accelerator, precision=precision, compile=compile)
    check_progress("progress", progress)
    check_gate_lr_scale(gate_lr_scale, model)
    _check_data(task, data, batch_size, model)
    if gradient_checkpointing:
        _check_gradient_checkpointing(model)
    distil_from = teacher if kd_alpha > 0 else None
    warmup_steps = resolve_warmup(warmup, max_steps)
    checkpoint_every = checkpoint_every or default_checkpoint_every(max_steps)
    out = Path(out_dir)
    ckpt_path = out / "checkpoints" / CHECKPOINT_NAME
    metrics_path = out / METRICS_NAME
    record_path = out / FINETUNE_RECORD
    run_name = run_name or str(out)
    lightning_strategy = _strategy(strategy, model)
    # FSDP2 shards the model in place: the trained weights come back from the full-state checkpoint
    fsdp = isinstance(lightning_strategy, ModelParallelStrategy)
    has_eval = bool(eval_splits(data, task))
    mode = _teacher_logits_mode(teacher_logits, task, data, distil_from)

    trainer_kwargs: dict[str, Any] = dict(
        max_steps=max_steps, max_epochs=-1, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy=lightning_strategy, accumulate_grad_batches=grad_accum, logger=False, enable_checkpointing=False,
        enable_progress_bar=shows_bar(progress), enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False, check_val_every_n_epoch=None,
        # in micro-batches; Lightning counts them over the (one, endless) epoch
        val_check_interval=(eval_every if eval_every else max_steps + 1) * grad_accum,
        default_root_dir=str(out),
    )
    if not has_eval:  # no held-out / val / test data: Lightning's validation loop is left out
        trainer_kwargs["limit_val_batches"] = 0
    if max_grad_norm is not None:
        trainer_kwargs.update(gradient_clip_val=float(max_grad_norm), gradient_clip_algorithm="norm")
    if precision is not None:
        trainer_kwargs["precision"] = precision
    n_train = int(data.train.shape[0]) if task == CAUSAL_LM else len(data.train)
    dm = TextDataModule(data, task, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
    module = TextTaskModule(model, task=task, lr=lr, max_steps=max_steps, warmup_steps=warmup_steps,
                            schedule=schedule, weight_decay=weight_decay, teacher=distil_from, kd_alpha=kd_alpha,
                            temperature=temperature, teacher_logits=mode, cache_file=out / TEACHER_CACHE_NAME,
                            eval_names=dm.eval_splits, seed=seed, run_name=run_name, quiet=quiet,
                            compile=compile_mode(compile), gate_lr_scale=gate_lr_scale)
    recorder = StepRecorder(metrics_path, ckpt_path, max_steps=max_steps, checkpoint_every=checkpoint_every,
                            eval_every=eval_every, has_eval=has_eval, batch_size=batch_size * grad_accum,
                            train_items=n_train, log=run_name if progress == "log" else None)
    cbs: list[Callback] = [NonFiniteGuard(run_name), recorder]
    if shows_bar(progress):
        cbs.append(StepProgressBar(max_steps * grad_accum))
    cbs.extend(callbacks)

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            quiet_lightning(loggers=False)
            trainer = L.Trainer(**trainer_kwargs, callbacks=cbs)
        # what decides the run's result. A micro-batch's items depend on batch_size * processes only (and
        # Lightning counts micro-batches per process), so a run may resume on another number of processes
        # with the per-process batch scaled to match (e.g. on fewer GPUs with a larger batch each)
        settings = {"task": task, "max_steps": max_steps, "micro_batch_items": batch_size * trainer.world_size,
                    "grad_accum": grad_accum, "lr": lr, "weight_decay": weight_decay, "schedule": schedule,
                    "warmup_steps": warmup_steps, "max_grad_norm": max_grad_norm, "precision": precision,
                    "distils": distil_from is not None, "kd_alpha": kd_alpha if distil_from is not None else 0.0,
                    "temperature": temperature if distil_from is not None else None, "seed": seed,
                    "train_items": n_train, "seq_len": int(data.train.shape[1]) if task == CAUSAL_LM else None}
        if gate_lr_scale != 1:  # absent at the default, so runs recorded before the option still resume
            settings["gate_lr_scale"] = float(gate_lr_scale)
        layout = {"batch_size": batch_size, "grad_accum": grad_accum, "world_size": trainer.world_size}
        resume_from = _resume_point(out, ckpt_path, record_path, settings, resume)
        # nothing was written before this point
        if global_rank() == 0:  # every process of strategy="ddp" runs this; one writes
            out.mkdir(parents=True, exist_ok=True)
            if resume_from is None:
                for p in (ckpt_path, metrics_path):
                    p.unlink(missing_ok=True)
            record = {"format": "inhernet-finetune", "settings": settings, "layout": layout}
            atomic_write(record_path, json.dumps(record, indent=2))
        if task != CAUSAL_LM:
            config = getattr(model, "config", None)
            if config is not None and getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = int(data.train.pad_id)
        L.seed_everything(seed, workers=True, verbose=False)
        model.train()
        skeleton = meta_copy(model) if fsdp else None
        if gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        try:
            # SIGTERM / Ctrl-C: the last checkpoint is kept, TrainingInterrupted is raised
            with stop_cleanly(out, ckpt_path), warnings.catch_warnings():
                quiet_lightning(loggers=False)
                trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
        finally:
            if gradient_checkpointing:
                _disable_gradient_checkpointing(model)
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)

    trained = load_checkpoint_weights(skeleton, ckpt_path) if fsdp else module.model
    trained = trained.cpu()
    model_dir = None
    if trainer.is_global_zero and global_rank() == 0:
        try:
            model_dir = save_text_model(trained, out / MODEL_DIR, tokenizer=tokenizer, progress=shows_bar(progress))
        except ConfigError as err:
            warnings.warn(f"the trained model was not saved: {err}")
    rows = read_metrics(metrics_path)
    last = rows[-1] if rows else {}
    evaluated = [{k: v for k, v in r.items() if k.split("/")[0] in ("eval", "val", "test")} for r in rows]
    final = next((e for e in reversed(evaluated) if e), {})
    return FinetuneResult(model=trained, metrics=rows, out_dir=out,
                          checkpoint=ckpt_path if ckpt_path.exists() else None,
                          tokens_seen=int(last.get("tokens", 0)), train_time_s=float(last.get("time_s", 0.0)),
                          final=final, model_dir=model_dir)


def _resume_point(out: Path, ckpt_path: Path, record_path: Path, settings: dict, resume: bool) -> Optional[Path]:
    """The checkpoint to continue from, or ``None``; a checkpoint of other settings is a ConfigError."""
    if not resume or not ckpt_path.is_file():
        return None
    if not _readable_checkpoint(ckpt_path):
        warnings.warn(f"{ckpt_path} is unreadable (interrupted while writing?); starting over")
        return None
    try:
        old = json.loads(record_path.read_text()).get("settings")
    except (OSError, json.JSONDecodeError, AttributeError):
        old = None
    if isinstance(old, dict) and old != json.loads(json.dumps(settings)):
        raise ConfigError(f"{out} holds a checkpoint of a run with other settings ({_differences(old, settings)}); "
                          "nothing was changed. Pass resume=False to start over there, or choose another out_dir.")
    return ckpt_path
