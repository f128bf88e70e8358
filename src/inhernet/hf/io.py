"""Hugging Face side of ``inhernet.save`` / ``inhernet.load``: config-only rebuild.

``save`` writes, next to the weights, what ``from_pretrained`` would find: ``config.json`` (with
``architectures = [the model's class]``), ``generation_config.json`` for models that generate, and
the tokenizer's files when one is given. It records in ``inhernet_config.json`` (key ``"hf"``) the
model class, the attention implementation and the dtype.

``config.json`` is protected (:mod:`inhernet.hf.pretrained`): transformers' ``from_pretrained`` refuses
it with a message naming ``inhernet.load``, instead
of building the dense architecture with random projections; :func:`build_empty_model` reads it back.

``load(folder)`` without a base model calls :func:`build_empty_model`: the class is looked up in
``transformers`` by name and built with ``_from_config`` while every parameter is created on the
meta device (buffers stay real, so rotary tables and position ids are computed as usual). No random
initialisation runs on real memory, no teacher weight is read, no SVD runs; ``inhernet.load`` then
swaps in the inherited layers (also on meta) and assigns the saved tensors.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import InherNetLoadError
from .pretrained import enable_save_pretrained, protect_config, read_base_config

#: files a Hugging Face model folder may carry besides its weights (copied by inherit_checkpoint)
SIDE_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
WEIGHT_INDEX_SUFFIX = ".index.json"


def _dtype_name(model: nn.Module) -> str | None:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return None if p is None else str(p.dtype).removeprefix("torch.")


def hf_meta(model: nn.Module) -> dict[str, Any]:
    """What ``inhernet_config.json`` records about a Hugging Face model (key ``"hf"``)."""
    import transformers

    return {
        "architecture": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtype": _dtype_name(model),
        "transformers_version": transformers.__version__,
    }


def save_hf_files(model: nn.Module, folder: Path, tokenizer: Any = None) -> dict[str, Any]:
    """Write ``config.json`` (+ ``generation_config.json``, tokenizer files) into ``folder``;
    return the ``"hf"`` record for ``inhernet_config.json``."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(str(folder))
    protect_config(model, folder)  # from_pretrained must refuse the folder, naming inhernet.load
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", lambda: False)
    if generation is not None and can_generate():
        generation.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return hf_meta(model)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is moved to the meta device (its
    initialisation then costs nothing); buffers are left alone (as accelerate's
    ``init_empty_weights(include_buffers=False)``)."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            old = module._parameters[name]
            if type(old) is nn.Parameter:
                new = nn.Parameter(old.to("meta"), requires_grad=old.requires_grad)
                new.__dict__.update(old.__dict__)
            else:  # a Parameter subclass (as accelerate does it)
                new = type(old)(old.to("meta"), **{**old.__dict__, "requires_grad": old.requires_grad})
            module._parameters[name] = new

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def model_class(name: str) -> type:
    import transformers

    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise InherNetLoadError(
            f"transformers {transformers.__version__} has no model class {name!r}; the folder needs the "
            "transformers version it was saved with, or pass base_model=<the architecture> to inhernet.load."
        )
    return cls


def build_empty_model(folder: Path, hf: dict[str, Any], config: Any = None) -> nn.Module:
    """The base architecture of a saved folder, parameters on the meta device, buffers real."""
    if config is None:
        config = read_base_config(folder)
    name = hf.get("architecture") or (config.architectures or [None])[0]
    if not name:
        raise InherNetLoadError(f"{folder}/config.json names no architecture; pass base_model to inhernet.load.")
    cls = model_class(name)
    kwargs: dict[str, Any] = {}
    if hf.get("attn_implementation"):
        kwargs["attn_implementation"] = hf["attn_implementation"]
    if hf.get("dtype"):
        kwargs["dtype"] = getattr(torch, hf["dtype"])
    with parameters_on_meta():
        model = cls._from_config(config, **kwargs)
    generation = Path(folder) / "generation_config.json"
    if generation.is_file() and getattr(model, "can_generate", lambda: False)():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model


class HFFormat:
    """The transformers model format of ``inhernet.save`` / ``inhernet.load`` (registered as the
    entry point ``inhernet.model_formats: transformers``): ``save_files`` writes config.json and
    friends and returns the ``"hf"`` record; ``build`` rebuilds the empty architecture;
    ``after_inherit`` runs on every model ``inhernet.inherit`` / ``inhernet.load`` return, and gives
    it a ``save_pretrained`` that writes the inhernet folder (:mod:`inhernet.hf.pretrained`)."""

    save_files = staticmethod(save_hf_files)
    build = staticmethod(build_empty_model)
    after_inherit = staticmethod(enable_save_pretrained)


HF_FORMAT = HFFormat()
