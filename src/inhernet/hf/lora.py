"""PEFT LoRA on an inherited model: adapters around whole ``InherLinear`` layers, never inside them.

PEFT wraps only layer types it knows (``nn.Linear``, ``Conv1D``, ...): on an InherNet,
``target_modules=["q_proj", "v_proj"]`` names ``InherLinear`` layers, which PEFT refuses, and
``"all-linear"`` would pick each InherLinear's ``gate`` (an ``nn.Linear(r, H)``) and skip the
InherLinear itself. :func:`get_peft_model` (or :func:`prepare_lora_config` on a ``LoraConfig`` then
``peft.get_peft_model``) registers :class:`InherLoraLinear` for ``InherLinear`` through PEFT's
custom-module mechanism (``LoraConfig._register_custom_module``), excludes every module inside an
inherited layer, and resolves ``"all-linear"`` to the InherLinear layers plus the dense
``nn.Linear`` / ``Conv1D`` layers outside them (not the output embeddings, as PEFT does).

:class:`InherLoraLinear` computes ``InherLinear(x) + B A dropout(x) · scaling``; merging is refused
(a LoRA update cannot be folded into the rank-r factors without changing the rank).

Needs ``peft`` (``pip install peft``); importing this module without it raises ImportError.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from peft import LoraConfig
from peft import get_peft_model as _peft_get_peft_model
from peft.tuners.lora import Linear as _LoraLinear
from torch import nn

from ..layers import INHER_LAYERS, InherLinear

__all__ = ["InherLoraLinear", "get_peft_model", "lora_target_modules", "prepare_lora_config"]


class InherLoraLinear(_LoraLinear):
    """PEFT's LoRA ``Linear`` around an :class:`~inhernet.layers.InherLinear` (the base layer runs
    as it is, gate included; the adapter reads the same input). Merging is refused."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "a LoRA adapter cannot be merged into an InherLinear (its rank-r factors would change rank); keep "
            "the adapter, or call inhernet.inherit on the merged dense model instead.")

    def unmerge(self) -> None:
        return None  # never merged

    def get_delta_weight(self, adapter: str):
        raise NotImplementedError("an InherLinear has no dense weight to add a LoRA delta to; the adapter is applied "
                                  "in the forward pass.")


def _inside_inherited(model: nn.Module) -> set[str]:
    """Names of every module inside an inherited layer (e.g. ``...q_proj.gate``)."""
    out = set()
    for prefix, module in model.named_modules():
        if isinstance(module, INHER_LAYERS):
            out.update(f"{prefix}.{name}" for name, _ in module.named_modules() if name)
    return out


def lora_target_modules(model: nn.Module) -> list[str]:
    """What ``"all-linear"`` means on an InherNet: every ``InherLinear`` and every dense
    ``nn.Linear`` / ``Conv1D`` outside an inherited layer, except the output embeddings."""
    from transformers.pytorch_utils import Conv1D

    inside = _inside_inherited(model)
    out_emb = getattr(model, "get_output_embeddings", lambda: None)()
    names = []
    for name, module in model.named_modules():
        if name in inside or module is out_emb:
            continue
        if isinstance(module, (InherLinear, nn.Linear, Conv1D)):
            names.append(name)
    return names


def prepare_lora_config(config: LoraConfig, model: nn.Module) -> LoraConfig:
    """A copy of ``config`` fit for ``model`` (an InherNet): :class:`InherLoraLinear` registered
    for ``InherLinear``, modules inside inherited layers excluded, ``"all-linear"`` resolved by
    :func:`lora_target_modules`. A plain model gets the copy with nothing changed but the registration."""
    config = copy.deepcopy(config)
    config._register_custom_module({InherLinear: InherLoraLinear})
    inside = _inside_inherited(model)
    target = config.target_modules
    if isinstance(target, str) and target.lower() == "all-linear":
        config.target_modules = set(lora_target_modules(model))
    if inside:
        exclude = config.exclude_modules
        if exclude is None:
            config.exclude_modules = inside
        elif isinstance(exclude, str):  # a regex: keep it, and add the inner modules as an alternative
            config.exclude_modules = "|".join([f"(?:{exclude})", *(re.escape(n) for n in sorted(inside))])
        else:
            config.exclude_modules = set(exclude) | inside
    return config


def get_peft_model(model: nn.Module, config: LoraConfig, **kwargs: Any):
    """``peft.get_peft_model(model, prepare_lora_config(config, model), **kwargs)``."""
    return _peft_get_peft_model(model, prepare_lora_config(config, model), **kwargs)
