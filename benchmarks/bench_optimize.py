"""InherNets before and after ``optimize_for_inference`` against their teachers, on CPU, side by side.

Issue 13 ("Faster than the teacher"). Two parts, each measured in one process with interleaved
rounds (each round: ``--iters`` calls of every model in turn, the order reversed every other round);
a model's time is its median over rounds, and its speed relative to the teacher is the median over
rounds of the per-round ratio teacher time / model time (> 1: faster than the teacher), so slow and
fast phases of other work on the machine cancel. One thread by default.

``--parts cnn``: resnet56 → InherNet (rank 8, ``--heads``), at every ``--batches`` size:

* ``teacher``: resnet56 as built (BatchNorm modules in the graph);
* ``teacher, BN folded``: ``optimize_for_inference(teacher)`` — its BatchNorm folded into the convs
  (and the faster memory layout): the fair baseline;
* ``resnet20`` and ``resnet20, BN folded``: the dense network of about the InherNet's FLOPs;
* ``InherNet H=…``: ``inherit(teacher, rank=8, heads=H)``, eager, then after
  ``optimize_for_inference`` (an untrained model: its heads fold exactly — identical copies, or with
  the default ``head_init="perturbed"`` a zero gate, a constant), and the same with ``(heads differ)``
  (``inhernet.optimize.as_trained``: heads that differ and a gate that reads its input, as after
  training; the per-image gate runs, so the gated conv kernels are timed);
* with ``--floor``: ``InherNet … (heads differ), down convs only (floor)`` — the optimised model
  whose heads differ with every inherited layer cut down to its k×k down conv (its output replaced
  by zeros of the layer's output shape: no up product, gate, mixing or bias). It computes nothing
  useful; it is the time *any* implementation of the heads would need at best with this library's
  down convs, so ``teacher / floor`` bounds the speed-up reachable on this machine;
* with ``--compile``: the optimised InherNets under ``torch.compile``, and the BN-folded teacher and
  resnet20 compiled the same way (the fair baselines for a compiled model); in the LLM part the
  optimised teacher and the optimised InherNet whose heads differ, compiled, in the forwards
  (``optimize_for_inference(compile=True)`` for the full LM, the optimised decoder under
  ``torch.compile`` for the blocks alone, both with the product's inductor options,
  ``inhernet.optimize.COMPILE_OPTIONS``; since session 13 the C++ wrapper on CPU).
* with ``--aot`` (CNN part): every optimised model also compiled ahead of time
  (``optimize_for_inference(compile="aot")``: ``torch.export`` + AOTInductor into a package, no
  Python per call), rows ``… + AOT``.

``--parts llm``: a SmolLM2-135M-shaped Llama (hidden 576, intermediate 1536, 9 heads / 3 KV heads,
vocabulary 49152, ``--llm-layers`` of 30 blocks; random weights, or a ``save_pretrained`` folder
with ``--weights``) inherited with ``budget=0.6, budget_scope="targets", heads=2`` (60 % of the
block parameters):

* ``teacher`` and ``teacher, optimised`` (its own q/k/v and gate/up products fused where faster);
* ``InherNet (heads as inherited)``: SVD-initialised heads that are identical copies, or differ
  under a zero gate (the default ``head_init="perturbed"``), so the gate does not matter and
  ``optimize_for_inference`` folds them exactly (an untrained model);
* ``InherNet (heads differ)``: the same through ``inhernet.optimize.as_trained`` — the gate must run,
  as after fine-tuning: what the gated kernels are for;

each eager and optimised *for the workload's shape* (1 × 128 and 8 × 128 tokens for the forwards,
one token for generation: the decoding steps). Workloads: forward of the decoder blocks (the
base model, no LM head — what the 60 % applies to) on 1 × 128 and 8 × 128 tokens, the full causal
LM on 1 × 128 (the LM head, 28 M multiply-adds per token, is not compressed), and greedy
``generate`` of ``--gen-tokens`` tokens from a 32-token prompt with the KV cache.

    python benchmarks/bench_optimize.py [--parts cnn llm] [--threads 1] [--batches 1 64] [--rounds 7]
                                        [--llm-layers 30] [--weights random|FOLDER] [--out docs/benchmarks/optimize.md]

A quick check that the script works: ``--quick`` (2 blocks, 2 rounds; the numbers are then
meaningless). The weights of the InherNets are those of the SVD initialisation; speed does not
depend on trained values, only on whether the heads differ.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch._dynamo
from torch import nn

import inhernet
from inhernet.layers import InherConv2d
from inhernet.models import create_model
from inhernet.optimize import COMPILE_OPTIONS, FactorisedConv2d, GatedConv2d, as_trained

TEACHER = "teacher"
TEACHER_FOLDED = "teacher, BN folded"
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
               vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5)


# ---------------------------------------------------------------------------------------------
# models


def build_llama(layers: int = 30, weights: str = "random") -> nn.Module:
    """A SmolLM2-135M-shaped ``LlamaForCausalLM`` in eval mode with its first ``layers`` blocks:
    random weights (seed 0), or those of the ``save_pretrained`` folder ``weights``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if weights == "random":
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **SMOLLM2)).eval()
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = len(model.model.layers)
    return model


def inherit_llama(teacher: nn.Module, heads: int = 2, fraction: float = 0.6) -> nn.Module:
    """``inherit(teacher, budget=fraction, budget_scope="targets", heads=heads)`` in eval mode."""
    return inhernet.inherit(teacher, budget=fraction, budget_scope="targets", heads=heads, progress=False).eval()


def interleaved(calls: dict[str, callable], rounds: int, iters: int, reference: str,
                also: str | None = None) -> dict[str, dict]:
    """Per call: the median over interleaved rounds of this thread's CPU time (``"s"``) and of the
    wall time (``"wall_s"``), and the median per-round ratios ``reference`` time / model time
    (``"ratio"``, ``"wall_ratio"``; against ``also`` too: ``"ratio_also"``, CPU time)."""
    names = list(calls)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for fn in calls.values():  # warm-up: allocations, oneDNN primitives
            fn()
        for r in range(rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(iters):
                    calls[n]()
                cpu[n].append((time.thread_time() - c0) / iters)
                wall[n].append((time.perf_counter() - t0) / iters)

    def ratio(times: dict[str, list[float]], ref: str, n: str) -> float:
        return statistics.median(a / b for a, b in zip(times[ref], times[n]))

    return {n: {"s": statistics.median(cpu[n]), "ratio": ratio(cpu, reference, n),
                "wall_s": statistics.median(wall[n]), "wall_ratio": ratio(wall, reference, n),
                **({"ratio_also": ratio(cpu, also, n)} if also else {})} for n in names}


def product_compile_options() -> dict:
    """The TorchInductor options ``optimize_for_inference(compile=True)`` uses on the CPU, for the
    models this script compiles itself (a decoder alone, a forward generating from a static cache)."""
    return dict(COMPILE_OPTIONS.get("cpu", {}))


def optimised(model: nn.Module, example, summaries: dict, name: str, args, **extra) -> nn.Module:
    t0 = time.perf_counter()
    out = inhernet.optimize_for_inference(model, example, rounds=args.opt_rounds, **extra)
    report = out.inhernet_optimized
    summaries[name] = f"{report.summary()}\n{kernel_check(report)}\n(optimised in {time.perf_counter() - t0:.1f} s)"
    return out


def kernel_check(report) -> str:
    """How the kept kernels compare with the dense layer of the same shape (timed by
    ``optimize_for_inference`` side by side): the target is ≤ 1.05× dense for every layer."""
    ratios = []
    for d in report.layers:
        dense = d.times_ms.get("dense (reference)", d.times_ms.get("dense"))
        if d.chosen and dense and d.chosen in d.times_ms:
            ratios.append((d.times_ms[d.chosen] / dense, d.name, d.became))
    if not ratios:
        return "no inherited layer was timed against its dense layer"
    slow = [r for r in ratios if r[0] > 1.05]
    worst = max(ratios)
    text = (f"kept kernel / dense layer time: median {statistics.median(r[0] for r in ratios):.2f}×, worst "
            f"{worst[0]:.2f}× ({worst[1]}, {worst[2]}); {len(slow)} of {len(ratios)} layers above 1.05×")
    if slow:
        text += " (" + ", ".join(sorted({r[2] for r in slow})) + ")"
    return text


# ---------------------------------------------------------------------------------------------
# the CNN part


class DownOnly(nn.Module):
    """An inherited conv's k×k down conv alone, returning zeros of the layer's output shape: the
    floor of any implementation of the rest (``--floor``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if isinstance(layer, InherConv2d):
            self.weight = layer.down
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        else:  # GatedConv2d / FactorisedConv2d: their down conv is an nn.Conv2d
            conv = layer.down
            self.weight, self.stride, self.padding, self.dilation = (conv.weight, conv.stride, conv.padding,
                                                                     conv.dilation)
        self.out_channels = layer.out_channels if hasattr(layer, "out_channels") else layer.up.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        return z.new_zeros(z.shape[0], self.out_channels, *z.shape[2:]).contiguous(
            memory_format=torch.channels_last if z.is_contiguous(memory_format=torch.channels_last)
            and not z.is_contiguous() else torch.contiguous_format)


def down_convs_only(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every inherited conv (any inference form) replaced by :class:`DownOnly`."""
    floor = copy.deepcopy(model)
    kinds = (InherConv2d, GatedConv2d, FactorisedConv2d)
    for name, module in list(floor.named_modules()):
        if name and isinstance(module, kinds):
            parent, _, leaf = name.rpartition(".")
            setattr(floor.get_submodule(parent) if parent else floor, leaf, DownOnly(module))
    return floor


def build_cnn_models(batch: int, args: argparse.Namespace) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The models for one batch size (the optimised ones optimised for it) and, per optimised
    model, the summary of what ``optimize_for_inference`` did."""
    shape = (batch, args.in_channels, args.size, args.size)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    teacher = create_model("resnet56", num_classes=args.num_classes, in_channels=args.in_channels).eval()
    small = create_model("resnet20", num_classes=args.num_classes, in_channels=args.in_channels).eval()
    models: dict[str, nn.Module] = {TEACHER: teacher}
    summaries: dict[str, str] = {}
    # --compile / --aot: every optimised model also compiled that way (the teacher and resnet20 so
    # compiled are the fair baselines of a compiled InherNet)
    modes = [(" + compiled", True)] * bool(args.compile) + [(" + AOT", "aot")] * bool(args.aot)

    def add(name: str, model: nn.Module) -> None:
        models[name] = optimised(model, example, summaries, name, args)
        for suffix, mode in modes:
            models[name + suffix] = optimised(model, example, summaries, name + suffix, args, compile=mode)

    add(TEACHER_FOLDED, teacher)
    models["resnet20"] = small
    add("resnet20, BN folded", small)
    for heads in args.heads:
        inh = inhernet.inherit(teacher, rank=args.rank, heads=heads, progress=False).eval()
        # as inherited (identical heads: they fold exactly) and with heads that differ (a trained
        # model: the per-image gate must run, so the gated kernels are what is timed)
        variants = [(f"InherNet r{args.rank} H={heads}", inh)]
        if heads > 1:
            variants.append((f"InherNet r{args.rank} H={heads} (heads differ)", as_trained(inh)))
        for base, model in variants:
            models[base] = model
            add(f"{base}, optimised", model)
        if args.floor and heads > 1:
            models[f"{variants[-1][0]}, down convs only (floor)"] = down_convs_only(
                models[f"{variants[-1][0]}, optimised"])
    return models, summaries


def cnn_part(args: argparse.Namespace) -> tuple[str, str]:
    results: dict[int, dict[str, dict]] = {}
    summaries: dict[int, dict[str, str]] = {}
    flops: dict[str, float] = {}
    params: dict[str, int] = {}
    for batch in args.batches:
        models, summaries[batch] = build_cnn_models(batch, args)
        for name, m in models.items():
            if name not in flops and not name.endswith((" + compiled", " + AOT")):
                flops[name] = inhernet.count_flops(m, (1, args.in_channels, args.size, args.size)) / 1e6
                params[name] = inhernet.count_parameters(m)
        x = torch.randn(batch, args.in_channels, args.size, args.size)
        calls = {n: (lambda m=m: m(x)) for n, m in models.items()}
        results[batch] = interleaved(calls, args.rounds, args.iters, TEACHER, also=TEACHER_FOLDED)
        print(f"cnn batch {batch}: done", file=sys.stderr, flush=True)

    names = list(results[args.batches[0]])
    head = "| model | params | MFLOPs/img | " + " | ".join(
        f"b={b} ms/img | b={b} × teacher | b={b} × teacher BN-folded | b={b} × teacher (wall)"
        for b in args.batches) + " |"
    lines = [
        f"resnet56 → InherNet, input {args.in_channels}×{args.size}×{args.size}, {args.num_classes} classes; "
        f"{args.rounds} interleaved rounds × {args.iters} forwards per model. ms/img: median over rounds of the "
        "benchmark thread's CPU time; × teacher: median over rounds of (teacher time / model time) in the same round "
        "(> 1 = faster than the teacher); the last column is the same ratio in wall time.",
        "",
        head,
        "|" + "---|" * (3 + 4 * len(args.batches)),
    ]
    for n in names:
        cells = [n, f"{params[n]:,}" if n in params else "", f"{flops[n]:.1f}" if n in flops else ""]
        for b in args.batches:
            r = results[b][n]
            cells += [f"{r['s'] * 1e3 / b:.3f}", f"{r['ratio']:.2f}×", f"{r['ratio_also']:.2f}×",
                      f"{r['wall_ratio']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    details = []
    for b in args.batches:
        for name, text in summaries[b].items():
            details += [f"**{name}, batch {b}**", "", "```", text, "```", ""]
    return "\n".join(lines), "\n".join(details)


# ---------------------------------------------------------------------------------------------
# the LLM part


def llm_part(args: argparse.Namespace) -> tuple[str, str]:
    teacher = build_llama(args.llm_layers, args.weights)
    t0 = time.perf_counter()
    copies = inherit_llama(teacher, heads=2)
    print(f"inherited in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    differ = as_trained(copies)
    vocab = teacher.config.vocab_size
    ids = torch.randint(0, vocab, (8, 128), generator=torch.Generator().manual_seed(0))
    prompt = ids[:1, :32]
    bases = {TEACHER: teacher, "InherNet (heads as inherited)": copies, "InherNet (heads differ)": differ}
    block_params = {n: sum(p.numel() for p in m.model.layers.parameters()) for n, m in bases.items()}

    def fwd_blocks(x):
        return lambda m: (lambda: m.model(input_ids=x))

    def fwd_full(x):
        return lambda m: (lambda: m(input_ids=x))

    def generate(m):
        extra = getattr(m, "generate_kwargs", {})
        return lambda: m.generate(prompt, do_sample=False, min_new_tokens=args.gen_tokens,
                                  max_new_tokens=args.gen_tokens, **extra)

    def compiled_generator(model: nn.Module) -> nn.Module:
        """A copy of ``model`` whose forward is compiled (with the inductor options
        ``optimize_for_inference(compile=True)`` uses on this device), generating with a static KV
        cache (the Hugging Face recipe for a compiled ``generate``: one decoding shape, no recompiles)."""
        out = copy.deepcopy(model)
        out.forward = torch.compile(out.forward, dynamic=False, options=product_compile_options())
        out.generate_kwargs = {"cache_implementation": "static"}
        return out

    every = {  # id: (title, example the optimised models are built for, call maker, rounds)
        "fwd1-blocks": ("forward 1 × 128, blocks", {"input_ids": ids[:1]}, fwd_blocks(ids[:1]), args.rounds),
        "fwd1-full": ("forward 1 × 128, full LM", {"input_ids": ids[:1]}, fwd_full(ids[:1]), args.rounds),
        "fwd8-blocks": ("forward 8 × 128, blocks", {"input_ids": ids}, fwd_blocks(ids), max(3, args.rounds // 2)),
        "generate": (f"generate {args.gen_tokens} tokens (greedy, KV cache)", {"input_ids": prompt[:, :1]}, generate,
                     args.rounds),
    }
    workloads = [every[k] for k in args.llm_workloads]
    compiled_bases = (TEACHER, "InherNet (heads differ)")  # --compile: the fair pair, in the forwards
    results: dict[str, dict[str, dict]] = {}
    summaries: dict[str, str] = {}
    opt_cache: dict[tuple, nn.Module] = {}
    for title, example, make, rounds in workloads:
        key = tuple(example["input_ids"].shape)
        models: dict[str, nn.Module] = {}
        for name, base in bases.items():
            models[name] = base
            oname = f"{name}, optimised"
            if (oname, key) not in opt_cache:
                opt_cache = {k: v for k, v in opt_cache.items() if k[1] == key}  # free other shapes' models
                gc.collect()
                label = f"{oname} (for {key[0]} × {key[1]})"
                opt_cache[(oname, key)] = optimised(base, example, summaries, label, args)
            models[oname] = opt_cache[(oname, key)]
        if args.compile:
            for name in compiled_bases:
                cname = f"{name}, optimised + compiled"
                if title.startswith("generate"):
                    models[cname + " (static cache)"] = compiled_generator(models[f"{name}, optimised"])
                elif title.endswith("full LM"):
                    models[cname] = optimised(bases[name], example, summaries, f"{cname} (for {key[0]} × {key[1]})",
                                              args, compile=True)
                else:  # the blocks alone: the optimised model's decoder under torch.compile
                    models[cname] = SimpleNamespace(model=torch.compile(models[f"{name}, optimised"].model,
                                                                        options=product_compile_options()))
        if title.startswith("generate"):  # the optimised models must generate what the originals do
            with torch.no_grad():
                for name in bases:
                    same = torch.equal(models[name].generate(prompt, do_sample=False, max_new_tokens=8),
                                       models[f"{name}, optimised"].generate(prompt, do_sample=False, max_new_tokens=8))
                    summaries[f"{name}, optimised (for 1 × 1)"] += f"\ngreedy generate equals the original's: {same}"
                for name in compiled_bases if args.compile else ():
                    cname = f"{name}, optimised + compiled (static cache)"
                    same = torch.equal(make(models[name])(), make(models[cname])())
                    summaries[cname] = f"greedy generate ({args.gen_tokens} tokens) equals the original's: {same}"
        results[title] = interleaved({n: make(m) for n, m in models.items()}, rounds, 1, TEACHER)
        print(f"llm {title}: done", file=sys.stderr, flush=True)

    titles = [w[0] for w in workloads]
    lines = [
        f"SmolLM2-135M-shaped Llama, {args.llm_layers} of 30 blocks, weights: {args.weights}; InherNets: "
        "`inherit(teacher, budget=0.6, budget_scope=\"targets\", heads=2)`. Block parameters: "
        + ", ".join(f"{n} {block_params[n] / 1e6:.1f} M ({block_params[n] / block_params[TEACHER]:.0%})" for n in bases)
        + ". Each cell: median CPU ms per call (the benchmark thread's `time.thread_time`) over interleaved rounds, "
        "and × teacher = the median per-round ratio teacher time / model time (> 1 = faster).",
        "",
        "| model | " + " | ".join(titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    names = list(dict.fromkeys(n for t in titles for n in results[t]))
    for n in names:
        cells = [f"{results[t][n]['s'] * 1e3:.1f} ms, **{results[t][n]['ratio']:.2f}×**" if n in results[t] else "–"
                 for t in titles]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "The same rounds in wall time (other processes' share of the core included):", "",
              "| model | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for n in names:
        cells = [f"{results[t][n]['wall_s'] * 1e3:.1f} ms, {results[t][n]['wall_ratio']:.2f}×" if n in results[t]
                 else "–" for t in titles]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    details = []
    for name, text in summaries.items():
        details += [f"**{name}**", "", "```", text, "```", ""]
    return "\n".join(lines), "\n".join(details)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["cnn", "llm"], choices=["cnn", "llm"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--heads", type=int, nargs="+", default=[3])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are reported")
    parser.add_argument("--iters", type=int, default=5, help="CNN forwards per model per round")
    parser.add_argument("--opt-rounds", type=int, default=5, help="timing rounds inside optimize_for_inference")
    parser.add_argument("--compile", action="store_true", help="also time the optimised InherNets under torch.compile")
    parser.add_argument("--aot", action="store_true",
                        help="CNN part: also time every optimised model compiled ahead of time (compile='aot')")
    parser.add_argument("--floor", action="store_true",
                        help="also time the optimised InherNet with heads that differ cut down to its down convs")
    parser.add_argument("--size", type=int, default=32, help="image height and width (CIFAR: 32)")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--llm-layers", type=int, default=30, help="blocks of the SmolLM2-shaped model (of 30)")
    parser.add_argument("--weights", default="random", help="'random' or a save_pretrained folder (SmolLM2-135M)")
    parser.add_argument("--gen-tokens", type=int, default=16)
    parser.add_argument("--llm-workloads", nargs="+", default=["fwd1-blocks", "fwd1-full", "fwd8-blocks", "generate"],
                        choices=["fwd1-blocks", "fwd1-full", "fwd8-blocks", "generate"],
                        help="which LLM timings to run (--compile adds compiled rows to the full-LM forwards)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 blocks, 2 rounds, tiny counts")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    args = parser.parse_args()
    if args.quick:
        args.llm_layers, args.rounds, args.iters, args.opt_rounds, args.gen_tokens = 2, 2, 1, 1, 4
    torch.set_num_threads(args.threads)
    # this process compiles many models of one class (teachers, students, InherNets, per batch size),
    # each taking one of Dynamo's per-function cache entries: past the limit (8) it would run them eager
    torch._dynamo.config.recompile_limit = 64

    t0 = time.perf_counter()
    sections = []
    parts = {"cnn": ("resnet56 → InherNet", cnn_part), "llm": ("SmolLM2-shaped Llama → InherNet", llm_part)}
    for part in args.parts:
        title, run = parts[part]
        table, details = run(args)
        print(f"## {title}\n\n{table}\n", flush=True)
        print(details, flush=True)
        sections.append((title, table, details))
    elapsed = time.perf_counter() - t0
    header = (f"torch {torch.__version__}, CPU, {args.threads} thread(s) (`torch.set_num_threads`); total run "
              f"{elapsed / 60:.1f} min.")
    print(header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_optimize.py " + " ".join(sys.argv[1:])
        body = "\n".join(f"## {t}\n\n{tab}\n\n### What optimize_for_inference did\n\n{det}" for t, tab, det in sections)
        args.out.write_text(f"# optimize_for_inference: InherNets against their teachers on CPU\n\n"
                            f"Produced by `{command}`.\n\n{header}\n\n{body}")


if __name__ == "__main__":
    main()
