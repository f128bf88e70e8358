"""Keep ``transformers``' expected chatter out of the user's terminal.

Loading a pretrained encoder into a task class prints a "LOAD REPORT" of the newly initialised
head (``classifier.weight | MISSING``), and reading the tokenizer of an inhernet folder warns about
its protected ``config.json``; both are expected where inhernet does them, and they bury the
lines that matter. :func:`quiet_transformers` lowers transformers' log level for a block and
restores it after; warnings about real problems (e.g. unexpected weights) still surface as
errors or in the report."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["quiet_transformers", "transformers_progress"]


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block, ``transformers`` logs errors only (its previous verbosity restored after)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@contextmanager
def transformers_progress(show: bool) -> Iterator[None]:
    """transformers' own progress bars (e.g. "Writing model shards") off within the block when
    ``show`` is false; as they were afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not show and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            hf_logging.enable_progress_bar()
