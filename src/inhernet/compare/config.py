"""The schema of a comparison config (YAML), as validated dataclasses.

A config names the data, the teacher, the student architecture, the methods, the seeds and one
training schedule shared by every method::

    name: demo
    out_dir: runs/demo              # results, per-run folders
    cache_dir: cache                # trained teachers, keyed by a hash of their config
    data: {name: fashion_mnist, subset: 5000, test_subset: 2000, val_fraction: 0.02, seed: 0}
                                    # or your own: {name: data/mine.npz} / {name: data/images/}
    teacher: {arch: resnet56, epochs: 6}        # or {arch: resnet56, path: saved/teacher}
    student: {arch: resnet20}                   # or your own: {arch: mypkg.models:make_cnn}
    schedule: {epochs: 6, batch_size: 64, lr: 0.05}
    seeds: [0, 1]
    methods:
      - {name: student, kind: student}
      - {name: student_kd, kind: student_kd}
      - {name: student_dkd, kind: student_dkd}
      - {name: inhernet_small, kind: inhernet, kd: true, inherit: {rank: 4, heads: 3}}
      - {name: inhernet_large, kind: inhernet, inherit: {rank: 8, heads: 3}}
      - {name: inhernet_budget, kind: inhernet, inherit: {budget: student}}

Unknown keys are errors that list the valid keys and suggest the closest one.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from inhernet.errors import ConfigError
from inhernet.train import validate
from inhernet.utils import did_you_mean, stable_hash

__all__ = [
    "CompareConfig",
    "ConfigKeyError",
    "CompareConfigError",
    "DataConfig",
    "LatencyConfig",
    "MethodConfig",
    "METHOD_KINDS",
    "ScheduleConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainerConfig",
    "read_config_file",
    "stable_hash",
]

METHOD_KINDS = ("student", "student_kd", "student_dkd", "student_lskd", "inhernet")
KD_CHOICES = (False, True, "kd", "dkd", "lskd")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "single_device")


class CompareConfigError(ConfigError):
    """A comparison config is invalid; the message names the key and the fix.

    A :class:`inhernet.config.ConfigError`, so every invalid option, whichever entry point it came
    through (command line, YAML, Python), is one kind of error."""


class ConfigKeyError(CompareConfigError):
    """A config key is unknown."""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


def build_section(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompareConfigError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in valid]
    if unknown:
        msgs = [f"{k!r}{did_you_mean(k, valid)}" for k in unknown]
        raise ConfigKeyError(f"unknown key(s) in {where}: {', '.join(msgs)}. Valid keys: {', '.join(valid)}.")
    kwargs = {}
    for k, v in data.items():
        tp = hints.get(k, Any)
        nested = _nested_type(tp)
        if nested is not None and isinstance(v, dict):
            v = build_section(nested, v, f"{where}.{k}")
        elif not _type_ok(v, tp):
            raise CompareConfigError(f"{where}.{k}={v!r} has the wrong type; expected {_type_name(tp)}.")
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except CompareConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise CompareConfigError(f"{where}: {err}") from err


def _nested_type(tp: Any) -> Optional[type]:
    if dataclasses.is_dataclass(tp):
        return tp
    return None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise CompareConfigError(msg)


def validated(check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run a check of :mod:`inhernet.train.validate` (the rules every entry point shares); its
    ``ConfigError`` is raised as a :class:`CompareConfigError` with the same message."""
    try:
        check(*args, **kwargs)
    except CompareConfigError:
        raise
    except ConfigError as err:
        raise CompareConfigError(str(err)) from err


@dataclass
class DataConfig:
    """The data set (see :func:`inhernet.data.load_dataset`) and the training augmentation."""

    name: str = "fashion_mnist"
    root: Optional[str] = None
    subset: Optional[int] = None
    test_subset: Optional[int] = None
    val_fraction: float = 0.1
    seed: int = 0
    augment: str = "default"  # default | none | crop_flip | crop | flip

    def __post_init__(self) -> None:
        require(self.subset is None or self.subset > 0, f"data.subset={self.subset} must be > 0 (or null)")
        require(self.test_subset is None or self.test_subset > 0, f"data.test_subset={self.test_subset} must be > 0")
        require(0 <= self.val_fraction < 1, f"data.val_fraction={self.val_fraction} must lie in [0, 1)")
        require(self.augment in ("default", "none", "crop_flip", "crop", "flip"),
               f"data.augment={self.augment!r}: use default, none, crop_flip, crop or flip")


@dataclass
class TeacherConfig:
    """The teacher: trained here (``epochs``, cached) or loaded from ``path`` (a saved model / .ckpt).

    ``subset``: the training images the teacher learns from — ``"same"`` (default) as the methods
    (``data.subset``), ``null`` every training image, or a count (stratified). A strong teacher is
    trained on all of them while every method is compared on ``data.subset``; the methods' images
    are a subset of the teacher's (same validation split), and the teacher is evaluated on the
    methods' test data.

    ``threads``: CPU intra-op threads while the teacher trains (default: ``trainer.threads``), e.g. 2
    for a teacher trained before the methods' one-thread runs share the cores. Not part of the
    teacher's cache key, but part of what makes CPU training repeat: a cached record trained at
    another thread count is not repeated by a retraining (:mod:`inhernet.compare.teacher`).
    """

    arch: str = "resnet56"
    epochs: int = 10
    path: Optional[str] = None
    seed: int = 0
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    subset: Union[int, str, None] = "same"
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        option = "teacher.{}".format
        validated(validate.check_count, "epochs", self.epochs, option=option, what="training epochs")
        if self.threads is not None:
            validated(validate.check_count, "threads", self.threads, option=option, what="torch threads")
        if self.lr is not None:
            validated(validate.check_learning_rate, "lr", self.lr, option=option)
        if self.batch_size is not None:
            validated(validate.check_batch_size, "batch_size", self.batch_size, option=option)
        require(self.subset in ("same", None) or (isinstance(self.subset, int) and not isinstance(self.subset, bool)
                                                  and self.subset > 0),
               f"teacher.subset={self.subset!r} must be 'same' (the methods' images), null (every training "
               "image) or a positive count")


@dataclass
class StudentConfig:
    arch: str = "resnet20"


@dataclass
class ScheduleConfig:
    """One schedule for every method (the paper's recipe, epochs scaled)."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 512
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: Optional[list] = None
    gamma: float = 0.1

    def __post_init__(self) -> None:
        validated(validate.check_training_options, epochs=self.epochs, batch_size=self.batch_size,
                   eval_batch_size=self.eval_batch_size, lr=self.lr, momentum=self.momentum,
                   weight_decay=self.weight_decay, milestones=self.milestones, gamma=self.gamma,
                   option="schedule.{}".format)


@dataclass
class MethodConfig:
    """One method. ``kind``: student | student_kd | student_dkd | student_lskd | inhernet.

    ``kd`` (inhernet only): false (task loss only), true / "kd" (Hinton KD), "dkd" or "lskd".
    ``loss``: :class:`inhernet.train.DistillLoss` options (alpha, beta, temperature, ce_weight, ...).
    ``inherit``: :class:`inhernet.InheritConfig` fields; ``budget: student`` = as many parameters as
    the student, ``budget: teacher`` = as many as the teacher (otherwise an int count or a float
    fraction of the teacher). ``seed`` defaults to the run's seed. With ``init: whitened``,
    ``calibration_images`` (default 256) says on how many training images (the first ones, no
    augmentation) the teacher's layer inputs are measured.
    ``gate_lr_scale`` (inhernet with gated heads only): the gates learn at the schedule's lr × this
    (:mod:`inhernet.train.groups`); 1 = like every parameter.
    ``seeds``: the method runs on those of the comparison's ``seeds`` that are in this list only
    (default: all of them; a seed outside the comparison's is not run, and the run says so) —
    for exploratory rows whose one seed already rules them out, so the CPU hours go to the rows
    that decide; the table shows each row's n. Not part of a run's identity (the seed is).
    """

    name: str = ""
    kind: str = "student"
    kd: Union[bool, str] = False
    loss: dict = field(default_factory=dict)
    inherit: dict = field(default_factory=dict)
    label: Optional[str] = None
    gate_lr_scale: float = 1.0
    seeds: Optional[list] = None

    def __post_init__(self) -> None:
        require(bool(self.name), "every method needs a name")
        # the name is the run folder's name (out_dir/runs/<name>/): "..", "../x" or ".x" would escape or hide it
        validated(validate.check_folder_name, "method name", self.name)
        if self.kind not in METHOD_KINDS:
            hint = did_you_mean(self.kind, METHOD_KINDS)
            raise CompareConfigError(f"method {self.name!r}: kind={self.kind!r}{hint}; valid kinds: "
                                     f"{', '.join(METHOD_KINDS)}")
        require(self.kd in KD_CHOICES, f"method {self.name!r}: kd={self.kd!r}; use false, true, kd, dkd or lskd")
        if self.kind != "inhernet":
            require(not self.inherit, f"method {self.name!r}: 'inherit' options only apply to kind: inhernet")
            require(self.kd is False, f"method {self.name!r}: 'kd' only applies to kind: inhernet "
                                     "(use kind student_kd / student_dkd for students)")
        self._validate_loss()
        if self.kind == "inhernet":
            self._validate_inherit()
        self._validate_gate_lr_scale()

    def _validate_gate_lr_scale(self) -> None:
        from inhernet import InheritConfig
        from inhernet.train.groups import check_gate_lr_scale

        where = f"methods[{self.name}].gate_lr_scale"
        try:
            self.gate_lr_scale = check_gate_lr_scale(self.gate_lr_scale, option=where)
        except ValueError as err:
            raise CompareConfigError(str(err)) from err
        if self.gate_lr_scale == 1:
            return
        defaults = InheritConfig()
        heads, gate = self.inherit.get("heads", defaults.heads), self.inherit.get("gate", defaults.gate)
        require(self.kind == "inhernet" and heads != 1 and gate != "none",
                f"{where}={self.gate_lr_scale:g} needs an InherNet with gated heads (kind: inhernet, heads > 1, "
                f"gate not 'none'); method {self.name!r} has {'no gate' if self.kind != 'inhernet' else f'heads={heads}, gate={gate!r}'}.")

    @property
    def loss_kind(self) -> str:
        if self.kind == "student":
            return "ce"
        if self.kind in ("student_kd", "student_dkd", "student_lskd"):
            return self.kind.split("_", 1)[1]
        if self.kd is True:
            return "kd"
        return self.kd if self.kd else "ce"

    def loss_spec(self) -> dict:
        return {"kind": self.loss_kind, **self.loss}

    def _validate_loss(self) -> None:
        from inhernet.train.losses import DistillLoss

        if "kind" in self.loss:
            raise CompareConfigError(f"method {self.name!r}: set the loss through 'kind' / 'kd', not loss.kind")
        valid = [f.name for f in dataclasses.fields(DistillLoss) if f.name != "kind"]
        unknown = [k for k in self.loss if k not in valid]
        if unknown:
            msgs = [f"{k!r}{did_you_mean(k, valid)}" for k in unknown]
            raise ConfigKeyError(f"unknown key(s) in methods[{self.name}].loss: {', '.join(msgs)}. "
                                 f"Valid keys: {', '.join(valid)}.")
        try:
            DistillLoss.from_dict(self.loss_spec())
        except (TypeError, ValueError) as err:
            raise CompareConfigError(f"method {self.name!r}: loss: {err}") from err

    def _validate_inherit(self) -> None:
        from inhernet import InheritConfig

        d = dict(self.inherit)
        images = d.pop("calibration_images", None)
        if images is not None:
            require(d.get("init") == "whitened", f"method {self.name!r}: inherit.calibration_images only applies "
                                                "to init: whitened")
            require(isinstance(images, int) and not isinstance(images, bool) and images > 0,
                   f"method {self.name!r}: inherit.calibration_images={images!r} must be a positive int")
        if d.get("budget") in ("student", "teacher"):
            d["budget"] = 1000  # placeholder: resolved against the models at run time
        elif isinstance(d.get("budget"), str):
            raise CompareConfigError(f"method {self.name!r}: inherit.budget={d['budget']!r}; use student, "
                                     "teacher, an int parameter count or a float fraction of the teacher")
        try:
            InheritConfig.from_dict(d)
        except (TypeError, ValueError) as err:
            cls = ConfigKeyError if "unknown" in str(err) else CompareConfigError
            raise cls(f"method {self.name!r}: inherit: {err}") from err


@dataclass
class TrainerConfig:
    """Where and how training runs: Lightning's accelerator / devices / num_nodes / strategy, plus

    * ``precision``: Lightning's, ``null`` (32-bit), ``32-true``, ``bf16-mixed`` (bfloat16 autocast;
      runs on a CPU too) or ``16-mixed`` (GPUs only); see :func:`inhernet.train.validate.check_precision`.
    * ``channels_last``: model and inputs in the channels-last memory format (faster convolutions
      on GPUs with tensor cores; the saved models are written in the usual format).
    * ``data_on_device``: the training / evaluation tensors live on the training device and the
      batch augmentation runs there (no host-to-device copy per batch); ``null`` (default): on when
      training on a GPU. On a CPU it changes nothing.
    * ``progress``: ``true`` (TQDM bar, default), ``rich``, ``log`` (one printed line per epoch — per
      evaluation for the transformer runs —, for a run whose output goes to a log file) or ``false``.
    * ``compile``: ``torch.compile`` the trained models' training steps: ``false`` (default),
      ``true`` (mode ``default``) or a mode, ``default`` / ``reduce-overhead`` (CUDA graphs: GPUs
      with static shapes only; on a CPU it compiles as ``default``) / ``max-autotune`` /
      ``max-autotune-no-cudagraphs``; see :mod:`inhernet.train.compiled`. Checkpoints and saved
      models are the plain model's.

    None of these is part of a run's identity (nor is the accelerator): a run resumed under other
    settings continues where it was, so keep one config's runs on one setting.

    The accelerator's name is checked here, its presence on this machine when training starts (a
    config written on a GPU machine still loads for ``inhernet report`` on a CPU one).
    """

    accelerator: str = "cpu"
    devices: Union[int, str] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    threads: Optional[int] = None
    progress: Union[bool, str] = True
    precision: Union[int, str, None] = None
    channels_last: bool = False
    data_on_device: Optional[bool] = None
    compile: Union[bool, str, None] = False

    def __post_init__(self) -> None:
        require(self.strategy in STRATEGIES, f"trainer.strategy={self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        require(self.num_nodes >= 1, f"trainer.num_nodes={self.num_nodes} must be >= 1")
        option = "trainer.{}".format
        validated(validate.check_accelerator, "accelerator", self.accelerator, option=option, available=False)
        validated(validate.check_precision, "precision", self.precision, accelerator=self.accelerator, option=option)
        validated(validate.check_compile, "compile", self.compile, option=option)
        validated(validate.check_progress, "progress", self.progress, option=option)


@dataclass
class LatencyConfig:
    """CPU latency per image, measured side by side in one process (``batch_size`` images a forward)."""

    enabled: bool = True
    batch_size: int = 1
    rounds: int = 5
    iters: int = 10
    threads: Optional[int] = 1

    def __post_init__(self) -> None:
        validated(validate.check_latency_options, rounds=self.rounds, iters=self.iters, batch_size=self.batch_size,
                   threads=self.threads, option="latency.{}".format)


@dataclass
class CompareConfig:
    name: str = "compare"
    task: str = "image-classification"
    out_dir: str = "runs/compare"
    cache_dir: str = "cache"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seeds: list = field(default_factory=lambda: [0])
    methods: list = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    source: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        require(self.task == "image-classification", f"task={self.task!r}: this schema is image-classification's; "
                "the transformer tasks (sequence-classification, causal-lm) have their own (inhernet.compare.text_config)")
        methods = []
        for i, m in enumerate(self.methods):
            if isinstance(m, MethodConfig):
                methods.append(m)
            else:
                methods.append(build_section(MethodConfig, m, f"methods[{i}]"))
        self.methods = methods
        require(bool(self.methods), "the config lists no methods")
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, f"method names must be unique; repeated: {', '.join(dup)}")
        require(bool(self.seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds),
               f"seeds={self.seeds!r} must be a non-empty list of integers")
        require(len(set(self.seeds)) == len(self.seeds), f"seeds={self.seeds!r} repeats a seed")
        for m in self.methods:
            if m.seeds is None:
                continue
            where = f"methods[{m.name}].seeds={m.seeds!r}"
            require(isinstance(m.seeds, list) and bool(m.seeds)
                    and all(isinstance(s, int) and not isinstance(s, bool) for s in m.seeds)
                    and len(set(m.seeds)) == len(m.seeds), f"{where} must be a non-empty list of distinct integers")
        from inhernet.models import is_import_path, is_model, list_models, resolve_architecture

        for what, arch in (("teacher.arch", self.teacher.arch), ("student.arch", self.student.arch)):
            if is_import_path(arch):  # your own model: importable and callable, checked now
                try:
                    resolve_architecture(arch)
                except ConfigError as err:
                    raise CompareConfigError(f"{what}: {err}") from err
            elif not is_model(arch):
                hint = did_you_mean(arch, list_models(), n=3)
                raise CompareConfigError(f"{what}={arch!r} is not a known model{hint}. Known: {', '.join(list_models())}"
                                         "; or give your own model as an import path 'package.module:factory'")

    def seeds_of(self, method: MethodConfig) -> list[int]:
        """The seeds ``method`` runs on: its own ``seeds`` (in the comparison's order) or all of them."""
        return [s for s in self.seeds if method.seeds is None or s in method.seeds]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "CompareConfig":
        return build_section(cls, data, where)


def read_config_file(path: Union[str, Path], overrides: Optional[dict] = None) -> dict:
    """The mapping a YAML config file holds, with ``overrides`` (``{"out_dir": ..., "trainer": {...}}``)
    merged in: one level deep, so ``{"trainer": {"threads": 1}}`` keeps the file's other trainer keys."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CompareConfigError(f"config file {p} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise CompareConfigError(f"{p} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise CompareConfigError(f"{p} must hold a mapping at the top level")
    for k, v in (overrides or {}).items():
        if isinstance(v, dict):
            raw[k] = {**(raw.get(k) or {}), **v}
        else:
            raw[k] = v
    return raw
