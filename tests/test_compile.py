"""torch.compile in training (issue 13, item 4): the inherited layers compile into one graph in every
mode, ``fit(compile=...)`` trains like eager and saves the plain model, the Hugging Face path gives
eager's loss curve and resumes exactly, and bad values are clear errors. No timing here
(``benchmarks/bench_train_step.py`` measures speed)."""

import itertools
import pickle
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

from inhernet import InherConv2d, InherLinear  # noqa: E402
from inhernet.cli import main  # noqa: E402
from inhernet.compare import CompareConfig, CompareConfigError  # noqa: E402
from inhernet.errors import ConfigError  # noqa: E402
from inhernet.train import fit, read_metrics  # noqa: E402
from inhernet.train.compiled import CompiledModel, device_compile_mode  # noqa: E402
from inhernet.train.validate import COMPILE_MODES, check_compile, compile_mode  # noqa: E402

from toy import toy_data, toy_net  # noqa: E402

# every gate x structure x H, the bias on in half of them (it is one added term in every mode)
LAYER_MODES = [(g, s, h, (i % 2 == 0)) for i, (g, s, h) in
               enumerate(itertools.product(["softmax", "none"], ["asymmetric", "symmetric"], [1, 3]))]


def _layer(kind, gate, structure, heads, bias):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = InherLinear(12, 10, 4, heads, bias=bias, gate=gate, structure=structure), torch.randn(3, 40, 12)
    else:
        layer, x = (InherConv2d(3, 6, 3, 4, heads, padding=1, bias=bias, gate=gate, structure=structure),
                    torch.randn(2, 3, 8, 8))
    layer = layer.double()
    with torch.no_grad():  # distinct heads and biases, so every term of the mixing shows
        layer.up.add_(0.1 * torch.randn_like(layer.up))
        if layer.bias is not None:
            layer.bias.normal_()
    return layer, x.double()


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("gate,structure,heads,bias", LAYER_MODES)
def test_inherited_layers_compile_into_one_graph_with_eager_values_and_gradients(kind, gate, structure, heads, bias):
    """fullgraph=True fails on any graph break; aot_eager also traces the backward (no inductor
    code generation)."""
    torch.compiler.reset()  # the layers share one forward: a fresh cache per mode (no recompile limit)
    layer, x = _layer(kind, gate, structure, heads, bias)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager", dynamic=False)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), compiled(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ya)
    ga = torch.autograd.grad((ya * w).sum(), [xa, *layer.parameters()])
    gb = torch.autograd.grad((yb * w).sum(), [xb, *layer.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # and the no-grad paths (few rows: the heads accumulated one by one)
        torch.testing.assert_close(compiled(x[:1, :5] if kind == "linear" else x), layer(x[:1, :5] if kind == "linear"
                                                                                         else x))


def test_fit_with_compile_trains_like_eager_and_saves_the_plain_model(tmp_path):
    data = toy_data()
    kw = dict(epochs=2, batch_size=16, milestones=[1], seed=5, progress=False)
    eager = fit(toy_net(), data, out_dir=tmp_path / "eager", **kw)
    comp = fit(toy_net(), data, out_dir=tmp_path / "compiled", compile=True, **kw)
    assert type(comp.model) is nn.Sequential  # the plain module, not torch's OptimizedModule
    ck = torch.load(comp.checkpoint, map_location="cpu", weights_only=False)
    assert set(ck["state_dict"]) == {"model." + k for k in toy_net().state_dict()}
    fresh = toy_net(seed=9)
    fresh.load_state_dict({k[len("model."):]: v for k, v in ck["state_dict"].items()})
    x = data.test.x
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), comp.model.eval()(x), rtol=0, atol=0)
    for k, v in eager.model.state_dict().items():  # the same training, up to the compiled kernels' rounding
        torch.testing.assert_close(comp.model.state_dict()[k].float(), v.float(), rtol=1e-4, atol=1e-5, msg=k)
    assert [r["train/loss"] for r in comp.metrics] == pytest.approx([r["train/loss"] for r in eager.metrics],
                                                                     rel=1e-5)
    assert len(read_metrics(tmp_path / "compiled")) == 2


def _one_block_llama(seed=0):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return tf.LlamaForCausalLM(cfg)


@pytest.mark.slow  # compiling a transformer's forward + backward: about a minute on 2 busy cores
def test_finetune_with_compile_gives_the_eager_curve_and_resumes_exactly(tmp_path):
    from inhernet.hf.textdata import LMData
    from inhernet.train.finetune import finetune
    from inhernet.train.signals import TrainingInterrupted
    from lightning.pytorch.callbacks import Callback

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 4:  # after step 3's evaluation and checkpoint: the resume starts there
                raise KeyboardInterrupt

    g = torch.Generator().manual_seed(1)
    blocks = (torch.randint(0, 100, (40, 1), generator=g) + torch.arange(16)) % 100
    data = LMData("arith", blocks[:30], blocks[30:], 16)
    kw = dict(task="causal-lm", max_steps=6, batch_size=4, eval_every=3, checkpoint_every=3, progress=False, lr=3e-3)
    eager = finetune(_one_block_llama(), data, out_dir=tmp_path / "eager", **kw)
    comp = finetune(_one_block_llama(), data, out_dir=tmp_path / "compiled", compile=True, **kw)
    assert [r["train/loss"] for r in comp.metrics] == pytest.approx([r["train/loss"] for r in eager.metrics],
                                                                     rel=1e-5)
    assert comp.final["eval/nll"] == pytest.approx(eager.final["eval/nll"], rel=1e-5)
    ck = torch.load(comp.checkpoint, map_location="cpu", weights_only=False)
    assert not [k for k in ck["state_dict"] if "_orig_mod" in k]
    with pytest.raises(TrainingInterrupted):
        finetune(_one_block_llama(), data, out_dir=tmp_path / "resumed", compile=True, callbacks=[StopAt()], **kw)
    resumed = finetune(_one_block_llama(seed=5), data, out_dir=tmp_path / "resumed", compile=True, **kw)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert drop(resumed.metrics) == drop(comp.metrics)
    for k, v in comp.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------- options
def test_compile_values_and_errors():
    assert [compile_mode(v) for v in (None, False, True, "reduce-overhead")] == [None, None, "default",
                                                                                 "reduce-overhead"]
    for mode in COMPILE_MODES:
        check_compile("compile", mode)
    for bad in ("fast", "Default", 1, 0.5):
        with pytest.raises(ConfigError, match=r"trainer\.compile=.* is not a compile setting.*reduce-overhead"):
            check_compile("compile", bad, option="trainer.{}".format)


def test_compile_modes_off_cuda_drop_cuda_graphs():
    with pytest.warns(UserWarning, match="CUDA graphs, which need a CUDA device"):
        assert device_compile_mode("reduce-overhead", torch.device("cpu")) == "default"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device_compile_mode("max-autotune", torch.device("cpu")) == "max-autotune-no-cudagraphs"
        assert device_compile_mode("default", torch.device("cpu")) == "default"
        assert device_compile_mode("reduce-overhead", torch.device("cuda")) == "reduce-overhead"


def test_compiled_model_is_eager_until_set_up_and_pickles_without_the_wrapper():
    net = toy_net()
    holder = CompiledModel("default")
    assert holder(net) is net
    holder.setup(net, torch.device("cpu"))
    assert holder(net) is not net and holder(net)._orig_mod is net
    copy = pickle.loads(pickle.dumps(holder))  # a ddp_spawn worker builds its own wrapper
    assert copy.mode == "default" and copy(net) is net
    eager = CompiledModel(None)
    eager.setup(net, torch.device("cpu"))
    assert eager(net) is net


def test_bad_compile_values_fail_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(ConfigError, match="compile='fast'"):
        fit(toy_net(), toy_data(), out_dir=tmp_path / "fit", compile="fast", progress=False)
    assert not (tmp_path / "fit").exists()
    assert main(["train-teacher", "--arch", "resnet8", "--data", "fmnist", "--out", str(tmp_path / "cli"),
                 "--compile", "fast"]) == 2
    assert "--compile fast is not a compile setting" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
    pytest.importorskip("sklearn")
    cfg = {"name": "c", "out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
           "data": {"name": "digits", "subset": 160}, "teacher": {"arch": "resnet14", "epochs": 1},
           "student": {"arch": "resnet8"}, "schedule": {"epochs": 1}, "seeds": [0],
           "methods": [{"name": "s", "kind": "student_kd"}], "trainer": {"compile": "fast"}}
    with pytest.raises(CompareConfigError, match=r"trainer\.compile='fast' is not a compile setting"):
        CompareConfig.from_dict(cfg)
    assert CompareConfig.from_dict({**cfg, "trainer": {"compile": "reduce-overhead"}}).trainer.compile == \
        "reduce-overhead"


def test_finetune_refuses_compile_with_fsdp(monkeypatch):
    from inhernet.train.finetune import check_finetune_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    opts = dict(task="causal-lm", max_steps=2, batch_size=2, grad_accum=1, lr=1e-3, weight_decay=0.0,
                schedule="cosine", warmup=0, kd_alpha=0.0, temperature=2.0, teacher=None, max_grad_norm=None,
                eval_every=None, eval_batch_size=2, checkpoint_every=None, teacher_logits="auto",
                accelerator="gpu", precision=None)
    check_finetune_options(strategy="fsdp", compile=None, **opts)
    check_finetune_options(strategy="ddp", compile=True, **opts)
    with pytest.raises(ConfigError, match="compile=True with strategy='fsdp' is not supported"):
        check_finetune_options(strategy="fsdp", compile=True, **opts)
    with pytest.raises(ConfigError, match="compile='turbo'"):
        check_finetune_options(strategy="auto", compile="turbo", **opts)
