"""Parameter counts: the formula of METHOD.md §3 and its reference table."""

import pytest
import torch
from torch import nn

import inhernet
from inhernet import InherConv2d, InherLinear, count_parameters, inherit
from inhernet.ranks import LayerSpec, inherited_params


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("structure", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("gate", ["softmax", "none"])
def test_layer_counts_equal_formula(heads, bias, structure, gate):
    r, d_in, d_out = 5, 3 * 3 * 7, 11
    conv = InherConv2d(7, d_out, 3, rank=r, heads=heads, bias=bias, structure=structure, gate=gate)
    spec = LayerSpec("x", "Conv2d", d_in, d_out, bias)
    assert count_parameters(conv) == inherited_params(spec, r, heads, structure, gate)
    if structure == "asymmetric" and gate == "softmax" and heads > 1:  # METHOD.md §3 written out
        expected = r * d_in + heads * r * d_out + (r * heads + heads) + (heads * d_out if bias else 0)
        assert count_parameters(conv) == expected
    lin = InherLinear(20, 9, rank=r, heads=heads, bias=bias, structure=structure, gate=gate)
    assert count_parameters(lin) == inherited_params(LayerSpec("y", "Linear", 20, 9, bias), r, heads, structure, gate)


DENSE = {"resnet20": 278_324, "resnet32": 472_756, "resnet56": 861_620, "resnet110": 1_736_564,
         "wrn_40_1": 569_780, "wrn_40_2": 2_255_156, "wrn_16_2": 703_284}
INHERITED = [  # (model, rank, params with H=3, convs factorised)
    ("resnet56", 8, 205_663, 57), ("resnet56", 16, 383_507, 37),
    ("resnet110", 8, 404_689, 111), ("resnet110", 32, 1_306_976, 36),
    ("wrn_40_2", 16, 531_910, 38), ("wrn_40_2", 32, 1_001_183, 25),
]


@pytest.mark.parametrize("name", DENSE)
def test_dense_reference_counts(name):
    assert count_parameters(inhernet.models.create_model(name, num_classes=100)) == DENSE[name]


@pytest.mark.parametrize("name,rank,params,factorised", INHERITED)
def test_inherited_reference_counts(name, rank, params, factorised):
    teacher = inhernet.models.create_model(name, num_classes=100)
    # the paper's counts factorise every conv, even the stem that grows (min_saving=None)
    model = inherit(teacher, rank=rank, heads=3, min_saving=None, progress=False)
    assert count_parameters(model) == params
    rows = inhernet.layer_report(model).rows
    assert sum(r.rank is not None for r in rows) == factorised
    assert sum(r.params_after for r in rows) + sum(
        p.numel() for n, p in model.named_parameters() if not any(n.startswith(r.name + ".") for r in rows)
    ) == params


def test_default_keeps_layers_dense_that_would_grow():
    """resnet56 at rank 8, H = 3: the 16×3×3×3 stem (432 params) would need 627 and the 1×1
    downsample conv (512) 923, so by default both stay dense and the network is smaller than the
    paper's count by exactly the difference."""
    teacher = inhernet.models.create_model("resnet56", num_classes=100)
    model = inherit(teacher, rank=8, heads=3, progress=False)
    dense = {r.name: r.skipped for r in inhernet.layer_report(model).rows if r.rank is None}
    assert set(dense) == {"conv1", "layer2.0.downsample.0", "fc"}
    assert "627" in dense["conv1"] and "no smaller than dense" in dense["conv1"]
    assert count_parameters(model) == 205_663 - (627 - 432) - (923 - 512)


def test_tied_weights_are_counted_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert count_parameters(nn.ModuleList([emb, head])) == 40


def test_flops_fall_with_rank_and_match_a_hand_count():
    teacher = inhernet.models.create_model("resnet20", num_classes=10)
    dense = inhernet.count_flops(teacher, (1, 3, 32, 32))
    small = inhernet.count_flops(inherit(teacher, rank=4, progress=False), (1, 3, 32, 32))
    assert 0 < small < dense
    layer = InherConv2d(8, 16, 3, rank=4, heads=1, padding=1, bias=False)
    # k×k conv 8→4 then 1×1 4→16 on 10×10: 2 FLOPs per multiply-add
    assert inhernet.count_flops(layer, (1, 8, 10, 10)) == 2 * 100 * (4 * 8 * 9 + 16 * 4)
