"""Tiny in-memory data and a tiny CNN shared by the training tests (what ``fit`` needs: ``.train`` /
``.val`` / ``.test`` splits with ``.x`` / ``.y``, ``num_classes``, ``default_augment``)."""

from types import SimpleNamespace

import torch
from torch import nn

CROP_FLIP = {"padding": 1, "flip": True}


def toy_data(n_train=96, n_val=30, n_test=31, classes=3, seed=0, default_augment=CROP_FLIP):
    """1×8×8 Gaussian images whose label depends on the mean of two image halves (learnable in an epoch)."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        x = torch.randn(n, 1, 8, 8, generator=g)
        y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0.3).long()
        return SimpleNamespace(x=x, y=y.clamp(max=classes - 1))

    return SimpleNamespace(train=split(n_train), val=split(n_val), test=split(n_test), num_classes=classes,
                           default_augment=default_augment)


def toy_net(classes=3, seed=1):
    """Conv → BatchNorm → ReLU → pool → Linear, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, classes))


# ---------------------------------------------------------------------------------------------------
# Teachers for the parity tests (tests/test_pipeline_parity.py): small, seeded, built from code only
# (nothing downloaded). Every factory returns a teacher in eval mode whose Linear/Conv weights have a
# decaying spectrum, so energy / budget policies pick ranks well below full rank.


def decay_spectrum(model, rate=0.6):
    """In place: give every Linear / Conv2d / transformers-Conv1D weight the singular values
    ``s_k · rate^k`` (same singular vectors), so a few directions carry most of the energy."""
    with torch.no_grad():
        for module in model.modules():
            kind = type(module).__name__
            if not isinstance(module, (nn.Linear, nn.Conv2d)) and kind != "Conv1D":
                continue
            w = module.weight
            m = w.reshape(w.shape[0], -1)
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            s = s * rate ** torch.arange(s.numel(), dtype=s.dtype)
            w.copy_(((u * s) @ vh).reshape(w.shape))
    return model


def mlp_arch():
    """nn.Sequential of four Linears (16 → 32 → 32 → 32 → 4) with ReLUs; input ``(n, 16)``. Values
    are torch's default init (the architecture; build it under ``torch.device("meta")`` for a skeleton)."""
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def toy_mlp(seed=0):
    """The seeded :func:`mlp_arch` teacher."""
    torch.manual_seed(seed)
    return decay_spectrum(mlp_arch()).eval()


def cnn_arch():
    """Conv 3→8 · BatchNorm · ReLU · grouped conv 8→8 (groups=2) · ReLU · conv 8→16 · ReLU · pool ·
    Linear 16→16 · ReLU · Linear 16→5 (head); input ``(n, 3, 8, 8)``. The grouped conv (module
    ``"3"``) must stay dense."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))


def toy_cnn(seed=0):
    """The seeded :func:`cnn_arch` teacher, with non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    net = cnn_arch()
    # non-trivial BatchNorm statistics, so the buffers are worth comparing
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(7)
    return decay_spectrum(net).eval()


class _Block(nn.Module):
    """A residual MLP block: ``x + fc2(relu(fc1(x)))``."""

    def __init__(self, dim=16, hidden=32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class BlockNet(nn.Module):
    """A plain module with one list of repeated blocks (``blocks``, an nn.ModuleList holding every
    eligible layer) and a classifier head outside it; input ``(n, 16)``."""

    def __init__(self, dim=16, hidden=32, n_blocks=2, classes=4):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(dim, hidden) for _ in range(n_blocks))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def blocknet_arch():
    return BlockNet()


def toy_blocknet(seed=0):
    """The seeded :class:`BlockNet` teacher (two blocks)."""
    torch.manual_seed(seed)
    return decay_spectrum(blocknet_arch()).eval()


# tiny Hugging Face models (transformers imported on call, so importing this file stays cheap)
HF_VOCAB = 64


def hf_config(family):
    """The tiny transformers config of ``family`` ("llama", "gpt2", "bert", "t5")."""
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(vocab_size=HF_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=4, intermediate_size=64, max_position_embeddings=32,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=HF_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                             bos_token_id=1, eos_token_id=2)
    if family == "bert":
        return tf.BertConfig(vocab_size=HF_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=32, num_labels=3, pad_token_id=0)
    if family == "t5":
        return tf.T5Config(vocab_size=HF_VOCAB, d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
                           relative_attention_num_buckets=8, relative_attention_max_distance=16,
                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    raise ValueError(family)


HF_CLASSES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertForSequenceClassification",
              "t5": "T5ForConditionalGeneration"}


def toy_hf(family, seed=0):
    """A seeded tiny ``family`` model in eval mode, with decaying spectra; GPT-2 and T5 tie their LM
    head to the input embeddings."""
    import transformers as tf

    torch.manual_seed(seed)
    model = getattr(tf, HF_CLASSES[family])(hf_config(family))
    return decay_spectrum(model).eval()


def hf_batch(family, batch=4, seq=16, seed=0):
    """One keyword batch for ``family``: ``input_ids`` (+ a padded ``attention_mask`` for BERT,
    ``decoder_input_ids`` for T5)."""
    g = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(3, HF_VOCAB, (batch, seq), generator=g)}
    if family == "bert":
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, -3:] = 0  # one padded row
        out["attention_mask"] = mask
    if family == "t5":
        out["decoder_input_ids"] = torch.randint(3, HF_VOCAB, (batch, seq // 2), generator=g)
    return out
