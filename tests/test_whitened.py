"""init="whitened": the activation-aware SVD initialisation (SVD of W·L, L the Cholesky factor of
the layer's input second moment on calibration batches)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import inhernet
from inhernet.config import ConfigError


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 5)).eval()


def _anisotropic(n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, 16)  # a few loud channels, as in transformer activations
    return torch.randn(n, 16, generator=g) * scales


def test_full_rank_whitened_equals_the_teacher():
    teacher, x = _mlp(), _anisotropic()
    model = inhernet.inherit(teacher, init="whitened", calibration=[x[:256], x[256:]], rank=10_000, heads=2,
                             dense_at_full_rank=False, progress=False).eval()
    assert len(inhernet.layer_report(model).rows) == 3
    with torch.no_grad():
        torch.testing.assert_close(model(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_whitened_truncation_has_less_error_on_the_calibration_inputs_than_plain_svd():
    teacher, x = _mlp(), _anisotropic()
    first = dict(target_modules=["0"], rank=3, heads=1, progress=False)
    plain = inhernet.inherit(teacher, **first)
    aware = inhernet.inherit(teacher, init="whitened", calibration=[x], **first)
    with torch.no_grad():
        ref = teacher[0](x)
        err_plain = (plain[0](x) - ref).pow(2).mean().item()
        err_aware = (aware[0](x) - ref).pow(2).mean().item()
    assert err_aware < 0.5 * err_plain  # the optimum for these inputs, far better on anisotropic data
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), _mlp().state_dict().values()))


def test_whitened_spectral_budget_and_save_load_round_trip(tmp_path):
    teacher, x = _mlp(), _anisotropic()
    model = inhernet.inherit(teacher, init="whitened", calibration=[x], budget=0.6, heads=2, progress=False)
    assert inhernet.count_parameters(model) <= int(0.6 * inhernet.count_parameters(teacher))
    folder = inhernet.save(model, tmp_path / "w")
    again = inhernet.load(folder, _mlp())
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_whitened_errors_name_the_fix():
    teacher, x = _mlp(), _anisotropic()
    with pytest.raises(ConfigError, match="calibration"):
        inhernet.inherit(teacher, init="whitened", rank=4, progress=False)
    with pytest.raises(ConfigError, match="only used by init='whitened'"):
        inhernet.inherit(teacher, rank=4, calibration=[x], progress=False)
    with pytest.raises(ConfigError, match="never reached"):
        inhernet.inherit(nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 2)}), init="whitened",
                         calibration=[], rank=2, target_modules=["a"], progress=False)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    with pytest.raises(ConfigError, match="not Conv2d"):
        inhernet.inherit(conv, init="whitened", calibration=[torch.randn(2, 3, 6, 6)], rank=2, progress=False)


def test_whitened_on_a_hugging_face_decoder_with_dict_batches():
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    teacher = tf.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 60, (4, 12), generator=torch.Generator().manual_seed(2))
    batches = [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]
    full = inhernet.inherit(teacher, init="whitened", calibration=batches, rank=10_000, heads=2,
                            dense_at_full_rank=False, progress=False).eval()
    with torch.no_grad():
        ref = teacher(ids).logits
        torch.testing.assert_close(full(ids).logits, ref, rtol=1e-4, atol=1e-4)
    assert teacher.training is False and not any(m._forward_pre_hooks for m in teacher.modules())  # hooks removed
    from inhernet.hf.streaming import inherit_checkpoint
    with pytest.raises(ConfigError, match="streaming pass"):
        inherit_checkpoint("src-unused", "dst-unused", init="whitened", rank=4)
