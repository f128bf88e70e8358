"""``save_pretrained`` / ``from_pretrained`` on an inherited Hugging Face model never round-trip wrong.

An InherNet's state dict holds factors (``q_proj.down``, ``q_proj.up``, ...) where a dense model has
``q_proj.weight``; transformers' ``from_pretrained`` would build the dense architecture, find none of
its projection weights, initialise them at random and only log it. So:

* :func:`enable_save_pretrained` (run by ``inhernet.inherit`` and ``inhernet.load`` through the
  format hook ``HF_FORMAT.after_inherit``) sets the instance's ``save_pretrained`` to one that
  writes what :func:`inhernet.save` writes; the class is unchanged, so what is recorded
  (``architectures``, the ``"hf"`` record, ``base_model_class``) and every type check in
  transformers or PEFT see the base class. ``Trainer.save_model`` and every Trainer checkpoint then
  write an inhernet folder, and
  Trainer's resume (``load_state_dict`` of the folder's ``model.safetensors``) reads it back.
* :func:`protect_config` (run by ``inhernet.save`` on every Hugging Face folder) makes the folder's
  ``config.json`` refuse to build the dense model, with a message naming ``inhernet.load``:
  ``model_type`` holds that message (``AutoConfig`` and every ``AutoModel*.from_pretrained`` raise
  transformers' "does not recognize this architecture" ``ValueError`` quoting it), and one integer
  field of the architecture's config (e.g. ``hidden_size``) holds it too (the class's own
  ``LlamaForCausalLM.from_pretrained``, which only warns about a foreign ``model_type``, fails its
  type check quoting it). The real values are kept under the ``"inhernet"`` key, which
  :func:`read_base_config` (what ``inhernet.load`` reads) puts back. The generic
  ``PreTrainedConfig`` still reads the file: ``AutoTokenizer.from_pretrained(folder)`` falls back to
  it (the tokenizer saved with the model loads) and Trainer's resume reads the checkpoint's
  ``transformers_version`` with it.

No ``auto_map`` / ``trust_remote_code`` route is offered: an ``auto_map`` ``AutoConfig`` entry makes
transformers ask about remote code (a prompt, or an error that does not name ``inhernet.load``)
even when only the tokenizer is loaded.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["MESSAGE", "enable_save_pretrained", "protect_config", "read_base_config", "save_pretrained"]

#: the key of ``config.json`` that holds the note and the real values of the protected fields
PROTECT_KEY = "inhernet"
MESSAGE = ("inhernet: this folder holds an InherNet (factorised layers, written by inhernet.save or save_pretrained "
           "of an inherited model), not a dense model; load it with inhernet.load(folder)")


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, is_main_process: bool = True,
                    state_dict: dict | None = None, push_to_hub: bool = False,
                    max_shard_size: int | str | None = None, variant: str | None = None,
                    safe_serialization: bool = True, **kwargs: Any) -> None:
    """An inherited model's ``save_pretrained``: write what :func:`inhernet.save` writes
    (``model.safetensors`` or shards, ``inhernet_config.json``, ``config.json``, generation config),
    replacing a model already there, so ``inhernet.load(save_directory)`` rebuilds this model.

    Takes the arguments ``PreTrainedModel.save_pretrained`` takes: ``is_main_process=False`` writes
    nothing; ``state_dict`` (e.g. gathered by Trainer from a distributed model) is what is written,
    and must hold this model's keys and shapes; ``max_shard_size`` shards as ``inhernet.save`` does
    (default: one file); weights are always safetensors (``safe_serialization`` is accepted and
    ignored). ``push_to_hub`` and ``variant`` are refused: an InherNet folder is pushed, or renamed,
    as a folder. Other keyword arguments (``token``, ``save_peft_format``, ...) do not apply.
    """
    from ..errors import ConfigError
    from ..io import save

    if push_to_hub or variant is not None:
        raise ConfigError("save_pretrained of an InherNet supports neither push_to_hub nor variant: it writes the "
                          "inhernet folder (inhernet.save); upload that folder, and load it with inhernet.load.")
    if is_main_process:
        save(model, save_directory, overwrite=True, max_shard_size=max_shard_size, state_dict=state_dict)


def enable_save_pretrained(model: nn.Module) -> nn.Module:
    """Make an inherited transformers model's ``save_pretrained`` (what ``Trainer.save_model`` and
    every Trainer checkpoint call) write the inhernet folder instead of a dense checkpoint that
    would reload with random projections. Set on the instance (its class is unchanged, so
    ``type(model) is LlamaForCausalLM`` still holds); copies and pickles keep it. Idempotent;
    returns ``model``."""
    if not isinstance(model.__dict__.get("save_pretrained"), functools.partial):
        model.__dict__["save_pretrained"] = functools.partial(save_pretrained, model)
    return model


def _protected_field(config: Any, data: dict[str, Any]) -> str | None:
    """An integer field of ``config``'s class that transformers type-checks when that class builds
    the config, but that the generic ``PreTrainedConfig`` accepts as it is (Trainer's resume reads
    a checkpoint's config.json with ``PreTrainedConfig.from_json_file``); both are checked here on
    the poisoned dict. None when no field qualifies."""
    import dataclasses

    from transformers import PreTrainedConfig

    cls = type(config)
    if not dataclasses.is_dataclass(cls):
        return None
    common = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    preferred = ["hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"]
    names = [f.name for f in dataclasses.fields(cls) if f.name not in common]
    for name in sorted(names, key=lambda n: preferred.index(n) if n in preferred else len(preferred)):
        value = getattr(config, name, None)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        poisoned = {**data, name: MESSAGE}
        try:
            cls.from_dict(poisoned)
        except Exception as err:  # transformers' strict validation; any error does, if it carries the message
            if "inhernet.load" not in str(err):
                continue
        else:
            continue
        try:
            PreTrainedConfig.from_dict(poisoned)
        except Exception:  # noqa: BLE001 - the generic config must stay readable
            continue
        return name
    return None


def protect_config(model: nn.Module, folder: Path) -> None:
    """Rewrite ``folder/config.json`` (just written from ``model.config``) so that transformers
    cannot build a dense model from it: ``model_type`` and one type-checked integer field hold
    :data:`MESSAGE`, their values are kept under ``"inhernet"`` (see the module docstring)."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    restore = {"model_type": data.get("model_type", getattr(model.config, "model_type", None))}
    data["model_type"] = MESSAGE
    field = _protected_field(model.config, data)
    if field is not None:
        restore[field] = getattr(model.config, field)
        data[field] = MESSAGE
    data[PROTECT_KEY] = {"note": MESSAGE, "restore": restore}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_base_config(folder: str | os.PathLike) -> Any:
    """The base model's config of a saved folder: a folder written by :func:`protect_config` gets
    its protected values back; an older folder is read by ``AutoConfig.from_pretrained``."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ..errors import InherNetLoadError

    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InherNetLoadError(f"cannot read {path} ({err}); the folder is incomplete or damaged.") from err
    note = data.pop(PROTECT_KEY, None) if isinstance(data, dict) else None
    if not isinstance(note, dict):
        return AutoConfig.from_pretrained(str(folder))
    data.update(note.get("restore") or {})
    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise InherNetLoadError(f"{path} has model_type {model_type!r}, unknown to this transformers; install the "
                                "transformers version the folder was saved with.")
    config = CONFIG_MAPPING[model_type].from_dict(data)
    config._name_or_path = str(folder)
    return config
