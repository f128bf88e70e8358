"""SIGTERM and Ctrl-C during training: stop cleanly, keep the checkpoint, exit non-zero.

A scheduler (SLURM, Kubernetes, ``timeout``) stops a job with SIGTERM. Lightning catches it during
``Trainer.fit``: its signal connector only records it (``trainer.received_sigterm``) and its loops
raise ``SIGTERMException`` at the end of the current batch, so a checkpoint being written is
finished first. But ``SIGTERMException`` is a ``SystemExit`` with no code: left alone, the process
exits 0 and the scheduler sees success. Ctrl-C inside ``Trainer.fit`` turns, in Lightning, into
``sys.exit(1)``, and SIGTERM outside ``Trainer.fit`` (loading data, saving the model) kills the
process with no message.

Here both become :class:`TrainingInterrupted`:

* :func:`stop_cleanly` wraps one training run (``inhernet.train.fit`` uses it around the Trainer). It
  lets Lightning defer a SIGTERM to the end of the batch, turns Lightning's exits into
  ``TrainingInterrupted`` naming the signal, the run folder and the checkpoint that was kept (the
  one of the last finished epoch: a mid-epoch checkpoint would not resume to the weights of an
  uninterrupted run), and restores the signal handlers it found.
* :func:`sigterm_as_interrupt` (used by the command line) makes a SIGTERM anywhere else raise
  ``TrainingInterrupted`` at once, as Ctrl-C raises ``KeyboardInterrupt``.

``TrainingInterrupted`` is a ``KeyboardInterrupt``, so code that stops on Ctrl-C stops on SIGTERM
too, and ``except Exception`` (e.g. a comparison marking one run failed and going on) does not
swallow it. ``exit_code`` is the shell convention, 128 + the signal number: 143 for SIGTERM, 130
for SIGINT.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["TrainingInterrupted", "sigterm_as_interrupt", "stop_cleanly"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by a signal (SIGTERM or SIGINT); the last epoch's checkpoint is kept.

    Attributes:
        signum: the signal that stopped it.
        out_dir: the run folder (``None`` when the signal came outside a training run).
        checkpoint: the checkpoint a resumed run continues from, or ``None`` when no epoch had finished.
        exit_code: ``128 + signum`` (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, signum: int, *, out_dir: Union[str, Path, None] = None,
                 checkpoint: Union[str, Path, None] = None) -> None:
        self.signum = int(signum)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
        super().__init__(self._message())

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def _message(self) -> str:
        where = f"training in {self.out_dir}" if self.out_dir is not None else "the command"
        msg = f"{where} was stopped by {self.signal_name}"
        if self.out_dir is None:
            return msg
        if self.checkpoint is not None:
            return f"{msg}; the checkpoint of the last finished epoch is kept ({self.checkpoint}) and a resumed run " \
                   "continues from it"
        return f"{msg} before its first epoch finished, so there is no checkpoint yet; a resumed run starts over"

    def __str__(self) -> str:
        return self.args[0] if self.args else self._message()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`TrainingInterrupted` (as Ctrl-C raises ``KeyboardInterrupt``);
    inside a training run (:func:`stop_cleanly`) it is deferred to the end of the batch instead.
    Does nothing outside the main thread (only it can set signal handlers)."""
    if not _main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_cleanly(out_dir: Union[str, Path], checkpoint: Union[str, Path, None] = None) -> Iterator[None]:
    """Run one Lightning training inside: a SIGTERM or Ctrl-C ends it with :class:`TrainingInterrupted`.

    A SIGTERM that arrives while Lightning's signal connector is active is left to Lightning (the
    current batch, and a checkpoint being written, finish first); one that arrives before the
    connector is set up or after it is torn down stops the run at once (nothing is being written
    then by the Trainer) or, if training already ended, when the block is left. ``checkpoint``: the
    file a resumed run would continue from, named in the error when it exists.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def interrupted(signum: int) -> TrainingInterrupted:
        return TrainingInterrupted(signum, out_dir=out_dir, checkpoint=checkpoint)

    pending: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            # called directly, not through Lightning's connector: the Trainer is not in its loops
            raise interrupted(signum)
        # Lightning composed its handler with this one: it has recorded the signal and stops the run
        # at the end of the batch; remember it in case the run ends before Lightning looks again
        pending.append(signum)

    saved: dict[int, Any] = {}
    if _main_thread():
        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except TrainingInterrupted:
        raise
    except SIGTERMException:
        raise interrupted(signal.SIGTERM) from None
    except SystemExit as err:
        # Lightning answers a KeyboardInterrupt inside Trainer.fit with sys.exit(1)
        cause = err.__context__
        if isinstance(cause, TrainingInterrupted):
            raise cause from None
        if isinstance(cause, KeyboardInterrupt):
            raise interrupted(signal.SIGINT) from None
        raise
    except KeyboardInterrupt:
        raise interrupted(signal.SIGINT) from None
    finally:
        # Lightning ignores SIGINT after a Ctrl-C and only restores it when its connector was set up
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)
    if pending:
        raise interrupted(pending[0])

