"""WikiText-2 perplexity, the number LLM-compression papers (SVD-LLM, ASVD, Dobi-SVD, ...) report.

The test split of ``wikitext-2-raw-v1`` (Merity et al., 2016; CC BY-SA 3.0 and GFDL) ships with the
package under ``inhernet/data/wikitext2/`` with its licence note (``README.md``). The field's
protocol, followed here: join the rows with ``"\\n\\n"``, tokenise the whole text once, cut it into
non-overlapping windows of ``seq_len`` tokens (the incomplete tail dropped) and report the
token-weighted perplexity over every predicted position (``seq_len - 1`` per window).

The shipped file holds only the non-empty rows, so the joined text differs from the upstream one in
the whitespace of the empty rows: **numbers are close to, not identical with, published ones**; say
so where you quote them.

    >>> from inhernet.hf.wikitext import wikitext2_perplexity
    >>> wikitext2_perplexity(model, tokenizer, seq_len=2048)["ppl"]
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import torch
from torch import nn

from .lm import text_windows, windows_perplexity

__all__ = ["WIKITEXT2_SHA256", "wikitext2_path", "wikitext2_perplexity", "wikitext2_text", "wikitext2_windows"]

#: SHA-256 of the shipped ``wiki.test.raw`` (as given in its README).
WIKITEXT2_SHA256 = "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"


def wikitext2_path():
    """The shipped ``wiki.test.raw`` (a :class:`importlib.resources` traversable; a real file in an
    installed or editable package)."""
    return resources.files("inhernet.data") / "wikitext2" / "wiki.test.raw"


def wikitext2_text(*, verify: bool = False) -> str:
    """The WikiText-2 test text: the file's rows (line ends ``\\r\\n`` or ``\\n`` removed, nothing
    else stripped, so the rows keep their leading/trailing space) joined with ``"\\n\\n"``. With
    ``verify`` the file's SHA-256 is checked first (ValueError when it differs)."""
    raw = wikitext2_path().read_bytes()
    if verify and hashlib.sha256(raw).hexdigest() != WIKITEXT2_SHA256:
        raise ValueError(f"{wikitext2_path()} does not have the SHA-256 of its README; the copy is damaged")
    rows = raw.decode("utf-8").replace("\r\n", "\n").split("\n")
    if rows and rows[-1] == "":  # the final line end
        rows.pop()
    return "\n\n".join(rows)


def wikitext2_windows(tokenizer: Any, seq_len: int = 2048, *, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping token windows ``(n, seq_len)`` (int64) of the whole text, tokenised once as
    the field does (``tokenizer(text)``, the tokenizer's own special tokens included, e.g. a BOS at
    the very start for Llama tokenizers); the incomplete tail is dropped, and with ``max_windows``
    only the first that many are kept."""
    return text_windows(tokenizer, wikitext2_text(), seq_len, max_windows=max_windows)


def wikitext2_perplexity(model: nn.Module, tokenizer: Any, *, seq_len: int = 2048, batch_size: int = 1,
                         max_windows: int | None = None, progress: bool = True) -> dict[str, float]:
    """Token-weighted perplexity of the causal LM ``model`` on WikiText-2 (test split): the windows
    of :func:`wikitext2_windows` scored by :func:`inhernet.hf.lm.windows_perplexity` (next-token
    NLL, ``seq_len - 1`` predicted tokens per window, on the model's device, eval mode restored
    after; a non-finite window is an error that names it). ``progress`` shows a bar over the windows.

    Returns ``{"ppl", "nll", "tokens", "windows", "seq_len"}``. These numbers are close to, not
    identical with, the published ones (the shipped text lacks the empty rows; see the module
    docstring and ``inhernet/data/wikitext2/README.md``).
    """
    windows = wikitext2_windows(tokenizer, seq_len, max_windows=max_windows)
    if len(windows) == 0:
        raise ValueError(f"WikiText-2 gives fewer than seq_len={seq_len} tokens with this tokenizer")
    return windows_perplexity(model, windows, batch_size=batch_size, progress="WikiText-2" if progress else None)
