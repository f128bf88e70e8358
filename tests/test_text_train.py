"""The Lightning training path for Hugging Face text models (inhernet.train.finetune / .text).

Tiny random models (Llama and BERT, hidden 32, 2 layers, vocab 100) on toy data that can be learnt
in a few steps: a causal LM on arithmetic token sequences (token t+1 = token t + 1 mod 100), a
classifier on two disjoint token ranges. Everything runs on the CPU.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("lightning")
tf = pytest.importorskip("transformers")

from lightning.pytorch.callbacks import Callback  # noqa: E402

import inhernet  # noqa: E402
from inhernet.errors import ConfigError  # noqa: E402
from inhernet.hf.lm import perplexity  # noqa: E402
from inhernet.hf.textdata import EncodedSplit, LMData  # noqa: E402
from inhernet.hf.folders import load_text_model, save_text_model  # noqa: E402
from inhernet.train.finetune import FinetuneResult, finetune, load_checkpoint_weights, meta_copy  # noqa: E402
from inhernet.train.signals import TrainingInterrupted  # noqa: E402
from inhernet.train.text import TrainOrder, lr_factor  # noqa: E402

VOCAB = 100


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return tf.LlamaForCausalLM(cfg)


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=0)
    return tf.BertForSequenceClassification(cfg)


def lm_data(n_train: int = 30, n_held: int = 10, seq_len: int = 16) -> LMData:
    g = torch.Generator().manual_seed(1)
    start = torch.randint(0, VOCAB, (n_train + n_held, 1), generator=g)
    blocks = (start + torch.arange(seq_len)) % VOCAB
    return LMData("arith", blocks[:n_train], blocks[n_train:], seq_len)


def cls_split(n: int, seed: int) -> EncodedSplit:
    """Label 0: tokens from [10, 50); label 1: from [50, 90); [CLS]=1 ... [SEP]=2, lengths 3..9."""
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(n):
        y = i % 2
        length = int(torch.randint(3, 10, (1,), generator=g))
        body = torch.randint(10 + 40 * y, 50 + 40 * y, (length,), generator=g).tolist()
        ids.append([1, *body, 2])
        labels.append(y)
    return EncodedSplit(input_ids=ids, labels=labels, pad_id=0)


class ClsData:
    def __init__(self) -> None:
        self.train, self.val, self.test = cls_split(64, 1), cls_split(24, 2), cls_split(24, 3)


FAST = dict(progress=False, lr=3e-3)


class EmbeddingOnly(torch.nn.Module):
    """A "language model" that is one embedding: no transformer blocks, no gradient checkpointing."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8)

    def forward(self, input_ids, **kwargs):
        return self.emb(input_ids)


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def max_weight_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


# ------------------------------------------------------------------------------------- learning
def test_causal_lm_loss_goes_down_and_the_metrics_are_consistent(tmp_path):
    data = lm_data()
    res = finetune(tiny_llama(), data, task="causal-lm", out_dir=tmp_path / "run", max_steps=20, batch_size=8,
                   eval_every=5, **FAST)
    assert isinstance(res, FinetuneResult)
    rows = res.metrics
    assert [r["step"] for r in rows] == list(range(1, 21))
    losses = [r["train/loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    # tokens: 8 blocks of 16 per step, cumulative
    assert [r["tokens"] for r in rows] == [128 * s for s in range(1, 21)] and res.tokens_seen == 20 * 128
    evals = [r for r in rows if "eval/ppl" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    assert evals[-1]["eval/ppl"] < evals[0]["eval/ppl"]
    # the final metric is the token-weighted held-out perplexity of the returned model
    assert res.final["eval/tokens"] == 10 * 15
    ref = perplexity(res.model, data.held_out)
    assert res.final["eval/nll"] == pytest.approx(ref["nll"], rel=1e-5)
    assert res.final["eval/ppl"] == pytest.approx(math.exp(res.final["eval/nll"]))
    assert res.checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt" and res.checkpoint.is_file()
    assert next(res.model.parameters()).device.type == "cpu"
    # the checkpoint holds the trained weights (how the FSDP path gets its clean model back)
    assert same_weights(load_checkpoint_weights(meta_copy(tiny_llama(seed=3)), res.checkpoint), res.model)
    # a dense model is saved with save_pretrained and reads back with the same outputs
    back = tf.AutoModelForCausalLM.from_pretrained(str(res.model_dir)).eval()
    ids = data.held_out[:2]
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, res.model.eval()(input_ids=ids).logits)


def test_without_evaluation_data_the_rows_have_no_evaluation(tmp_path):
    data = lm_data()
    data.held_out = data.held_out[:0]
    res = finetune(tiny_llama(), data, task="causal-lm", out_dir=tmp_path / "run", max_steps=2, batch_size=4,
                   eval_every=1, **FAST)
    assert res.final == {} and all(not any(k.startswith("eval/") for k in r) for r in res.metrics)


def test_progress_log_prints_the_evaluation_and_checkpoint_steps(tmp_path, capsys):
    """``progress="log"``: no bar; one line per evaluation or checkpoint step, with its metrics."""
    res = finetune(tiny_llama(), lm_data(), task="causal-lm", out_dir=tmp_path / "run", max_steps=4, batch_size=4,
                   eval_every=2, checkpoint_every=4, lr=3e-3, progress="log", run_name="lm/seed0")
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith("lm/seed0: step")]
    assert [ln.split(",")[0] for ln in lines] == ["lm/seed0: step 2/4", "lm/seed0: step 4/4"]  # evaluated steps
    assert f"train/loss {res.metrics[-1]['train/loss']:.4g}" in lines[-1]
    assert any(k.startswith("eval/") and f"{k} " in lines[-1] for k in res.final)
    assert "\r" not in out.out + out.err


def test_classification_learns_a_separable_label(tmp_path):
    data = ClsData()
    res = finetune(tiny_bert(), data, task="sequence-classification", out_dir=tmp_path / "run", max_steps=30,
                   batch_size=8, eval_every=10, progress=False, lr=2e-3)
    evals = [r for r in res.metrics if "val/acc" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert set(res.final) == {"val/acc", "val/loss", "test/acc", "test/loss"}
    assert res.final["val/acc"] >= 0.9 and res.final["test/acc"] >= 0.9, res.final
    assert res.final["val/loss"] < evals[0]["val/loss"] or evals[0]["val/acc"] == 1.0
    # tokens of a classification batch: the non-pad tokens
    lengths = [len(x) for x in data.train.input_ids]
    assert res.metrics[0]["tokens"] <= 8 * max(lengths)
    back = tf.AutoModelForSequenceClassification.from_pretrained(str(res.model_dir)).eval()
    ids = torch.tensor([data.test.input_ids[0]])
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, res.model.eval()(input_ids=ids).logits, atol=1e-6)


def test_an_inherited_llama_finetunes_and_saves_and_loads_with_identical_outputs(tmp_path):
    data = lm_data()
    student = inhernet.inherit(tiny_llama(), rank=4, heads=2, progress=False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    res = finetune(student, data, task="causal-lm", out_dir=tmp_path / "run", max_steps=6, batch_size=8, **FAST)
    assert res.model is student  # trained in place
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert (res.model_dir / inhernet.io.CONFIG_NAME).is_file()
    back = inhernet.load(res.model_dir)
    ids = data.held_out[:3]
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, res.model.eval()(input_ids=ids).logits)
    # save_text_model again (the compare runner's path) replaces it in place
    save_text_model(res.model, res.model_dir)
    assert same_weights(inhernet.load(res.model_dir), res.model)


# --------------------------------------------------------------------------------- exact resume
class StopAt(Callback):
    """Ctrl-C right after optimiser step ``step`` (after its row was written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_kill_and_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    data = lm_data()
    # checkpoints at 2, 4, 6, ...; evaluations at 4, 8, 12: the step-4 checkpoint is written after its
    # evaluation, the step-6 one after its training step; the runs are stopped at 5 and at 7
    kw = dict(task="causal-lm", max_steps=12, batch_size=4, grad_accum=2, eval_every=4, checkpoint_every=2, **FAST)
    straight = finetune(tiny_llama(), data, out_dir=tmp_path / "a", **kw)
    for stop in (5, 7):
        with pytest.raises(TrainingInterrupted) as info:
            finetune(tiny_llama(), data, out_dir=tmp_path / "b", callbacks=[StopAt(stop)], **kw)
        assert info.value.checkpoint == tmp_path / "b" / "checkpoints" / "last.ckpt"
        rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == stop  # the row of the step it stopped after; the checkpoint is older
    # a fresh object: the weights come from the checkpoint (step 6)
    resumed = finetune(tiny_llama(seed=5), data, out_dir=tmp_path / "b", **kw)
    assert strip_time(resumed.metrics) == strip_time(straight.metrics)
    assert [r["step"] for r in resumed.metrics] == list(range(1, 13))
    assert same_weights(resumed.model, straight.model)
    assert resumed.tokens_seen == straight.tokens_seen == 12 * 8 * 16
    # a finished run resumed again trains nothing and keeps its rows
    again = finetune(tiny_llama(seed=6), data, out_dir=tmp_path / "b", **kw)
    assert strip_time(again.metrics) == strip_time(straight.metrics) and same_weights(again.model, straight.model)


def test_resuming_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    data = lm_data()
    out = tmp_path / "run"
    finetune(tiny_llama(), data, task="causal-lm", out_dir=out, max_steps=3, batch_size=4, **FAST)
    before = {p.name: p.read_bytes() for p in (out / "metrics.jsonl", out / "checkpoints" / "last.ckpt")}
    with pytest.raises(ConfigError, match=r"other settings.*lr: 0.003 -> 0.001"):
        finetune(tiny_llama(), data, task="causal-lm", out_dir=out, max_steps=3, batch_size=4, progress=False, lr=1e-3)
    assert before == {p.name: p.read_bytes() for p in (out / "metrics.jsonl", out / "checkpoints" / "last.ckpt")}
    # resume=False starts over
    res = finetune(tiny_llama(), data, task="causal-lm", out_dir=out, max_steps=2, batch_size=4, progress=False,
                   lr=1e-3, resume=False)
    assert [r["step"] for r in res.metrics] == [1, 2]


def test_the_batches_depend_on_seed_step_and_rank_only():
    order = TrainOrder(10, seed=3)
    first = order.take(0, 25)
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:20].tolist()) == list(range(10))
    assert torch.equal(TrainOrder(10, seed=3).take(7, 11), first[7:18])  # any window, any order of calls
    assert not torch.equal(TrainOrder(10, seed=4).take(0, 10), first[:10])


# ----------------------------------------------------------------------------- accumulation
def test_grad_accumulation_4x2_trains_like_8x1(tmp_path):
    data = lm_data()
    kw = dict(task="causal-lm", max_steps=6, eval_every=3, **FAST)
    a = finetune(tiny_llama(), data, out_dir=tmp_path / "a", batch_size=8, grad_accum=1, **kw)
    b = finetune(tiny_llama(), data, out_dir=tmp_path / "b", batch_size=4, grad_accum=2, **kw)
    # the same items per step; only the float summation order differs: losses within 1e-5 (relative),
    # weights within 1e-5
    for ra, rb in zip(a.metrics, b.metrics):
        assert ra["tokens"] == rb["tokens"] and ra["lr"] == rb["lr"]
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=1e-5)
    assert b.final["eval/nll"] == pytest.approx(a.final["eval/nll"], rel=1e-5)
    assert max_weight_diff(a.model, b.model) < 1e-5


def test_resuming_with_another_accumulation_or_batch_is_refused(tmp_path):
    data = lm_data()
    kw = dict(task="causal-lm", max_steps=4, **FAST)
    with pytest.raises(TrainingInterrupted):
        finetune(tiny_llama(), data, out_dir=tmp_path / "b", batch_size=8, callbacks=[StopAt(2)], **kw)
    with pytest.raises(ConfigError, match=r"grad_accum: 1 -> 2.*micro_batch_items: 8 -> 4"):
        finetune(tiny_llama(), data, out_dir=tmp_path / "b", batch_size=4, grad_accum=2, **kw)
    with pytest.raises(ConfigError, match="micro_batch_items: 8 -> 4"):
        finetune(tiny_llama(), data, out_dir=tmp_path / "b", batch_size=4, **kw)


# ------------------------------------------------------------------------------------------- KD
def _flags(model):
    return ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


@pytest.mark.parametrize("mode", ["on_the_fly", "cache"])
def test_kd_from_a_copy_of_the_student_is_zero_and_leaves_the_teacher_unchanged(tmp_path, mode):
    data = lm_data()
    student = tiny_llama()
    teacher = copy.deepcopy(student)
    teacher.train()
    teacher.model.layers[0].requires_grad_(False)  # odd flags, to see that they are kept
    teacher.model.norm.eval()
    flags, weights = _flags(teacher), {k: v.clone() for k, v in teacher.state_dict().items()}
    res = finetune(student, data, task="causal-lm", out_dir=tmp_path / "run", teacher=teacher, kd_alpha=1.0,
                   temperature=2.0, max_steps=4, batch_size=8, teacher_logits=mode, **FAST)
    first = res.metrics[0]
    assert first["train/kd_loss"] < 1e-4 and first["train/loss"] == pytest.approx(first["train/kd_loss"])
    assert first["train/task_loss"] > 1.0
    assert res.metrics[-1]["train/kd_loss"] > first["train/kd_loss"]  # the student moved away (kd 0 at start)
    assert _flags(teacher) == flags
    assert all(torch.equal(weights[k], v) for k, v in teacher.state_dict().items())
    assert (tmp_path / "run" / "teacher_logits.pt").is_file() == (mode == "cache")


def test_kd_in_classification_caches_the_teacher_logits_and_mixes_the_losses(tmp_path):
    data = ClsData()
    teacher = tiny_bert(seed=1).eval()
    res = finetune(tiny_bert(), data, task="sequence-classification", out_dir=tmp_path / "run", teacher=teacher,
                   kd_alpha=0.5, max_steps=3, batch_size=8, **FAST)
    cache = torch.load(tmp_path / "run" / "teacher_logits.pt", weights_only=True)
    assert cache["logits"].shape == (64, 2)
    for r in res.metrics:
        assert r["train/loss"] == pytest.approx(0.5 * r["train/task_loss"] + 0.5 * r["train/kd_loss"], rel=1e-6)
    assert not teacher.training


# ---------------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_ddp_with_2_processes_trains_like_1_process_of_the_doubled_batch(tmp_path):
    data = lm_data()
    kw = dict(task="causal-lm", max_steps=4, eval_every=2, **FAST)
    one = finetune(tiny_llama(), data, out_dir=tmp_path / "one", batch_size=8, **kw)
    two = finetune(tiny_llama(), data, out_dir=tmp_path / "two", batch_size=4, devices=2, strategy="ddp_spawn",
                   accelerator="cpu", **kw)
    # the same items per step, gradients averaged over the processes: losses and held-out NLL within 1e-5
    # (relative; only the float summation order differs), weights within 1e-5
    assert [r["step"] for r in two.metrics] == [1, 2, 3, 4]
    for r1, r2 in zip(one.metrics, two.metrics):
        assert r1["tokens"] == r2["tokens"] and r1["lr"] == r2["lr"]
        assert r2["train/loss"] == pytest.approx(r1["train/loss"], rel=1e-5)
    assert two.final["eval/nll"] == pytest.approx(one.final["eval/nll"], rel=1e-5)
    assert two.final["eval/tokens"] == one.final["eval/tokens"] == 150
    assert max_weight_diff(one.model, two.model) < 1e-5
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_run_resumes_on_2_processes_with_half_the_batch_each(tmp_path):
    """The items of micro-batch i depend on batch_size * processes only: a 1-process run of batch 8
    stopped after step 2 continues on 2 processes of batch 4 along the uninterrupted curve."""
    data = lm_data()
    kw = dict(task="causal-lm", max_steps=4, checkpoint_every=1, **FAST)
    straight = finetune(tiny_llama(), data, out_dir=tmp_path / "a", batch_size=8, **kw)
    with pytest.raises(TrainingInterrupted):
        finetune(tiny_llama(), data, out_dir=tmp_path / "b", batch_size=8, callbacks=[StopAt(2)], **kw)
    resumed = finetune(tiny_llama(), data, out_dir=tmp_path / "b", batch_size=4, devices=2, strategy="ddp_spawn",
                       **kw)
    assert [r["tokens"] for r in resumed.metrics] == [r["tokens"] for r in straight.metrics]
    for r1, r2 in zip(straight.metrics, resumed.metrics):  # float summation order only: 1e-5 relative
        assert r2["train/loss"] == pytest.approx(r1["train/loss"], rel=1e-5)
    assert max_weight_diff(straight.model, resumed.model) < 1e-5


# --------------------------------------------------------------------------------------------- FSDP
#: the FSDP2 runs of fsdp_runs.py (per process: batch 4 on 2 processes; the reference: batch 8 on 1).
#: Clipping at 0.1 binds at every step (the unclipped gradient norms are about 1), so it is tested too
FSDP_RUN = dict(task="causal-lm", max_steps=4, batch_size=4, eval_every=2, checkpoint_every=2, max_grad_norm=0.1,
                **FAST)
#: the inherited run: 2 steps, distilled from the dense Llama (its logits cached), gradient checkpointing and
#: accumulation (2 micro-batches of 2 per process and step: the items of one step of batch 8 on 1 process)
FSDP_INHERITED = dict(FSDP_RUN, max_steps=2, eval_every=None, kd_alpha=0.5, gradient_checkpointing=True, batch_size=2,
                      grad_accum=2)


def fsdp_inherited_student():
    """An InherNet (rank 4, H = 2) of a tiny Llama whose embeddings and LM head are one tied weight."""
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return inhernet.inherit(tf.LlamaForCausalLM(cfg), rank=4, heads=2, progress=False)


class GradNorms(Callback):
    """The total gradient norm before each optimiser step (before clipping)."""

    def __init__(self) -> None:
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """fsdp_runs.py on 2 CPU processes (gloo) and, meanwhile, the 1-process references of batch 8."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    out = tmp_path_factory.mktemp("fsdp")
    here = Path(__file__).resolve().parent
    # this checkout's package, for the script and the process Lightning launches from it (it inherits the env)
    path = [str(here.parent / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen([sys.executable, str(here / "fsdp_runs.py"), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        one_kw = {**FSDP_RUN, "batch_size": 8}
        norms = GradNorms()
        one = finetune(tiny_llama(), lm_data(), out_dir=out / "one", callbacks=[norms], **one_kw)
        inherited = finetune(fsdp_inherited_student(), lm_data(), out_dir=out / "one_inherited", teacher=tiny_llama(),
                             **{**FSDP_INHERITED, "batch_size": 8, "grad_accum": 1,
                                "gradient_checkpointing": False})
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, log[-4000:]
    return SimpleNamespace(out=out, one=one, one_norms=norms.norms, one_inherited=inherited,
                           report=json.loads((out / "runs.json").read_text()))


def fsdp_rows(runs, name):
    return [json.loads(x) for x in (runs.out / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_with_2_cpu_processes_trains_like_1_process_of_the_doubled_batch(fsdp_runs):
    one, rows = fsdp_runs.one, fsdp_rows(fsdp_runs, "straight")
    # clipping binds at every step; FSDP's norm over the sharded gradients is the whole model's
    assert min(fsdp_runs.one_norms) > 5 * FSDP_RUN["max_grad_norm"]
    assert fsdp_runs.report["straight"]["norms"] == pytest.approx(fsdp_runs.one_norms, rel=1e-5)
    # the same items per step, gradients reduce-scattered over the processes: losses and held-out NLL
    # within 1e-5 (relative; only the float summation order differs), weights within 1e-5
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r1, r2 in zip(one.metrics, rows):
        assert r1["tokens"] == r2["tokens"] and r1["lr"] == r2["lr"]
        assert r2["train/loss"] == pytest.approx(r1["train/loss"], rel=1e-5)
    assert [r["step"] for r in rows if "eval/nll" in r] == [2, 4]
    assert rows[-1]["eval/nll"] == pytest.approx(one.final["eval/nll"], rel=1e-5)
    assert rows[-1]["eval/tokens"] == one.final["eval/tokens"] == 150
    # the returned model is a clean module with the model's own parameter names; the saved one and the
    # full-state checkpoint hold the trained weights
    assert fsdp_runs.report["straight"]["plain"]
    saved = tf.AutoModelForCausalLM.from_pretrained(str(fsdp_runs.out / "straight" / "model"))
    assert max_weight_diff(one.model, saved) < 1e-5
    ckpt = fsdp_runs.out / "straight" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and same_weights(load_checkpoint_weights(meta_copy(tiny_llama()), ckpt), saved)


@pytest.mark.slow
def test_fsdp_kill_and_resume_ends_identical_to_an_uninterrupted_run(fsdp_runs):
    # stopped after step 3 (checkpoint of step 2), resumed from a fresh model object: bit-identical rows
    # and weights (the same 2-process layout and thread count)
    assert fsdp_runs.report["stopped"] and fsdp_runs.report["resumed"]["plain"]
    assert strip_time(fsdp_rows(fsdp_runs, "resumed")) == strip_time(fsdp_rows(fsdp_runs, "straight"))
    resumed, straight = (tf.AutoModelForCausalLM.from_pretrained(str(fsdp_runs.out / n / "model"))
                         for n in ("resumed", "straight"))
    assert same_weights(resumed, straight)


@pytest.mark.slow
def test_an_inherited_llama_with_tied_weights_distils_under_fsdp_like_1_process(fsdp_runs):
    report, one = fsdp_runs.report["inherited"], fsdp_runs.one_inherited
    # the teacher was not sharded, the tied embeddings / LM head are one parameter again
    assert report["plain"] and report["teacher_plain"] and report["tied"]
    rows = fsdp_rows(fsdp_runs, "inherited")
    # with gradient checkpointing and accumulation (the same numbers up to float order): within 1e-5
    for r1, r2 in zip(one.metrics, rows):
        for k in ("train/loss", "train/task_loss", "train/kd_loss"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-5)
    back = inhernet.load(fsdp_runs.out / "inherited" / "model")
    assert max_weight_diff(one.model, back) < 1e-5


def test_fsdp_of_a_model_without_transformer_blocks_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="strategy='fsdp' shards the model's transformer blocks.*EmbeddingOnly"):
        finetune(EmbeddingOnly(), lm_data(), task="causal-lm", out_dir=tmp_path / "run", devices=2, strategy="fsdp",
                 progress=False)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("kwargs, option", [
    (dict(task="translation"), "task"),
    (dict(max_steps=0), "max_steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(grad_accum=0), "grad_accum"),
    (dict(lr=0.0), "lr"),
    (dict(warmup=1.5), "warmup"),
    (dict(warmup=11), "warmup"),
    (dict(schedule="step"), "schedule"),
    (dict(kd_alpha=1.5, teacher="t"), "kd_alpha"),
    (dict(kd_alpha=0.5), "kd_alpha"),
    (dict(teacher_logits="sometimes"), "teacher_logits"),
    (dict(strategy="fsdp2"), "strategy"),
    (dict(precision="16-mixed"), "precision"),
    (dict(batch_size=31), "fewer than batch_size=31"),
    (dict(progress="bar"), "progress"),
])
def test_bad_options_are_config_errors_naming_the_option_and_write_nothing(tmp_path, kwargs, option):
    out = tmp_path / "run"
    args = {"task": "causal-lm", "max_steps": 10, "progress": False, **kwargs}
    with pytest.raises(ConfigError) as info:
        finetune(tiny_llama(), lm_data(), out_dir=out, **args)
    assert option in str(info.value)
    assert not out.exists()


def test_classification_data_without_labels_is_a_config_error(tmp_path):
    data = ClsData()
    data.train = EncodedSplit(input_ids=data.train.input_ids, labels=[], pad_id=0)
    with pytest.raises(ConfigError, match="no labels"):
        finetune(tiny_bert(), data, task="sequence-classification", out_dir=tmp_path / "run", progress=False)
    data = ClsData()
    data.val = EncodedSplit(input_ids=data.val.input_ids, labels=[5] * len(data.val), pad_id=0)
    with pytest.raises(ConfigError, match="num_labels=2"):
        finetune(tiny_bert(), data, task="sequence-classification", out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_gradient_checkpointing_and_bf16_train_and_unsupported_models_are_refused(tmp_path):
    data = lm_data()
    kw = dict(task="causal-lm", max_steps=3, batch_size=8, **FAST)
    plain = finetune(tiny_llama(), data, out_dir=tmp_path / "plain", **kw)
    model = tiny_llama()
    seen = []

    class Look(Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            seen.append(any(getattr(m, "gradient_checkpointing", False) for m in pl_module.model.modules()))

    ckpt = finetune(model, data, out_dir=tmp_path / "ckpt", gradient_checkpointing=True, callbacks=[Look()], **kw)
    assert seen == [True] * 3
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # switched off again
    for r1, r2 in zip(plain.metrics, ckpt.metrics):  # recomputation gives the same numbers, up to float order
        assert r2["train/loss"] == pytest.approx(r1["train/loss"], rel=1e-5)
    bf16 = finetune(tiny_llama(), data, out_dir=tmp_path / "bf16", precision="bf16-mixed", **kw)
    assert all(math.isfinite(r["train/loss"]) for r in bf16.metrics)
    assert bf16.metrics[0]["train/loss"] == pytest.approx(plain.metrics[0]["train/loss"], rel=2e-2)
    assert next(bf16.model.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="EmbeddingOnly does not support gradient checkpointing"):
        finetune(EmbeddingOnly(), data, out_dir=tmp_path / "none", gradient_checkpointing=True, **kw)
    assert not (tmp_path / "none").exists()


# -------------------------------------------------------------------------------------- schedule
def test_lr_factor_warms_up_then_decays():
    f = {s: [lr_factor(i, max_steps=10, warmup_steps=3, schedule=s) for i in range(10)] for s in
         ("cosine", "linear", "constant")}
    for s in f:
        assert f[s][:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f["constant"][3:] == [1.0] * 7
    assert all(a > b > 0 for a, b in zip(f["cosine"][3:], f["cosine"][4:]))
    steps = [a - b for a, b in zip(f["linear"][3:], f["linear"][4:])]
    assert steps == pytest.approx([1 / 8] * 6) and f["linear"][-1] == pytest.approx(1 / 8)
    assert f["cosine"][3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 8)))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_logged_lr_follows_the_schedule(tmp_path, schedule):
    res = finetune(tiny_llama(), lm_data(), task="causal-lm", out_dir=tmp_path / "run", max_steps=8, batch_size=4,
                   lr=1e-3, warmup=0.25, schedule=schedule, progress=False)
    lrs = [r["lr"] for r in res.metrics]
    assert lrs == pytest.approx([1e-3 * lr_factor(i, max_steps=8, warmup_steps=2, schedule=schedule) for i in range(8)])
    assert lrs[0] < lrs[1] == pytest.approx(1e-3)  # warm-up: 2 steps
    if schedule == "constant":
        assert lrs[1:] == pytest.approx([1e-3] * 7)
    else:
        assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))


def test_gate_lr_scale_gives_the_gates_their_own_adamw_groups():
    """``finetune(gate_lr_scale=)``'s optimiser: the gate parameters (decayed weights and undecayed
    biases alike) at lr × the scale, every other parameter once at lr, the decay split kept."""
    from inhernet.diagnostics import gated_layers
    from inhernet.train.text import TextTaskModule

    model = inhernet.inherit(tiny_llama(), rank=4, heads=2, progress=False)
    gates = {id(p) for _, m in gated_layers(model) for p in m.gate.parameters()}
    assert gates
    module = TextTaskModule(model, task="causal-lm", lr=1e-3, max_steps=4, gate_lr_scale=8.0)
    groups = module.configure_optimizers()["optimizer"].param_groups
    # initial_lr: the schedule's base (LambdaLR has already applied step 0's factor to "lr")
    fast = [g for g in groups if g["initial_lr"] == pytest.approx(8e-3)]
    assert {id(p) for g in fast for p in g["params"]} == gates
    assert all(g["initial_lr"] == pytest.approx(1e-3) for g in groups if not any(g is f for f in fast))
    assert all(f["lr"] == pytest.approx(8 * groups[0]["lr"]) for f in fast)  # the schedule scales both alike
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    assert {g["weight_decay"] for g in fast} == {0.01, 0.0}  # gate weights decay, gate biases do not
    with pytest.raises(ConfigError, match="no gated inherited layer"):
        TextTaskModule(tiny_llama(), task="causal-lm", lr=1e-3, max_steps=4, gate_lr_scale=8.0)
