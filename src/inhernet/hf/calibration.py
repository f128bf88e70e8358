"""Calibration batches from plain text, for ``inherit(model, init="whitened", calibration=...)``.

``init="whitened"`` factorises each layer against the second moment of the inputs it sees on a few
batches of real data. For a Hugging Face model those batches are token blocks: this module reads a
text file (one document per non-empty line), tokenises and packs it like LM pre-training data
(:func:`inhernet.hf.lm.pack_documents`), and returns ``{"input_ids": ...}`` batches that any
``transformers`` model accepts — causal LMs and encoders alike.

    >>> batches = text_calibration(tokenizer, read_documents("corpus.txt"), blocks=16, seq_len=128)
    >>> model = inhernet.inherit(teacher, rank_fraction=0.5, init="whitened", calibration=batches)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from .lm import pack_documents

__all__ = ["folder_calibration", "read_documents", "text_calibration"]


def read_documents(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of the UTF-8 text file ``path``, stripped: one document each."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration text {path} is not a file; give a UTF-8 text file, one document per line.")
    docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [d for d in docs if d]


def text_calibration(tokenizer: Any, texts: Iterable[str], *, blocks: int = 16, seq_len: int = 128,
                     batch_size: int = 4) -> list[dict[str, Any]]:
    """``blocks`` token blocks of ``seq_len`` from ``texts`` (documents joined by the tokenizer's EOS,
    or SEP for encoders without one), as ``{"input_ids": (batch_size, seq_len)}`` batches (the last
    may be smaller). ConfigError when the text does not fill even one block; fewer blocks than asked
    are used as they are (the second moments only need enough tokens, not a fixed count)."""
    if blocks < 1 or seq_len < 2 or batch_size < 1:
        raise ConfigError(f"calibration needs blocks >= 1, seq_len >= 2 and batch_size >= 1 "
                          f"(got {blocks}, {seq_len}, {batch_size})")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if separator is None:
        raise ConfigError("the tokenizer has neither an EOS nor a SEP token to separate calibration documents")
    ids = pack_documents(tokenizer, texts, seq_len, separator_id=separator, max_blocks=blocks)
    if len(ids) == 0:
        raise ConfigError(f"the calibration text gives fewer than {seq_len} tokens, not one block; "
                          "give more text or a smaller --calibration-seq-len")
    return [{"input_ids": ids[i:i + batch_size]} for i in range(0, len(ids), batch_size)]


def folder_calibration(folder: str | os.PathLike, text_file: str | os.PathLike, *, blocks: int = 16,
                       seq_len: int = 128, batch_size: int = 4) -> list[dict[str, Any]]:
    """Calibration batches for the model in the ``save_pretrained`` ``folder``, from ``text_file``
    (one document per line), tokenised with the folder's own tokenizer (:func:`text_calibration`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{folder} has no tokenizer to cut the calibration text into tokens ({err}); save the "
                          "tokenizer beside the model (tokenizer.save_pretrained(folder)).") from err
    return text_calibration(tokenizer, read_documents(text_file), blocks=blocks, seq_len=seq_len, batch_size=batch_size)
