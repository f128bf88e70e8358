"""Causal language modelling helpers: pack documents into token blocks, held-out perplexity, CPU
throughput.

* :func:`pack_documents` tokenises documents, ends each with a separator token and cuts the joined
  stream into equal blocks (the usual "concatenate and chunk" of LM pre-training), stopping as soon
  as it has the blocks it was asked for, so a large corpus is not tokenised for a short run;
* :func:`perplexity` is token-weighted: ``exp`` of the mean next-token negative log-likelihood over
  every predicted position of every block (not a mean of per-block perplexities);
* :func:`forward_tokens_per_second` / :func:`generate_tokens_per_second` time models side by side on
  the CPU.

    >>> blocks = pack_documents(tokenizer, texts, seq_len=128, max_blocks=64)
    >>> perplexity(model, blocks)["ppl"]
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["forward_tokens_per_second", "generate_tokens_per_second", "next_token_nll", "pack_documents",
           "perplexity", "text_windows", "windows_perplexity"]


def pack_documents(tokenizer: Any, texts: Iterable[str], seq_len: int, *, separator_id: int | None = None,
                   max_blocks: int | None = None, tokenize_batch: int = 1000) -> Tensor:
    """Token blocks ``(n, seq_len)`` (int64) from ``texts``, in order: each text is tokenised without
    special tokens and followed by ``separator_id`` (default: the tokenizer's EOS), the stream is
    cut into rows of ``seq_len`` and the incomplete tail is dropped. With ``max_blocks`` it stops
    after that many rows. ``tokenizer(list_of_texts, add_special_tokens=False)["input_ids"]`` must
    give one id list per text (any Hugging Face tokenizer does)."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2 (one input and one target token)")
    sep = tokenizer.eos_token_id if separator_id is None else separator_id
    if sep is None:
        raise ValueError("the tokenizer has no EOS token; pass separator_id")
    want = None if max_blocks is None else max_blocks * seq_len
    stream: list[int] = []
    texts = list(texts)
    for start in range(0, len(texts), tokenize_batch):
        for ids in tokenizer(texts[start:start + tokenize_batch], add_special_tokens=False)["input_ids"]:
            stream += ids
            stream.append(sep)
        if want is not None and len(stream) >= want:
            break
    n = len(stream) // seq_len if want is None else min(len(stream), want) // seq_len
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)


def next_token_nll(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Per-position next-token negative log-likelihood ``(batch, seq_len - 1)``: the logits at
    position ``t`` scored against token ``t + 1``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(),
                           reduction="none").view(input_ids.shape[0], -1)


@torch.inference_mode()
def perplexity(model: nn.Module, blocks: Tensor, batch_size: int = 8) -> dict[str, float]:
    """Token-weighted held-out perplexity of a causal LM on ``blocks`` ``(n, seq_len)``: ``{"ppl",
    "nll", "tokens"}`` with ``nll`` the mean over all ``n * (seq_len - 1)`` predicted tokens and
    ``ppl = exp(nll)``. The model is put in eval mode for the call and restored after."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # blocks go to the model
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size].to(device)
        nll = next_token_nll(model(input_ids=ids).logits, ids)
        total += float(nll.sum(dtype=torch.float64))
        count += nll.numel()
    model.train(was_training)
    mean = total / max(count, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count}


def text_windows(tokenizer: Any, text: str, seq_len: int, *, max_windows: int | None = None) -> Tensor:
    """Non-overlapping token windows ``(n, seq_len)`` (int64) of ``text`` tokenised once as a whole
    (``tokenizer(text)``, its own special tokens included), the incomplete tail dropped: the
    standard LM-evaluation protocol (WikiText-2 in the compression papers)."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2 (one input and one target token)")
    ids = torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long).flatten()
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[:n * seq_len].view(n, seq_len)


def windows_perplexity(model: nn.Module, windows: Tensor, *, batch_size: int = 1,
                       progress: str | None = None) -> dict[str, float]:
    """Token-weighted perplexity of a causal LM over ``windows`` ``(n, seq_len)``, ``batch_size``
    windows at a time on the model's device: ``{"ppl", "nll", "tokens", "windows", "seq_len"}``.
    A batch whose loss is not finite (an overflow, a broken model) raises ``ValueError`` naming the
    windows — it is never dropped silently. ``progress``: the label of a bar over the windows."""
    from tqdm.auto import tqdm

    if len(windows) == 0:
        raise ValueError("no window to score: the text is shorter than one window")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    total, count = 0.0, 0
    with tqdm(total=len(windows), desc=progress, unit="window", disable=progress is None) as bar:
        for i in range(0, len(windows), batch_size):
            batch = windows[i:i + batch_size].to(device)
            r = perplexity(model, batch, batch_size=len(batch))
            if not math.isfinite(r["nll"]):
                raise ValueError(f"windows {i}..{i + len(batch) - 1} give a non-finite loss ({r['nll']}): the model "
                                 "overflows or is broken there (evaluate in float32; check the weights).")
            total += r["nll"] * r["tokens"]
            count += r["tokens"]
            bar.update(len(batch))
    nll = total / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count, "windows": len(windows),
            "seq_len": int(windows.shape[1])}


def _median_seconds(calls: Mapping[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, float]:
    """Median wall time of each call, timed round-robin (every round runs each call once in turn,
    so background load on a shared core hits all of them alike), after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


@torch.inference_mode()
def forward_tokens_per_second(models: Mapping[str, nn.Module], input_ids: Tensor, *, rounds: int = 3,
                              warmup: int = 1) -> dict[str, float]:
    """Tokens per second of one full forward over ``input_ids`` ``(batch, seq_len)`` (no KV cache)
    for each model: ``input_ids.numel()`` over the median time of ``rounds`` interleaved forwards."""
    for model in models.values():
        model.eval()
    calls = {name: functools.partial(model, input_ids=input_ids) for name, model in models.items()}
    return {name: input_ids.numel() / t for name, t in _median_seconds(calls, rounds, warmup).items()}


@torch.inference_mode()
def generate_tokens_per_second(models: Mapping[str, nn.Module], prompt_ids: Tensor, new_tokens: int, *,
                               rounds: int = 3, warmup: int = 1) -> dict[str, float]:
    """New tokens per second of greedy ``generate`` (KV cache on) from ``prompt_ids`` ``(1, n)`` for
    each model, exactly ``new_tokens`` each time (EOS does not stop it; the prompt's prefill is in
    the time): ``new_tokens`` over the median time of ``rounds`` interleaved runs."""
    for model in models.values():
        model.eval()
    calls = {name: functools.partial(model.generate, prompt_ids, do_sample=False, min_new_tokens=new_tokens,
                                     max_new_tokens=new_tokens) for name, model in models.items()}
    return {name: new_tokens / t for name, t in _median_seconds(calls, rounds, warmup).items()}

