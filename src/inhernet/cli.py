"""The ``inhernet`` command line.

    inhernet train-teacher --arch resnet56 --data fashion_mnist --epochs 10 --out runs/teacher
    inhernet inherit runs/teacher --rank 8 --heads 3 --out runs/inh_r8
    inhernet finetune runs/inh_r8 --data fashion_mnist --epochs 10 --teacher runs/teacher --loss kd --out runs/inh_r8_ft
    inhernet evaluate runs/inh_r8_ft --data fashion_mnist --latency
    inhernet compare configs/demo.yaml
    inhernet report runs/demo

Run ``inhernet <command> --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from inhernet.errors import ConfigError, InherNetError

__all__ = ["main", "build_parser"]

EPILOG = """examples:
  inhernet train-teacher --arch resnet56 --data fashion_mnist --subset 5000 --epochs 10 --out runs/teacher
  inhernet inherit runs/teacher --rank 8 --heads 3 --out runs/inh_r8
  inhernet inherit runs/teacher --budget resnet20 --out runs/inh_as_rn20   # as many params as a resnet20
  inhernet finetune runs/inh_r8 --data fashion_mnist --epochs 10 --teacher runs/teacher --loss kd --out runs/ft
  inhernet evaluate runs/ft --data fashion_mnist --latency
  inhernet export runs/ft --input-shape 1 28 28 --out runs/ft.onnx   # checked with ONNX Runtime
  inhernet compare configs/demo.yaml            # resumable; --force retrains
  # your own model (an import path) and data (.npz, or an image folder with a sub-folder per class):
  inhernet train-teacher --arch mymodels:make_cnn --data optdigits.npz --epochs 10 --out runs/my_teacher
  inhernet report runs/demo                      # rebuild table and plots
  # several processes / machines (PyTorch DDP through Lightning):
  inhernet compare configs/demo.yaml --devices 2 --strategy ddp
"""


# --------------------------------------------------------------------------------------------- args
def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="NAME",
                   help="data set: fashion_mnist, mnist, digits, cifar10, cifar100, or your own: a .npz file "
                        "(x_train, y_train, x_test, y_test; or x, y) or an image folder (one sub-folder per class, "
                        "optionally inside train/ and test/)")
    g.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder with the data files (CIFAR: required; your own data: what a relative --data is "
                        "relative to)")
    g.add_argument("--subset", type=int, default=None, help="use this many training images (stratified)")
    g.add_argument("--test-subset", type=int, default=None, help="use this many test images (stratified)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of the training set held out (default 0.1)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the split and subsets (default 0)")


def _add_train_args(p: argparse.ArgumentParser, epochs: int = 10) -> None:
    g = p.add_argument_group("schedule (the paper's recipe, milestones 150/180/210 of 240 scaled)")
    g.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    g.add_argument("--batch-size", type=int, default=64, help="batch size per process (default 64)")
    g.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--milestones", type=int, nargs="*", default=None, help="lr x0.1 epochs (default: scaled)")
    g.add_argument("--augment", default="default", choices=["default", "none", "crop_flip", "crop", "flip"],
                   help="training augmentation (default: the data set's own)")
    g.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    g = p.add_argument_group("an OUT that already holds a run (its settings are in OUT/run.json)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--resume", action="store_true",
                   help="continue the run in OUT; refused if it was made with other settings (the default: a run "
                        "with the same settings is resumed, or skipped when finished; other settings are an error)")
    r.add_argument("--force", action="store_true",
                   help="delete the run in OUT (checkpoint, metrics, model, run.json) and train again")
    r.add_argument("--no-resume", dest="force", action="store_true", help="the same as --force")
    _add_dist_args(p)


def _add_dist_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("devices / distributed (Lightning)")
    g.add_argument("--accelerator", default=None, help="cpu, gpu, auto (default cpu)")
    g.add_argument("--devices", default=None, help="processes / devices per node: an int or 'auto' (default 1)")
    g.add_argument("--num-nodes", type=int, default=None, help="machines (default 1)")
    g.add_argument("--strategy", default=None,
                   help="auto, ddp (re-launches this command per device), ddp_spawn, fsdp (Hugging Face models: "
                        "FSDP2 sharding the transformer blocks, CPUs too; re-launches like ddp) (default auto)")
    g.add_argument("--threads", type=int, default=None, help="torch threads per process")
    g.add_argument("--progress", default=None, choices=["tqdm", "rich", "log", "none"],
                   help="progress bar (default tqdm); log: one line per epoch (or per evaluation), for a log file")
    g.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the model's training steps; MODE: default (when left out), reduce-overhead "
                        "(CUDA graphs, GPUs only), max-autotune, max-autotune-no-cudagraphs. The first steps "
                        "compile (slow); checkpoints and saved models are the plain model's")


def _devices(v: Optional[str]) -> Any:
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return v


def _dist_kwargs(a: argparse.Namespace) -> dict:
    prog = {"tqdm": True, "rich": "rich", "log": "log", "none": False, None: True}[a.progress]
    return dict(accelerator=a.accelerator or "cpu", devices=_devices(a.devices) or 1, num_nodes=a.num_nodes or 1,
                strategy=a.strategy or "auto", compile=a.compile, progress=prog)


def _add_inherit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inheritance (InheritConfig; give at most one of --rank/--rank-fraction/--energy/--budget)")
    g.add_argument("--rank", type=int, default=None, help="one rank for every factorised layer (paper; default 8)")
    g.add_argument("--heads", type=int, default=None,
                   help="gated up-projection heads H (default 1: plain low rank, which no gated variant has beaten "
                        "at equal size here; 3 = the paper's)")
    g.add_argument("--rank-fraction", type=float, default=None, help="rank = this fraction of each layer's full rank")
    g.add_argument("--energy", type=float, default=None, help="smallest rank keeping this spectrum energy per layer")
    g.add_argument("--budget", default=None,
                   help="parameter budget: an int count, a float fraction of the teacher, or a model name "
                        "(as many parameters as that model, e.g. resnet20)")
    g.add_argument("--budget-mode", default="spectral", choices=["spectral", "uniform"])
    g.add_argument("--budget-scope", default="model", choices=["model", "targets"],
                   help="what --budget counts: the whole network (default) or only the selected layers (the "
                        "LLM-compression convention: --budget 0.6 --budget-scope targets keeps 60%% of the "
                        "targeted projections' parameters)")
    g.add_argument("--budget-metric", default="params", choices=["params", "latency"],
                   help="what --budget is measured in: parameters (default), or latency on this machine: "
                        "--budget 0.5 --budget-metric latency --latency-input 64,3,32,32 = half the teacher's "
                        "measured time at that input shape (the layer timings are cached)")
    g.add_argument("--latency-input", default=None, metavar="SHAPE", type=_shape,
                   help="the input shape a latency budget is timed on, batch included, e.g. 64,3,32,32")
    g.add_argument("--latency-cache", default=None, metavar="DIR",
                   help="where latency tables are kept (default ~/.cache/inhernet/latency)")
    g.add_argument("--latency-form", default="inherited", choices=["inherited", "optimized"],
                   help="what a latency budget times: each layer as inherited (default, the training form) or "
                        "as optimize_for_inference / inhernet export runs it once trained")
    g.add_argument("--rank-multiple", type=int, default=1)
    g.add_argument("--head-scale", default="exact", choices=["exact", "paper"])
    g.add_argument("--init", default="svd", choices=["svd", "whitened", "random"],
                   help="random = the w.o.-SVD ablation; whitened = activation-aware SVD on --calibration text "
                        "(Hugging Face checkpoints; the teacher is loaded into memory)")
    g.add_argument("--gate", default="softmax", choices=["softmax", "none"], help="none = the w.o.-gate ablation")
    g.add_argument("--head-init", default=None, metavar="MODE",
                   help="how the heads start (H > 1): perturbed (default: zero-sum deviations, zero gate), copies (the paper's), split; see InheritConfig")
    g.add_argument("--structure", default="asymmetric", choices=["asymmetric", "symmetric"])
    g.add_argument("--svd", default="exact", choices=["exact", "randomized"])
    g.add_argument("--inherit-seed", type=int, default=0, help="seed of the gate / random init (default 0)")


#: the image-model defaults of the finetune options the Hugging Face path defaults otherwise
FINETUNE_IMAGE_DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4}
FINETUNE_HF_DEFAULTS = {"batch_size": 8, "lr": 5e-5, "weight_decay": 0.01, "temperature": 2.0}


def _add_hf_finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Hugging Face models (MODEL holds config.json): --batch-size defaults to 8, --lr to 5e-5 (AdamW), "
        "--weight-decay to 0.01; --seed seeds the training, --data-seed the held-out / validation split")
    g.add_argument("--text", action="append", default=None, metavar="FILE",
                   help="causal LM: train on this text (repeatable): a .txt file (documents separated by an empty "
                        "line), .jsonl / .csv, or glosses, fortunes, wikitext2 (packaged)")
    g.add_argument("--seq-len", type=int, default=128, help="causal LM: tokens per training block (default 128)")
    g.add_argument("--held-out", type=float, default=0.1,
                   help="causal LM: share of the documents held out for the perplexity (default 0.1)")
    g.add_argument("--max-train-blocks", type=int, default=None, help="causal LM: use at most this many blocks")
    g.add_argument("--text-column", default="text", help="classification (--data FILE): the text column")
    g.add_argument("--label-column", default="label", help="classification: the label column")
    g.add_argument("--text-pair-column", default=None, help="classification: the second text of sentence pairs")
    g.add_argument("--max-length", type=int, default=128, help="classification: tokens per example (default 128)")
    g.add_argument("--max-steps", type=int, default=None, help="optimiser steps to train (required)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    g.add_argument("--schedule", default="cosine", help="lr after the warm-up: cosine (default), linear, constant")
    g.add_argument("--warmup", type=_number, default=0.05,
                   help="warm-up: steps (an int) or a fraction of --max-steps (a float < 1; default 0.05)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default 1; 0: none)")
    g.add_argument("--precision", default=None, help="bf16-mixed (also on a CPU) or 32-true (default)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    g.add_argument("--kd-alpha", type=float, default=None,
                   help="with --teacher: loss = (1-a) * task + a * T^2 * KL(teacher || student) (default 0.5)")
    g.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: at the end)")
    g.add_argument("--eval-batch-size", type=int, default=8, help="evaluation batch size per process (default 8)")
    g.add_argument("--checkpoint-every", type=int, default=None,
                   help="checkpoint every N steps (default: about ten per run, at least every 50 steps)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inhernet",
        description="Neural network inheritance (ICLR 2026 'Beyond Student'): build a small network from a "
                    "teacher's own weights (SVD-initialised shared down-projection + gated heads), fine-tune it, "
                    "and compare it with knowledge-distillation students.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("train-teacher", help="train a dense model (teacher or baseline) from scratch",
                       description="Train a model of the zoo from scratch with cross-entropy; writes OUT/model "
                                   "(safetensors + model_config.json), OUT/metrics.jsonl and OUT/checkpoints/last.ckpt.")
    s.add_argument("--arch", required=True,
                   help="model name (see `inhernet models`), or your own model as an import path "
                        "package.module:factory (called with num_classes= / in_channels= if it takes them)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_data_args(s)
    _add_train_args(s)

    s = sub.add_parser("inherit", help="turn a saved teacher into an InherNet (no training)",
                       description="Factorise a saved teacher into an InherNet and save it with inhernet.save; "
                                   "prints the per-layer report. A Hugging Face checkpoint folder (config.json + "
                                   "safetensors, sharded or not) is inherited tensor by tensor without loading "
                                   "the teacher, so it may be larger than memory.")
    s.add_argument("teacher", metavar="TEACHER",
                   help="saved teacher: a model folder, a run folder, a .ckpt, a Hugging Face checkpoint folder, a "
                        ".gguf file, or smollm2 (the packaged SmolLM2-135M GGUF)")
    s.add_argument("--gguf-cache", default=None, metavar="DIR",
                   help="where a GGUF teacher is dequantised once (default ~/.cache/inhernet/gguf)")
    s.add_argument("--max-shard-size", default="1GB",
                   help="largest output shard when a Hugging Face checkpoint is streamed (default 1GB; bounds "
                        "peak memory)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder for the InherNet")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a model already saved in --out (refused otherwise); other files there are kept")
    s.add_argument("--arch", default=None, help="teacher architecture, a name or package.module:factory (only for "
                                                "bare state-dict files)")
    s.add_argument("--num-classes", type=int, default=None, help="(only for bare state-dict files)")
    s.add_argument("--in-channels", type=int, default=None, help="(only for bare state-dict files)")
    _add_inherit_args(s)
    c = s.add_argument_group("calibration (--init whitened)")
    c.add_argument("--calibration", default=None, metavar="TEXT_FILE",
                   help="UTF-8 text, one document per line, tokenised with the checkpoint's tokenizer")
    c.add_argument("--calibration-blocks", type=int, default=16, help="token blocks to calibrate on (default 16)")
    c.add_argument("--calibration-seq-len", type=int, default=128, help="tokens per block (default 128)")
    c.add_argument("--calibration-mode", choices=["auto", "sequential", "one_pass"], default="auto",
                   help="sequential: block by block through the repeated blocks, each measured on the inherited "
                        "blocks before it, one block in memory at a time (SVD-LLM); one_pass: every layer from the "
                        "teacher at once; auto (default): sequential when the model has one list of blocks")

    s = sub.add_parser("finetune", help="fine-tune a saved model (InherNet or dense), optionally with KD",
                       description="Train a saved model further with the task loss or a distillation loss. A "
                                   "Hugging Face model folder (config.json: inhernet.save of a transformers "
                                   "model, or save_pretrained) is trained for --max-steps AdamW steps: as a "
                                   "causal LM on --text, or as a sequence classifier on --data FILE; writes "
                                   "OUT/model (read by inhernet evaluate / inhernet.load / from_pretrained), "
                                   "OUT/metrics.jsonl (one row per step) and OUT/checkpoints/last.ckpt.")
    s.add_argument("model", metavar="MODEL", help="saved model folder (inhernet.save / train-teacher), .ckpt, or a "
                                                  "Hugging Face model folder (config.json)")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--teacher", default=None, metavar="PATH",
                   help="saved teacher for kd / dkd / lskd; for a Hugging Face model a folder of the same tokenizer "
                        "(then KD with --kd-alpha)")
    s.add_argument("--loss", default="ce", choices=["ce", "kd", "dkd", "lskd"], help="objective (default ce)")
    s.add_argument("--gate-lr-scale", type=float, default=1.0, metavar="X",
                   help="the gates of the inherited layers learn at the learning rate x X (default 1; needs gated "
                        "heads: their gradient is tiny while the heads are near-copies)")
    s.add_argument("--alpha", type=float, default=None, help="KD: weight of the KD term (CE gets 1-alpha); DKD: TCKD weight")
    s.add_argument("--beta", type=float, default=8.0, help="DKD: NCKD weight (default 8)")
    s.add_argument("--temperature", type=float, default=None,
                   help="KD/DKD temperature (default 4; LSKD 2; a Hugging Face model: 2)")
    _add_data_args(s, required=False)  # required for an image model: checked in cmd_finetune
    _add_train_args(s)
    # None = "not given": the image path fills in its defaults, the Hugging Face path its own (8, 5e-5, 0.01)
    s.set_defaults(epochs=None, batch_size=None, lr=None, weight_decay=None)
    _add_hf_finetune_args(s)

    s = sub.add_parser("evaluate", help="accuracy, parameters, FLOPs and CPU latency of any saved model")
    s.add_argument("model", metavar="MODEL", help="saved model folder, run folder or .ckpt")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--arch", default=None, help="architecture, a name or package.module:factory (only for bare "
                                                "state-dict files)")
    s.add_argument("--latency", action="store_true", help="also measure CPU latency per image (batch 1)")
    s.add_argument("--json", action="store_true", help="print JSON")
    lm = s.add_argument_group("language models (a Hugging Face causal-LM folder)")
    lm.add_argument("--text", action="append", default=None, metavar="FILE",
                    help="perplexity on this UTF-8 text file (repeatable): tokenised whole, non-overlapping windows")
    lm.add_argument("--wikitext2", action="store_true",
                    help="perplexity on WikiText-2 (test, shipped with inhernet) as the compression papers score it")
    lm.add_argument("--seq-len", type=int, default=None, help="window length (default: the model's context, <= 2048)")
    lm.add_argument("--max-windows", type=int, default=None, help="score only the first windows")
    lm.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    lm.add_argument("--gguf-cache", default=None, metavar="DIR",
                    help="MODEL may be a .gguf file or smollm2: dequantised once here (default ~/.cache/inhernet/gguf)")
    _add_data_args(s, required=False)

    s = sub.add_parser("export", help="export a saved model to ONNX (checked with ONNX Runtime) or compile it ahead "
                                      "of time into a .pt2 package",
                       description="Write a saved model (InherNet or dense) as an ONNX file with a dynamic batch "
                                   "dimension; the file is run in ONNX Runtime and compared with PyTorch before "
                                   "it is kept (needs pip install 'inhernet[export]'). With --out FILE.pt2: "
                                   "compiled ahead of time by AOTInductor into a package for one input shape "
                                   "(--batch-size × the input shape), checked against PyTorch, loadable with "
                                   "torch._inductor.aoti_load_package.")
    s.add_argument("model", metavar="MODEL", help="saved model folder, run folder or .ckpt")
    s.add_argument("--out", required=True, metavar="FILE", help="the .onnx file, or .pt2 package, to write")
    s.add_argument("--batch-size", type=int, default=None,
                   help="a .pt2 package's batch size (default 1: a package takes one input shape)")
    s.add_argument("--input-shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="one input image's shape (default: the model's channels × 32 × 32)")
    s.add_argument("--dynamic-size", action="store_true", help="also make height and width dynamic")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    s.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX Runtime comparison")
    s.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="write the layers as they are instead of inhernet.optimize_for_inference's form (heads "
                        "folded, BatchNorm folded, layers not faster factorised made dense)")
    s.add_argument("--arch", default=None, help="architecture, a name or package.module:factory (only for bare "
                                                "state-dict files)")
    s.add_argument("--num-classes", type=int, default=None, help="(only for bare state-dict files)")

    s = sub.add_parser("compare", help="run a whole comparison from a YAML config (resumable)",
                       description="Train (or reuse) the teacher, then every method x seed under one schedule; "
                                   "writes results.json, results.md and plots to the config's out_dir. Finished "
                                   "runs are skipped, an interrupted one resumes. The config's task picks the "
                                   "runner: image-classification (default), sequence-classification or causal-lm "
                                   "(Hugging Face teachers; every model scored before and after fine-tuning).")
    s.add_argument("config", metavar="CONFIG", help="YAML file (see configs/demo.yaml, configs/text_demo.yaml)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip finished runs, resume unfinished ones (default)")
    mode.add_argument("--force", action="store_true", help="delete this config's runs in out_dir and retrain them "
                                                           "(the cached teacher is kept)")
    mode.add_argument("--status", action="store_true",
                      help="print the teacher's and every started run's state (done, failed, epoch k of n, "
                           "resumable here or not) and how many planned runs are done; trains nothing")
    s.add_argument("--out-dir", default=None, help="override the config's out_dir")
    s.add_argument("--cache-dir", default=None, help="override the config's cache_dir")
    s.add_argument("--seeds", type=int, nargs="+", default=None, help="override the config's seeds")
    s.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="train only these methods' runs this time (the rows that decide first); the report "
                        "counts every finished run, --force clears only these")
    s.add_argument("--epochs", type=int, default=None, help="override schedule.epochs (image-classification)")
    s.add_argument("--new-teacher", action="store_true",
                   help="where a cached teacher's record is here without its weights and retraining it on this "
                        "machine does not repeat the record (it stops at the first epoch that differs), train a "
                        "new teacher instead: the runs recorded against the old one then stop counting "
                        "(image-classification)")
    s.add_argument("--teacher-weights", default=None, metavar="PATH",
                   help="put these weights of the cached teacher back (a model folder, checkpoint or .safetensors "
                        "file, e.g. from the machine that trained it) before running: accepted only if they are "
                        "the network its done.json records (same weight digest, or for older records the "
                        "recorded test and validation metrics, evaluated here) (image-classification)")
    s.add_argument("--max-steps", type=int, default=None,
                   help="override schedule.max_steps (sequence-classification / causal-lm)")
    _add_dist_args(s)

    s = sub.add_parser("report", help="rebuild the table and plots of a finished (or partial) comparison")
    s.add_argument("out_dir", metavar="OUT_DIR", help="a compare out_dir (holds config.yaml)")
    s.add_argument("--no-latency", dest="latency", action="store_false",
                   help="reuse the latencies of the previous results.json instead of measuring")

    s = sub.add_parser("models", help="list the model architectures")
    return p


# ------------------------------------------------------------------------------------------ commands
def _load_data(a: argparse.Namespace):
    from inhernet.data import load_dataset

    return load_dataset(a.data, root=a.data_root, val_fraction=a.val_fraction, subset=a.subset,
                        test_subset=a.test_subset, seed=a.data_seed)


def _setup(a: argparse.Namespace) -> None:
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)


def _schedule(a: argparse.Namespace) -> dict:
    """The training schedule given on the command line (checked, part of the run identity, passed to fit)."""
    return dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
                weight_decay=a.weight_decay, milestones=a.milestones)


def _check_schedule(a: argparse.Namespace) -> None:
    """Reject a bad schedule (``--epochs 0``, ``--lr nan``, ...) before anything is loaded or written."""
    from inhernet.train.validate import check_training_options, cli_option

    check_training_options(**_schedule(a), option=cli_option)


def _fit_common(a: argparse.Namespace, plan: Any) -> dict:
    return dict(**_schedule(a), augment=a.augment, seed=a.seed, resume=not plan.fresh, **_dist_kwargs(a))


def _run_identity(a: argparse.Namespace, **source: Any) -> dict:
    """The settings that decide a train-teacher / finetune run's result (see inhernet.train.identity):
    what it starts from (``source``), the data, the schedule and the seed. Where the data lies
    (``--data-root``) and how it is run (devices, threads, progress bar) are not part of it."""
    data = {"name": a.data, "subset": a.subset, "test_subset": a.test_subset, "val_fraction": a.val_fraction,
            "seed": a.data_seed}
    from inhernet.data import data_file_digest, is_data_path

    if is_data_path(a.data, a.data_root):  # your own files: their contents (an edited file is another run)
        data["digest"] = data_file_digest(a.data, a.data_root)
    return {"command": a.command, **source, "data": data, "schedule": {**_schedule(a), "augment": a.augment},
            "seed": a.seed}


def _claim_out(a: argparse.Namespace, identity: dict) -> Any:
    """What to do with ``--out`` (new run, resume, skip a finished one, or retrain with --force); says
    so, and on rank zero deletes the old run (--force) and records this run's settings. Raises
    RunConflictError, before anything is written, when --out holds a run of other settings."""
    from inhernet.train.identity import claim_run, record_run

    plan = claim_run(a.out, identity, force=a.force, resume=a.resume, command=f"inhernet {a.command}")
    if _rank0():
        print(plan.message, flush=True)
        record_run(plan)
    return plan


def _rank0() -> bool:
    from inhernet.train.fit import global_rank

    return global_rank() == 0


def _load_model(path: str, **kwargs: Any) -> tuple[Any, dict]:
    """``inhernet.train.load_model`` for the commands that have an ``--arch`` option: a bare state
    dict given without it is an error that names the option."""
    from inhernet.train import ModelLoadError, load_model
    from inhernet.train.store import ArchitectureUnknownError

    try:
        return load_model(path, **kwargs)
    except ArchitectureUnknownError as err:
        raise ModelLoadError(f"{err.path} is a bare state dict, which does not record its architecture; pass "
                             "--arch NAME (see `inhernet models`), or give a saved model folder or .ckpt.") from err


def _check_accelerator(a: argparse.Namespace) -> None:
    """Refuse an ``--accelerator`` this machine does not have before any data is loaded or any file
    is written (Lightning would fail later, deep inside the trainer); the rule is
    :func:`inhernet.train.validate.check_accelerator`, shared with a compare config's ``trainer.accelerator``."""
    acc = getattr(a, "accelerator", None)
    if acc is None:
        return
    from inhernet.train.validate import check_accelerator, cli_option

    check_accelerator("accelerator", acc, option=cli_option)


def _check_compile(a: argparse.Namespace) -> None:
    """Refuse a ``--compile`` mode torch does not have before anything is loaded or written (the
    rule is :func:`inhernet.train.validate.check_compile`, shared with ``trainer.compile``)."""
    mode = getattr(a, "compile", None)
    if mode is None:
        return
    from inhernet.train.validate import check_compile, cli_option

    check_compile("compile", mode, option=cli_option)


def _user_message(err: BaseException) -> str:
    """The one-line message for a user error: an OS error names the path and what to do."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        where = err.filename
        if isinstance(err, PermissionError):
            return (f"permission denied: {where}; choose an output path (--out) you can write to, or fix that "
                    "folder's permissions")
        if isinstance(err, IsADirectoryError):
            return f"{where} is a folder; give a file path"
        if isinstance(err, NotADirectoryError):
            return f"a part of {where} is a file, not a folder; give another path"
        if isinstance(err, FileExistsError):
            return f"{where} already exists and is in the way; give another path"
        return f"{err.strerror}: {where}"
    return str(err)


def cmd_train_teacher(a: argparse.Namespace) -> int:
    import lightning as L

    from inhernet.models import create_model, resolve_architecture
    from inhernet.train import evaluate, fit, save_model
    from inhernet.train.identity import finish_run

    _setup(a)
    _check_schedule(a)
    resolve_architecture(a.arch)  # an unknown name or a bad import path fails before anything is loaded or written
    data = _load_data(a)
    plan = _claim_out(a, _run_identity(a, arch=a.arch, loss="ce"))
    if plan.action == "skip":
        return 0
    L.seed_everything(a.seed, workers=True, verbose=False)
    model = create_model(a.arch, num_classes=data.num_classes, in_channels=data.in_channels)
    meta = {"arch": a.arch, "num_classes": data.num_classes, "in_channels": data.in_channels, "inherited": False}
    res = fit(model, data, out_dir=a.out, loss="ce", model_meta=meta, **_fit_common(a, plan))
    if res.extra.get("is_global_zero", True) and _rank0():
        save_model(res.model, Path(a.out) / "model", arch=a.arch, num_classes=data.num_classes,
                   in_channels=data.in_channels, overwrite=True)  # the run's own model (--force / --resume)
        ev = evaluate(res.model, data.test)
        finish_run(plan, {"test_acc": ev["acc"], "epochs": len(res.metrics)})
        print(f"{a.arch}: test acc {100 * ev['acc']:.2f}% -> {Path(a.out) / 'model'}")
    return 0


def _number(v: str) -> int | float | None:
    """``v`` as an int, else a float, else None."""
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return None


def _shape(v: str) -> tuple[int, ...]:
    """``--latency-input 64,3,32,32`` as a shape."""
    try:
        shape = tuple(int(d) for d in v.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a shape: give comma-separated sizes, e.g. 64,3,32,32") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{v!r}: every size must be a positive integer")
    return shape


def _parse_budget(v: Optional[str], num_classes: int, in_channels: int) -> Any:
    """``--budget``: a parameter count, a fraction of the teacher, or a zoo model name."""
    if v is None:
        return None
    number = _number(v)
    if number is not None:
        return number
    from inhernet.models import create_model

    return create_model(v, num_classes=num_classes, in_channels=in_channels)


def _inherit_config(a: argparse.Namespace, budget: Any) -> Any:
    """The InheritConfig of the ``inherit`` command's options."""
    import inhernet

    defaults = inhernet.InheritConfig()
    return inhernet.InheritConfig(
        rank=a.rank, heads=defaults.heads if a.heads is None else a.heads,
        head_init=defaults.head_init if a.head_init is None else a.head_init, rank_fraction=a.rank_fraction,
        energy=a.energy, budget=budget,
        budget_mode=a.budget_mode, budget_scope=getattr(a, "budget_scope", "model"),
        budget_metric=getattr(a, "budget_metric", "params"), latency_input=getattr(a, "latency_input", None),
        latency_cache=getattr(a, "latency_cache", None), latency_form=getattr(a, "latency_form", "inherited"),
        rank_multiple=a.rank_multiple, head_scale=a.head_scale, init=a.init,
        calibration_mode=getattr(a, "calibration_mode", "auto"), gate=a.gate, structure=a.structure, svd=a.svd, seed=a.inherit_seed)


def _is_hf_checkpoint(path: str) -> bool:
    """A ``save_pretrained`` folder: ``config.json`` beside safetensors weights."""
    folder = Path(path)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _inherit_hf_checkpoint(a: argparse.Namespace) -> int:
    """A ``save_pretrained`` folder, streamed tensor by tensor (``--init whitened``: calibrated on
    ``--calibration`` text with the folder's tokenizer, block by block by default)."""
    budget = None if a.budget is None else _number(a.budget)
    if a.budget is not None and budget is None:
        raise ConfigError(
            f"--budget {a.budget!r}: a Hugging Face checkpoint takes a parameter count or a fraction of the teacher")
    import inhernet.hf
    from inhernet.hf.calibration import folder_calibration

    cfg = _inherit_config(a, budget)
    batches = None
    if a.init == "whitened":
        batches = folder_calibration(a.teacher, a.calibration, blocks=a.calibration_blocks,
                                     seq_len=a.calibration_seq_len)
    out = inhernet.hf.inherit_checkpoint(a.teacher, a.out, cfg, calibration=batches, max_shard_size=a.max_shard_size,
                                         overwrite=a.overwrite)
    from inhernet.io import read_config
    from inhernet.plan import InheritPlan
    from inhernet.report import plan_report

    print(plan_report(InheritPlan.from_dict(read_config(out)["plan"])))
    print(f"saved -> {out} (load it with inhernet.load({str(out)!r}))")
    return 0


def cmd_inherit(a: argparse.Namespace) -> int:
    import inhernet
    from inhernet.io import check_save_target
    from inhernet.train import save_model

    check_save_target(a.out, overwrite=a.overwrite)  # before any work: a refusal costs nothing
    whitened, calibration = a.init == "whitened", a.calibration is not None
    if whitened != calibration:
        raise ConfigError(
            "--init whitened needs --calibration TEXT_FILE" if whitened else
            "--calibration is only used with --init whitened; add --init whitened or drop --calibration")
    a.teacher = _gguf_to_folder(a)
    if _is_hf_checkpoint(a.teacher):
        return _inherit_hf_checkpoint(a)
    if whitened:
        raise ConfigError(
            "--init whitened from the command line takes a Hugging Face checkpoint folder; for other models call "
            "inhernet.inherit(model, init='whitened', calibration=batches) in Python")
    teacher, info = _load_model(a.teacher, arch=a.arch, num_classes=a.num_classes, in_channels=a.in_channels)
    if info.get("inherited"):
        raise ConfigError(f"{a.teacher} is already an InherNet; inherit from a dense teacher.")
    budget = _parse_budget(a.budget, info["num_classes"], info["in_channels"])
    model = inhernet.inherit(teacher, _inherit_config(a, budget))
    save_model(model, a.out, arch=info["arch"], num_classes=info["num_classes"], in_channels=info["in_channels"],
               overwrite=a.overwrite)
    print(inhernet.layer_report(model))
    print(f"saved -> {a.out}")
    return 0


def _is_hf_folder(path: str) -> bool:
    """A Hugging Face model folder: ``config.json`` (inhernet.save of a transformers model, or save_pretrained)."""
    return (Path(path) / "config.json").is_file()


#: finetune options only the Hugging Face path reads (given with an image model: an error)
_HF_ONLY = ("text", "seq_len", "held_out", "max_train_blocks", "text_column", "label_column", "text_pair_column",
            "max_length", "max_steps", "grad_accum", "schedule", "warmup", "max_grad_norm", "precision",
            "gradient_checkpointing", "kd_alpha", "eval_every", "eval_batch_size", "checkpoint_every")


def cmd_finetune(a: argparse.Namespace) -> int:
    from inhernet.train import DistillLoss, evaluate, fit, load_model, save_model
    from inhernet.train.groups import check_gate_lr_scale
    from inhernet.train.identity import file_digest, finish_run

    if _is_hf_folder(a.model):
        return _finetune_hf(a)
    defaults = argparse.ArgumentParser()
    _add_hf_finetune_args(defaults)
    given = [name for name in _HF_ONLY if getattr(a, name) != defaults.get_default(name)]
    if given:
        raise ConfigError(f"{_cli(given[0])} is for a Hugging Face model folder (one with config.json); {a.model} "
                          "is not one: drop it (an image model trains for --epochs).")
    if a.data is None:
        raise ConfigError(f"finetune needs --data NAME for the image model {a.model} (or MODEL a Hugging Face model "
                          "folder with --text FILE / --data FILE)")
    for name, value in FINETUNE_IMAGE_DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    _setup(a)
    _check_schedule(a)
    check_gate_lr_scale(a.gate_lr_scale, option="--gate-lr-scale")
    data = _load_data(a)
    model, info = load_model(a.model, num_classes=data.num_classes, in_channels=data.in_channels)
    check_gate_lr_scale(a.gate_lr_scale, model, option="--gate-lr-scale")  # before --out is claimed
    teacher, teacher_source = None, None
    if a.loss != "ce":
        if not a.teacher:
            raise ConfigError(f"--loss {a.loss} distils from a teacher: give --teacher PATH")
        teacher, tinfo = load_model(a.teacher, num_classes=data.num_classes, in_channels=data.in_channels)
        teacher_source = {"arch": tinfo["arch"], "sha256": file_digest(tinfo["path"])}
    loss = DistillLoss(kind=a.loss, alpha=a.alpha, beta=a.beta, temperature=a.temperature)
    # the files' hashes, not their paths, say which model and teacher the run starts from
    model_source = {"arch": info["arch"], "inherited": bool(info["inherited"]), "sha256": file_digest(info["path"])}
    source = {"model": model_source, "teacher": teacher_source, "loss": loss.resolved(),
              # absent at the default, so runs made before the option keep their identity
              **({"gate_lr_scale": a.gate_lr_scale} if a.gate_lr_scale != 1 else {})}
    plan = _claim_out(a, _run_identity(a, **source))
    if plan.action == "skip":
        return 0
    meta = {k: info[k] for k in ("arch", "num_classes", "in_channels", "inherited")}
    res = fit(model, data, out_dir=a.out, teacher=teacher, loss=loss, model_meta=meta, gate_lr_scale=a.gate_lr_scale,
              **_fit_common(a, plan))
    if res.extra.get("is_global_zero", True) and _rank0():
        save_model(res.model, Path(a.out) / "model", arch=info["arch"], num_classes=data.num_classes,
                   in_channels=data.in_channels, overwrite=True)  # the run's own model (--force / --resume)
        ev = evaluate(res.model, data.test)
        finish_run(plan, {"test_acc": ev["acc"], "epochs": len(res.metrics)})
        print(f"test acc {100 * ev['acc']:.2f}% -> {Path(a.out) / 'model'}")
    return 0


def _cli(name: str) -> str:
    from inhernet.train.validate import cli_option

    return cli_option(name)


def _hf_data_identity(a: argparse.Namespace) -> dict:
    """What the Hugging Face fine-tuning data is: the sources (files by their contents) and how they are cut."""
    from inhernet.train.identity import file_digest

    def source(name: str) -> dict:
        return {"sha256": file_digest(name)} if Path(name).is_file() else {"name": name}  # a file by its contents

    if a.text:
        return {"task": "causal-lm", "sources": [source(t) for t in a.text], "seq_len": a.seq_len,
                "held_out": a.held_out, "max_train_blocks": a.max_train_blocks, "seed": a.data_seed}
    return {"task": "sequence-classification", "source": source(a.data), "text_column": a.text_column,
            "label_column": a.label_column, "text_pair_column": a.text_pair_column, "max_length": a.max_length,
            "val_fraction": a.val_fraction, "seed": a.data_seed}


def _finetune_hf(a: argparse.Namespace) -> int:
    """``finetune FOLDER`` of a Hugging Face model: a causal LM on ``--text``, or a sequence
    classifier on ``--data FILE``, for ``--max-steps`` steps (:func:`inhernet.train.finetune.finetune`)."""
    import torch

    from inhernet.hf.folders import load_text_model, save_text_model
    from inhernet.train.finetune import check_finetune_options, finetune
    from inhernet.train.groups import check_gate_lr_scale
    from inhernet.train.identity import file_digest, finish_run
    from inhernet.train.validate import cli_option

    for name, wrong in (("epochs", None), ("loss", "ce"), ("alpha", None), ("milestones", None),
                        ("augment", "default"), ("subset", None), ("test_subset", None)):
        if getattr(a, name) != wrong:
            why = {"epochs": "it trains for --max-steps optimiser steps",
                   "loss": "distil with --teacher FOLDER --kd-alpha A", "alpha": "the KD weight is --kd-alpha"}
            raise ConfigError(f"{_cli(name)} is for image models; {a.model} is a Hugging Face model folder"
                              f"{': ' + why[name] if name in why else ''}.")
    if bool(a.text) == (a.data is not None):
        raise ConfigError(f"{a.model} is a Hugging Face model: give --text FILE (causal LM) or --data FILE "
                          "(sequence classification, with --text-column / --label-column), one of them.")
    if a.max_steps is None:
        raise ConfigError("--max-steps N is required for a Hugging Face model (it trains for N optimiser steps).")
    for name, value in FINETUNE_HF_DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    task = "causal-lm" if a.text else "sequence-classification"
    kd_alpha = a.kd_alpha if a.kd_alpha is not None else (0.5 if a.teacher else 0.0)
    max_grad_norm = a.max_grad_norm or None
    dist = _dist_kwargs(a)
    train_kw = dict(max_steps=a.max_steps, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
                    weight_decay=a.weight_decay, schedule=a.schedule, warmup=a.warmup, max_grad_norm=max_grad_norm,
                    precision=a.precision, eval_every=a.eval_every, eval_batch_size=a.eval_batch_size,
                    checkpoint_every=a.checkpoint_every, kd_alpha=kd_alpha, temperature=a.temperature)
    # every bad option fails here, before a model is loaded or a file written
    check_finetune_options(task=task, teacher=a.teacher, teacher_logits="auto", strategy=dist["strategy"],
                           accelerator=dist["accelerator"], compile=dist["compile"], option=cli_option, **train_kw)
    check_gate_lr_scale(a.gate_lr_scale, option="--gate-lr-scale")
    gate_kw = {"gate_lr_scale": a.gate_lr_scale} if a.gate_lr_scale != 1 else {}  # absent at 1: older identities hold
    if a.teacher and not _is_hf_folder(a.teacher):
        raise ConfigError(f"--teacher {a.teacher}: a Hugging Face model is distilled from a Hugging Face model folder "
                          "(config.json) of the same tokenizer.")
    _setup(a)
    from inhernet.hf.textdata import encode_classification, load_classification, load_lm_data
    from inhernet.train.validate import shows_bar

    if task == "causal-lm":
        model, tokenizer = load_text_model(a.model, task)
        data = load_lm_data(tokenizer, a.text, seq_len=a.seq_len, held_out_fraction=a.held_out, seed=a.data_seed,
                            max_train_blocks=a.max_train_blocks)
        num_labels = None
    else:
        raw = load_classification(a.data, text_column=a.text_column, label_column=a.label_column,
                                  text_pair_column=a.text_pair_column, val_fraction=a.val_fraction, seed=a.data_seed)
        num_labels = raw.num_labels
        model, tokenizer = load_text_model(a.model, task, num_labels=num_labels)
        data = argparse.Namespace(**{name: encode_classification(tokenizer, getattr(raw, name),
                                                                 max_length=a.max_length)
                                     for name in ("train", "val", "test")})
    check_gate_lr_scale(a.gate_lr_scale, model, option="--gate-lr-scale")  # before --out is claimed
    teacher = load_text_model(a.teacher, task, num_labels=num_labels)[0] if a.teacher else None
    identity = {"command": a.command, "model": {"folder_sha256": file_digest(a.model)},
                "teacher": {"folder_sha256": file_digest(a.teacher)} if a.teacher else None,
                "data": _hf_data_identity(a), "seed": a.seed,
                "schedule": {**train_kw, **gate_kw, "gradient_checkpointing": a.gradient_checkpointing}}
    plan = _claim_out(a, identity)
    if plan.action == "skip":
        return 0
    dtype = next(model.parameters()).dtype
    if dtype in (torch.float16, torch.bfloat16):  # AdamW on half-precision weights loses small updates
        model.float()
    res = finetune(model.train(), data, task=task, out_dir=a.out, teacher=teacher, tokenizer=tokenizer, seed=a.seed,
                   resume=not plan.fresh, gradient_checkpointing=a.gradient_checkpointing, **train_kw, **gate_kw, **dist)
    if res.model_dir is None or not _rank0():
        return 0
    if dtype != torch.float32 and dtype.is_floating_point:  # saved in the precision it came in
        save_text_model(res.model.to(dtype), res.model_dir, tokenizer=tokenizer, progress=shows_bar(dist["progress"]))
    shown = {k: v for k, v in res.final.items() if not k.endswith("/tokens")}
    result = {"final": shown, "steps": len(res.metrics), "tokens_seen": res.tokens_seen}
    if "test/acc" in shown:
        result["test_acc"] = shown["test/acc"]
    finish_run(plan, result)
    text = ", ".join(f"{k} {100 * v:.2f}%" if k.endswith("/acc") else f"{k} {v:.4g}" for k, v in shown.items())
    print(f"{text or 'no evaluation data'} after {len(res.metrics)} steps -> {res.model_dir}")
    return 0


def _gguf_to_folder(a: argparse.Namespace) -> str:
    """A model argument naming a GGUF file (``smollm2`` or ``FILE.gguf``) becomes the folder of its
    dequantised fp32 copy (made once under ``--gguf-cache``); anything else is returned as it is."""
    from inhernet.hf.gguf import DEFAULT_CACHE, gguf_folder, gguf_source

    name = a.teacher if hasattr(a, "teacher") else a.model
    source = gguf_source(str(name))
    if source is None:
        return name
    return str(gguf_folder(source, a.gguf_cache or DEFAULT_CACHE))


def _evaluate_lm(a: argparse.Namespace) -> int:
    """``evaluate FOLDER --text FILE`` / ``--wikitext2``: perplexity of a causal LM."""
    import inhernet
    from inhernet.hf.evaluate import evaluate_text
    from inhernet.hf.folders import load_causal_lm

    a.model = _gguf_to_folder(a)

    texts = None
    if a.text:
        texts = []
        for path in a.text:
            if not Path(path).is_file():
                raise ConfigError(f"--text {path}: no such file; give UTF-8 text files to score.")
            texts.append(Path(path).read_text(encoding="utf-8"))
    model, tokenizer = load_causal_lm(a.model)
    r = evaluate_text(model, tokenizer, texts, wikitext2=a.wikitext2, seq_len=a.seq_len, batch_size=a.batch_size,
                      max_windows=a.max_windows, progress=not a.json)
    out = {"model": str(a.model), **r, "params": inhernet.count_parameters(model)}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.model}: perplexity {r['perplexity']:.3f} on {r['text']} ({r['tokens']:,} scored tokens, "
              f"{r['windows']} windows of {r['seq_len']}); parameters {out['params']:,}")
        if a.wikitext2:
            print("  (WikiText-2 as shipped lacks the empty rows: close to, not identical with, published numbers)")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    import inhernet
    from inhernet.train import evaluate, measure_latency

    if a.text or a.wikitext2:
        if a.text and a.wikitext2:
            raise ConfigError("give --text FILE or --wikitext2, not both")
        return _evaluate_lm(a)
    if a.data is None:
        raise ConfigError("evaluate needs --data NAME for an image model (or --text FILE / --wikitext2 for a "
                          "language model)")

    data = _load_data(a)
    model, info = _load_model(a.model, arch=a.arch, num_classes=data.num_classes, in_channels=data.in_channels)
    split = getattr(data, a.split)
    ev = evaluate(model, split)
    shape = (1, data.in_channels, *data.image_size)
    out = {"model": str(a.model), "arch": info["arch"], "inherited": info["inherited"], "split": a.split,
           "n": ev["n"], "acc": ev["acc"], "loss": ev["loss"], "params": inhernet.count_parameters(model),
           "flops": inhernet.count_flops(model, shape)}
    if a.latency:
        out["latency_ms_per_image"] = measure_latency({"m": model}, shape, threads=1)["m"]["ms_per_image"]
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        kind = "InherNet from " if info["inherited"] else ""
        print(f"{a.model}: {kind}{info['arch']}")
        print(f"  {a.split} accuracy: {100 * ev['acc']:.2f}% ({ev['n']} images), loss {ev['loss']:.4f}")
        print(f"  parameters: {out['params']:,}   FLOPs/image: {out['flops']:,}")
        if a.latency:
            print(f"  CPU latency: {out['latency_ms_per_image']:.3f} ms/image (batch 1, 1 thread)")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    import torch

    import inhernet

    if a.input_shape is not None and min(a.input_shape) < 1:
        raise ConfigError(f"--input-shape {' '.join(map(str, a.input_shape))}: every size of one input image "
                          "(C H W) must be at least 1, e.g. --input-shape 1 28 28.")
    if a.opset is not None:
        from inhernet.export import check_opset

        check_opset(a.opset)  # before the model is loaded
    package = str(a.out).endswith(".pt2")
    if package:
        onnx_only = [flag for flag, given in (("--dynamic-size", a.dynamic_size), ("--opset", a.opset is not None),
                                              ("--no-check", not a.check)) if given]
        if onnx_only:
            raise ConfigError(f"{', '.join(onnx_only)}: ONNX options; a .pt2 package has one input shape and is "
                              "always checked against PyTorch. Drop them, or write a .onnx file.")
        from inhernet.optimize.aot import package_file

        package_file(a.out)  # a bad or occupied path fails before the model is loaded
    elif a.batch_size is not None:
        raise ConfigError("--batch-size sets a .pt2 package's input shape; an ONNX file has a dynamic batch "
                          "dimension. Drop it, or write a .pt2 package.")
    if a.batch_size is not None and a.batch_size < 1:
        raise ConfigError(f"--batch-size {a.batch_size}: give at least 1.")
    in_channels = a.input_shape[0] if a.input_shape else None
    model, info = _load_model(a.model, arch=a.arch, num_classes=a.num_classes, in_channels=in_channels)
    shape = tuple(a.input_shape) if a.input_shape else (info["in_channels"], 32, 32)
    if package:
        return _export_package(model, a.out, (a.batch_size or 1, *shape), a.optimize)
    res = inhernet.export_onnx(model, a.out, torch.randn(1, *shape), dynamic_spatial=a.dynamic_size,
                               check=a.check, opset=a.opset, optimize=a.optimize)
    checked = (f"ONNX Runtime matches PyTorch to {res['max_abs_diff']:.2g}" if res["max_abs_diff"] is not None
               else "not checked")
    size = "×".join(map(str, shape))
    if res["optimized"] is not None:
        _print_optimised(res["optimized"])
    print(f"saved -> {res['path']} ({res['bytes'] / 2**20:.2f} MiB, opset {res['opset']}, input N×{size}; {checked})")
    return 0


def _print_optimised(report: Any) -> None:
    """The line ``inhernet export`` prints for an optimised model: what its layers became."""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
    print(f"optimised for inference: {counts or 'no inherited layers'}; "
          f"{len(report.removed_batchnorms)} BatchNorm folded")


def _export_package(model: Any, out: str, shape: tuple[int, ...], optimize: bool) -> int:
    """``inhernet export … --out FILE.pt2``: the model (optimised unless ``--no-optimize``) compiled
    ahead of time into a package for one input shape."""
    import torch

    import inhernet
    from inhernet.optimize.aot import aot_compile

    x = torch.randn(*shape)
    model = model.eval()  # loaded from disk for this command: nobody else's object
    if optimize:  # checked against the model on x inside, the difference in its report
        report = inhernet.optimize_for_inference(model, x, compile="aot", package_path=out).inhernet_optimized
        _print_optimised(report)
        diff = report.max_abs_diff
    else:
        with torch.no_grad():
            diff = float((aot_compile(model, x, out)(x) - model(x)).abs().max())
    size = Path(out).stat().st_size
    print(f"saved -> {out} ({size / 2**20:.2f} MiB, AOTInductor package, input {'×'.join(map(str, shape))}; "
          f"matches PyTorch to {diff:.2g}; load it with torch._inductor.aoti_load_package)")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from inhernet.compare import CompareConfig, CompareConfigError, load_config, run_compare

    overrides: dict[str, Any] = {k: v for k, v in (("out_dir", a.out_dir), ("cache_dir", a.cache_dir),
                                                    ("seeds", a.seeds)) if v}
    if a.epochs is not None:  # --epochs 0 is refused by the config's validation, not dropped
        overrides["schedule"] = {"epochs": a.epochs}
    if a.max_steps is not None:
        overrides["schedule"] = {**overrides.get("schedule", {}), "max_steps": a.max_steps}
    tr = {k: v for k, v in (("accelerator", a.accelerator), ("devices", a.devices and _devices(a.devices)),
                            ("num_nodes", a.num_nodes), ("strategy", a.strategy), ("threads", a.threads),
                            ("compile", a.compile)) if v}
    if a.progress:
        tr["progress"] = {"tqdm": True, "rich": "rich", "log": "log", "none": False}[a.progress]
    if tr:
        overrides["trainer"] = tr
    cfg = load_config(a.config, overrides)
    if a.teacher_weights:
        if not isinstance(cfg, CompareConfig):
            raise CompareConfigError(f"--teacher-weights: {a.config} is a {cfg.task} comparison, whose teacher is "
                                     "a pretrained model named in the config; drop the option")
        from inhernet.compare import restore_teacher

        restore_teacher(cfg, a.teacher_weights)
    if a.status:
        from inhernet.compare import comparison_status

        print(comparison_status(cfg))
        return 0
    if a.new_teacher and not isinstance(cfg, CompareConfig):
        raise CompareConfigError(f"--new-teacher: {a.config} is a {cfg.task} comparison, whose teacher is a "
                                 "pretrained model, never retrained; drop the option")
    results = run_compare(cfg, force=a.force, methods=a.methods,
                          **({"new_teacher": True} if a.new_teacher else {}))
    failed = (results or {}).get("failed_runs", [])
    if failed:  # the table is written, but a scheduler must not see success
        print(f"error: {len(failed)} run(s) failed (listed above and in results.md); a diverged run "
              "diverges again with the same settings: change them (e.g. a lower lr) and re-run with --force",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from inhernet.compare import rebuild_report

    rebuild_report(a.out_dir, latency=a.latency)
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from inhernet.models import list_models

    print("\n".join(list_models()))
    return 0


COMMANDS = {"train-teacher": cmd_train_teacher, "inherit": cmd_inherit, "finetune": cmd_finetune,
            "evaluate": cmd_evaluate, "export": cmd_export, "compare": cmd_compare, "report": cmd_report,
            "models": cmd_models}


def _known_errors() -> tuple[type[BaseException], ...]:
    """The errors a command reports as one line (``inhernet CMD: error: ...``, exit code 2) instead
    of a traceback: every :class:`inhernet.errors.InherNetError` (its message names the cause and the
    fix), and the errors of other code that mean bad input rather than a bug: a ``ValueError``, a
    path that is missing or cannot be written (read-only, a file in the way; :func:`_user_message`
    names it), Lightning's "these settings cannot work on this machine"."""
    errs: list[type[BaseException]] = [InherNetError, ValueError, FileNotFoundError, PermissionError,
                                       IsADirectoryError, NotADirectoryError, FileExistsError]
    try:  # Lightning's own "your settings cannot work here" (e.g. more devices than the machine has)
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errs.append(MisconfigurationException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


#: commands that continue where an interrupted call stopped when they are run again
RESUMABLE = ("train-teacher", "finetune", "compare")


def _resume_hint(a: argparse.Namespace, argv: Optional[Sequence[str]]) -> str:
    """How to go on after an interruption: the same command, less --force / --no-resume (which would
    delete what was kept)."""
    if a.command not in RESUMABLE:
        return "run the same command again to redo it."
    import shlex

    args = [x for x in (sys.argv[1:] if argv is None else list(argv)) if x not in ("--force", "--no-resume")]
    return f"to resume, run the same command again: inhernet {shlex.join(args)}"


def _add_working_folder_to_path() -> None:
    """Let ``--arch mymodels:make_cnn`` (and ``arch:`` in a config) find ``mymodels.py`` in the current
    folder, as ``python -m`` would: the ``inhernet`` script's own folder is on ``sys.path``, the working
    folder is not. Appended last, so it never hides an installed package."""
    here = os.getcwd()
    if not any(p in ("", ".", here) for p in sys.path):
        sys.path.append(here)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.version:
        from inhernet import __version__

        print(__version__)
        return 0
    if not a.command:
        parser.print_help()
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _add_working_folder_to_path()
    from inhernet.train.signals import TrainingInterrupted, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # a scheduler's SIGTERM stops the command like Ctrl-C, never with rc 0
            _check_accelerator(a)
            _check_compile(a)
            return COMMANDS[a.command](a)
    except TrainingInterrupted as err:
        print(f"\ninhernet {a.command}: {err}.\n{_resume_hint(a, argv)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"\ninhernet {a.command}: interrupted.\n{_resume_hint(a, argv)}", file=sys.stderr)
        return 130
    except _known_errors() as err:
        if os.environ.get("INHERNET_DEBUG"):
            raise
        print(f"inhernet {a.command}: error: {_user_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
