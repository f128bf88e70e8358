"""Hugging Face model folders of the text tasks: read and write what fine-tuning and the comparison
runner produce.

* :data:`TASKS`: the two text tasks, ``"causal-lm"`` and ``"sequence-classification"``;
* :func:`load_causal_lm` / :func:`load_tokenizer`: a causal LM folder, a folder's tokenizer;
* :func:`load_text_model`: ``(model, tokenizer)`` of a folder for a task — an InherNet written by
  :func:`inhernet.save`, or a plain ``save_pretrained`` folder (a new classifier head when
  ``num_labels`` asks for one);
* :func:`save_text_model`: the inverse — an InherNet through :func:`inhernet.save`, a dense model
  through ``save_pretrained`` (``inhernet.save`` takes inherited models only), the tokenizer beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ..errors import ConfigError
from ..io import CONFIG_NAME, load, save
from ..plan import PLAN_ATTR
from .quiet import quiet_transformers, transformers_progress

__all__ = ["CAUSAL_LM", "SEQUENCE_CLASSIFICATION", "TASKS", "load_causal_lm", "load_text_model", "load_tokenizer",
           "save_text_model"]

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TASKS = (CAUSAL_LM, SEQUENCE_CLASSIFICATION)


def save_text_model(model: nn.Module, folder: Union[str, Path], tokenizer: Any = None, *,
                    progress: bool = True) -> Path:
    """Save a fine-tuned Hugging Face model (replacing the model saved there): an InherNet with
    :func:`inhernet.save` (``inhernet.load(folder)`` reads it), a dense model with
    ``save_pretrained`` (``from_pretrained`` reads it; ``inhernet.save`` takes inherited models
    only); the tokenizer's files beside it. Either kind is what ``inhernet evaluate`` and
    :func:`load_text_model` read. ``progress=False`` hides transformers' "Writing model shards" bar."""

    folder = Path(folder)
    if getattr(model, PLAN_ATTR, None) is not None:
        with transformers_progress(progress):
            return save(model, folder, tokenizer=tokenizer, overwrite=True)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"{type(model).__name__} is neither an InherNet nor a Hugging Face model: save it yourself "
                          "(its weights are in the checkpoint).")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).unlink(missing_ok=True)  # an InherNet saved there before would shadow the dense model
    with transformers_progress(progress):
        model.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} holds no config.json: give a Hugging Face model folder (save_pretrained, "
                          "inhernet.save of a transformers model, or inhernet.hf.inherit_checkpoint).")


def load_tokenizer(folder: Union[str, Path]) -> Any:
    """The tokenizer saved in ``folder`` (``AutoTokenizer``); a clear error when it has none."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        with quiet_transformers():  # an inhernet folder's protected config.json draws a warning: expected
            return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{folder} has no tokenizer files to cut the text into tokens ({err}); save the tokenizer "
                          "beside the model (tokenizer.save_pretrained(folder)).") from err


def load_causal_lm(folder: Union[str, Path]) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of a causal-LM folder: an InherNet saved by ``inhernet.save`` (or
    ``inhernet.hf.inherit_checkpoint``), or a plain ``save_pretrained`` checkpoint; the tokenizer is
    the folder's own. The model is in eval mode on the CPU."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    _check_folder(folder)
    model = load(folder) if (folder / CONFIG_NAME).is_file() else AutoModelForCausalLM.from_pretrained(str(folder))
    return model.eval(), load_tokenizer(folder)


def load_text_model(folder: Union[str, Path], task: str = CAUSAL_LM, *, num_labels: Optional[int] = None
                    ) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of a Hugging Face folder for ``task``: an InherNet (``inhernet.save``) or
    a plain ``save_pretrained`` folder; causal LM through :func:`load_causal_lm`, sequence
    classification with ``AutoModelForSequenceClassification.from_pretrained(folder,
    num_labels=num_labels)`` (a new head when the folder holds another head). On the CPU, in eval mode."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not known; choose one of {', '.join(TASKS)}.")
    folder = Path(folder)
    if task == CAUSAL_LM:
        return load_causal_lm(folder)
    from transformers import AutoModelForSequenceClassification

    _check_folder(folder)
    if (folder / CONFIG_NAME).is_file():
        model = load(folder)
        have = getattr(model.config, "num_labels", None)
        if num_labels is not None and have != num_labels:
            raise ConfigError(f"{folder} is an InherNet classifier of {have} labels, but the data has {num_labels}; "
                              "inherit from a model with that many labels.")
    else:
        kwargs = {} if num_labels is None else {"num_labels": num_labels}
        with quiet_transformers():  # the report of a newly initialised head is expected here
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), **kwargs)
    return model.eval(), load_tokenizer(folder)
