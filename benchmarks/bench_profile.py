"""Where the time of an InherNet goes on CPU: torch.profiler over single layers and whole models.

Issue 13, item 1. Every measured call runs under ``torch.profiler`` with the inherited layers'
named steps switched on (:func:`inhernet.layers.profile_scopes`: ``inhernet.down``,
``inhernet.gate``, ``inhernet.mix``, ``inhernet.heads``, ``inhernet.bias``,
``inhernet.shared_input``) and, from this script, a scope around every Linear / Conv2d /
BatchNorm / attention module and around the LM head (forward hooks). Each op's *self* CPU time is
attributed to a category by its op name and the nearest enclosing scope:

* ``down product``: ``D x`` (in a :class:`~inhernet.optimize.GatedLinear`: ``[D; G·D] x``, the
  gate logits with it); ``up/head products``: ``B_h z``; ``gate``: gate logits and pooling;
  ``softmax/mixing``: the softmax and the scaling of z / the head outputs by the gate;
  ``bias``: the mixed head biases; ``shared-input product``: one matmul for q/k/v or gate/up
  (:class:`~inhernet.optimize.SharedInputProduct`);
* ``copies / re-layouts``: ``copy_``, ``clone``, ``contiguous``, ``cat`` wherever they run (the
  per-call copy of the heads into the concatenated layout shows here);
* ``BatchNorm``; ``dense Linear/Conv2d``: the layers that are not inherited (the teacher's, the
  ones kept dense, either weight layout); ``LM head``; ``attention core``: everything inside an attention
  module that is not a projection (RoPE, SDPA, KV cache); ``other ops``: activations, norms,
  residual adds, embedding, views;
* ``backward`` and ``optimizer step`` (a training step); ``Python / framework``: the self time of
  the scopes themselves — Python between ops, module calls, hooks (the profiler's own cost is in
  every row: compare ``profiled total`` with the same call unprofiled: the thread's CPU time and the
  wall time; the machine is shared, and the profiler's times are wall times of the ops).

Workloads: (a) one InherLinear 576 → 1536 (SmolLM2's gate/up shape) at the rank that keeps 60 %
of the dense parameters with H = 2, on 1 × 128 tokens, 1 token, and a training step (forward +
backward) on 8 × 128 tokens; one InherConv2d of resnet56 (16 → 16 and 64 → 64, 3×3, rank 8, H = 3)
at batch 1 and 64 — each against the dense layer and the inference kernels of
``optimize_for_inference``; (b) resnet56 (``in_channels=1``, 28×28) and its InherNet (rank 8,
H = 3), as is and optimised, batch 1 and 64; a SmolLM2-shaped Llama (random weights unless
``--weights`` names a checkpoint folder; ``--llm-layers`` of its 30 blocks) inherited with
``budget=0.6, budget_scope="targets", heads=2`` and its heads diversified (``perturbed``: the gate
has to run, as after training), as is and optimised: forward 1 × 128 and 8 × 128, greedy
generation of 16 tokens, one training step (SGD) on 1 × 128 tokens. One thread.

    python benchmarks/bench_profile.py [--quick] [--llm-layers 30] [--weights random|FOLDER]
                                       [--out docs/benchmarks/profile.md]

``--quick``: tiny repeat counts and 2 blocks — a smoke test, the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import inhernet
from inhernet.layers import InherConv2d, InherLinear, profile_scopes
from inhernet.models import create_model
from inhernet.optimize import (FactorisedConv2d, GatedConv2d, GatedLinear, InOutLinear, SharedInputProjection,
                               as_trained, optimize_for_inference)

sys.path.insert(0, str(Path(__file__).parent))
from bench_optimize import build_llama, inherit_llama  # noqa: E402

CATEGORIES = ["down product", "up/head products", "gate", "softmax/mixing", "bias", "shared-input product",
              "copies / re-layouts", "BatchNorm", "dense Linear/Conv2d", "LM head", "attention core", "other ops",
              "backward", "optimizer step", "Python / framework"]
_STEP = {"inhernet.down": "down product", "inhernet.heads": "up/head products", "inhernet.gate": "gate",
         "inhernet.mix": "softmax/mixing", "inhernet.bias": "bias", "inhernet.shared_input": "shared-input product"}
_COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat")
_BN = ("aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm",
       "aten::_native_batch_norm_legit_no_training")
_KERNELS = (InherLinear, InherConv2d, GatedLinear, GatedConv2d, FactorisedConv2d, SharedInputProjection)


def _module_scope(name: str, module: nn.Module) -> str | None:
    """The scope a module's call is wrapped in (None: not wrapped)."""
    if name.endswith("lm_head"):
        return "module:lm_head"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "module:bn"
    if isinstance(module, (nn.Linear, nn.Conv2d, InOutLinear)):
        return "module:dense"
    if type(module).__name__.endswith("Attention"):
        return "module:attention"
    return None


def _is_pair(module: nn.Module) -> bool:
    return (type(module) is nn.Sequential and len(module) == 2
            and all(isinstance(m, (nn.Linear, InOutLinear)) for m in module))


def _wrap(module: nn.Module, scope: str, stack: list) -> list:
    """Forward hooks that open a profiler scope named ``scope`` around every call of ``module``."""
    def pre(m, args):
        rf = record_function(scope)
        rf.__enter__()
        stack.append(rf)

    def post(m, args, out):
        stack.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@contextlib.contextmanager
def module_scopes(model: nn.Module):
    """Wrap the calls of the model's dense layers, BatchNorms, attention modules and LM head in
    named profiler scopes (forward pre-hook opens, forward hook closes); the inherited layers and
    the inference kernels name their own steps, so nothing inside them is wrapped."""
    handles, stack = [], []
    inside = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        prefix = name + "." if name else ""  # the root's children have no leading dot
        if isinstance(module, _KERNELS):
            inside.append(prefix)
            continue
        if _is_pair(module):  # a folded linear pair: its two layers are the down and the up product
            inside.append(prefix)
            for part, scope in zip(module, ("inhernet.down", "inhernet.heads")):
                handles += _wrap(part, scope, stack)
            continue
        scope = _module_scope(name, module)
        if scope is None:
            continue
        if scope != "module:attention":
            inside.append(prefix)
        handles += _wrap(module, scope, stack)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _category(event) -> str:
    """The category of one profiler event's self time."""
    name = event.name
    if event.is_user_annotation or name.startswith(("inhernet.", "module:", "bench.")):
        return "optimizer step" if name.startswith("Optimizer.") else "Python / framework"
    scopes = []
    parent = event.cpu_parent
    while parent is not None:
        scopes.append(parent.name)
        parent = parent.cpu_parent
    if any(s.startswith("Optimizer.") for s in scopes):
        return "optimizer step"
    if name.startswith("autograd::engine") or any(s.startswith("autograd::engine") for s in scopes):
        return "backward"
    if name in _COPIES or any(s in _COPIES for s in scopes):
        return "copies / re-layouts"
    if name in _BN or any(s in _BN for s in scopes):
        return "BatchNorm"
    for s in scopes:
        if s in _STEP:
            if s == "inhernet.gate" and ("softmax" in name or any("softmax" in t for t in scopes[:scopes.index(s)])):
                return "softmax/mixing"
            return _STEP[s]
        if s == "module:lm_head":
            return "LM head"
        if s == "module:dense":
            return "dense Linear/Conv2d"
        if s == "module:bn":
            return "BatchNorm"
        if s == "module:attention":
            return "attention core"
    return "other ops"


def profile_call(fn, model: nn.Module | None, repeat: int) -> dict:
    """Categories of self CPU time (ms per call) of ``fn()`` run ``repeat`` times under the
    profiler, the profiled total, the unprofiled thread CPU time and wall time (medians of
    ``repeat`` calls) and the number of top-level ops per call."""
    fn()  # warm-up: allocations, oneDNN primitives
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    scopes = module_scopes(model) if model is not None else contextlib.nullcontext()
    with scopes, profile_scopes(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            with record_function("bench.call"):
                fn()
    totals: dict[str, float] = defaultdict(float)
    ops = 0
    for e in prof.events():
        totals[_category(e)] += e.self_cpu_time_total / 1e3 / repeat
        parent = e.cpu_parent
        if not e.is_user_annotation and parent is not None and (
                parent.is_user_annotation or parent.name.startswith(("inhernet.", "module:", "bench."))):
            ops += 1
    return {"ms": dict(totals), "total": sum(totals.values()), "wall": statistics.median(walls) * 1e3,
            "cpu": statistics.median(cpus) * 1e3, "ops": ops / repeat}


# ---------------------------------------------------------------------------------------------
# workloads


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def layer_workloads(args) -> list[tuple[str, dict[str, tuple]]]:
    """(title, {model name: (callable, module)}) of the single-layer profiles."""
    torch.manual_seed(0)
    out = []
    d_in, d_out, heads = 576, 1536, 2
    dense_params = d_in * d_out
    rank = int(0.6 * dense_params / (d_in + heads * d_out + heads))  # r·d_in + H·r·d_out + H·r + H ≈ 60 %
    dense = nn.Linear(d_in, d_out, bias=False).eval()
    layer = InherLinear(d_in, d_out, rank, heads, bias=False).eval()
    layer.requires_grad_(False)
    kernels = {"dense Linear": dense, "InherLinear (as is)": layer,
               "GatedLinear shared-weight": GatedLinear.from_layer(layer, "shared").eval(),
               "GatedLinear per-token": GatedLinear.from_layer(layer, "per-token").eval()}
    for tokens in (128, 1):
        x = torch.randn(1, tokens, d_in)
        calls = {k: (_no_grad(lambda m=m, x=x: m(x)), m) for k, m in kernels.items()}
        out.append((f"InherLinear {d_in} → {d_out}, rank {rank} (60 % of the dense parameters), H = {heads}, "
                    f"input 1 × {tokens} tokens", calls))
    train_layer = InherLinear(d_in, d_out, rank, heads, bias=False)
    train_dense = nn.Linear(d_in, d_out, bias=False)
    xt = torch.randn(args.train_batch, 128, d_in)

    def step(m):
        def run():
            m.zero_grad(set_to_none=True)
            m(xt).square().mean().backward()
        return run
    out.append((f"training step (forward + backward) of the same InherLinear, input {args.train_batch} × 128 tokens",
                {"dense Linear": (step(train_dense), train_dense), "InherLinear": (step(train_layer), train_layer)}))
    for c, size in ((16, 28), (64, 7)):
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
        inh = InherConv2d(c, c, 3, 8, 3, padding=1, bias=False).eval()
        down = nn.Conv2d(c, 8, 3, padding=1, bias=False)
        with torch.no_grad():
            down.weight.copy_(inh.down)
        conv_kernels = {"dense Conv2d": conv, "InherConv2d (as is)": inh,
                        "GatedConv2d per-sample": GatedConv2d(down, inh.gate, inh.up, None, mixing="per-sample").eval(),
                        "GatedConv2d shared-weight": GatedConv2d(down, inh.gate, inh.up, None, mixing="shared").eval()}
        for batch in args.batches:
            x = torch.randn(batch, c, size, size)
            out.append((f"InherConv2d {c} → {c}, 3×3, {size}×{size} (resnet56 stage {1 if c == 16 else 3}), rank 8, "
                        f"H = 3, batch {batch}",
                        {k: (_no_grad(lambda m=m, x=x: m(x)), m) for k, m in conv_kernels.items()}))
    return out


def cnn_workloads(args) -> list[tuple[str, dict[str, tuple]]]:
    torch.manual_seed(0)
    teacher = create_model("resnet56", num_classes=10, in_channels=1).eval()
    inh = inhernet.inherit(teacher, rank=8, heads=3, progress=False).eval()
    out = []
    for batch in args.batches:
        x = torch.randn(batch, 1, 28, 28)
        opt = optimize_for_inference(inh, x, rounds=args.opt_rounds)
        models = {"resnet56": teacher, "InherNet r8 H=3": inh, "InherNet, optimised": opt}
        out.append((f"resnet56 → InherNet (rank 8, H = 3), 1×28×28, batch {batch}",
                    {k: (_no_grad(lambda m=m, x=x: m(x)), m) for k, m in models.items()}))
    return out


def llm_workloads(args) -> list[tuple[str, dict[str, tuple]]]:
    teacher = build_llama(args.llm_layers, args.weights)
    inh = as_trained(inherit_llama(teacher, heads=2))
    ids = torch.randint(0, teacher.config.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    out = []
    for batch in (1, 8):
        x = ids[:batch]
        opt = optimize_for_inference(inh, {"input_ids": x}, rounds=args.opt_rounds)
        models = {"teacher": teacher, "InherNet H=2": inh, "InherNet, optimised": opt}
        calls = {k: (_no_grad(lambda m=m, x=x: m(input_ids=x)), m) for k, m in models.items()}
        out.append((f"forward {batch} × 128 tokens", calls))
        del opt
    prompt = ids[:1, :32]
    opt = optimize_for_inference(inh, {"input_ids": prompt[:, :1]}, rounds=args.opt_rounds)  # decode: one token

    def gen(m):
        return _no_grad(lambda: m.generate(prompt, do_sample=False, min_new_tokens=args.gen_tokens,
                                           max_new_tokens=args.gen_tokens))
    models = {"teacher": teacher, "InherNet H=2": inh, "InherNet, optimised (for 1 token)": opt}
    out.append((f"greedy generation of {args.gen_tokens} tokens from a 32-token prompt (KV cache)",
                {k: (gen(m), m) for k, m in models.items()}))

    def train(m):
        m = copy.deepcopy(m).train()
        m.requires_grad_(True)
        sgd = torch.optim.SGD(m.parameters(), lr=1e-4)

        def run():
            sgd.zero_grad(set_to_none=True)
            m(input_ids=ids[:1], labels=ids[:1]).loss.backward()
            sgd.step()
        return run, m
    out.append(("training step (forward, backward, SGD) on 1 × 128 tokens",
                {"teacher": train(teacher), "InherNet H=2": train(inh)}))
    return out


# ---------------------------------------------------------------------------------------------
# output


def table(results: dict[str, dict]) -> str:
    names = list(results)
    used = [c for c in CATEGORIES if any(r["ms"].get(c, 0.0) >= 0.0005 for r in results.values())]
    lines = ["| category | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in used:
        cells = []
        for n in names:
            v, tot = results[n]["ms"].get(c, 0.0), results[n]["total"]
            cells.append(f"{v:.3f} ({v / tot:.0%})" if v else "–")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| **profiled total** | " + " | ".join(f"**{results[n]['total']:.3f}**" for n in names) + " |")
    lines.append("| unprofiled: CPU time / wall | " + " | ".join(f"{results[n]['cpu']:.3f} / {results[n]['wall']:.3f}"
                                                            for n in names) + " |")
    lines.append("| top-level ops per call | " + " | ".join(f"{results[n]['ops']:.0f}" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 blocks, 1 repeat")
    parser.add_argument("--parts", nargs="+", default=["layers", "cnn", "llm"], choices=["layers", "cnn", "llm"])
    parser.add_argument("--llm-layers", type=int, default=30, help="blocks of the SmolLM2-shaped model (of 30)")
    parser.add_argument("--weights", default="random",
                        help="'random' or a save_pretrained folder of a SmolLM2-135M checkpoint")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--gen-tokens", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the single-layer training step")
    parser.add_argument("--repeat-layer", type=int, default=50, help="profiled calls per single-layer workload")
    parser.add_argument("--repeat-model", type=int, default=2, help="profiled calls per whole-model workload")
    parser.add_argument("--opt-rounds", type=int, default=3, help="timing rounds inside optimize_for_inference")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    args = parser.parse_args()
    if args.quick:
        args.llm_layers, args.repeat_layer, args.repeat_model, args.opt_rounds = 2, 2, 1, 1
        args.gen_tokens, args.train_batch = 4, 1
    torch.set_num_threads(args.threads)

    sections = []
    t_start = time.perf_counter()
    builders = {"layers": (layer_workloads, args.repeat_layer, "ms per call"),
                "cnn": (cnn_workloads, args.repeat_model, "ms per forward"),
                "llm": (llm_workloads, args.repeat_model, "ms per call")}
    for part in args.parts:
        build, repeat, unit = builders[part]
        for title, models in build(args):
            results = {name: profile_call(fn, m, repeat) for name, (fn, m) in models.items()}
            text = f"### {title}\n\nself CPU time, {unit} (share of the profiled total)\n\n{table(results)}\n"
            print(text, flush=True)
            sections.append(text)
    elapsed = time.perf_counter() - t_start
    command = "python benchmarks/bench_profile.py " + " ".join(sys.argv[1:])
    header = (f"torch {torch.__version__}, CPU, {args.threads} thread(s); SmolLM2-shaped model: {args.llm_layers} of "
              f"30 blocks, weights: {args.weights}; {args.repeat_layer} profiled calls per layer workload, "
              f"{args.repeat_model} per model workload; total run {elapsed:.0f} s.")
    print(header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Where the time goes: torch.profiler over InherNet layers and models\n\n"
                            f"Produced by `{command}`.\n\n{header}\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
