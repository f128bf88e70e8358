"""Evaluating a causal LM folder on text: the ``inhernet evaluate FOLDER --text FILE`` /
``--wikitext2`` path (:func:`inhernet.hf.folders.load_causal_lm` reads the folder):
:func:`evaluate_text` scores text files or WikiText-2 (test) by
token-weighted perplexity over non-overlapping windows of the model's context (at most 2,048), as
the LLM-compression papers do, and never drops a non-finite window silently."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .lm import text_windows, windows_perplexity
from .wikitext import wikitext2_windows

__all__ = ["evaluate_text"]


def evaluate_text(model: nn.Module, tokenizer: Any, texts: Iterable[str] | None = None, *, wikitext2: bool = False,
                  seq_len: int | None = None, batch_size: int = 1, max_windows: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Perplexity of a causal LM on the ``texts`` (each tokenised as a whole, non-overlapping windows
    of ``seq_len``, token-weighted over all of them) or, with ``wikitext2``, on WikiText-2 (test)
    as the compression papers score it. ``seq_len`` defaults to the model's context, at most 2,048.
    Returns ``{"perplexity", "nll", "tokens", "windows", "seq_len", "text"}``."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or 2048
    seq_len = seq_len or min(2048, int(context))
    if wikitext2 == (texts is not None):
        raise ValueError("give texts or wikitext2=True (one of them)")
    if wikitext2:
        windows, what = wikitext2_windows(tokenizer, seq_len, max_windows=max_windows), "WikiText-2 (test)"
    else:
        parts = [text_windows(tokenizer, t, seq_len) for t in texts]
        windows, what = torch.cat(parts) if parts else torch.empty(0, seq_len, dtype=torch.long), "text"
        if max_windows is not None:
            windows = windows[:max_windows]
    if len(windows) == 0:
        raise ValueError(f"the {what} gives fewer than seq_len={seq_len} tokens: nothing to score; give more text or "
                         "a smaller --seq-len")
    r = windows_perplexity(model, windows, batch_size=batch_size, progress=what if progress else None)
    return {"perplexity": r["ppl"], "nll": r["nll"], "tokens": r["tokens"], "windows": r["windows"],
            "seq_len": r["seq_len"], "text": what}
