"""Deployment latency: the resnet56 → resnet20 models in PyTorch and exported to ONNX Runtime, CPU,
batch 1, one thread, measured side by side (interleaved rounds, median).

The models are the architectures of the Fashion-MNIST comparison (docs/benchmarks/
fmnist_resnet56_resnet20): the teacher resnet56, the student resnet20, and the teacher inherited as
InherNet-Small (rank 8), InherNet-Large (rank 16), its w.o.-gate ablation (fixed 1/H weights: the
heads fold into one 1×1 conv) and at the student's parameter count (spectral budget), all H = 3. Latency does not depend on the weights' values, so the script builds them
untrained and needs no data or cached runs. Every export is checked against PyTorch before it is
timed (``inhernet.export_onnx``).

    python benchmarks/bench_onnx.py --out docs/benchmarks/onnx.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

import inhernet
from inhernet.export import OnnxModule
from inhernet.models import create_model
from inhernet.train import measure_latency

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/onnx.md")
    p.add_argument("--input-shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=20)
    return p.parse_args(argv)


def build_models(in_channels: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("resnet56", num_classes=10, in_channels=in_channels).eval()
    student = create_model("resnet20", num_classes=10, in_channels=in_channels).eval()
    inherit = dict(heads=3, progress=False)
    return {
        "teacher resnet56": teacher,
        "student resnet20": student,
        "InherNet-Small (rank 8)": inhernet.inherit(teacher, rank=8, **inherit),
        "InherNet-Large (rank 16)": inhernet.inherit(teacher, rank=16, **inherit),
        "InherNet-Large w.o. gate": inhernet.inherit(teacher, rank=16, gate="none", **inherit),
        "InherNet at the student's size": inhernet.inherit(teacher, budget=student, **inherit),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    shape = (args.batch, *args.input_shape)
    models = build_models(args.input_shape[0])
    runners: dict[str, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(models.items()):
            res = inhernet.export_onnx(model.eval(), Path(tmp) / f"{i}.onnx", torch.randn(*shape))
            print(f"exported {name}: {res['bytes'] / 2**20:.2f} MiB, matches PyTorch to {res['max_abs_diff']:.1g}",
                  flush=True)
            runners[f"{name} | PyTorch"] = model
            runners[f"{name} | ONNX Runtime"] = OnnxModule(res["path"], threads=1)
        with torch.inference_mode():
            lat = measure_latency(runners, shape, rounds=args.rounds, iters=args.iters, threads=1)
    teacher_ort = lat["teacher resnet56 | ONNX Runtime"]["ms_per_image"]
    lines = [
        "# Deployment latency: PyTorch vs ONNX Runtime (CPU, batch %d, one thread)" % args.batch, "",
        "```bash", "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]), "```", "",
        f"Input {args.batch}×{'×'.join(map(str, args.input_shape))}; median over {args.rounds} interleaved rounds of "
        f"{args.iters} forwards per model; torch {torch.__version__}. Every ONNX file was checked against PyTorch "
        "(`inhernet.export_onnx`) before timing.", "",
        "| model | params | FLOPs / image | PyTorch ms / image | ONNX Runtime ms / image | ORT over PyTorch | speed-up over the teacher (both in ORT) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, model in models.items():
        pt, ox = lat[f"{name} | PyTorch"]["ms_per_image"], lat[f"{name} | ONNX Runtime"]["ms_per_image"]
        flops = inhernet.count_flops(model, (1, *args.input_shape))
        lines.append(f"| {name} | {inhernet.count_parameters(model):,} | {flops:,} | {pt:.3f} | {ox:.3f} "
                     f"| {pt / ox:.2f}× | {teacher_ort / ox:.2f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
