"""InherLinear / InherConv2d: the forward pass equals its definition, SVD init reproduces the
rank-r truncation, the head scales behave as documented, and the gate breaks head symmetry."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inhernet
from inhernet import InheritConfig, InherConv2d, InherLinear, inherit
from inhernet.config import ConfigError
from inhernet.factorise.svd import as_matrix, singular_values, tail_error


def reference_forward(layer, x):
    """The definition, head by head (like the paper's demo): y = Σ_h g_h (B_h z_h + b_h)."""
    conv = isinstance(layer, InherConv2d)
    if conv:
        z = F.conv2d(x, layer.down, None, layer.stride, layer.padding, layer.dilation)
        pooled = z.mean((2, 3))
    else:
        z = F.linear(x, layer.down)
        pooled = z
    H, r = layer.heads, layer.rank
    if layer.gate is not None:
        g = torch.softmax(layer.gate(pooled), -1)
    else:
        g = torch.full((*pooled.shape[:-1], H), 1.0 / H)
    y = 0
    for h in range(H):
        zh = z[:, h * r:(h + 1) * r] if (conv and layer.structure == "symmetric") else (
            z[..., h * r:(h + 1) * r] if layer.structure == "symmetric" else z)
        if conv:
            u = F.conv2d(zh, layer.up[h][:, :, None, None], None if layer.bias is None else layer.bias[h])
            y = y + g[:, h, None, None, None] * u
        else:
            u = F.linear(zh, layer.up[h], None if layer.bias is None else layer.bias[h])
            y = y + g[..., h:h + 1] * u
    return y


def _randomise(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("structure", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("gate", ["softmax", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_vectorised_forward_equals_per_head_definition(heads, structure, gate, bias):
    lin = InherLinear(12, 7, rank=4, heads=heads, bias=bias, gate=gate, structure=structure)
    conv = InherConv2d(5, 6, 3, rank=4, heads=heads, stride=2, padding=1, dilation=1, bias=bias, gate=gate, structure=structure)
    for layer, x in ((lin, torch.randn(3, 5, 12)), (conv, torch.randn(2, 5, 9, 9))):
        _randomise(layer)
        torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_gate_is_per_sample_for_conv_and_per_token_for_linear():
    conv = InherConv2d(4, 4, 3, rank=2, heads=3, padding=1)
    z = torch.randn(5, 2, 6, 6)
    assert conv.gate_weights(z).shape == (5, 3)
    lin = InherLinear(8, 8, rank=2, heads=3)
    assert lin.gate_weights(torch.randn(5, 7, 2)).shape == (5, 7, 3)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 24), nn.Linear(24, 5)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("head_init", ["copies", "perturbed", "split"])
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("name,shape", [("resnet20", (4, 3, 32, 32)), ("vgg8", (2, 3, 32, 32)), ("mlp", (3, 10, 16))])
def test_full_rank_exact_scale_reproduces_teacher(name, shape, heads, head_init):
    teacher = MLP() if name == "mlp" else inhernet.models.create_model(name, num_classes=10)
    teacher.eval()
    if name == "vgg8":  # the test needs convs with biases
        assert any(isinstance(m, nn.Conv2d) and m.bias is not None for m in teacher.modules())
    cfg = InheritConfig(rank=100_000, heads=heads, dense_at_full_rank=False, exclude_classifier=False,
                        head_init=head_init, head_init_scale=0.5 if head_init == "split" else 0.005)
    model = inherit(teacher, cfg, progress=False).eval()
    assert all(r.rank is not None for r in inhernet.layer_report(model).rows)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert _rel_err(model(x), teacher(x)) <= 1e-5


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_rank_r_init_is_the_truncated_svd_with_eckart_young_error(rank):
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    teacher = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(10 * 5 * 5, 3))
    model = inherit(teacher, rank=rank, heads=3, head_init="copies", progress=False)
    layer = model[0]
    W = as_matrix(conv.weight.detach())
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    W_r = U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank]
    for g in (None, torch.tensor([0.7, 0.2, 0.1])):  # any gate value: all heads are identical
        torch.testing.assert_close(as_matrix(layer.effective_weight(g)), W_r, rtol=1e-5, atol=1e-5)
    err = (W - as_matrix(layer.effective_weight())).norm().item()
    assert err == pytest.approx(tail_error(singular_values(conv.weight.detach()), rank), rel=1e-4)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, W_r.view_as(conv.weight), padding=1), rtol=1e-4, atol=1e-5)


def test_paper_head_scale_gives_truncation_over_heads():
    lin = nn.Linear(20, 12)
    teacher = nn.Sequential(lin, nn.ReLU(), nn.Linear(12, 2))
    model = inherit(teacher, rank=5, heads=3, head_scale="paper", min_saving=None, progress=False)
    U, S, Vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    W_r = U[:, :5] @ torch.diag(S[:5]) @ Vh[:5]
    x = torch.randn(4, 20)
    torch.testing.assert_close(model[0](x), (x @ W_r.T + lin.bias.detach()) / 3, rtol=1e-5, atol=1e-5)


def _train_steps(model, x, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_the_papers_random_gate_breaks_the_symmetry_of_copies():
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    model = inherit(teacher, rank=3, heads=3, head_init="copies", exclude_classifier=False, progress=False)
    layer = model[2]
    assert torch.equal(layer.up[0], layer.up[1])  # identical at init
    _train_steps(model, torch.randn(8, 3, 6, 6))
    assert (layer.up[0] - layer.up[1]).abs().max() > 1e-6
    assert (layer.up[1] - layer.up[2]).abs().max() > 1e-6


def test_without_a_gate_heads_never_diverge():
    """Why the gate matters: with fixed equal weights every head gets the same gradient."""
    teacher = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    model = inherit(teacher, rank=2, heads=3, gate="none", exclude_classifier=False, min_saving=None, progress=False)
    _train_steps(model, torch.randn(16, 6))
    torch.testing.assert_close(model[2].up[0], model[2].up[2])


def test_layer_keeps_dtype_and_device_of_teacher():
    teacher = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    model = inherit(teacher, rank=2, heads=2, progress=False)
    assert model[0].down.dtype == torch.float64
    assert model(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float64


def test_h1_has_no_gate_and_matches_count():
    layer = InherLinear(10, 6, rank=3, heads=1)
    assert layer.gate is None
    assert inhernet.count_parameters(layer) == 3 * 10 + 3 * 6 + 6


def _head_cosine(layer) -> float:
    flat = torch.nn.functional.normalize(layer.up.detach().flatten(1), dim=1)
    sims = flat @ flat.T
    return float(sims[~torch.eye(layer.heads, dtype=torch.bool)].min())


@pytest.mark.parametrize("structure", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("head_init,scale", [("perturbed", 0.005), ("split", 0.3)])
def test_diversified_heads_keep_the_function_and_wake_the_gate(head_init, scale, structure):
    """The paper's identical heads give the gate no gradient (ratio ~1e-9) and stay copies under SGD;
    zero-sum head deviations with a zero gate compute the same function at step 0, give the gate a
    gradient and let the heads grow apart."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 16)
    kw = dict(rank=6, heads=3, structure=structure, min_saving=None, progress=False)
    copies = inherit(teacher, head_init="copies", **kw)
    model = inherit(teacher, head_init=head_init, head_init_scale=scale, **kw)
    torch.testing.assert_close(model(x), copies(x), rtol=1e-5, atol=1e-6)
    layer, ref = model[2], copies[2]
    assert torch.count_nonzero(layer.gate.weight) == 0 and torch.count_nonzero(layer.gate.bias) == 0
    deltas = (layer.up - ref.up.mean(0, keepdim=True)).detach()
    assert deltas.sum(0).abs().max() < 1e-6  # zero-sum
    assert float(deltas.flatten(1).norm(dim=1).mean() / ref.up[0].norm()) == pytest.approx(scale, rel=1e-4)
    for net in (copies, model):
        net.zero_grad()
        net(x).pow(2).mean().backward()
    ratio = lambda m: float(m[2].gate.weight.grad.norm() / m[2].up.grad.norm())  # noqa: E731
    assert ratio(copies) < 1e-6 and ratio(model) > 1e-4
    for net in (copies, model):
        _train_steps(net, x, steps=100)
    assert _head_cosine(copies[2]) > 0.9999
    assert _head_cosine(model[2]) < _head_cosine(copies[2]) - 1e-5


def test_head_init_needs_a_gate_to_do_anything():
    teacher = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    a = inherit(teacher, rank=2, heads=3, gate="none", head_init="perturbed", min_saving=None, progress=False)
    b = inherit(teacher, rank=2, heads=3, gate="none", min_saving=None, progress=False)
    assert torch.equal(a[0].up, b[0].up)  # no gate: every head would get the same gradient
    with pytest.raises(ConfigError, match="head_init"):
        InheritConfig(head_init="noisy")
    with pytest.raises(ConfigError, match="head_init_scale"):
        InheritConfig(head_init_scale=-1.0)


def test_batched_product_leaves_the_bias_to_the_compiler():
    """inhernet.layers.batched_product: ``a @ b + bias`` — one baddbmm eager; traced for the compiler
    (torch.export, what compile="aot" uses) a bmm and a separate addition, so the compiler can fuse
    the addition into the next elementwise kernel instead of first copying the broadcast bias into
    the whole output (what its baddbmm does)."""
    from inhernet.layers import batched_product

    g = torch.Generator().manual_seed(0)
    a, b, bias = torch.randn(2, 3, 4, generator=g), torch.randn(2, 4, 5, generator=g), torch.randn(2, 1, 5, generator=g)
    expected = torch.baddbmm(bias, a, b)
    torch.testing.assert_close(batched_product(a, b, bias), expected)
    torch.testing.assert_close(batched_product(a, b), torch.bmm(a, b))

    class Product(nn.Module):
        def forward(self, a, b, bias):
            return batched_product(a, b, bias)

    exported = torch.export.export(Product(), (a, b, bias))
    ops = {n.target for n in exported.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.bmm.default in ops and torch.ops.aten.baddbmm.default not in ops, ops
    torch.testing.assert_close(exported.module()(a, b, bias), expected)
