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


def _first_layer_errors(teacher, x, rank=3):
    """Mean squared output error of ``teacher[0]`` inherited at ``rank`` on ``x``: plain SVD, whitened."""
    first = dict(target_modules=["0"], rank=rank, heads=1, progress=False)
    plain = inhernet.inherit(teacher, **first)
    aware = inhernet.inherit(teacher, init="whitened", calibration=[x], **first)
    with torch.no_grad():
        ref = teacher[0](x)
        return tuple((m[0](x) - ref).pow(2).mean().item() for m in (plain, aware))


def test_whitened_truncation_has_less_error_on_the_calibration_inputs_than_plain_svd():
    teacher, x = _mlp(), _anisotropic()
    err_plain, err_aware = _first_layer_errors(teacher, x)
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



@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 8, 3),
    nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=2),
    nn.Conv2d(3, 8, (3, 2), padding="same", padding_mode="reflect"),
    nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular", bias=False),
])
def test_conv2d_layer_inputs_are_the_patches_its_weight_multiplies(conv):
    from inhernet.calibrate import layer_inputs

    x = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        ref = conv(x) - (0 if conv.bias is None else conv.bias[:, None, None])
        rows = layer_inputs(conv, x) @ conv.weight.reshape(8, -1).T  # (N·L, C_out)
    torch.testing.assert_close(rows.view(2, -1, 8).transpose(1, 2).reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 5)).eval()


def _images(n=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) * torch.tensor([3.0, 0.3, 0.03])[None, :, None, None]


def test_whitened_conv2d_full_rank_equals_the_teacher_and_truncation_beats_plain_svd():
    teacher, x = _cnn(), _images()
    full = inhernet.inherit(teacher, init="whitened", calibration=[x[:32], x[32:]], rank=10_000, heads=2,
                            dense_at_full_rank=False, progress=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(full(x), teacher(x), rtol=1e-4, atol=1e-4)
    err_plain, err_aware = _first_layer_errors(teacher, x)
    # the optimum on these inputs: the mean squared output error is the Eckart–Young tail of W·L
    from inhernet.calibrate import cholesky_factor, input_second_moments

    L = cholesky_factor(input_second_moments(teacher, {"0": teacher[0]}, [x])["0"])
    tail = torch.linalg.svdvals(teacher[0].weight.detach().reshape(16, -1).double() @ L)[3:].pow(2).sum().item()
    assert err_aware == pytest.approx(tail / 16, rel=1e-2)
    assert err_aware < 0.8 * err_plain


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


def test_whitened_factors_are_balanced_and_keep_the_product():
    """Each rank-one component's up column and down row get the same norm (as a plain SVD's do)."""
    from inhernet.calibrate import cholesky_factor, input_second_moments
    from inhernet.svd import truncated_svd

    teacher, x = _mlp(), _anisotropic()
    L = cholesky_factor(input_second_moments(teacher, {"0": teacher[0]}, [x])["0"])
    fact = truncated_svd(teacher[0].weight.detach(), 5, whiten=L)
    down, up = fact.factors()
    torch.testing.assert_close(up.norm(dim=0), down.norm(dim=1))
    torch.testing.assert_close(up @ down, (fact.U * fact.S) @ fact.Vh)
    assert (fact.Vh.norm(dim=1) - 1).abs().max() > 0.1  # whitened rows are not unit: balancing mattered
