"""save / load: safetensors + JSON, exact round trip, clear errors on wrong input."""

import json

import pytest
import torch

import inhernet
from inhernet.io import CONFIG_NAME, WEIGHTS_NAME, InherNetLoadError


@pytest.fixture()
def saved(tmp_path):
    teacher = inhernet.models.create_model("resnet20", num_classes=10)
    model = inhernet.inherit(teacher, rank=4, heads=3, progress=False)
    # change the weights so the round trip is not just "SVD again"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 3, 32, 32)).sum().backward()
    opt.step()
    model.eval()
    folder = inhernet.save(model, tmp_path / "rn20")
    return model, folder


def test_round_trip_gives_identical_outputs(saved):
    model, folder = saved
    assert (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()
    again = inhernet.load(folder, inhernet.models.create_model("resnet20", num_classes=10)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert str(inhernet.layer_report(again)) == str(inhernet.layer_report(model))


def test_no_pickle_in_the_folder(saved):
    _, folder = saved
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["format_version"] == 1 and meta["plan"]["config"]["rank"] == 4
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])


@pytest.mark.parametrize("name,kwargs", [("resnet32", {"num_classes": 10}), ("resnet20", {"num_classes": 100})])
def test_wrong_architecture_is_a_clear_error(saved, name, kwargs):
    _, folder = saved
    with pytest.raises(InherNetLoadError, match="not the architecture this InherNet was inherited from"):
        inhernet.load(folder, inhernet.models.create_model(name, **kwargs))


def test_truncated_weights_file(saved):
    _, folder = saved
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(InherNetLoadError, match="truncated or damaged"):
        inhernet.load(folder, inhernet.models.create_model("resnet20", num_classes=10))


def test_corrupted_weights_file(saved):
    _, folder = saved
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-7] ^= 0xFF  # one flipped byte inside a tensor: same size, wrong values
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(InherNetLoadError, match="corrupted"):
        inhernet.load(folder, inhernet.models.create_model("resnet20", num_classes=10))


def test_missing_or_damaged_config(saved, tmp_path):
    _, folder = saved
    with pytest.raises(InherNetLoadError, match="not a folder written by inhernet.save"):
        inhernet.load(tmp_path / "nothing", inhernet.models.create_model("resnet20", num_classes=10))
    (folder / CONFIG_NAME).write_text("{ not json")
    with pytest.raises(InherNetLoadError, match="not valid JSON"):
        inhernet.load(folder, inhernet.models.create_model("resnet20", num_classes=10))


def test_save_requires_an_inherited_model(tmp_path):
    with pytest.raises(ValueError, match="carries no inheritance plan"):
        inhernet.save(inhernet.models.create_model("resnet20", num_classes=10), tmp_path / "x")


def test_load_into_an_already_inherited_model_is_refused(saved):
    model, folder = saved
    with pytest.raises(InherNetLoadError, match="already contains inherited layers"):
        inhernet.load(folder, model)
