"""The schema of a transformer comparison config (``task: sequence-classification`` or ``causal-lm``).

The same runner idea as the image configs — one teacher, every method x seed under one training
budget, resumable, one table — for Hugging Face teachers::

    name: smollm2_lm
    task: causal-lm
    out_dir: runs/bench/smollm2_lm
    teacher: {model: smollm2}            # a model folder, a .gguf file, or a packaged name (smollm2, minilm)
    data: {sources: [glosses, fortunes], seq_len: 128, held_out_fraction: 0.1}
    evaluation: {wikitext2: true, seq_len: 2048, max_windows: 16}
    schedule: {max_steps: 60, batch_size: 4, lr: 1.0e-4, schedule: cosine, warmup: 0.1}
    seeds: [0]
    methods:
      - {name: teacher, kind: teacher, finetune: false}      # zero-shot
      - {name: teacher_ft, kind: teacher}                     # fine-tuned the same way
      - {name: depth_pruned_80, kind: depth_pruned, budget: 0.8}
      - {name: svd_llm_80, kind: svd_llm, budget: 0.8}
      - {name: inhernet_80, kind: inhernet, budget: 0.8, inherit: {heads: 2}}
      - {name: inhernet_80_kd, kind: inhernet, budget: 0.8, kd: 0.5, inherit: {heads: 2}}

Method kinds (every one is evaluated before and, unless ``finetune: false``, after fine-tuning):

* ``teacher``: the teacher itself (for ``sequence-classification`` the teacher is first fine-tuned
  on the task once, cached, since a pretrained encoder has no classifier for it);
* ``layer_subset``: the DistilBERT recipe — every other block of the teacher (blocks 0, 2, 4, …);
* ``depth_pruned``: ``budget`` (a fraction) of the teacher's blocks, evenly spaced, first and last
  kept — at ``budget: 0.8`` it keeps 80 % of the block (decoder-linear) parameters;
* ``svd_llm``: the SVD-LLM-style baseline — activation-whitened truncated SVD with one rank ratio
  for every layer (``budget_mode: uniform``), H = 1, no gate;
* ``inhernet``: the teacher inherited with ``inherit`` (:class:`inhernet.InheritConfig` fields;
  default ``init: whitened``, ``heads: 2``, spectral allocation).

``budget`` (svd_llm / inhernet): a fraction of the **targeted layers' parameters** (the attention
and MLP projections: ``budget_scope: targets``, the LLM-compression papers' convention — the
report says so), or ``layer_subset`` = as many parameters as the layer-subset student (whole
models counted). ``kd``: the weight of the distillation term (``0`` = task loss only; ``0.5`` =
half task loss, half KL to the teacher's logits at ``temperature``).

Unknown keys are errors that list the valid keys and suggest the closest one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from inhernet.hf.folders import TASKS as TEXT_TASKS

from .config import CompareConfigError, TrainerConfig, build_section, require, validated

__all__ = ["TEXT_INHERIT_DEFAULTS", "TEXT_METHOD_KINDS", "TEXT_TASKS", "TextCompareConfig", "TextDataConfig",
           "TextEvaluationConfig", "TextMethodConfig", "TextScheduleConfig", "TextTeacherConfig", "PACKAGED_MODELS"]

TEXT_METHOD_KINDS = ("teacher", "layer_subset", "depth_pruned", "svd_llm", "inhernet")
SCHEDULES = ("cosine", "linear", "constant")
#: teacher names resolved without a path: the offline asset packages
PACKAGED_MODELS = ("minilm", "smollm2")


@dataclass
class TextTeacherConfig:
    """``model``: a Hugging Face folder, a ``.gguf`` file, or ``minilm`` / ``smollm2`` (the offline
    packages). ``finetune_steps`` (sequence-classification): steps the teacher is fine-tuned on the
    task before the methods start (default: the schedule's ``max_steps``); cached by a hash of
    everything that determines it."""

    model: str = "minilm"
    finetune_steps: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        require(bool(self.model), "teacher.model must name a model folder, a .gguf file or minilm / smollm2")
        require(self.finetune_steps is None or self.finetune_steps >= 1,
                f"teacher.finetune_steps={self.finetune_steps} must be >= 1 (or null)")


@dataclass
class TextDataConfig:
    """The task's data (see :mod:`inhernet.hf.textdata`).

    sequence-classification: ``name`` (``wordnet_glosses``, or a CSV / TSV / JSONL file),
    ``text_column`` / ``label_column`` / ``text_pair_column``, ``test_file``, ``val_fraction``,
    ``test_fraction``, ``per_class`` / ``max_examples`` (a stratified sample), ``max_length``.

    causal-lm: ``sources`` (files, or ``glosses`` / ``fortunes`` / ``wikitext2``), ``text_field``
    (JSONL), ``seq_len``, ``held_out_fraction`` (whole documents held out), ``max_train_blocks``,
    ``max_held_out_blocks``, ``separator`` (between documents; null = the tokenizer's EOS).
    """

    name: str = "wordnet_glosses"
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: Optional[str] = None
    test_file: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    per_class: Optional[int] = None
    max_examples: Optional[int] = None
    max_length: int = 128
    sources: list = field(default_factory=lambda: ["glosses", "fortunes"])
    text_field: str = "text"
    seq_len: int = 128
    held_out_fraction: float = 0.1
    max_train_blocks: Optional[int] = None
    max_held_out_blocks: Optional[int] = None
    separator: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        require(0 <= self.val_fraction < 1, f"data.val_fraction={self.val_fraction} must lie in [0, 1)")
        require(0 < self.test_fraction < 1, f"data.test_fraction={self.test_fraction} must lie in (0, 1)")
        require(0 < self.held_out_fraction < 1, f"data.held_out_fraction={self.held_out_fraction} must lie in (0, 1)")
        require(self.max_length >= 2, f"data.max_length={self.max_length} must be >= 2")
        require(self.seq_len >= 2, f"data.seq_len={self.seq_len} must be >= 2")
        for key in ("per_class", "max_examples", "max_train_blocks", "max_held_out_blocks"):
            v = getattr(self, key)
            require(v is None or v >= 1, f"data.{key}={v} must be >= 1 (or null)")
        require(bool(self.sources) and all(isinstance(s, str) for s in self.sources),
                f"data.sources={self.sources!r} must be a non-empty list of files or names")


@dataclass
class TextEvaluationConfig:
    """How every model is scored (before and after fine-tuning).

    causal-lm: token-weighted perplexity on the held-out blocks and, with ``wikitext2``, on
    WikiText-2 (test) in non-overlapping windows of ``seq_len`` tokens (at most ``max_windows``).
    ``speed``: tokens/s of a forward of ``speed_batch`` × ``speed_tokens`` tokens and of greedy
    generation (causal-lm), or sentences/s at batch 1 (classification), CPU, ``threads`` threads,
    measured side by side for one model per method."""

    wikitext2: bool = True
    seq_len: int = 2048
    max_windows: Optional[int] = 16
    batch_size: int = 1
    speed: bool = True
    speed_tokens: int = 128
    speed_batch: int = 1
    new_tokens: int = 32
    rounds: int = 3
    threads: Optional[int] = 1

    def __post_init__(self) -> None:
        require(self.seq_len >= 2, f"evaluation.seq_len={self.seq_len} must be >= 2")
        require(self.max_windows is None or self.max_windows >= 1,
                f"evaluation.max_windows={self.max_windows} must be >= 1 (or null: every window)")
        for key in ("batch_size", "speed_tokens", "speed_batch", "new_tokens", "rounds"):
            require(getattr(self, key) >= 1, f"evaluation.{key}={getattr(self, key)} must be >= 1")


@dataclass
class TextScheduleConfig:
    """One training budget for every method: ``max_steps`` optimiser steps of ``batch_size`` ×
    ``grad_accum`` sequences, AdamW, ``schedule`` with linear warm-up (``warmup``: steps, or a
    fraction of ``max_steps`` when < 1)."""

    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup: Union[float, int] = 0.05
    max_grad_norm: Optional[float] = 1.0
    eval_batch_size: int = 8
    eval_every: Optional[int] = None
    precision: Union[str, None] = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, f"schedule.max_steps={self.max_steps} must be >= 1")
        require(self.batch_size >= 1, f"schedule.batch_size={self.batch_size} must be >= 1")
        require(self.grad_accum >= 1, f"schedule.grad_accum={self.grad_accum} must be >= 1")
        require(self.lr > 0, f"schedule.lr={self.lr} must be > 0")
        require(self.schedule in SCHEDULES, f"schedule.schedule={self.schedule!r}; use {', '.join(SCHEDULES)}")
        require(self.warmup >= 0, f"schedule.warmup={self.warmup} must be >= 0")


@dataclass
class TextMethodConfig:
    """One method: ``kind`` in :data:`TEXT_METHOD_KINDS`; see the module docstring."""

    name: str = ""
    kind: str = "inhernet"
    budget: Union[float, int, str, None] = None
    kd: float = 0.0
    temperature: float = 2.0
    finetune: bool = True
    inherit: dict = field(default_factory=dict)
    label: Optional[str] = None

    def __post_init__(self) -> None:
        from inhernet.train import validate
        from inhernet.utils import did_you_mean

        require(bool(self.name), "every method needs a name")
        validated(validate.check_folder_name, "method name", self.name)
        if self.kind not in TEXT_METHOD_KINDS:
            raise CompareConfigError(f"method {self.name!r}: kind={self.kind!r}{did_you_mean(self.kind, TEXT_METHOD_KINDS)}; "
                                     f"valid kinds: {', '.join(TEXT_METHOD_KINDS)}")
        require(isinstance(self.kd, (int, float)) and not isinstance(self.kd, bool) and 0 <= self.kd <= 1,
                f"method {self.name!r}: kd={self.kd!r} is the weight of the distillation term, in [0, 1] "
                "(0 = task loss only)")
        require(self.temperature > 0, f"method {self.name!r}: temperature={self.temperature} must be > 0")
        require(not (self.kd and self.kind == "teacher"), f"method {self.name!r}: the teacher cannot distil from itself")
        require(not (self.kd and not self.finetune), f"method {self.name!r}: kd needs finetune: true")
        if self.kind in ("teacher", "layer_subset"):
            require(self.budget is None, f"method {self.name!r}: budget does not apply to kind {self.kind}")
        if self.kind == "depth_pruned":
            require(isinstance(self.budget, float) and 0 < self.budget < 1,
                    f"method {self.name!r}: depth_pruned needs budget: a fraction in (0, 1) of the teacher's blocks")
        if self.kind in ("svd_llm", "inhernet"):
            b = self.budget
            require(b == "layer_subset" or (isinstance(b, float) and 0 < b <= 1)
                    or (isinstance(b, int) and not isinstance(b, bool) and b >= 100),
                    f"method {self.name!r}: budget={b!r}; give a fraction in (0, 1] of the targeted layers' "
                    "parameters, an int count of them, or layer_subset (as many parameters as that student)")
        if self.kind != "inhernet":
            require(not self.inherit, f"method {self.name!r}: 'inherit' options only apply to kind: inhernet")
        else:
            self._validate_inherit()

    def _validate_inherit(self) -> None:
        from inhernet import InheritConfig

        d = dict(self.inherit)
        require("budget" not in d, f"method {self.name!r}: give the budget as the method's budget, not inherit.budget")
        try:
            InheritConfig.from_dict({**d, "budget": 0.5})
        except (TypeError, ValueError) as err:
            raise CompareConfigError(f"method {self.name!r}: inherit: {err}") from err

    def inherit_options(self) -> dict:
        """The :class:`~inhernet.InheritConfig` fields this method inherits with (budget resolved by the runner)."""
        if self.kind == "svd_llm":  # SVD-LLM: truncation-aware whitening, one ratio per layer, plain low rank
            return {"init": "whitened", "heads": 1, "gate": "none", "budget_mode": "uniform", "budget_scope": "targets"}
        return {**TEXT_INHERIT_DEFAULTS, **self.inherit}


#: what a transformer method of kind ``inhernet`` inherits with where its ``inherit`` leaves it out
#: (before :class:`~inhernet.InheritConfig`'s own defaults): activation-aware init, two gated heads,
#: the budget over the target layers
TEXT_INHERIT_DEFAULTS = {"init": "whitened", "heads": 2, "budget_scope": "targets"}


@dataclass
class TextCompareConfig:
    name: str = "compare"
    task: str = "causal-lm"
    out_dir: str = "runs/compare"
    cache_dir: str = "cache"
    teacher: TextTeacherConfig = field(default_factory=TextTeacherConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    evaluation: TextEvaluationConfig = field(default_factory=TextEvaluationConfig)
    schedule: TextScheduleConfig = field(default_factory=TextScheduleConfig)
    seeds: list = field(default_factory=lambda: [0])
    methods: list = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    calibration_blocks: int = 16
    source: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        from inhernet.utils import did_you_mean

        if self.task not in TEXT_TASKS:
            raise CompareConfigError(f"task={self.task!r}{did_you_mean(self.task, TEXT_TASKS)}; the transformer "
                                     f"tasks are {', '.join(TEXT_TASKS)} (image-classification has its own schema)")
        self.methods = [m if isinstance(m, TextMethodConfig) else build_section(TextMethodConfig, m, f"methods[{i}]")
                        for i, m in enumerate(self.methods)]
        require(bool(self.methods), "the config lists no methods")
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, f"method names must be unique; repeated: {', '.join(dup)}")
        require(bool(self.seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds)
                and len(set(self.seeds)) == len(self.seeds),
                f"seeds={self.seeds!r} must be a non-empty list of distinct integers")
        require(self.calibration_blocks >= 1, f"calibration_blocks={self.calibration_blocks} must be >= 1")
        if self.task == "causal-lm":
            require(self.teacher.finetune_steps is None, "teacher.finetune_steps applies to sequence-classification "
                    "only (a causal LM is its own teacher; add a method of kind teacher to fine-tune it)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "TextCompareConfig":
        return build_section(cls, data, where)
