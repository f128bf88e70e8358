"""Training-step speed of InherNets against their teachers, eager and under ``torch.compile`` (issue 13, item 4).

What one timed call is: **one optimiser step of the product's own Lightning module**, without the
Trainer's loop around it — the batch is fixed, the step runs

    runner = module.compiled(module.model)      # the plain model, or its torch.compile wrapper
    loss = <the module's loss of runner's output>
    loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)

with the optimiser of ``module.configure_optimizers()`` (SGD with momentum for the vision
:class:`~inhernet.train.module.DistillModule`, AdamW for the text
:class:`~inhernet.train.text.TextTaskModule`) and ``module.on_fit_start()`` (which builds the
compiled wrapper as in training). Not timed: data loading, logging, metrics, Lightning's hooks.

Parts (``--parts``):

* ``cnn``: resnet56 (teacher), InherNet-Large (``InheritConfig(rank=16, heads=3)``, the default head
  initialisation) and resnet20, CIFAR-100-shaped batches (``--batch`` 64 × 3 × 32 × 32, 100
  classes), cross-entropy;
* ``llm``: a SmolLM2-135M-shaped Llama (``bench_optimize.build_llama``: random weights from the
  config, ``--llm-layers`` of 30 blocks) against its InherNet at 60 % of the block parameters with
  H = 2 (``bench_optimize.inherit_llama``); next-token loss on ``--llm-batch`` × ``--seq-len``
  tokens (8 × 128);
* ``layers``: one gated layer's training step (forward + backward) in its current form against the
  alternatives of "fused head mixing" (see ``layer_part``), at SmolLM2's and resnet56's shapes.

Every model of a part is timed side by side with :func:`inhernet.optimize.time_candidates`
(interleaved rounds, the order reversed every other round; on a CPU with one thread the calling
thread's CPU time, immune to other processes on the machine): the ratio × teacher is the ratio of
the medians. ``--modes``: ``eager`` and torch.compile modes (``default``, ``reduce-overhead``, ...);
each compiled model is warmed up (compiled) before timing. ``--device cuda --autocast bf16`` is the
GPU setting (``benchmarks/gpu_train_step.sh``).

    python benchmarks/bench_train_step.py [--parts cnn llm layers] [--modes eager default] [--rounds 5]
                                          [--llm-layers 30] [--out docs/benchmarks/train_step.md]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import inhernet
from inhernet.models import create_model
from inhernet.optimize import default_clock, time_candidates
from inhernet.train import DistillModule
from inhernet.train.text import TextTaskModule, model_logits
from inhernet.utils import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimize import build_llama, inherit_llama  # noqa: E402

TEACHER = "teacher"


# ---------------------------------------------------------------------------------------------
# one optimiser step of a product module


def step_of(module, loss_of, batch, autocast: str | None):
    """A callable running one optimiser step of ``module`` on ``batch`` (see the module docstring)."""
    module.on_fit_start()  # builds the compiled wrapper (module.compiled) as Lightning's fit does
    opt = module.configure_optimizers()["optimizer"]
    device = batch[0].device if isinstance(batch, tuple) else batch["input_ids"].device
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if autocast == "bf16"
            else contextlib.nullcontext())

    def run(_):
        with torch.enable_grad():
            with cast:
                loss = loss_of(module, module.compiled(module.model), batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return run


def vision_loss(module, runner, batch):
    x, y = batch
    return module.loss_fn(runner(x), None, y)


def text_loss(module, runner, batch):
    return module.task_loss(model_logits(runner(input_ids=batch["input_ids"], use_cache=False)), batch)


def measure(steps: dict[str, callable], x, args, reference: str) -> dict[str, dict]:
    """Warm every step up (the compiled ones compile here), then time them side by side."""
    compile_s = {}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            fn(x)
        compile_s[name] = time.perf_counter() - t0
    clock = default_clock(x.device)
    ms = time_candidates(steps, x, rounds=args.rounds, min_time_s=args.min_time, clock=clock)
    return {n: {"ms": ms[n], "ratio": ms[n] / ms[reference], "warmup_s": compile_s[n], "clock": clock} for n in ms}


def _with_modes(build, modes: list[str]) -> dict[str, callable]:
    """``build(mode)`` for every mode (``eager`` → ``None``): name → step."""
    out = {}
    for mode in modes:
        for name, fn in build(None if mode == "eager" else mode).items():
            out[f"{name} [{mode}]"] = fn
    return out


# ---------------------------------------------------------------------------------------------
# parts


def cnn_part(args) -> tuple[str, dict]:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    teacher = create_model("resnet56", num_classes=100, in_channels=3)
    large = inhernet.inherit(teacher, inhernet.InheritConfig(rank=16, heads=3), progress=False)
    resnet20 = create_model("resnet20", num_classes=100, in_channels=3)
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (args.batch,), device=dev)
    nets = {TEACHER: teacher, "InherNet-Large (r16, H3)": large, "resnet20": resnet20}

    def build(mode):
        return {name: step_of(DistillModule(copy.deepcopy(net).to(dev).train(), num_classes=100, compile=mode),
                              vision_loss, (x, y), args.autocast) for name, net in nets.items()}

    res = measure(_with_modes(build, args.modes), x, args, f"{TEACHER} [{args.modes[0]}]")
    title = (f"resnet56 / InherNet-Large / resnet20, one SGD step on {args.batch} × 3 × 32 × 32 images "
             "(100 classes), cross-entropy")
    return title, res


def llm_part(args) -> tuple[str, dict]:
    dev = torch.device(args.device)
    teacher = build_llama(args.llm_layers)
    inh = inherit_llama(teacher, heads=2, fraction=0.6)
    ids = torch.randint(0, teacher.config.vocab_size, (args.llm_batch, args.seq_len),
                        generator=torch.Generator().manual_seed(0)).to(dev)
    batch = {"input_ids": ids}
    nets = {TEACHER: teacher, "InherNet 60 % H=2": inh}

    def build(mode):
        return {name: step_of(TextTaskModule(copy.deepcopy(net).to(dev).train(), task="causal-lm", lr=1e-5,
                                             max_steps=10 ** 6, compile=mode), text_loss, batch, args.autocast)
                for name, net in nets.items()}

    res = measure(_with_modes(build, args.modes), ids, args, f"{TEACHER} [{args.modes[0]}]")
    title = (f"SmolLM2-135M-shaped Llama ({args.llm_layers} of 30 blocks, random weights) / InherNet 60 % of the "
             f"block parameters, H = 2; one AdamW step on {args.llm_batch} × {args.seq_len} tokens, next-token loss")
    return title, res


class _HeadsNoCopy(torch.autograd.Function):
    """Candidate: the heads applied without the concatenated copy — forward H ``addmm`` on column
    blocks of the mixed input, backward each head's gradient by one ``mm`` straight into its block
    of ``up``'s gradient (the input's gradient H ``mm``)."""

    @staticmethod
    def forward(ctx, mixed, up):
        heads, d_out, r = up.shape
        flat = mixed.reshape(-1, heads * r)
        y = torch.mm(flat[:, :r], up[0].t())
        for h in range(1, heads):
            y.addmm_(flat[:, h * r:(h + 1) * r], up[h].t())
        ctx.save_for_backward(flat, up)
        return y.view(*mixed.shape[:-1], d_out)

    @staticmethod
    def backward(ctx, gy):
        flat, up = ctx.saved_tensors
        heads, d_out, r = up.shape
        g = gy.reshape(-1, d_out)
        g_up, g_in = torch.empty_like(up), torch.empty_like(flat)
        for h in range(heads):
            torch.mm(g.t(), flat[:, h * r:(h + 1) * r], out=g_up[h])
            g_in[:, h * r:(h + 1) * r] = g @ up[h]
        return g_in.view(*gy.shape[:-1], heads * r), g_up


def layer_part(args) -> tuple[str, dict]:
    """Gated layers, forward + backward of ``sum(layer(x))``, current form vs the alternatives."""
    dev = torch.device(args.device)
    steps, reference = {}, None

    def grad_step(fn):
        def run(_):
            with torch.enable_grad():
                fn().sum().backward()
        return run

    for d_in, d_out, r in ((576, 1536, 230), (1536, 576, 230), (576, 576, 100)):
        torch.manual_seed(0)
        m = inhernet.InherLinear(d_in, d_out, r, 2, bias=False).to(dev)
        x = torch.randn(args.llm_batch, args.seq_len, d_in, device=dev)
        layout = nn.Parameter(m.up.detach().permute(1, 0, 2).contiguous())  # (d_out, H, r): concat is a view

        def mixed(m=m, x=x):
            z = F.linear(x, m.down)
            return m._mix_input(z, m.gate_weights(z), feature_dim=-1)

        tag = f"Linear {d_in}→{d_out} r{r} H2"
        steps[f"{tag}: current (concat copy)"] = grad_step(lambda m=m, x=x: m(x))
        steps[f"{tag}: autograd.Function, no copy"] = grad_step(lambda m=m, mixed=mixed: _HeadsNoCopy.apply(mixed(), m.up))
        steps[f"{tag}: heads stored (d_out, H, r)"] = grad_step(
            lambda mixed=mixed, p=layout, d=d_out: F.linear(mixed(), p.view(d, -1)))
        reference = reference or f"{tag}: current (concat copy)"
    for c, hw in ((16, 32), (64, 8)):
        torch.manual_seed(0)
        m = inhernet.InherConv2d(c, c, 3, 16, 3, padding=1, bias=False).to(dev)
        x = torch.randn(args.batch, c, hw, hw, device=dev)

        def concat(m=m, x=x, hw=hw):  # the heads concatenated over g ⊗ z: H× the products of per-sample mixing
            z = F.conv2d(x, m.down, None, 1, 1).flatten(2)
            g = m.gate_weights(z.unflatten(2, (hw, hw)))
            return torch.matmul(m._heads_concat(), m._mix_input(z, g, feature_dim=1))

        tag = f"Conv {c}→{c} 3×3 at {hw}×{hw} r16 H3"
        steps[f"{tag}: current (per-sample mixed heads)"] = grad_step(lambda m=m, x=x: m(x))
        steps[f"{tag}: concatenated heads on g ⊗ z"] = grad_step(concat)
    res = time_candidates(steps, torch.zeros((), device=dev), rounds=args.rounds, min_time_s=args.min_time,
                          clock=default_clock(dev))
    out, base = {}, None
    for name, ms in res.items():
        if name.endswith(("current (concat copy)", "current (per-sample mixed heads)")):
            base = ms
        out[name] = {"ms": ms, "ratio": ms / base, "warmup_s": 0.0, "clock": default_clock(dev)}
    title = (f"one gated layer, forward + backward, {args.llm_batch} × {args.seq_len} tokens (linear) / batch "
             f"{args.batch} (conv); ratio × the layer's current form (the row above it)")
    return title, out


# ---------------------------------------------------------------------------------------------
# report


def table(res: dict[str, dict], ratio_name: str = "× teacher") -> str:
    lines = [f"| step | ms / step | {ratio_name} | first steps (s) |", "|---|---:|---:|---:|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['ms']:.1f} | {r['ratio']:.2f} | {r['warmup_s']:.1f} |")
    return "\n".join(lines)


def verdicts(results: dict[str, tuple[str, dict]], args) -> list[str]:
    """The issue's targets, checked on what was measured."""
    out = []
    if "cnn" in results and args.device == "cpu":
        res = results["cnn"][1]
        best = min((r["ratio"], n) for n, r in res.items() if n.startswith("InherNet"))
        out.append(f"* CPU target (InherNet-Large training step ≤ 0.8 × resnet56's, teacher eager): best "
                   f"{best[0]:.2f} × ({best[1]}) — **{'met' if best[0] <= 0.8 else 'not met'}**.")
    if "llm" in results:
        res = results["llm"][1]
        best = min((r["ratio"], n) for n, r in res.items() if n.startswith("InherNet"))
        where = "GPU" if args.device == "cuda" else "CPU (the target is for a GPU)"
        out.append(f"* SmolLM2 InherNet training step ≤ 1.0 × the teacher's, on {where}: best {best[0]:.2f} × "
                   f"({best[1]}) — **{'met' if best[0] <= 1.0 else 'not met'}**.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["cnn", "llm", "layers"], choices=["cnn", "llm", "layers"])
    p.add_argument("--modes", nargs="+", default=["eager", "default"],
                   help="eager and torch.compile modes (default, reduce-overhead, max-autotune, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", default=None, choices=["bf16"], help="bf16 autocast (Lightning's bf16-mixed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--llm-layers", type=int, default=30)
    p.add_argument("--llm-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--min-time", type=float, default=1e-3, help="seconds per timed round of a step (at least one step)")
    p.add_argument("--out", default=None, help="markdown file to write")
    p.add_argument("--json", default=None, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*TF32.*")
    parts = {"cnn": cnn_part, "llm": llm_part, "layers": layer_part}
    results = {}
    for name in args.parts:
        t0 = time.perf_counter()
        title, res = parts[name](args)
        results[name] = (title, res)
        print(f"\n### {title}\n\n{table(res, '× current' if name == 'layers' else '× teacher')}\n"
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    cmd = "python benchmarks/bench_train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    dev = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    md = ["# Training-step speed (issue 13, item 4)\n", f"    {cmd}\n",
          f"torch {torch.__version__}, device {args.device} ({dev}), {args.threads} thread(s), autocast "
          f"{args.autocast or 'off'}; clock: {'thread CPU time' if default_clock(args.device) == 'cpu' else 'wall'}; "
          f"{args.rounds} interleaved rounds, median; the ratio is the step's median over the first mode's teacher "
          "step's. \"first steps\": the untimed warm-up steps, compilation included. What is timed: see the "
          "docstring of benchmarks/bench_train_step.py (one optimiser step of the product's Lightning module on a "
          "fixed batch: forward, loss, backward, optimiser step; no data loading, logging or Lightning loop).\n"]
    for name, (title, res) in results.items():
        md += [f"## {title}\n", table(res, "× current" if name == "layers" else "× teacher") + "\n"]
    md += ["## Targets\n", *verdicts(results, args), ""]
    text = "\n".join(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v[1] for k, v in results.items()}, indent=2))
    print("\n".join(verdicts(results, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
