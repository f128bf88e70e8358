"""Hugging Face ``transformers`` support.

* :func:`default_target_modules`: the attention and MLP projections of an architecture (what
  ``inherit`` targets on a ``PreTrainedModel`` when ``target_modules`` is ``None``);
* GPT-2's transposed ``Conv1D`` is eligible (:mod:`inhernet.hf.conv1d`), inherited as an
  ``InherLinear``;
* ``inhernet.save(model, folder, tokenizer=tok)`` also writes ``config.json`` (+ generation config
  and tokenizer files), so ``inhernet.load(folder)`` rebuilds the model from the folder alone
  (:mod:`inhernet.hf.io`);
* :func:`inherit_checkpoint`: inherit a sharded safetensors checkpoint tensor by tensor, for models
  larger than memory (:mod:`inhernet.hf.streaming`).

transformers is imported lazily, only by the functions that need it, so ``import inhernet`` works
without it.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from .targets import default_target_modules


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (False when transformers is not loaded)."""
    module = sys.modules.get("transformers.modeling_utils")
    cls = getattr(module, "PreTrainedModel", None)
    return cls is not None and isinstance(model, cls)


def __getattr__(name: str) -> Any:
    # inhernet.hf.inherit_checkpoint, imported on first use (streaming imports the engine, which
    # imports inhernet.hf.conv1d: importing it here eagerly would be circular)
    if name == "inherit_checkpoint":
        from .streaming import inherit_checkpoint

        return inherit_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["default_target_modules", "inherit_checkpoint", "is_hf_model"]
