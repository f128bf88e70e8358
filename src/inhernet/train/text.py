"""The Lightning pieces that fine-tune Hugging Face text models: one module for causal language
modelling and sequence classification, its data module and the step-wise bookkeeping.

:func:`inhernet.train.finetune.finetune` puts them together; they are public so that a caller can
build its own Trainer around them.

Why a second training path beside :mod:`inhernet.train.module`: the vision recipe is epoch-based
SGD on stacked image tensors; transformers are trained for a number of optimiser steps with AdamW, a
warm-up and a decaying lr, on token blocks or padded token sequences, and are evaluated by
token-weighted perplexity or accuracy. The rules the two share are imported, not repeated:
:func:`~inhernet.train.losses.kd_kl` (the distillation term), :func:`~inhernet.hf.lm.next_token_nll`
(the LM loss), :func:`~inhernet.utils.eval_mode` and the teacher held outside the registered
children, as :class:`~inhernet.train.module.DistillModule` holds it.

**Deterministic batches.** The training items (token blocks, or classification examples) are
visited in epoch-wise permutations seeded by ``(seed, epoch)`` only, laid end to end into one
endless sequence; micro-batch ``i`` of process ``rank`` (of ``world``) is the ``batch_size`` items at
positions ``[(i * world + rank) * batch_size, ... + batch_size)`` of it. So the batches depend on
``(seed, i, rank)`` alone, every micro-batch is full (a batch may straddle two epochs), and two
processes of batch ``B`` see together exactly what one process of batch ``2B`` sees.
:class:`TrainBatches` is an endless iterable that starts at micro-batch ``global_step * grad_accum``
when Lightning iterates it, i.e. after a checkpoint has been restored, so a run resumed in the middle
of an epoch continues with the very batches an uninterrupted run would have had (Lightning would
otherwise restart the epoch from its first batch). Dropout's random draws are re-seeded from
``(seed, micro-batch, rank)`` before every micro-batch, so they do not depend on history either.

**Steps, rows and checkpoints.** :class:`StepRecorder` turns micro-batches into optimiser steps:
after each step it reduces the step's loss and token count over the processes and (global rank zero)
appends one row to ``metrics.jsonl``; at an evaluation step it waits for the evaluation and writes
one row with both. It writes ``checkpoints/last.ckpt`` every ``checkpoint_every`` steps and at the
last one, always after that step's row (and evaluation), so the rows a resumed run keeps are exactly
those of the checkpointed steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch import Tensor, nn

from ..data.loader import mix_seed
from ..hf.folders import CAUSAL_LM, SEQUENCE_CLASSIFICATION, TASKS
from ..errors import ConfigError
from ..hf.lm import next_token_nll
from ..hf.textdata import EncodedSplit
from ..utils import atomic_write, eval_mode, on_device, stable_hash, tensor_digest
from .compiled import CompiledModel
from .fit import read_metrics
from .fsdp import data_parallel_mesh, shard_model
from .groups import check_gate_lr_scale, gate_parameter_groups
from .guard import TrainingDivergedError
from .losses import kd_kl

__all__ = [
    "CAUSAL_LM",
    "SEQUENCE_CLASSIFICATION",
    "SCHEDULES",
    "TASKS",
    "TEACHER_LOGITS",
    "TEACHER_CACHE_NAME",
    "TEACHER_CACHE_MAX_BYTES",
    "EvalBatches",
    "StepProgressBar",
    "StepRecorder",
    "TextDataModule",
    "TextTaskModule",
    "TrainBatches",
    "TrainOrder",
    "eval_splits",
    "lr_factor",
    "model_logits",
    "pad_sequences",
    "quiet_lightning",
]

SCHEDULES = ("cosine", "linear", "constant")
#: how the teacher's logits are got: ``auto`` (cache when cheap), ``cache``, ``on_the_fly``
TEACHER_LOGITS = ("auto", "cache", "on_the_fly")
#: the file under ``out_dir`` that keeps the cached teacher logits (with the key they were made for)
TEACHER_CACHE_NAME = "teacher_logits.pt"
#: ``teacher_logits="auto"`` caches a causal LM teacher's logits up to this size (``n * L * V * 2`` bytes, bf16)
TEACHER_CACHE_MAX_BYTES = 512 * 2**20


#: Lightning's warnings that do not apply to this loop (an endless custom loader, no logger, the
#: checkpoint it reads back itself)
_IGNORED_WARNINGS = (".*does not have many workers.*", ".*`isinstance\\(treespec, LeafSpec\\)`.*",
                     ".*Checkpoint directory .* exists and is not empty.*", ".*GPU available but not used.*",
                     ".*`weights_only` was not set.*")


def quiet_lightning(loggers: bool = True) -> None:
    """Ignore Lightning's warnings that do not apply to this training path (in this process; call it
    inside ``warnings.catch_warnings()`` to undo it) and, with ``loggers``, lower Lightning's loggers
    to warnings (spawned worker processes call it at setup)."""
    for message in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if loggers:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------ schedule
def lr_factor(step: int, *, max_steps: int, warmup_steps: int, schedule: str) -> float:
    """The lr of optimiser step ``step`` (0-based) as a fraction of the peak lr.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already moves;
    the last warm-up step is at the peak). Then, with ``p = (step - W + 1) / (max_steps - W + 1)``
    (in ``(0, 1)``, so no step is wasted at lr 0): ``cosine`` ``(1 + cos(pi p)) / 2``, ``linear``
    ``1 - p``, ``constant`` 1.

    >>> [round(lr_factor(s, max_steps=6, warmup_steps=2, schedule="linear"), 2) for s in range(6)]
    [0.5, 1.0, 0.8, 0.6, 0.4, 0.2]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = (step - warmup_steps + 1) / (max_steps - warmup_steps + 1)
    p = min(max(p, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1.0 - p
    raise ConfigError(f"schedule={schedule!r} is not known; choose one of {', '.join(SCHEDULES)}.")


# ---------------------------------------------------------------------------------------------- data
class TrainOrder:
    """The endless visiting order of ``n`` training items: epoch ``e`` is a permutation seeded by
    ``(seed, e)``; :meth:`take` returns the items at positions ``[start, start + count)`` of the
    permutations laid end to end."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ConfigError("the training split is empty: give at least one training item.")
        self.n, self.seed = int(n), int(seed)
        self._perm = lru_cache(maxsize=2)(self._make_perm)

    def _make_perm(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def take(self, start: int, count: int) -> Tensor:
        out, pos = [], int(start)
        end = pos + int(count)
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            chunk = min(end - pos, self.n - offset)
            out.append(self._perm(epoch)[offset:offset + chunk])
            pos += chunk
        return torch.cat(out)


def pad_sequences(seqs: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D id tensors to the longest: ``(input_ids, attention_mask)``, both ``(B, Lmax)``."""
    longest = max(int(s.numel()) for s in seqs)
    ids = torch.full((len(seqs), longest), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :s.numel()] = s
        mask[i, :s.numel()] = 1
    return ids, mask


Split = Union[Tensor, EncodedSplit]  # (n, L) token blocks, or a tokenised classification split


def _split_items(task: str, split: Split) -> tuple[Any, int]:
    """``(items, n)``: the (n, L) block tensor, or the per-example id tensors and labels."""
    if task == CAUSAL_LM:
        return split, int(split.shape[0])
    return ([torch.as_tensor(ids, dtype=torch.long) for ids in split.input_ids],
            torch.as_tensor(split.labels, dtype=torch.long), int(split.pad_id)), len(split.labels)


def _make_batch(task: str, items: Any, idx: Tensor) -> dict[str, Tensor]:
    if task == CAUSAL_LM:
        return {"input_ids": items[idx], "index": idx}
    seqs, labels, pad_id = items
    ids, mask = pad_sequences([seqs[int(i)] for i in idx], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels[idx], "index": idx}


class TrainBatches:
    """Endless training micro-batches (dicts of tensors) for one process; see the module docstring.

    ``start``: called when iteration begins, returns the index of the first micro-batch (the
    restored ``global_step * grad_accum``; 0 for a new run)."""

    def __init__(self, task: str, split: Split, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start: Callable[[], int] = lambda: 0) -> None:
        self.task, self.batch_size = task, int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.items, n = _split_items(task, split)
        self.order = TrainOrder(n, seed)
        self.start = start

    def indices(self, i: int) -> Tensor:
        """The training items of micro-batch ``i`` of this process."""
        b = self.batch_size
        return self.order.take((i * self.world_size + self.rank) * b, b)

    def batch(self, i: int) -> dict[str, Tensor]:
        return _make_batch(self.task, self.items, self.indices(i))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        i = int(self.start())
        while True:
            yield self.batch(i)
            i += 1


class EvalBatches:
    """Evaluation batches of one split for one process: items ``rank, rank + world, ...``, padded
    with weight-0 repeats so that every process runs the same number of batches (FSDP needs every
    process in every forward). Each batch has a ``weight`` (1 for a real item, 0 for padding)."""

    def __init__(self, task: str, split: Split, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.task, self.batch_size = task, int(batch_size)
        self.items, n = _split_items(task, split)
        per_rank = -(-n // world_size)
        own = torch.arange(rank, n, world_size)
        self.weight = torch.cat([torch.ones(len(own)), torch.zeros(per_rank - len(own))])
        self.idx = torch.cat([own, torch.zeros(per_rank - len(own), dtype=torch.long)])

    def __len__(self) -> int:
        return -(-len(self.idx) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for s in range(0, len(self.idx), self.batch_size):
            batch = _make_batch(self.task, self.items, self.idx[s:s + self.batch_size])
            batch["weight"] = self.weight[s:s + self.batch_size]
            yield batch


class TextDataModule(L.LightningDataModule):
    """Training and evaluation loaders of one text task: ``data.train`` and ``data.held_out``
    (causal LM, ``(n, L)`` token blocks) or ``data.train`` / ``data.val`` / ``data.test``
    (:class:`~inhernet.hf.textdata.EncodedSplit`). ``batch_size`` is per process.

    ``start_batch``: called when training iteration begins; the first micro-batch's index."""

    def __init__(self, data: Any, task: str, *, batch_size: int, eval_batch_size: int = 8, seed: int = 0,
                 start_batch: Optional[Callable[[], int]] = None) -> None:
        super().__init__()
        self.data, self.task = data, task
        self.batch_size, self.eval_batch_size, self.seed = int(batch_size), int(eval_batch_size), int(seed)
        self.start_batch = start_batch
        self.eval_splits = eval_splits(data, task)

    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _start(self) -> int:
        if self.start_batch is not None:
            return self.start_batch()
        t = self.trainer
        return t.global_step * t.accumulate_grad_batches if t is not None else 0

    def train_dataloader(self) -> TrainBatches:
        rank, world = self._dist()
        return TrainBatches(self.task, self.data.train, self.batch_size, seed=self.seed, rank=rank, world_size=world,
                            start=self._start)

    def val_dataloader(self) -> list[EvalBatches]:
        rank, world = self._dist()
        return [EvalBatches(self.task, _eval_split(self.data, self.task, name), self.eval_batch_size, rank=rank,
                            world_size=world) for name in self.eval_splits]


def _eval_split(data: Any, task: str, name: str) -> Any:
    return data.held_out if task == CAUSAL_LM else getattr(data, name)


def eval_splits(data: Any, task: str) -> list[str]:
    """The evaluation splits the data has (non-empty): ``["eval"]`` (held-out blocks) for a causal
    LM, ``["val", "test"]`` or a part of it for classification."""
    if task == CAUSAL_LM:
        held = getattr(data, "held_out", None)
        return ["eval"] if held is not None and held.numel() > 0 and held.shape[0] > 0 else []
    return [s for s in ("val", "test") if getattr(data, s, None) is not None and len(getattr(data, s)) > 0]


# -------------------------------------------------------------------------------------------- module
def _spawned() -> bool:
    """This process was started by torch.multiprocessing (a ``ddp_spawn`` worker)."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def model_logits(out: Any) -> Tensor:
    """The logits of a model's output: ``.logits`` (a transformers output), a tensor, or the first
    element of a tuple."""
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in the model's output ({type(out).__name__}); return a tensor or an "
                    "object with .logits")


class TextTaskModule(L.LightningModule):
    """Fine-tune a Hugging Face model on one text task, optionally distilled from a frozen teacher.

    The loss of a micro-batch: the task loss (mean next-token cross-entropy over every predicted
    position of the blocks; or the mean cross-entropy of the examples' labels) and, with a teacher
    and ``kd_alpha > 0``, ``(1 - kd_alpha) * task + kd_alpha * T^2 * KL(teacher || student)`` at
    temperature ``T`` (:func:`~inhernet.train.losses.kd_kl`, averaged over the predicted tokens or
    the examples). AdamW (weight decay on the matrices, not on biases and norm weights), the lr of
    :func:`lr_factor` stepped every optimiser step.

    The teacher is held in a tuple, outside the registered children: DDP / FSDP never wrap or shard
    it, the checkpoint does not hold it, it runs in eval mode under ``no_grad``, and the object
    passed in is never changed (on another device than the training one, a private copy is used).
    ``teacher_logits``: ``"cache"`` computes the teacher's logits for every training item once (at
    the start of training, in a fixed order and batching, on every process) and looks them up;
    ``"on_the_fly"`` runs the teacher on every batch. ``cache_file``: where the cache is kept between
    runs (written by global rank zero, used again when its key, a hash of the training data and the
    teacher's weights, matches).

    Evaluation (Lightning's validation loop, every process its share): causal LM ``eval/nll``
    (token-weighted mean over all predicted tokens of the held-out blocks), ``eval/ppl`` and
    ``eval/tokens``; classification ``{split}/acc`` and ``{split}/loss``. Sums are reduced over the
    processes, so the numbers do not depend on how many there are. The latest are in
    :attr:`last_eval`.

    ``compile``: a ``torch.compile`` mode or ``None``: the training steps run the model compiled
    (:class:`~inhernet.train.compiled.CompiledModel`; static shapes for the fixed-length blocks of a
    causal LM, dynamic ones for padded classification batches); ``self.model``, the checkpoint and
    the evaluation stay those of the plain model.
    """

    def __init__(self, model: nn.Module, *, task: str, lr: float, max_steps: int, warmup_steps: int = 0,
                 schedule: str = "cosine", weight_decay: float = 0.01, teacher: Optional[nn.Module] = None,
                 kd_alpha: float = 0.0, temperature: float = 2.0, teacher_logits: str = "on_the_fly",
                 cache_file: Union[str, Path, None] = None, eval_names: Sequence[str] = (), seed: int = 0,
                 run_name: str = "(unnamed)", quiet: bool = False, compile: Optional[str] = None,
                 gate_lr_scale: float = 1.0) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task={task!r} is not known; choose one of {', '.join(TASKS)}.")
        self.model = model
        self.compiled = CompiledModel(compile, dynamic=False if task == CAUSAL_LM else None)
        # decided on the unsharded model (the shapes of the parameters, not of their shards)
        self.no_decay = {name for name, p in model.named_parameters() if p.ndim < 2}
        self.task = task
        self.lr, self.max_steps = float(lr), int(max_steps)
        self.warmup_steps, self.schedule = int(warmup_steps), schedule
        self.weight_decay = float(weight_decay)
        self.gate_lr_scale = check_gate_lr_scale(gate_lr_scale, model)
        self.kd_alpha, self.temperature = float(kd_alpha), float(temperature)
        # a tuple keeps the teacher out of the registered children (no DDP/FSDP, no checkpoint, no .train())
        self._teacher: tuple = (teacher,) if teacher is not None and self.kd_alpha > 0 else ()
        self.teacher_logits_mode = teacher_logits
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.eval_names = list(eval_names)
        self.seed, self.run_name, self.quiet = int(seed), run_name, bool(quiet)
        self.last_eval: dict[str, float] = {}
        self._cache: Optional[Tensor] = None
        self._step_sums: Optional[Tensor] = None  # loss, task, kd, micro-batches, tokens of this optimiser step
        self._eval_sums: dict[str, Tensor] = {}
        self._t0: Optional[float] = None
        self._local_tokens = 0

    def setup(self, stage: str) -> None:
        if self.quiet and _spawned():
            quiet_lightning()  # a ddp_spawn worker: a fresh interpreter, without the caller's filters

    def configure_model(self) -> None:
        # under FSDP2 (a ModelParallelStrategy) the blocks, then the root, are sharded here, before the
        # optimiser is made from the (then sharded) parameters; any other strategy: nothing to do
        mesh = data_parallel_mesh(self.trainer.strategy)
        if mesh is not None:
            shard_model(self.model, mesh)

    # ------------------------------------------------------------------------------ teacher
    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0] if self._teacher else None

    @property
    def distils(self) -> bool:
        return self.teacher is not None

    def _forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        if self.task == CAUSAL_LM:
            return model_logits(model(input_ids=batch["input_ids"], use_cache=False))
        return model_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))

    def _teacher_forward(self, batch: dict[str, Tensor]) -> Tensor:
        with torch.no_grad(), eval_mode(self.teacher):
            logits = self._forward(self.teacher, batch)
        if self.task == CAUSAL_LM:
            logits = logits[:, :-1]
        if not torch.isfinite(logits).all():
            raise TrainingDivergedError(self.run_name, self.global_step, self.current_epoch,
                                        "the teacher's logits are non-finite (NaN/Inf) on a training batch; "
                                        "check the teacher's weights")
        return logits

    def on_fit_start(self) -> None:
        self.compiled.setup(self.model, self.device)
        t = self.teacher
        if t is None:
            return
        self._teacher = (on_device(t, self.device),)  # a private copy there: the caller's teacher stays put
        if self.teacher_logits_mode == "cache":
            self._cache = self._teacher_cache()
            self._teacher = (t,)  # the private copy is not needed any more (device memory)

    def _cache_key(self) -> str:
        dm = self.trainer.datamodule
        train = dm.data.train
        data = [train] if self.task == CAUSAL_LM else [torch.as_tensor([len(x) for x in train.input_ids]),
                                                        torch.as_tensor([i for x in train.input_ids for i in x])]
        teacher = [p for _, p in sorted(self.teacher.state_dict().items())]
        return stable_hash({"task": self.task, "data": tensor_digest(data), "teacher": tensor_digest(teacher),
                            "batch": dm.eval_batch_size, "precision": str(self.trainer.precision)})

    def _teacher_cache(self) -> Tensor:
        """The teacher's logits of every training item, in item order: ``(n, C)`` float32 for
        classification, ``(n, L - 1, V)`` bfloat16 for a causal LM; on the training device."""
        dm = self.trainer.datamodule
        key = self._cache_key()
        if self.cache_file is not None and self.cache_file.is_file():
            try:
                saved = torch.load(self.cache_file, map_location="cpu", weights_only=True)
                if saved.get("key") == key:
                    return saved["logits"].to(self.device)
            except Exception:  # noqa: BLE001 - a damaged cache file is made again
                pass
        items, n = _split_items(self.task, dm.data.train)
        parts = []
        with self.trainer.precision_plugin.forward_context():
            for s in range(0, n, dm.eval_batch_size):
                batch = _make_batch(self.task, items, torch.arange(s, min(n, s + dm.eval_batch_size)))
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self._teacher_forward(batch)
                parts.append(logits.to(torch.bfloat16 if self.task == CAUSAL_LM else torch.float32))
        cache = torch.cat(parts)
        if self.cache_file is not None and self.trainer.is_global_zero:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache_file, lambda p: torch.save({"key": key, "logits": cache.cpu()}, p))
        return cache

    def teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """The teacher's logits for a training batch (cached or computed now); for a causal LM only
        the positions that predict a token (``L - 1``)."""
        if self._cache is not None:
            return self._cache[batch["index"].to(self._cache.device)]
        return self._teacher_forward(batch)

    # ------------------------------------------------------------------------------- training
    def task_loss(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if self.task == CAUSAL_LM:
            return next_token_nll(logits, batch["input_ids"]).mean()
        return F.cross_entropy(logits.float(), batch["labels"])

    def kd_term(self, logits: Tensor, teacher: Tensor) -> Tensor:
        """``T^2 * KL(teacher || student)`` at temperature T, averaged over tokens / examples."""
        if self.task == CAUSAL_LM:
            logits = logits[:, :-1]
        if logits.shape != teacher.shape:
            raise ConfigError(f"the teacher's logits have shape {tuple(teacher.shape)} but the student's "
                              f"{tuple(logits.shape)}: distillation needs the same vocabulary (causal LM) or the "
                              "same labels (classification); give a teacher of the same tokenizer / label set.")
        flat = (lambda z: z.flatten(0, 1)) if self.task == CAUSAL_LM else (lambda z: z)
        return kd_kl(flat(logits).float(), flat(teacher).float(), self.temperature)

    def on_train_start(self) -> None:
        self._t0, self._local_tokens = time.perf_counter(), 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout's draws depend on (seed, micro-batch, rank) only: a resumed run draws what an uninterrupted one did
        torch.manual_seed(mix_seed(self.seed, batch_idx, self.global_rank))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self._forward(self.compiled(self.model), batch)
        task = self.task_loss(logits, batch)
        if self.distils:
            kd = self.kd_term(logits, self.teacher_logits(batch))
            loss = (1.0 - self.kd_alpha) * task + self.kd_alpha * kd
        else:
            kd = torch.zeros((), device=task.device)
            loss = task
        tokens = (batch["attention_mask"].sum() if "attention_mask" in batch
                  else torch.tensor(batch["input_ids"].numel(), device=task.device))
        sums = torch.stack([loss.detach().double(), task.detach().double(), kd.detach().double(),
                            torch.ones((), dtype=torch.float64, device=task.device), tokens.double()])
        self._step_sums = sums if self._step_sums is None else self._step_sums + sums
        # the progress bar: this micro-batch's loss and the tokens per second of all processes
        self._local_tokens += int(tokens)
        elapsed = max(time.perf_counter() - (self._t0 or time.perf_counter()), 1e-3)
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self.log("tok/s", float(self._local_tokens * self.trainer.world_size / elapsed), on_step=True,
                 on_epoch=False, prog_bar=True, logger=False)
        return loss

    def take_step_sums(self) -> Optional[Tensor]:
        """This process's sums over the micro-batches of the optimiser step just taken (loss, task
        loss, KD term, micro-batches, tokens), and start the next step's."""
        sums, self._step_sums = self._step_sums, None
        return sums

    # ----------------------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._eval_sums = {}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.eval_names[dataloader_idx]
        w = batch["weight"].double()
        logits = self._forward(self.model, batch)
        if self.task == CAUSAL_LM:
            nll = next_token_nll(logits, batch["input_ids"]).double()
            sums = torch.stack([(nll.sum(1) * w).sum(), w.sum() * nll.shape[1]])
        else:
            loss = F.cross_entropy(logits.float(), batch["labels"], reduction="none").double()
            correct = (logits.argmax(-1) == batch["labels"]).double()
            sums = torch.stack([(loss * w).sum(), (correct * w).sum(), w.sum()])
        self._eval_sums[name] = sums if name not in self._eval_sums else self._eval_sums[name] + sums

    def on_validation_epoch_end(self) -> None:
        out: dict[str, float] = {}
        width = 2 if self.task == CAUSAL_LM else 3
        for name in self.eval_names:  # every process reduces every split, in the same order
            local = self._eval_sums.get(name, torch.zeros(width, dtype=torch.float64, device=self.device))
            total = self.trainer.strategy.reduce(local, reduce_op="sum")
            if self.task == CAUSAL_LM:
                nll = float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")
                out.update({f"{name}/nll": nll, f"{name}/ppl": math.exp(nll) if math.isfinite(nll) else nll,
                            f"{name}/tokens": int(total[1])})
            else:
                n = float(total[2])
                out.update({f"{name}/acc": float(total[1]) / n, f"{name}/loss": float(total[0]) / n})
        self.last_eval = out

    # ------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]  # FSDP2 keeps the names
        decay = [p for n, p in named if n not in self.no_decay]
        no_decay = [p for n, p in named if n in self.no_decay]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(gate_parameter_groups(self.model, groups, self.lr, self.gate_lr_scale), lr=self.lr)
        max_steps, warmup, schedule = self.max_steps, self.warmup_steps, self.schedule

        def factor(step: int) -> float:  # a function, not an object: LambdaLR keeps it out of the checkpoint
            return lr_factor(step, max_steps=max_steps, warmup_steps=warmup, schedule=schedule)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


# ----------------------------------------------------------------------------------------- callbacks
class StepRecorder(Callback):
    """One ``metrics.jsonl`` row per optimiser step (global rank zero) and ``last.ckpt`` on schedule.

    A row: ``step``, ``epoch`` (training items seen / training items), ``lr`` (of that step),
    ``train/loss`` (mean over the step's micro-batches and processes; ``train/task_loss`` and
    ``train/kd_loss`` too when distilling), ``tokens`` (all processes, since the start of the run),
    ``time_s`` (training time since the start of the run, resumed runs included) and, at an
    evaluation step, the evaluation's metrics. Evaluation steps: every ``eval_every`` steps and the
    last one (``None``: the last one only; ``has_eval=False``: none). The checkpoint is written every
    ``checkpoint_every`` steps and at step ``max_steps``, after the step's row. On (re)start the
    rows of steps after the restored one are dropped. ``batch_size``: training items per process and
    optimiser step (micro-batch size times accumulation). ``log``: also print the rows of evaluation
    and checkpoint steps, one line each (``progress="log"``: a run whose output goes to a log file).
    """

    def __init__(self, metrics_path: Union[str, Path], checkpoint_path: Union[str, Path], *, max_steps: int,
                 checkpoint_every: int, eval_every: Optional[int], has_eval: bool, batch_size: int,
                 train_items: int, log: Optional[str] = None) -> None:
        self.log_name = log
        self.metrics_path, self.checkpoint_path = Path(metrics_path), Path(checkpoint_path)
        self.max_steps, self.checkpoint_every, self.eval_every = int(max_steps), int(checkpoint_every), eval_every
        self.has_eval = bool(has_eval)
        self.batch_size, self.train_items = int(batch_size), int(train_items)
        self.items_per_step = self.batch_size  # times the number of processes, known at the start
        self.tokens = 0
        self.time_s = 0.0
        self._t = 0.0
        self._lr: Optional[float] = None
        self._last_step = 0
        self._pending: Optional[dict] = None

    # the checkpointed part: what a resumed run continues counting from
    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "time_s": self.time_s + (time.perf_counter() - self._t)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens, self.time_s = int(state.get("tokens", 0)), float(state.get("time_s", 0.0))

    def eval_due(self, step: int) -> bool:
        if not self.has_eval:
            return False
        return step >= self.max_steps or (self.eval_every is not None and step % self.eval_every == 0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        self._t = time.perf_counter()
        self.items_per_step = self.batch_size * trainer.world_size
        if trainer.is_global_zero:
            keep = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= trainer.global_step]
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch of gradient accumulation: no optimiser step yet
            return
        self._last_step = step
        sums = pl_module.take_step_sums()
        sums = trainer.strategy.reduce(sums, reduce_op="sum")  # every process, every step: a collective
        loss, task, kd, micro, tokens = (float(v) for v in sums)
        self.tokens += int(round(tokens))
        row: dict[str, Any] = {"step": step, "epoch": round(step * self.items_per_step / self.train_items, 6),
                               "lr": self._lr, "train/loss": loss / micro}
        if pl_module.distils:
            row.update({"train/task_loss": task / micro, "train/kd_loss": kd / micro})
        row.update({"tokens": self.tokens, "time_s": round(self.time_s + time.perf_counter() - self._t, 3)})
        if step >= self.max_steps:
            trainer.should_stop = True  # lets Lightning run the final evaluation at this step
        if self.eval_due(step):
            self._pending = row  # written with the evaluation's metrics, then checkpointed
            return
        self._finish(trainer, row)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._pending is None:
            return
        row, self._pending = self._pending, None
        row.update(pl_module.last_eval)
        self._finish(trainer, row, evaluated=True)

    def _finish(self, trainer: L.Trainer, row: dict, evaluated: bool = False) -> None:
        step = row["step"]
        checkpoint = step % self.checkpoint_every == 0 or step >= self.max_steps
        if trainer.is_global_zero:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.log_name is not None and (checkpoint or evaluated):
                skip = ("step", "epoch", "lr", "tokens", "time_s")
                shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in skip and isinstance(v, float))
                print(f"{self.log_name}: step {step}/{self.max_steps}, lr {row['lr']:.3g}, {row['time_s']:.0f} s, "
                      f"{row['tokens']:,} tokens: {shown}", flush=True)
        if checkpoint:
            trainer.save_checkpoint(self.checkpoint_path)  # every process: FSDP gathers, rank zero writes


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar over the run's micro-batches (the training loader is endless, so
    Lightning knows no total of its own); it shows the loss and the tokens per second."""

    def __init__(self, total_batches: int, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._total = int(total_batches)

    @property
    def total_train_batches(self) -> int:
        return self._total

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("fine-tuning")
