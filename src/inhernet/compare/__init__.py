"""``inhernet compare CONFIG.yaml``: the teacher, the students and the InherNets under one schedule.

    from inhernet.compare import load_config, run_compare
    results = run_compare(load_config("configs/demo.yaml"))

See :mod:`inhernet.compare.config` for the YAML schema and :mod:`inhernet.compare.runner` for the
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
    load_config,
)
from .report import build_results, format_table, plot_results, write_report
from .runner import CompareError, StaleRunError, build_method_model, prepare_teacher, rebuild_report, run_compare

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
    "TrainerConfig",
    "build_method_model",
    "build_results",
    "format_table",
    "load_config",
    "plot_results",
    "prepare_teacher",
    "rebuild_report",
    "run_compare",
    "write_report",
]
