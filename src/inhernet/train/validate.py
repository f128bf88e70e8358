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
    "FOLDER_NAME_RULE",
    "check_batch_size",
    "check_count",
    "check_folder_name",
    "check_latency_options",
    "check_learning_rate",
    "check_milestones",
    "check_non_negative",
    "check_training_options",
    "cli_option",
    "plain_option",
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
