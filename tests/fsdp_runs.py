"""The FSDP2 runs of tests/test_text_train.py, on 2 CPU processes (gloo): ``python fsdp_runs.py OUT``.

``strategy="fsdp"`` re-launches the running script once per further process (Lightning's
subprocess launcher, as ``strategy="ddp"`` does), so these runs live in a script of their own and
not inside pytest; every process runs this whole file. The first ``finetune`` launches the second
process; the later ones find the processes there and join them (Lightning leaves ``LOCAL_RANK`` set
after launching). The interrupted run is not the first: a Ctrl-C in the launching Trainer would kill
the other process instead of leaving it to resume.

Runs (each into ``OUT/<name>``):

* ``straight``: the tiny Llama, 4 steps of batch 4 per process, clipping at 0.1 (it binds), an
  evaluation and a checkpoint every 2 steps;
* ``resumed``: the same, stopped by Ctrl-C after step 3 (last checkpoint: step 2), then resumed
  from a fresh model object;
* ``inherited``: an InherNet of a tiny Llama with tied embeddings / LM head, distilled from the
  dense Llama (the teacher, not sharded; its logits cached), with gradient checkpointing and
  accumulation.

Global rank zero writes ``OUT/runs.json``: per run the gradient norms seen before each optimiser
step (as the NonFiniteGuard computes them over the sharded gradients), whether the returned model
is a plain unsharded module with the parameter names of the model passed in, and whether the
teacher's parameters are still plain tensors.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_text_train import (FSDP_INHERITED, FSDP_RUN, GradNorms, StopAt, fsdp_inherited_student,  # noqa: E402
                             lm_data, tiny_llama)

from inhernet.train.finetune import finetune  # noqa: E402
from inhernet.train.fit import global_rank  # noqa: E402
from inhernet.train.fsdp import is_sharded  # noqa: E402
from inhernet.train.signals import TrainingInterrupted  # noqa: E402


def plain(model, names) -> bool:
    """An unsharded module (no FSDPModule anywhere, no DTensor parameter) with these parameter names."""
    from torch.distributed.tensor import DTensor

    return (not any(is_sharded(m) for m in model.modules())
            and not any(isinstance(p, DTensor) for p in model.parameters())
            and sorted(model.state_dict()) == names)


def main(out: Path) -> None:
    data = lm_data()
    kw = dict(FSDP_RUN, devices=2, strategy="fsdp", accelerator="cpu")
    report = {}

    names = sorted(tiny_llama().state_dict())
    norms = GradNorms()
    res = finetune(tiny_llama(), data, out_dir=out / "straight", callbacks=[norms], **kw)
    report["straight"] = {"norms": norms.norms, "plain": plain(res.model, names)}

    try:
        finetune(tiny_llama(), data, out_dir=out / "resumed", callbacks=[StopAt(3)], **kw)
        report["stopped"] = False
    except TrainingInterrupted:
        report["stopped"] = True
    res = finetune(tiny_llama(seed=5), data, out_dir=out / "resumed", **kw)
    report["resumed"] = {"plain": plain(res.model, names)}

    from torch.distributed.tensor import DTensor

    student, teacher = fsdp_inherited_student(), tiny_llama()
    names = sorted(student.state_dict())
    res = finetune(student, data, out_dir=out / "inherited", teacher=teacher, **{**kw, **FSDP_INHERITED})
    report["inherited"] = {"plain": plain(res.model, names),
                           "teacher_plain": not any(isinstance(p, DTensor) for p in teacher.parameters()),
                           "tied": res.model.lm_head.weight is res.model.model.embed_tokens.weight}
    if global_rank() == 0:
        (out / "runs.json").write_text(json.dumps(report))
    torch.distributed.barrier()  # both processes are done before the launcher returns


if __name__ == "__main__":
    main(Path(sys.argv[1]))
