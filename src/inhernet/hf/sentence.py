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

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["SentenceClassifier", "classification_scores", "logits_of", "pad_batches"]


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


def logits_of(output: Any) -> Tensor:
    """The logits of a model call: ``output.logits`` (a ``transformers`` model output) or the tensor itself."""
    return output.logits if hasattr(output, "logits") else output


@torch.inference_mode()
def classification_scores(model: nn.Module, input_ids: Sequence[Sequence[int]], labels: Sequence[int], *,
                          pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a sequence classifier over tokenised examples (padded
    batches with an attention mask; ``model(input_ids=, attention_mask=)`` returning logits or an
    output with ``.logits``): ``{"acc", "loss", "examples"}``. The model's train/eval flag is
    restored after the call."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    correct, total_loss, n = 0, 0.0, 0
    for x, mask, y in pad_batches(input_ids, labels, batch_size, pad_id=pad_id):
        logits = logits_of(model(input_ids=x.to(device), attention_mask=mask.to(device))).float().cpu()
        correct += int((logits.argmax(-1) == y).sum())
        total_loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("no example to score: the split is empty")
    return {"acc": correct / n, "loss": total_loss / n, "examples": n}
