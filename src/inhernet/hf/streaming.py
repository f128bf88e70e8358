"""Inherit a Hugging Face checkpoint folder tensor by tensor, for models larger than memory.

:func:`inherit_checkpoint` builds the architecture from ``config.json`` with every parameter on the
meta device (module names, types, shapes, ties; no memory) and hands it to the one pipeline
(:func:`inhernet.inherit_checkpoint`, :mod:`inhernet.pipeline`): each tensor is read from its
input shard when it is needed, an eligible layer is factorised as soon as it is read (or, whitened
block by block, each block is loaded only while it is calibrated and inherited), and output
tensors are written shard by shard. Peak memory is about one output shard + one layer's weight and
SVD workspace (or one block with its statistics and the calibration activations at it) + the
skeleton's buffers, whatever the size of the model.

The result is the folder ``inhernet.save`` would have written for ``inherit(teacher, config)`` —
the same tensors bit for bit, the same plan — sharded when bigger than ``max_shard_size``, plus
``inhernet_config.json`` and the source's ``config.json``, generation config and tokenizer files.
``inhernet.load(dst)`` loads it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..config import InheritConfig
from ..errors import ConfigError
from ..inherit import inherit_checkpoint as inherit_safetensors
from ..io import CONFIG_NAME
from ..shards import checkpoint_dtype, checkpoint_index
from .io import SIDE_FILE_SUFFIXES, WEIGHT_INDEX_SUFFIX, build_empty_model, hf_meta
from .pretrained import protect_config

__all__ = ["inherit_checkpoint"]


def inherit_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, config: InheritConfig | None = None, *,
                       calibration: Any = None, max_shard_size: int | str = "1GB", architecture: str | None = None,
                       progress: bool = True, overwrite: bool = False, **overrides: Any) -> Path:
    """Inherit the Hugging Face checkpoint in ``src`` into ``dst`` without loading the teacher.

    Args:
        src: a folder with ``config.json`` and safetensors weights (one file or shards with
            ``model.safetensors.index.json``), as ``save_pretrained`` writes it.
        dst: the output folder (created); afterwards ``inhernet.load(dst)`` loads the InherNet.
        config: an :class:`~inhernet.InheritConfig`; ``overrides`` apply on top, as in ``inherit``.
            ``target_modules=None`` means the architecture's attention and MLP projections.
        calibration: for ``init="whitened"``: the batches ``inherit`` takes (e.g.
            :func:`inhernet.hf.calibration.text_calibration`); by default they are run block by
            block (``calibration_mode="sequential"``), each block read from ``src`` when reached.
        max_shard_size: the largest output shard, in bytes or as ``"500MB"``/``"2GB"``.
        architecture: the transformers model class to build (default: ``config.architectures[0]``).
        progress: show progress bars.
        overwrite: replace a model already saved in ``dst`` (refused otherwise, before any work).

    Returns the path of ``dst``. On any error ``dst`` is left as it was.
    """
    from transformers import AutoConfig

    src, dst = Path(src), Path(dst)
    hf_config = AutoConfig.from_pretrained(str(src))
    arch = architecture or (hf_config.architectures or [None])[0]
    if not arch:
        raise ConfigError(f"{src}/config.json names no architecture; pass architecture='LlamaForCausalLM' (a transformers class).")
    dtype = checkpoint_dtype(src, checkpoint_index(src))
    skeleton = build_empty_model(src, {"architecture": arch, "dtype": dtype}, config=hf_config)
    hf = {**hf_meta(skeleton), "dtype": dtype}

    def finish(folder: Path) -> None:
        _copy_side_files(src, folder)
        protect_config(skeleton, folder)  # transformers must not build the dense model from it

    return inherit_safetensors(src, dst, config, model=skeleton, calibration=calibration, max_shard_size=max_shard_size,
                               progress=progress, overwrite=overwrite, hf=hf, on_success=finish, **overrides)


def _copy_side_files(src: Path, dst: Path) -> None:
    """config.json, generation config, tokenizer files: everything small that is not weights."""
    for path in src.iterdir():
        if (path.is_file() and path.name.endswith(SIDE_FILE_SUFFIXES) and not path.name.endswith(WEIGHT_INDEX_SUFFIX)
                and path.name != CONFIG_NAME):
            shutil.copyfile(path, dst / path.name)
