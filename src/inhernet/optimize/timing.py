"""Side-by-side timing: every candidate measured in interleaved rounds on one input, so that
background load hits each alike (:func:`time_candidates`), on the clock that suits the device
(:func:`default_clock`). Used by :mod:`inhernet.optimize.build` and :mod:`inhernet.latency`."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..config import ConfigError
from ..utils import nested_tensors

__all__ = ["CLOCKS", "default_clock", "time_candidates"]


def _synchronizer(x: Any) -> Callable[[], None]:
    device = next((t.device for t in nested_tensors(x)), torch.device("cpu"))
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


#: the clocks :func:`time_candidates` can read
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def default_clock(device: torch.device | str = "cpu") -> str:
    """``"cpu"`` (the calling thread's CPU time) on a CPU device with one intra-op thread — immune
    to the periods other processes hold the core on a shared machine, and with one thread all the
    work is in the calling thread — else ``"wall"``."""
    return "cpu" if torch.device(device).type == "cpu" and torch.get_num_threads() == 1 else "wall"


def time_candidates(candidates: Mapping[str, Callable[[Any], Any]], x: Any, *, rounds: int = 5,
                    min_time_s: float = 2e-3, statistic: str = "median", clock: str = "wall") -> dict[str, float]:
    """Milliseconds per call of each candidate on input ``x``, measured side by side.

    Each candidate is warmed up (first-call allocations, oneDNN primitive creation), then timed in
    ``rounds`` interleaved rounds (the order reversed every other round), each round a loop long
    enough to take about ``min_time_s``; the result per candidate is the median over rounds
    (``statistic="min"``: the fastest round, the estimate least disturbed by other work). Slow or
    fast phases of background load therefore hit every candidate alike. ``clock``: ``"wall"``
    (``time.perf_counter``) or ``"cpu"`` (``time.thread_time``: only this thread's CPU time; right
    for CPU work on one intra-op thread, see :func:`default_clock`). Runs under ``torch.no_grad``;
    synchronises CUDA.
    """
    if statistic not in ("median", "min"):
        raise ConfigError(f"statistic={statistic!r}: use 'median' or 'min'.")
    if clock not in CLOCKS:
        raise ConfigError(f"clock={clock!r}: use one of {sorted(CLOCKS)}.")
    now = CLOCKS[clock]
    sync = _synchronizer(x)
    names = list(candidates)
    iters: dict[str, int] = {}
    samples: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            candidates[name](x)
            sync()
            t0 = now()
            candidates[name](x)
            sync()
            iters[name] = max(1, min(200, math.ceil(min_time_s / max(now() - t0, 1e-7))))
        for i in range(rounds):
            for name in (names if i % 2 == 0 else names[::-1]):
                fn, n = candidates[name], iters[name]
                t0 = now()
                for _ in range(n):
                    fn(x)
                sync()
                samples[name].append((now() - t0) / n * 1e3)
    pick = statistics.median if statistic == "median" else min
    return {name: pick(samples[name]) for name in names}
