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
    with pytest.raises(ConfigError, match="only used by an init that needs them"):
        inhernet.inherit(teacher, rank=4, calibration=[x], progress=False)
    with pytest.raises(ConfigError, match="never reached"):
        inhernet.inherit(_SkipsA(), init="whitened", calibration=[torch.randn(3, 4)], rank=2, target_modules=["a"],
                         progress=False)


class _SkipsA(nn.Module):
    """A model whose forward never runs its layer ``a``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(x)


def _whitened_first_layer(teacher, calibration):
    model = inhernet.inherit(teacher, init="whitened", calibration=calibration, rank=3, heads=1,
                             target_modules=["0"], progress=False)
    return model[0].state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_calibration_accepts_a_dataloader_of_pairs_a_list_one_tensor_and_moves_batches_to_the_model():
    """What users pass: a DataLoader of (x, y) pairs (labels ignored), a list of tensors, one tensor,
    a list of (x, y) tuples, dicts of keyword inputs: all give the same statistics, so the same model."""
    from torch.utils.data import DataLoader, TensorDataset

    teacher, x = _mlp(), _anisotropic(256)
    y = torch.randint(0, 5, (256,))
    ref = _whitened_first_layer(teacher, [x[:128], x[128:]])
    loader = DataLoader(TensorDataset(x, y), batch_size=128)  # yields [x, y] lists
    assert _same(_whitened_first_layer(teacher, loader), ref)
    assert _same(_whitened_first_layer(teacher, [(x[:128], y[:128]), (x[128:], y[128:])]), ref)
    assert _same(_whitened_first_layer(teacher, x), ref)  # one tensor: one batch, not 256 rows
    # one-hot float targets: the model's forward takes one input, so the pair is still (input, target)
    onehot = nn.functional.one_hot(y, 5).float()
    assert _same(_whitened_first_layer(teacher, DataLoader(TensorDataset(x, onehot), batch_size=128)), ref)

    class Keywords(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, features, scale=None):
            return self.inner(features)

    kw = Keywords(teacher)
    model = inhernet.inherit(kw, init="whitened", calibration=[{"features": x[:128]}, {"features": x[128:]}],
                             rank=3, heads=1, target_modules=["inner.0"], progress=False)
    assert _same(model.inner[0].state_dict(), ref)
    # an optional second positional input: integer class labels are labels, a float tensor is an input
    assert _same(inhernet.inherit(kw, init="whitened", calibration=loader, rank=3, heads=1,
                                  target_modules=["inner.0"], progress=False).inner[0].state_dict(), ref)


def test_calibration_rule_for_two_element_batches():
    from inhernet.calibrate import model_inputs

    x, labels, other = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(4, 3)

    class One(nn.Module):
        def forward(self, x):
            return x

    class Optional(nn.Module):
        def forward(self, x, mask=None):
            return x

    class Two(nn.Module):
        def forward(self, x, y):
            return x + y

    assert model_inputs(One(), (x, other))[0] == (x,)
    assert model_inputs(Optional(), (x, labels))[0] == (x,)
    assert len(model_inputs(Optional(), (x, other))[0]) == 2  # a float tensor: the second input
    assert len(model_inputs(Two(), (x, labels))[0]) == 2  # two required inputs get both
    assert model_inputs(One(), {"x": x}) == ((), {"x": x})
    assert len(model_inputs(One(), (x, labels, labels))[0]) == 3  # not a pair: positional


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_batches_are_a_calibration_error(bad):
    teacher, x = _mlp(), _anisotropic(64)
    broken = x.clone()
    broken[3, 2] = bad
    with pytest.raises(ConfigError, match=r"calibration batch 1 has 1 non-finite value\(s\) \(NaN/Inf\) in its "
                                          r"positional input 0.*drop or repair"):
        inhernet.inherit(teacher, init="whitened", calibration=[x, broken], rank=3, progress=False)
    with pytest.raises(ConfigError, match="calibration batch 0 has .* non-finite"):  # in a dict, for HF-style models
        inhernet.inherit(_DictInput(teacher), init="whitened", calibration=[{"x": broken}], rank=3, progress=False)


def test_a_teacher_that_overflows_on_the_calibration_data_is_a_calibration_error():
    teacher, x = _mlp(), _anisotropic(64)
    with torch.no_grad():
        teacher[0].weight.mul_(1e38)  # finite weights whose activations overflow float32 to inf
    with pytest.raises(ConfigError, match=r"calibration batch 0: the input of layer '2' is non-finite.*preprocessed"):
        inhernet.inherit(teacher, init="whitened", calibration=[x], rank=3, progress=False)


class _DictInput(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("calibration,match", [
    ([], "calibration data is empty"),
    (iter([]), "calibration data is empty"),
    (42, "not a collection of batches"),
    ([["not", "tensors"]], "calibration batch 0 .* cannot be run through the model"),
])
def test_empty_or_unusable_calibration_is_a_clear_error(calibration, match):
    with pytest.raises(ConfigError, match=match):
        inhernet.inherit(_mlp(), init="whitened", calibration=calibration, rank=3, progress=False)



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
    from inhernet.calibrate import input_second_moments
    from inhernet.factorise.whitening import cholesky_factor

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
    assert full.inhernet_plan.calibration["mode"] == "sequential"  # auto: a decoder's blocks, one at a time
    assert full.inhernet_plan.calibration["blocks"] == 2


def test_whitened_factors_are_balanced_and_keep_the_product():
    """Each rank-one component's up column and down row get the same norm (as a plain SVD's do)."""
    from inhernet.calibrate import input_second_moments
    from inhernet.factorise.whitening import cholesky_factor
    from inhernet.factorise.svd import truncated_svd

    teacher, x = _mlp(), _anisotropic()
    L = cholesky_factor(input_second_moments(teacher, {"0": teacher[0]}, [x])["0"])
    fact = truncated_svd(teacher[0].weight.detach(), 5, whiten=L)
    down, up = fact.factors()
    torch.testing.assert_close(up.norm(dim=0), down.norm(dim=1))
    torch.testing.assert_close(up @ down, (fact.U * fact.S) @ fact.Vh)
    assert (fact.Vh.norm(dim=1) - 1).abs().max() > 0.1  # whitened rows are not unit: balancing mattered
