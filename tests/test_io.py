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


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


@pytest.fixture()
def small_saved(tmp_path):
    folder = inhernet.save(inhernet.inherit(_mlp(), rank=2, heads=2, min_saving=None, progress=False), tmp_path / "m")
    return folder, json.loads((folder / CONFIG_NAME).read_text())


def _set(path, value):
    def damage(meta):
        *keys, last = path
        obj = meta
        for k in keys:
            obj = obj[k]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value
        return meta
    return damage


_DELETE = object()
_DAMAGES = {
    "a JSON list": (lambda m: [m], "holds a JSON array"),
    "a JSON null": (lambda m: None, "holds a JSON null"),
    "a JSON string": (lambda m: "inhernet", "holds a JSON string"),
    "no format_version": (_set(["format_version"], _DELETE), "'format_version' is None"),
    "format_version a string": (_set(["format_version"], "1"), "'format_version' is '1'"),
    "no plan": (_set(["plan"], _DELETE), "has no 'plan' key"),
    "plan a list": (_set(["plan"], []), r"\['plan'\] is a JSON array, not an object"),
    "no plan config": (_set(["plan", "config"], _DELETE), "'plan' has no 'config' key"),
    "plan config a string": (_set(["plan", "config"], "rank=2"), r"\['config'\] is a JSON string"),
    "config heads a string": (_set(["plan", "config", "heads"], "2"), "not a valid InheritConfig.*heads='2'"),
    "config layer_types a number": (_set(["plan", "config", "layer_types"], 5), "not a valid InheritConfig"),
    "config unknown key": (_set(["plan", "config", "hedas"], 2), "unknown InheritConfig option"),
    "no teacher_params": (_set(["plan", "teacher_params"], _DELETE), "has no 'teacher_params' key"),
    "teacher_params a string": (_set(["plan", "teacher_params"], "212"), r"\['teacher_params'\] is a JSON string"),
    "budget a string": (_set(["plan", "budget"], "0.5"), r"'plan'\['budget'\] is '0.5'"),
    "no layers": (_set(["plan", "layers"], _DELETE), "has no 'layers' key"),
    "layers an object": (_set(["plan", "layers"], {"0": {}}), r"\['layers'\] is a JSON object, not a list"),
    "layer a string": (_set(["plan", "layers", 0], "0"), r"'plan'\['layers'\]\[0\] is a JSON string"),
    "layer without name": (_set(["plan", "layers", 0, "name"], _DELETE), r"\[0\] has no 'name' key"),
    "layer name a number": (_set(["plan", "layers", 0, "name"], 0), r"\['name'\] is a JSON number"),
    "layer rank a string": (_set(["plan", "layers", 0, "rank"], "2"), r"\['rank'\] is '2', not an integer"),
    "layer rank zero": (_set(["plan", "layers", 0, "rank"], 0), r"\['rank'\] is 0"),
    "layer heads missing": (_set(["plan", "layers", 0, "heads"], None), "has a rank but no 'heads'"),
    "layer shape a string": (_set(["plan", "layers", 0, "shape"], "16x8"), r"\['shape'\] is a JSON string"),
    "layer shape of a conv": (_set(["plan", "layers", 0, "shape"], [16, 8, 3, 3]), "not the 2 positive sizes"),
    "layer kind unknown": (_set(["plan", "layers", 0, "kind"], "Conv3d"), r"\['kind'\] is 'Conv3d'"),
    "layer kind of another module": (_set(["plan", "layers", 0, "kind"], "Conv1D"), "the plan records a Conv1D"),
    "layer unknown key": (_set(["plan", "layers", 0, "rnak"], 2), "unknown key"),
    "layer energy a string": (_set(["plan", "layers", 0, "energy_kept"], "high"), "'energy_kept'"),
    "no weights": (_set(["weights"], _DELETE), "has no 'weights' key"),
    "weights a list": (_set(["weights"], ["model.safetensors"]), r"\['weights'\] is a JSON array"),
    "weights bytes a string": (_set(["weights", "bytes"], "1256"), r"\['bytes'\] is a JSON string"),
    "weights without sha256": (_set(["weights", "sha256"], _DELETE), "has no 'sha256' key"),
    "weights sha256 short": (_set(["weights", "sha256"], "abc"), "not a 64-digit"),
    "weights file outside the folder": (_set(["weights", "file"], "../model.safetensors"), "inside the folder"),
    "weights files empty": (_set(["weights"], {"files": []}), "not a non-empty list"),
    "weights files of strings": (_set(["weights"], {"files": ["model.safetensors"]}), r"\[0\] is a JSON string"),
    "extra a list": (_set(["extra"], ["arch"]), r"'extra' is a JSON array"),
    "hf a string": (_set(["hf"], "llama"), r"'hf' is a JSON string"),
    "hf dtype unknown": (_set(["hf"], {"dtype": "float7"}), "not a torch dtype"),
}


@pytest.mark.parametrize("damage", list(_DAMAGES))
def test_every_damaged_config_is_an_inhernet_load_error(small_saved, damage):
    folder, meta = small_saved
    change, match = _DAMAGES[damage]
    (folder / CONFIG_NAME).write_text(json.dumps(change(meta)))
    with pytest.raises(InherNetLoadError, match=match):
        inhernet.load(folder, _mlp())
    if damage in _FOUND_AGAINST_THE_MODEL:
        return
    with pytest.raises(InherNetLoadError, match=match):  # what the CLI reads first: the same error
        from inhernet.train.store import model_info

        model_info(folder)


#: damages only a comparison with the base model reveals (the JSON alone is well-formed)
_FOUND_AGAINST_THE_MODEL = {"layer kind of another module"}


def test_a_saved_model_budget_below_the_int_minimum_still_loads(tmp_path):
    """A module budget is stored as its count; the int-budget minimum must not make the folder unreadable."""
    def teacher():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    model = inhernet.inherit(teacher(), budget=0.8, heads=1, progress=False).eval()
    folder = inhernet.save(model, tmp_path / "b")
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["plan"]["config"]["budget"] = 50  # what budget=<a 50-parameter module> records
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(inhernet.load(folder, teacher())(x), model(x))


def test_save_into_a_folder_holding_a_model_refuses_unless_overwrite(tmp_path):
    from inhernet.io import ModelExistsError

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "README.txt").write_text("mine")
    first = inhernet.inherit(_mlp(), rank=2, heads=2, min_saving=None, progress=False)
    inhernet.save(first, folder)  # a folder with other files but no model: fine
    weights = (folder / WEIGHTS_NAME).read_bytes()
    second = inhernet.inherit(_mlp(), rank=3, heads=2, min_saving=None, progress=False)
    with pytest.raises(ModelExistsError, match=r"already holds a saved model; pass overwrite=True .*--overwrite"):
        inhernet.save(second, folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == weights  # nothing was written
    assert (folder / "README.txt").read_text() == "mine"
    assert isinstance(ModelExistsError("x"), FileExistsError) and not isinstance(ModelExistsError("x"), ValueError)
    inhernet.save(second, folder, overwrite=True)
    assert (folder / "README.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["README.txt", WEIGHTS_NAME, CONFIG_NAME])
    again = inhernet.load(folder, _mlp())
    assert again[0].rank == 3
    # a dense model's folder counts too (train-teacher / store.save_model)
    from inhernet.train.store import save_model

    dense = tmp_path / "dense"
    save_model(_mlp(), dense, arch="mlp", num_classes=4, in_channels=1)
    with pytest.raises(ModelExistsError):
        save_model(_mlp(), dense, arch="mlp", num_classes=4, in_channels=1)
    with pytest.raises(ModelExistsError):
        inhernet.save(second, dense)
    save_model(second, dense, arch="mlp", num_classes=4, in_channels=1, overwrite=True)
    assert sorted(p.name for p in dense.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])  # the dense config went
