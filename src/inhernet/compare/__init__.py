"""``inhernet compare CONFIG.yaml``: the teacher, the students and the InherNets under one schedule.

    from inhernet.compare import load_config, run_compare
    results = run_compare(load_config("configs/demo.yaml"))

A config's ``task`` picks the schema: ``image-classification`` (default; :mod:`inhernet.compare.config`)
or ``sequence-classification`` / ``causal-lm`` with a Hugging Face teacher
(:mod:`inhernet.compare.text_config`). See :mod:`inhernet.compare.config` for the image schema and :mod:`inhernet.compare.runner` (and :mod:`inhernet.compare.teacher`) for the
folder layout, caching and resume rules.
"""

from .config import (
    METHOD_KINDS,
    CompareConfig,
    CompareConfigError,
    ConfigKeyError,
    DataConfig,
    LatencyConfig,
    MethodConfig,
    ScheduleConfig,
    StudentConfig,
    TeacherConfig,
    TrainerConfig,
)
from .api import comparison_status, load_config, rebuild_report, run_compare
from .report import build_results, format_table, plot_results, write_report
from .basics import CompareError, StaleRunError, TeacherRecordError
from .runner import build_method_model
from .teacher import prepare_teacher, restore_teacher
from .text_config import TEXT_TASKS, TextCompareConfig, TextMethodConfig
from .text_runner import run_text_compare

__all__ = [
    "METHOD_KINDS",
    "CompareConfig",
    "CompareConfigError",
    "CompareError",
    "ConfigKeyError",
    "DataConfig",
    "LatencyConfig",
    "MethodConfig",
    "ScheduleConfig",
    "StaleRunError",
    "StudentConfig",
    "TeacherConfig",
    "TeacherRecordError",
    "TrainerConfig",
    "TEXT_TASKS",
    "TextCompareConfig",
    "TextMethodConfig",
    "run_text_compare",
    "build_method_model",
    "build_results",
    "comparison_status",
    "format_table",
    "load_config",
    "plot_results",
    "prepare_teacher",
    "rebuild_report",
    "restore_teacher",
    "run_compare",
    "write_report",
]
