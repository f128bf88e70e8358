"""FSDP2 for the text fine-tuning path: per-parameter sharding of a Hugging Face model's transformer
blocks, on GPUs (nccl) and on CPUs (gloo).

    from inhernet.train.fsdp import FSDP2Strategy
    trainer = L.Trainer(strategy=FSDP2Strategy(), devices=2, accelerator="cpu", ...)
    # the LightningModule's configure_model() calls shard_model(model, self.device_mesh)

Why FSDP2 (``torch.distributed.fsdp.fully_shard``) and not FSDP1 (``FullyShardedDataParallel``,
Lightning's ``FSDPStrategy``): FSDP1 flattens each wrapped block into one flat parameter and refuses a
CPU (Lightning: ``The strategy `fsdp` requires a GPU accelerator``; torch: ``FSDP needs a non-CPU
accelerator device``), so it could neither be tested here nor run on CPU machines. FSDP2 shards every
parameter on its own as a ``DTensor`` over a device mesh (gloo on CPUs, nccl on GPUs) and keeps the
parameter names, so weight decay by name, the full-state checkpoint and tied weights need no
renaming. Lightning 2.6 drives it through ``ModelParallelStrategy``: the strategy builds the device
mesh, the LightningModule applies ``fully_shard`` in ``configure_model()``, the optimiser is made
afterwards from the sharded parameters.

:class:`FSDP2Strategy` is that strategy with the mesh all data-parallel (every process one shard,
no tensor parallelism) and a full-state checkpoint (one ``.ckpt`` file written by rank zero, not a
folder of shards), so that :func:`inhernet.train.finetune.load_checkpoint_weights` and an exact resume
read it like the checkpoint of a one-process run. :func:`shard_model` shards each block, then the root
(embeddings, final norm, head: tied embeddings and LM head share one parameter there). A frozen KD
teacher is held outside the registered children and is never sharded.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from ..errors import ConfigError
from ..hf.prune import block_list

__all__ = ["FSDP2Strategy", "data_parallel_mesh", "is_sharded", "shard_model", "transformer_blocks"]


def transformer_blocks(model: nn.Module, *, option: str = "strategy='fsdp'") -> nn.ModuleList:
    """The model's list of transformer blocks (:func:`inhernet.hf.prune.block_list`), what FSDP
    shards one by one; a model without one is a ConfigError (``option`` names the setting)."""
    try:
        return block_list(model)[1]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{option} shards the model's transformer blocks, but none were found in "
                          f"{type(model).__name__} ({err}); use strategy='ddp'.") from err


def is_sharded(model: nn.Module) -> bool:
    """``fully_shard`` has been applied to ``model`` (its class is then an ``FSDPModule``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, mesh: Any) -> nn.Module:
    """``fully_shard`` every transformer block of ``model`` and then ``model`` itself (what is left:
    embeddings, final norm, head), in place, over the 1-D device ``mesh``. Idempotent (Lightning may
    call ``configure_model`` more than once). Returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    if is_sharded(model):
        return model
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP2: a data-parallel mesh over all processes
    (``data_parallel_size`` = world size, ``tensor_parallel_size`` = 1, however ``devices`` was
    spelt) and a full-state checkpoint file. The LightningModule shards the model in
    ``configure_model()`` (:func:`shard_model` on ``self.device_mesh["data_parallel"]``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        # the world size is known here (devices and nodes are parsed), not when the strategy is made
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def data_parallel_mesh(strategy: Any) -> Any:
    """The data-parallel 1-D mesh of a ``ModelParallelStrategy`` (what FSDP shards over), or
    ``None`` for any other strategy."""
    if not isinstance(strategy, ModelParallelStrategy):
        return None
    return strategy.device_mesh["data_parallel"]

