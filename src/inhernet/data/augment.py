"""Random crop + horizontal flip on whole batches of tensors (no torchvision, no per-image loop).

The standard CIFAR recipe - pad by 4, crop back to the original size at a random offset, mirror
half the images - done as one gather: each output pixel's source position in the padded batch is
computed with index arithmetic from per-sample offsets (and, for flipped samples, a reversed column
index), then ``torch.gather`` fetches all of them at once. It runs on whatever device the batch is
on, and a ``torch.Generator`` makes the draws reproducible. The draws are always made on the CPU
generator and only the drawn numbers are moved to the batch's device (one small copy per batch),
so a batch augmented on a GPU equals the same batch augmented on the CPU, value for value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["RandomCropFlip"]


class RandomCropFlip:
    """Pad-and-random-crop, then random horizontal flip, of an N x C x H x W batch.

    Args:
        padding: pixels of padding on every side before cropping back to H x W (0: no crop).
        flip: mirror each image left-right with probability 1/2. Turn it off for digits.
        fill: value of the padded border. Batches are already normalised, so the default 0 is
            the data set's mean colour.
        seed: seeds the generator (ignored when ``generator`` is given).
        generator: a CPU ``torch.Generator`` to draw offsets and flips from.

    Calling it returns a new tensor; with ``padding=0`` and ``flip=False`` it returns the input.
    In ``DataLoader`` worker processes each worker re-seeds its copy from the worker's own seed,
    so workers do not repeat each other's draws.
    """

    def __init__(self, padding: int = 4, flip: bool = True, *, fill: float = 0.0, seed: int = 0,
                 generator: torch.Generator | None = None):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.fill = float(fill)
        self.seed = seed
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self._worker_id: int | None = None

    def manual_seed(self, seed: int) -> RandomCropFlip:
        """Restart the random stream from ``seed``."""
        self.seed = seed
        self.generator.manual_seed(seed)
        return self

    def __getstate__(self) -> dict:
        # Pickle the generator's state as bytes: a torch.Generator itself fails to cross into
        # spawned processes (torch 2.13, e.g. Lightning's ddp_spawn).
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict) -> None:
        g = torch.Generator()
        g.set_state(torch.frombuffer(bytearray(state["generator"]), dtype=torch.uint8))
        self.__dict__.update(state, generator=g)

    def _reseed_in_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_id != info.id:
            self._worker_id = info.id
            self.generator.manual_seed((info.seed + self.seed) % (2**63))

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random choices for ``n`` images: row offsets, column offsets (both in
        ``[0, 2 * padding]``) and flip flags. Exposed so tests can predict the output."""
        g, span = self.generator, 2 * self.padding + 1
        dy = torch.randint(0, span, (n,), generator=g)
        dx = torch.randint(0, span, (n,), generator=g)
        flips = (torch.rand(n, generator=g) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        return dy, dx, flips

    def _draws_on(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`draw` on the CPU generator, the numbers moved to ``device`` in one small copy (a
        no-op for a CPU batch): the same code and the same numbers on every device."""
        dy, dx, flips = self.draw(n)
        draws = torch.stack([dy, dx, flips.long()])
        if device.type == "cuda":  # from pinned memory, asynchronously: the host does not wait for the GPU
            draws = draws.pin_memory().to(device, non_blocking=True)
        else:
            draws = draws.to(device)
        dy, dx, flips = draws
        return dy, dx, flips.bool()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
        if self.padding == 0 and not self.flip:
            return x
        self._reseed_in_worker()
        n, c, h, w = x.shape
        p = self.padding
        dy, dx, flips = self._draws_on(n, x.device)
        padded = F.pad(x, (p, p, p, p), value=self.fill) if p else x
        wp = w + 2 * p
        rows = dy[:, None] + torch.arange(h, device=x.device)                 # N x H
        cols = torch.arange(w, device=x.device).expand(n, w)
        cols = torch.where(flips[:, None], (w - 1) - cols, cols) + dx[:, None]  # N x W
        flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w)
        out = padded.reshape(n, c, -1).gather(2, flat.expand(n, c, h * w))
        return out.reshape(n, c, h, w)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}, fill={self.fill})"
