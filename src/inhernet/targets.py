"""Default layers to inherit in a Hugging Face model: the attention and MLP projections.

Data and duck typing only: nothing here imports transformers (a model that is a
``transformers.PreTrainedModel`` has imported it already), so the core engine can apply the
defaults without depending on :mod:`inhernet.hf`.

``inherit(model)`` on a ``transformers.PreTrainedModel`` with ``target_modules=None`` uses
:func:`default_target_modules`: one regex (stored in the plan's config, so the choice is visible)
matching the PEFT-style projection names of the model's family (``config.model_type``) **inside the
repeated blocks** (a name with a numeric segment, e.g. ``model.layers.3.self_attn.q_proj``). The
block restriction keeps heads that reuse a projection name outside the blocks dense (BERT's
``pooler.dense``, its MLM head ``cls.predictions.transform.dense``, CLIP's ``text_projection``).

Families not in the table get the generic rule: every Linear/Conv1D inside the repeated blocks,
except mixture-of-experts routers (a layer named ``gate`` or ``router``). Embeddings, the LM head /
classifier, patch embeddings and norms are never default targets; name them (or use
``"all-linear"``) to inherit them.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["GENERIC", "TARGETS", "default_target_modules", "is_transformers_model", "targets_for"]

_BERT = ("query", "key", "value", "dense")  # attention.self.{query,key,value}, attention.output.dense, intermediate.dense, output.dense
_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ENC_DEC = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # CLIP, BART, OPT, Whisper, SigLIP
_T5 = ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1")

#: model_type → projection names (matched as the last name component, inside the repeated blocks)
TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text",
                     "megatron-bert", "vit", "deit"), _BERT),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
                     "gemma3_text", "olmo", "olmo2", "granite", "cohere", "smollm3", "deepseek_v3"), _LLAMA),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), ("c_attn", "q_attn", "c_proj", "c_fc")),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    **dict.fromkeys(("t5", "mt5", "umt5", "longt5"), _T5),
    **dict.fromkeys(("clip", "clip_text_model", "clip_vision_model", "siglip", "siglip_text_model",
                     "siglip_vision_model", "bart", "mbart", "marian", "pegasus", "opt", "whisper", "m2m_100"),
                    _ENC_DEC),
}

#: inside a numbered block: ``<anything.>N.<anything.>``
_IN_BLOCK = r"(?:.*\.)?\d+\.(?:.*\.)?"
#: generic rule: every layer inside the blocks except MoE routers
GENERIC = _IN_BLOCK + r"(?!(?:gate|router)$)[^.]+"


def targets_for(model_type: str) -> str:
    """The default ``target_modules`` regex for a ``config.model_type``."""
    names = TARGETS.get(model_type)
    if names is None:
        return GENERIC
    return _IN_BLOCK + "(?:" + "|".join(re.escape(n) for n in names) + ")"


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel``, by its class hierarchy (no import)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(model).__mro__)


def default_target_modules(model: nn.Module) -> str:
    """The default ``target_modules`` (a regex string) for a ``transformers.PreTrainedModel``."""
    config = getattr(model, "config", None)
    return targets_for(getattr(config, "model_type", "") or "")
