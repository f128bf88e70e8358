"""Tests for the CIFAR model zoo (``inhernet.models``)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from inhernet.models import (
    VGG,
    ResNet,
    WideResNet,
    create_model,
    is_model,
    list_models,
    register_model,
)
from inhernet.models import registry as registry_mod

# Parameter counts of RepDistiller's definitions (HobbitLong/RepDistiller,
# models/{resnet,wrn,vgg}.py; VGG with batch_norm=True).
# Columns: (num_classes=100, in_channels=3), (num_classes=10, in_channels=1).
# resnet20/32/56/110 and wrn_16_2/40_1/40_2 at 100 classes are the widely quoted reference figures;
# the rest were cross-checked against a verbatim copy of the RepDistiller code (identical state_dict
# keys, shapes and outputs). resnet8x4 ~1.23M, resnet32x4 ~7.43M, vgg8 ~3.96M, vgg13 ~9.46M.
PARAM_COUNTS: dict[str, tuple[int, int]] = {
    "resnet8": (83_892, 77_754),
    "resnet14": (181_108, 174_970),
    "resnet20": (278_324, 272_186),
    "resnet32": (472_756, 466_618),
    "resnet44": (667_188, 661_050),
    "resnet56": (861_620, 855_482),
    "resnet110": (1_736_564, 1_730_426),
    "resnet8x4": (1_233_540, 1_209_834),
    "resnet32x4": (7_433_860, 7_410_154),
    "wrn_16_1": (180_916, 174_778),
    "wrn_16_2": (703_284, 691_386),
    "wrn_40_1": (569_780, 563_642),
    "wrn_40_2": (2_255_156, 2_243_258),
    "vgg8": (3_965_028, 3_917_706),
    "vgg11": (9_277_284, 9_229_962),
    "vgg13": (9_462_180, 9_414_858),
    "vgg16": (14_774_436, 14_727_114),
    "vgg19": (20_086_692, 20_039_370),
}

ALL_MODELS = sorted(PARAM_COUNTS)


@functools.cache
def built(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Build each configuration once per session (the VGGs take a while to initialise);
    callers only read parameters or run eval-mode forwards, so sharing is safe."""
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, in_channels=in_channels).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def head(model: nn.Module) -> nn.Linear:
    return model.classifier if isinstance(model, VGG) else model.fc


def test_registry_contains_exactly_the_zoo():
    assert list_models() == ALL_MODELS
    assert all(is_model(name) for name in ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_param_counts_match_repdistiller(name):
    expected_100, expected_10_grey = PARAM_COUNTS[name]
    assert n_params(built(name)) == expected_100
    assert n_params(built(name, 10, 1)) == expected_10_grey


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet20", 278_324),
        ("resnet32", 472_756),
        ("resnet56", 861_620),
        ("resnet110", 1_736_564),
        ("wrn_40_1", 569_780),
        ("wrn_40_2", 2_255_156),
        ("wrn_16_2", 703_284),
    ],
)
def test_published_reference_counts(name, expected):
    assert n_params(built(name, num_classes=100)) == expected


@pytest.mark.parametrize(
    "name, approx_millions",
    [("resnet8x4", 1.23), ("resnet32x4", 7.43), ("vgg8", 3.96), ("vgg13", 9.46)],
)
def test_widely_quoted_sizes(name, approx_millions):
    # the literature truncates (vgg8 is 3,965,028 -> "3.96M"), so allow one unit in the last digit
    assert abs(n_params(built(name)) / 1e6 - approx_millions) < 0.01


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_rgb_32(name):
    with torch.no_grad():
        out = built(name)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_grey_28(name):
    with torch.no_grad():
        out = built(name, 10, 1)(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8"])
@pytest.mark.parametrize("size", [(40, 40), (64, 64), (36, 48)])
def test_forward_other_sizes(name, size):
    with torch.no_grad():
        assert built(name)(torch.randn(1, 3, *size)).shape == (1, 100)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_classifier_attribute_and_stem(name):
    model = built(name, 10, 1)
    fc = head(model)
    assert isinstance(fc, nn.Linear) and fc.out_features == 10
    attr = "classifier" if name.startswith("vgg") else "fc"
    assert getattr(model, attr) is fc
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1


def test_model_classes():
    assert isinstance(built("resnet8x4"), ResNet)
    assert isinstance(built("wrn_16_1"), WideResNet)
    assert isinstance(built("vgg11"), VGG)


def test_in_channels_changes_only_the_stem():
    rgb, grey = built("resnet20"), create_model("resnet20", in_channels=1)
    shapes_rgb = {k: v.shape for k, v in rgb.state_dict().items()}
    shapes_grey = {k: v.shape for k, v in grey.state_dict().items()}
    assert shapes_rgb.keys() == shapes_grey.keys()
    diff = [k for k in shapes_rgb if shapes_rgb[k] != shapes_grey[k]]
    assert diff == ["conv1.weight"]


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "vgg8"])
def test_weight_init(name):
    model = built(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, nn.Conv2d) and m.weight.numel() >= 9 * 64 * 64:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5
            assert abs(m.weight.std().item() / std - 1) < 0.05
    if name.startswith("vgg"):
        assert abs(model.classifier.weight.std().item() - 0.01) < 0.001
        assert torch.all(model.classifier.bias == 0)


def test_state_dict_keys_follow_repdistiller():
    # Keeping RepDistiller's module names lets its checkpoints load with load_state_dict.
    assert "layer1.0.conv1.weight" in built("resnet20").state_dict()
    assert "layer1.0.downsample.0.weight" in built("resnet8x4").state_dict()
    assert "block2.layer.0.convShortcut.weight" in built("wrn_40_2").state_dict()
    assert "block0.1.running_mean" in built("vgg8").state_dict()


def test_backward():
    model = create_model("resnet8", num_classes=10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_error():
    from inhernet.errors import ConfigError

    with pytest.raises(ConfigError) as excinfo:  # a ConfigError is a ValueError too
        create_model("resnet57")
    assert isinstance(excinfo.value, ValueError)
    msg = str(excinfo.value)
    assert "'resnet57'" in msg
    assert "(did you mean 'resnet56'" in msg
    assert "vgg19" in msg and "wrn_40_2" in msg  # lists the available models
    assert not is_model("resnet57")


def test_unknown_model_without_close_match():
    with pytest.raises(ValueError, match="Unknown model 'xyz'") as excinfo:
        create_model("xyz")
    assert "did you mean" not in str(excinfo.value)


def test_list_models_pattern():
    assert list_models("wrn_*") == ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
    assert list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19", "vgg8"]
    assert list_models("resnet*x4") == ["resnet32x4", "resnet8x4"]
    assert list_models("resnet?") == ["resnet8"]
    assert list_models("nothing*") == []
    assert list_models(None) == list_models()


def test_invalid_depths():
    with pytest.raises(ValueError):
        ResNet(21, [16, 16, 32, 64])
    with pytest.raises(ValueError):
        WideResNet(17)


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry_mod, "_MODEL_ENTRYPOINTS", dict(registry_mod._MODEL_ENTRYPOINTS))

    @register_model
    def tiny_test_net(num_classes: int = 100, in_channels: int = 3, hidden: int = 4):
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, num_classes),
        )

    assert is_model("tiny_test_net")
    assert "tiny_test_net" in list_models("tiny*")
    model = create_model("tiny_test_net", num_classes=3, in_channels=2, hidden=5)
    assert model(torch.randn(1, 2, 28, 28)).shape == (1, 3)
    assert model[0].out_channels == 5

    def other():  # a different function claiming a taken name
        return nn.Identity()

    other.__name__ = other.__qualname__ = "resnet20"
    with pytest.raises(ValueError, match="already registered"):
        register_model(other)
