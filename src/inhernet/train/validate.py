"""The checks every entry point makes on training options, in one place.

The command line (``inhernet train-teacher`` / ``finetune``), a ``compare`` YAML config and the
Python :func:`inhernet.train.fit` all call these functions before anything is trained or written,
so a bad value fails at once, with the same rule everywhere and a message in the caller's own
spelling of the option (``--batch-size``, ``schedule.batch_size`` or ``batch_size``): each check
takes an ``option`` function that turns a field name into that spelling.

Every failure is an :class:`inhernet.config.ConfigError` (a ``ValueError``).
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Callable, Optional, Sequence

from inhernet.config import ConfigError

__all__ = [
    "ACCELERATORS",
    "COMPILE_MODES",
    "FOLDER_NAME_RULE",
    "PRECISIONS",
    "PROGRESS_MODES",
    "check_accelerator",
    "check_batch_size",
    "check_compile",
    "check_count",
    "check_flag",
    "check_folder_name",
    "check_latency_options",
    "check_learning_rate",
    "check_milestones",
    "check_non_negative",
    "check_precision",
    "check_progress",
    "check_training_options",
    "cli_option",
    "compile_mode",
    "plain_option",
    "shows_bar",
]

Option = Callable[[str], str]

#: a name that is used as a folder name: letters, digits and ``_ - .``, not starting with a dot
#: (so neither ``..`` nor a hidden folder), at most 128 characters
_FOLDER_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
FOLDER_NAME_RULE = "letters, digits and _ - . only, not starting with a dot, at most 128 characters"


def plain_option(field: str) -> str:
    """The option as the Python API spells it: the argument name itself (``batch_size``)."""
    return field


def cli_option(field: str) -> str:
    """The option as the command line spells it (``batch_size`` -> ``--batch-size``)."""
    return "--" + field.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_count(field: str, value: Any, *, low: int = 1, option: Option = plain_option, what: str = "") -> None:
    """``value`` is an integer >= ``low`` (epochs, batch sizes, latency rounds, ...)."""
    if not _is_int(value) or value < low:
        about = f" ({what})" if what else ""
        raise ConfigError(f"{option(field)}={value!r} must be an integer >= {low}{about}.")


def check_flag(field: str, value: Any, *, none_ok: bool = False, option: Option = plain_option) -> None:
    """A switch: ``True`` or ``False`` (with ``none_ok``, also ``None``: "decide for me")."""
    if not (isinstance(value, bool) or (none_ok and value is None)):
        also = ", or None (the default for this machine)" if none_ok else ""
        raise ConfigError(f"{option(field)}={value!r} must be True or False{also}.")


def check_batch_size(field: str, value: Any, *, option: Option = plain_option) -> None:
    """A batch size: an integer >= 1."""
    check_count(field, value, option=option, what="images per batch")


def check_learning_rate(field: str, value: Any, *, option: Option = plain_option) -> None:
    """A learning rate: a finite number > 0 (0 trains nothing, a negative one ascends the loss)."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{option(field)}={value!r} must be a finite number > 0 (the SGD learning rate).")


def check_non_negative(field: str, value: Any, *, option: Option = plain_option, what: str = "") -> None:
    """A finite number >= 0 (momentum, weight decay)."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        about = f" ({what})" if what else ""
        raise ConfigError(f"{option(field)}={value!r} must be a finite number >= 0{about}.")


def check_milestones(field: str, value: Optional[Sequence[Any]], *, option: Option = plain_option) -> None:
    """lr milestones: ``None`` (the scaled default) or positive epoch numbers."""
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not all(_is_int(m) and m > 0 for m in value):
        raise ConfigError(f"{option(field)}={value!r} must be positive epoch numbers "
                          "(or left out for the scaled default).")


def check_training_options(
    *,
    epochs: Any,
    batch_size: Any,
    lr: Any,
    momentum: Any = 0.0,
    weight_decay: Any = 0.0,
    eval_batch_size: Any = None,
    milestones: Optional[Sequence[Any]] = None,
    gamma: Any = None,
    option: Option = plain_option,
) -> None:
    """The schedule of one training run: epochs >= 1, batch sizes >= 1, lr > 0 and finite, momentum
    and weight decay >= 0 and finite, milestones positive, the lr decay ``gamma`` > 0 and finite.

    ``eval_batch_size`` and ``gamma`` are skipped when ``None`` (not every entry point has them).
    """
    check_count("epochs", epochs, option=option, what="training epochs")
    check_batch_size("batch_size", batch_size, option=option)
    if eval_batch_size is not None:
        check_batch_size("eval_batch_size", eval_batch_size, option=option)
    check_learning_rate("lr", lr, option=option)
    check_non_negative("momentum", momentum, option=option, what="SGD momentum")
    check_non_negative("weight_decay", weight_decay, option=option, what="L2 weight decay")
    check_milestones("milestones", milestones, option=option)
    if gamma is not None and (not _is_real(gamma) or not math.isfinite(gamma) or gamma <= 0):
        raise ConfigError(f"{option('gamma')}={gamma!r} must be a finite number > 0 (the lr factor at each milestone).")


def check_latency_options(*, rounds: Any, iters: Any, batch_size: Any = 1, threads: Any = None,
                          option: Option = plain_option) -> None:
    """A latency measurement: rounds, forwards per round and batch size >= 1; threads ``None`` or >= 1."""
    check_count("rounds", rounds, option=option, what="timed rounds; the median is taken over them")
    check_count("iters", iters, option=option, what="forwards per round")
    check_batch_size("batch_size", batch_size, option=option)
    if threads is not None:
        check_count("threads", threads, option=option, what="torch threads")


def check_folder_name(what: str, name: Any) -> None:
    """``name`` becomes a folder name: it must not climb out of its parent (``..``), hide (``.x``)
    or hold a path separator, so only letters, digits and ``_ - .`` are allowed."""
    if not isinstance(name, str) or not _FOLDER_NAME_RE.fullmatch(name):
        raise ConfigError(f"{what} {name!r} is not a safe folder name: use {FOLDER_NAME_RULE}.")


#: accelerator names checked here (availability included); others (tpu, hpu, xla) are left to Lightning
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
_LEFT_TO_LIGHTNING = ("tpu", "hpu", "xla")


def _shown(option: Option, field: str, value: Any) -> str:
    """``--accelerator gpu`` on the command line, ``trainer.accelerator='gpu'`` elsewhere."""
    name = option(field)
    return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def check_accelerator(field: str, value: Any, *, option: Option = plain_option, available: bool = True) -> None:
    """A Lightning accelerator name this code knows (or one left to Lightning: tpu, hpu, xla);
    with ``available`` (the default) also one this machine has: ``gpu`` / ``cuda`` need a usable
    CUDA device, ``mps`` Apple's MPS. ``None`` (the caller's default) passes.

    ``available=False`` checks the name only: a config written on a GPU machine must still load
    (for ``inhernet report``) where there is none; the training entry points check availability
    before anything is loaded or written, because Lightning would fail late, deep in the Trainer."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"{_shown(option, field, value)} must be a string: one of {', '.join(ACCELERATORS)}.")
    name = value.lower()
    if name not in ACCELERATORS and name not in _LEFT_TO_LIGHTNING:
        raise ConfigError(f"{_shown(option, field, value)} is not known; choose one of {', '.join(ACCELERATORS)}.")
    if not available:
        return
    import torch

    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{_shown(option, field, value)}: no CUDA GPU is usable here (no GPU, no driver, or a "
                          "CPU-only torch build); drop the option (the default is cpu) or pass auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{_shown(option, field, value)}: Apple's MPS is not available on this machine; drop the "
                          "option (the default is cpu) or pass auto.")


#: the Lightning precisions training accepts: full precision and the two autocast ("mixed") modes
PRECISIONS = (32, "32", "32-true", "bf16-mixed", "16-mixed")


def check_precision(field: str, value: Any, *, accelerator: Any = "cpu", option: Option = plain_option) -> None:
    """A Lightning ``precision`` for training: ``None`` (Lightning's default, 32-bit), ``32`` /
    ``"32-true"``, ``"bf16-mixed"`` (bfloat16 autocast; also on a CPU) or ``"16-mixed"`` (float16
    autocast with loss scaling; GPUs only: on a CPU Lightning would silently switch to bf16-mixed).

    Refused with the reason: the ``*-true`` half precisions (they cast the model's weights but neither
    the frozen distillation teacher, which lives outside the trained module, nor the data: the
    teacher's forward would fail on the cast inputs), ``64-true``, and Lightning's historical aliases
    (``16``, ``"bf16"``: the explicit names say what runs)."""
    if value is None or value in PRECISIONS and not isinstance(value, bool):
        if value == "16-mixed" and isinstance(accelerator, str) and accelerator.lower() == "cpu":
            raise ConfigError(f"{_shown(option, field, value)}: float16 autocast needs a GPU (on a CPU Lightning "
                              "would silently use bf16-mixed); use bf16-mixed, or train on a GPU.")
        return
    choices = ", ".join(str(p) for p in ("32-true", "bf16-mixed", "16-mixed"))
    if value in ("16-true", "bf16-true", "64-true", 64, "64"):
        why = ("casts the trained model's weights but not the frozen teacher (held outside the module) nor the "
               "data") if value != "64-true" and value not in (64, "64") else "is not supported for training here"
        raise ConfigError(f"{_shown(option, field, value)} {why}; use one of {choices} (or leave it out for 32-bit).")
    if value in (16, "16", "bf16"):
        explicit = "bf16-mixed" if value == "bf16" else "16-mixed"
        raise ConfigError(f"{_shown(option, field, value)} is one of Lightning's historical aliases; write "
                          f"{explicit!r} (or another of {choices}).")
    raise ConfigError(f"{_shown(option, field, value)} is not a training precision; use one of {choices} "
                      "(or leave it out for 32-bit).")


#: how training shows its progress: Lightning's TQDM bar (``True`` means ``"tqdm"``), Rich's bar, or
#: ``"log"``: one printed line per epoch (for the log file of a run in the background, where a bar's
#: carriage returns make an unreadable file); ``False``: nothing
PROGRESS_MODES = ("tqdm", "rich", "log")


def check_progress(field: str, value: Any, *, option: Option = plain_option) -> None:
    """A progress setting: ``True`` / ``False`` or one of :data:`PROGRESS_MODES`."""
    if isinstance(value, bool) or (isinstance(value, str) and value in PROGRESS_MODES):
        return
    raise ConfigError(f"{_shown(option, field, value)} is not a progress setting; use one of "
                      f"{', '.join(PROGRESS_MODES)} (a bar, or one line per epoch), or true / false.")


def shows_bar(progress: Any) -> bool:
    """Whether a checked progress setting draws a progress bar (``"log"`` prints lines instead)."""
    return progress is True or progress in ("tqdm", "rich")


#: ``torch.compile`` modes training accepts (``compile: true`` means ``"default"``); ``reduce-overhead``
#: adds CUDA graphs (GPUs only: on a CPU it compiles as ``default``, see :mod:`inhernet.train.compiled`)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(field: str, value: Any, *, option: Option = plain_option) -> None:
    """``torch.compile`` for training: ``None`` / ``False`` (eager), ``True`` (mode ``"default"``) or
    one of :data:`COMPILE_MODES`."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and value in COMPILE_MODES):
        return
    raise ConfigError(f"{_shown(option, field, value)} is not a compile setting; use a torch.compile mode, one of "
                      f"{', '.join(COMPILE_MODES)} (or true / false from Python and YAML).")


def compile_mode(value: Any, *, option: Option = plain_option, field: str = "compile") -> Optional[str]:
    """The ``torch.compile`` mode a checked ``compile`` value asks for: ``None`` (eager), ``True`` ->
    ``"default"``, a mode name as it is."""
    check_compile(field, value, option=option)
    if value is None or value is False:
        return None
    return "default" if value is True else value
