"""Evaluation and CPU latency measurement."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import eval_mode

__all__ = ["evaluate", "measure_latency"]


@torch.inference_mode()
def evaluate(model: nn.Module, data: Any, batch_size: int = 512) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` on a split with ``.x`` / ``.y``."""
    correct, loss_sum, n = 0, 0.0, len(data.y)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            x, y = data.x[i:i + batch_size], data.y[i:i + batch_size]
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
    return {"acc": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}


@torch.inference_mode()
def measure_latency(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    *,
    rounds: int = 5,
    iters: int = 10,
    warmup: int = 3,
    threads: Optional[int] = None,
) -> dict[str, dict]:
    """CPU latency per image of several models, measured side by side in this process.

    Every round times ``iters`` forwards of each model in turn (interleaved, so background load hits
    all models alike); the result per model is the median over rounds of the mean time per forward,
    divided by the batch size (``input_shape[0]``). ``threads`` sets ``torch.set_num_threads`` for the
    measurement (restored afterwards). Returns ``{name: {"ms_per_image", "ms_per_batch", "batch",
    "threads"}}``.
    """
    from .validate import check_latency_options

    check_latency_options(rounds=rounds, iters=iters, batch_size=int(input_shape[0]), threads=threads)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    modes = contextlib.ExitStack()
    try:
        x = torch.randn(*input_shape)
        batch = int(input_shape[0])
        cpu = {}
        for name, m in models.items():
            m = modes.enter_context(eval_mode(m.to("cpu")))
            cpu[name] = m
            for _ in range(warmup):
                m(x)
        times: dict[str, list[float]] = {name: [] for name in cpu}
        for _ in range(rounds):
            for name, m in cpu.items():
                t0 = time.perf_counter()
                for _ in range(iters):
                    m(x)
                times[name].append((time.perf_counter() - t0) / iters)
        out = {}
        for name, ts in times.items():
            med = statistics.median(ts)
            out[name] = {"ms_per_batch": med * 1e3, "ms_per_image": med * 1e3 / batch, "batch": batch,
                         "threads": torch.get_num_threads()}
        return out
    finally:
        modes.close()
        torch.set_num_threads(old_threads)
