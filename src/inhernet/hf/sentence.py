"""Sentence classification on a Hugging Face encoder, the sentence-transformers way.

:class:`SentenceClassifier` puts a linear head on the attention-mask-weighted mean of an encoder's
last hidden states (the pooling all-MiniLM-L6-v2 was trained with, so fine-tuning starts from its
sentence embeddings rather than from an untrained ``[CLS]`` pooler). :func:`pad_batches` turns
tokenised texts into padded ``(input_ids, attention_mask, label)`` batches, padded to the longest
text of each batch.

    >>> clf = SentenceClassifier(AutoModel.from_pretrained(folder, add_pooling_layer=False), num_labels=43)
    >>> logits = clf(input_ids, attention_mask)
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


class SentenceClassifier(nn.Module):
    """``encoder`` (a ``transformers`` encoder returning ``last_hidden_state``) + mean pooling + a
    ``Linear`` head. The head is named ``classifier`` so :func:`inhernet.inherit` keeps it dense."""

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.classifier(pooled)


def pad_batches(ids: Sequence[Sequence[int]], labels: Sequence[int], batch_size: int, *, pad_id: int,
                order: Sequence[int] | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(input_ids, attention_mask, labels)`` batches over ``order`` (default: as given), each padded
    on the right to its longest sequence."""
    order = list(range(len(ids)) if order is None else order)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(ids[i]) for i in idx)
        x = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            x[row, :len(ids[i])] = torch.as_tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        yield x, mask, torch.as_tensor([labels[i] for i in idx])
