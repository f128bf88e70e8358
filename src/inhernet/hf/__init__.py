"""Hugging Face ``transformers`` support.

* :func:`default_target_modules`: the attention and MLP projections of an architecture (what
  ``inherit`` targets on a ``PreTrainedModel`` when ``target_modules`` is ``None``);
* GPT-2's transposed ``Conv1D`` is eligible (the core's layer kind ``"Conv1D"``,
  :mod:`inhernet.kinds`), inherited as an ``InherLinear``;
* ``inhernet.save(model, folder, tokenizer=tok)`` also writes ``config.json`` (+ generation config
  and tokenizer files), so ``inhernet.load(folder)`` rebuilds the model from the folder alone
  (:mod:`inhernet.hf.io`);
* :func:`inherit_checkpoint`: inherit a sharded safetensors checkpoint tensor by tensor, for models
  larger than memory (:mod:`inhernet.hf.streaming`).

transformers is imported lazily, only by the functions that need it, so ``import inhernet`` works
without it.
"""

from __future__ import annotations

from torch import nn

from ..targets import default_target_modules, is_transformers_model
from .streaming import inherit_checkpoint


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (by its class hierarchy)."""
    return is_transformers_model(model)


__all__ = ["default_target_modules", "inherit_checkpoint", "is_hf_model"]
