"""Your own model (an import path ``module:factory``) and data (``.npz`` arrays, an image folder)
wherever a zoo name or a built-in data set is accepted: create_model, load_dataset, save / load,
the compare config and the command line, with clear errors."""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from inhernet.data import DataFormatError, DatasetNotFoundError, load_dataset
from inhernet.errors import ConfigError
from inhernet.models import arch_slug, create_model, is_import_path, resolve_architecture

MODULE = "own_models_for_tests"

SOURCE = '''
import torch
from torch import nn


def make_mlp(num_classes=10, in_channels=1, side=8, hidden=16):
    """An MLP on in_channels x side x side inputs (flat features: in_channels = D, side = 1)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def make_flat_mlp(num_classes, in_channels):
    """For flat features (N x D, held as N x D x 1 x 1: in_channels = D)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def make_cnn(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))


class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def no_arguments():
    return nn.Linear(4, 2)


def with_kwargs(**kwargs):
    return nn.Linear(kwargs["in_channels"], kwargs["num_classes"])


def not_a_module(num_classes=3):
    return "a string"


def boom(num_classes=3):
    raise RuntimeError("my factory is broken")


NOT_CALLABLE = 5
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    """A module of model factories in a temporary folder on sys.path (forgotten afterwards)."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    (tmp_path / "own_broken_for_tests.py").write_text("import a_package_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (MODULE, "own_broken_for_tests"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield MODULE
    for name in (MODULE, "own_broken_for_tests"):
        sys.modules.pop(name, None)


def _learnable(n, shape, classes=3, seed=0, dtype=np.float32):
    """Features whose label is a threshold of their mean: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = np.arange(n) % classes
    x += (y - 1).reshape(-1, *[1] * len(shape)) * 1.5
    if dtype == np.uint8:
        x = np.clip(x * 40 + 128, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


# ----------------------------------------------------------------------------------------- models
def test_import_path_models_are_built_with_the_arguments_they_take(own):
    mlp = create_model(f"{own}:make_mlp", num_classes=5, in_channels=2)
    assert mlp(torch.zeros(3, 2, 8, 8)).shape == (3, 5)
    net = create_model(f"{own}:TinyNet", num_classes=4, in_channels=1)  # a class; in_channels not taken
    assert type(net).__name__ == "TinyNet" and net.fc.out_features == 4
    assert isinstance(create_model(f"{own}:no_arguments", num_classes=7), nn.Linear)
    lin = create_model(f"{own}:with_kwargs", num_classes=6, in_channels=3)
    assert (lin.in_features, lin.out_features) == (3, 6)
    assert is_import_path(f"{own}:make_mlp") and not is_import_path("resnet8")
    assert arch_slug(f"{own}:make_mlp") == f"{own}-make_mlp" and arch_slug("wrn_16_1") == "wrn_16_1"
    # zoo names are unchanged, and nothing was registered
    from inhernet.models import list_models

    assert resolve_architecture("resnet8") is resolve_architecture("resnet8")
    assert not any(":" in n for n in list_models())


@pytest.mark.parametrize("arch, message", [
    ("own_models_for_tests:make_mpl", r"has no attribute 'make_mpl' \(did you mean 'make_mlp'.*Its public callables: "
                                      r".*make_cnn"),
    ("own_models_for_tests:NOT_CALLABLE", r"NOT_CALLABLE is a int, not callable"),
    ("own_models_for_tests:not_a_module", r"returned a str, not a torch nn.Module"),
    ("own_models_for_tests:boom", r"calling boom\(num_classes=3\) raised RuntimeError: my factory is broken"),
    ("no_such_package_xyz.models:make", r"module 'no_such_package_xyz.models' cannot be imported \(no module named "
                                        r"'no_such_package_xyz'\).*sys.path.*PYTHONPATH"),
    ("own_broken_for_tests:make", r"importing module 'own_broken_for_tests' failed: No module named "
                                  r"'a_package_that_is_not_installed_xyz'"),
    ("not a path:x", r"not a valid import path: write it as 'package.module:factory'"),
    ("resnet5", r"Unknown model 'resnet5' \(did you mean 'resnet56'.*'package.module:factory'"),
])
def test_import_path_errors_say_what_is_wrong(own, arch, message):
    with pytest.raises(ConfigError, match=message):
        create_model(arch, num_classes=3, in_channels=1)


def test_saved_import_path_model_is_rebuilt_by_load_model(own, tmp_path):
    from inhernet.train import ArchitectureMismatchError, load_model, save_model

    arch = f"{own}:make_cnn"
    model = create_model(arch, num_classes=3, in_channels=1)
    save_model(model, tmp_path / "m", arch=arch, num_classes=3, in_channels=1)
    assert json.loads((tmp_path / "m" / "model_config.json").read_text())["arch"] == arch
    loaded, info = load_model(tmp_path / "m")
    assert info["arch"] == arch and type(loaded) is type(model)
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    # a bare state dict needs the arch, and the import path works there too
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded, _ = load_model(tmp_path / "w.pt", arch=arch, num_classes=3, in_channels=1)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ArchitectureMismatchError, match="make_cnn"):
        load_model(tmp_path / "m", expect_arch=f"{own}:make_mlp")
    # an inherited model records the import path of its base and loads back
    import inhernet

    inh = inhernet.inherit(model, inhernet.InheritConfig(rank=2, heads=2))
    save_model(inh, tmp_path / "inh", arch=arch, num_classes=3, in_channels=1)
    back, info = load_model(tmp_path / "inh")
    assert info["inherited"] and info["arch"] == arch
    inh.eval()
    assert torch.allclose(back(x), inh(x))


# ------------------------------------------------------------------------------------------- data
def test_npz_train_test_images_and_flat_features(tmp_path):
    x, y = _learnable(60, (8, 8), dtype=np.uint8)
    xt, yt = _learnable(30, (8, 8), seed=1, dtype=np.uint8)
    np.savez(tmp_path / "img.npz", X_train=x, y_train=y, x_test=xt, y_test=yt, classes=np.array(["a", "b", "c"]))
    d = load_dataset(str(tmp_path / "img.npz"), val_fraction=0.1, seed=0)
    assert (d.num_classes, d.in_channels, d.image_size, d.classes) == (3, 1, (8, 8), ["a", "b", "c"])
    assert len(d.train) == 54 and len(d.val) == 6 and len(d.test) == 30
    assert d.default_augment == {"padding": 1, "flip": False}
    assert abs(float(d.train.x.mean())) < 1e-4  # normalised with the training split's statistics
    assert d.source.endswith("img.npz")
    # the same through a relative name and root=, and subsets work as for the built-ins
    assert torch.equal(load_dataset("img.npz", root=tmp_path).train.x, d.train.x)
    assert len(load_dataset(str(tmp_path / "img.npz"), subset=12, test_subset=9).train) == 12

    # flat features and x / y only: N x D held as N x D x 1 x 1, a fixed test split, no augmentation
    f, fy = _learnable(100, (5,))
    np.savez(tmp_path / "flat.npz", x=f, y=fy)
    a = load_dataset(str(tmp_path / "flat.npz"), seed=0)
    b = load_dataset(str(tmp_path / "flat.npz"), seed=1)
    assert a.in_channels == 5 and a.image_size == (1, 1) and a.train.x.shape[1:] == (5, 1, 1)
    assert len(a.test) == 20 and torch.equal(a.test.y, b.test.y)  # the test split ignores seed
    assert a.default_augment == {"padding": 0, "flip": False}
    assert a.make_augment()(a.train.x[:4]) is a.train.x[:4] or torch.equal(a.make_augment()(a.train.x[:4]),
                                                                           a.train.x[:4])


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 3)), "y_train": np.zeros(4, int)}, r"has x_train, y_train but not x_test, y_test"),
    ({"images": np.zeros((4, 3)), "labels": np.zeros(4, int)}, r"holds the arrays images, labels; expected x_train"),
    ({"x": np.zeros((10, 3)), "y": np.zeros(10)}, r"y has dtype float64; labels must be integers 0..K-1"),
    ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, r"has 9 labels for 10 examples"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 3 - 1}, r"holds the label -1"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 3 + 1}, r"class\(es\) 0 have no training example \(the labels "
                                                           r"run 1..3: subtract 1"),
    ({"x": np.zeros((10, 3)), "y": np.zeros((10, 3), int)}, r"one-hot labels: save y.argmax\(1\)"),
    ({"x": np.zeros((10, 8, 8, 3)), "y": np.arange(10) % 2}, r"looks channels-last.*np.transpose"),
    ({"x": np.full((10, 3), np.nan), "y": np.arange(10) % 2}, r"NaN or infinite"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "classes": np.array(["a"])},
     r"label 1 is out of range for the 1 names in 'classes'"),
])
def test_npz_errors_name_the_problem_and_the_fix(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataFormatError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_missing_or_damaged_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"data file .*nothere.npz not found"):
        load_dataset(str(tmp_path / "nothere.npz"))
    with pytest.raises(DatasetNotFoundError, match=r"image folder .*nofolder not found"):
        load_dataset(str(tmp_path / "nofolder"))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataFormatError, match=r"not a readable .npz file"):
        load_dataset(str(tmp_path / "broken.npz"))
    # built-in names keep their errors (and a folder named like a built-in does not hide it)
    with pytest.raises(ConfigError, match=r"unknown data set 'cifar1000' \(did you mean 'cifar100'\?\).*\.npz"):
        load_dataset("cifar1000")


def _png(path, size=(8, 8), mode="L", value=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)


def test_image_folders(tmp_path):
    pytest.importorskip("PIL")
    for split, n in (("train", 6), ("test", 3)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / "split" / split / c / f"{i}.png", value=i)
    (tmp_path / "split" / "train" / "cat" / "notes.txt").write_text("not an image: ignored")
    d = load_dataset(str(tmp_path / "split"), val_fraction=0.0)
    assert (d.classes, d.in_channels, d.image_size, len(d.train), len(d.test)) == (["cat", "dog"], 1, (8, 8), 12, 6)
    assert d.test.y.tolist() == [0, 0, 0, 1, 1, 1]
    # root/<class>/* with RGB images: a fixed stratified test split, three channels
    for c in ("a", "b", "c"):
        for i in range(5):
            _png(tmp_path / "flat" / c / f"{i}.jpg", size=(10, 6), mode="RGB", value=i)
    d = load_dataset(str(tmp_path / "flat"), val_fraction=0.0)
    assert (d.num_classes, d.in_channels, d.image_size, len(d.train), len(d.test)) == (3, 3, (6, 10), 12, 3)
    assert d.default_augment == {"padding": 1, "flip": False}


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    _png(tmp_path / "sizes" / "a" / "0.png", size=(8, 8))
    _png(tmp_path / "sizes" / "b" / "1.png", size=(9, 8))
    with pytest.raises(DataFormatError, match=r"0.png is 8x8 but .*1.png is 9x8; all images must have one size"):
        load_dataset(str(tmp_path / "sizes"))
    _png(tmp_path / "half" / "train" / "a" / "0.png")
    with pytest.raises(DataFormatError, match=r"has a train/ folder but no test/ folder"):
        load_dataset(str(tmp_path / "half"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    _png(tmp_path / "empty" / "b" / "0.png")
    with pytest.raises(DataFormatError, match=r"empty/a hold no images"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataFormatError, match=r"has no class sub-folders"):
        load_dataset(str(tmp_path / "none"))
    _png(tmp_path / "bad" / "a" / "0.png")
    (tmp_path / "bad" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match=r"1.png cannot be read as an image"):
        load_dataset(str(tmp_path / "bad"))
    for c in ("a", "b"):
        _png(tmp_path / "extra" / "train" / "a" / "0.png")
        _png(tmp_path / "extra" / "test" / c / "0.png")
    with pytest.raises(DataFormatError, match=r"class folder\(s\) b that .*train lacks"):
        load_dataset(str(tmp_path / "extra"))


# ------------------------------------------------------------------------------- compare and CLI
def test_compare_config_checks_import_paths(own, tmp_path):
    from inhernet.compare import CompareConfig, CompareConfigError

    base = {"methods": [{"name": "s", "kind": "student"}], "student": {"arch": f"{own}:make_mlp"},
            "teacher": {"arch": f"{own}:make_cnn"}}
    cfg = CompareConfig.from_dict(base)
    assert cfg.student.arch == f"{own}:make_mlp"
    with pytest.raises(CompareConfigError, match=r"student.arch: model .*has no attribute 'make_mpl' \(did you mean"):
        CompareConfig.from_dict({**base, "student": {"arch": f"{own}:make_mpl"}})
    with pytest.raises(CompareConfigError, match=r"teacher.arch='resnt8' is not a known model.*package.module:factory"):
        CompareConfig.from_dict({**base, "teacher": {"arch": "resnt8"}})


def test_tiny_compare_with_own_models_and_npz(own, tmp_path):
    pytest.importorskip("lightning")
    import yaml

    from inhernet.compare import load_config, run_compare

    x, y = _learnable(90, (1, 8, 8))
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    cfg = {
        "name": "own", "out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "data": {"name": str(tmp_path / "mine.npz"), "val_fraction": 0.1, "augment": "none"},
        "teacher": {"arch": f"{own}:make_cnn", "epochs": 1},
        "student": {"arch": f"{own}:make_mlp"},
        "schedule": {"epochs": 1, "batch_size": 32, "eval_batch_size": 64},
        "seeds": [0],
        "methods": [{"name": "student", "kind": "student"},
                    {"name": "inh", "kind": "inhernet", "inherit": {"rank": 2, "heads": 2}}],
        "trainer": {"progress": False, "threads": 1},
        "latency": {"enabled": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logs: list[str] = []
    results = run_compare(load_config(path), log=logs.append)
    names = {m["name"] for m in results["methods"]}
    assert {"student", "inh"} <= names
    teachers = list((tmp_path / "cache" / "teachers").iterdir())
    assert any(p.name.startswith(f"{own}-make_cnn-") and p.is_dir() for p in teachers)  # no ':' in folder names
    from inhernet.train import load_model

    model, info = load_model(tmp_path / "out" / "runs" / "student" / "seed0" / "model")
    assert info["arch"] == f"{own}:make_mlp"
    # the teacher given as a weights file (a bare state dict) with its import path
    tdir = next(p for p in teachers if p.is_dir())
    teacher, _ = load_model(tdir / "model")
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    cfg2 = {**cfg, "out_dir": str(tmp_path / "out2"), "methods": cfg["methods"][1:],
            "teacher": {"arch": f"{own}:make_cnn", "path": str(tmp_path / "teacher.pt")}}
    path.write_text(yaml.safe_dump(cfg2))
    res2 = run_compare(load_config(path), log=logs.append)
    assert res2["teacher"]["test_acc_mean"] == pytest.approx(results["teacher"]["test_acc_mean"])
    # changed data contents are another data identity: the finished runs are not silently reused
    from inhernet.compare import StaleRunError

    np.savez(tmp_path / "mine.npz", x=x[::-1].copy(), y=y[::-1].copy())
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(StaleRunError):
        run_compare(load_config(path), log=logs.append)


def test_cli_with_own_model_and_flat_npz(own, tmp_path, capsys):
    pytest.importorskip("lightning")
    from inhernet.cli import main

    x, y = _learnable(80, (6,))
    np.savez(tmp_path / "flat.npz", x=x, y=y)
    data = ["--data", str(tmp_path / "flat.npz"), "--val-fraction", "0.1"]
    t = tmp_path / "teacher"
    assert main(["train-teacher", "--arch", f"{own}:make_flat_mlp", "--epochs", "1", "--out", str(t),
                 "--progress", "none", "--threads", "1", "--batch-size", "16", *data]) == 0
    assert json.loads((t / "model" / "model_config.json").read_text())["arch"] == f"{own}:make_flat_mlp"
    capsys.readouterr()
    assert main(["inherit", str(t), "--rank", "2", "--heads", "2", "--out", str(tmp_path / "inh")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "inh"), "--json", *data]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["inherited"] and res["arch"] == f"{own}:make_flat_mlp" and res["n"] == 16
    # errors are one line, exit code 2, and nothing is written
    assert main(["train-teacher", "--arch", f"{own}:make_mpl", "--epochs", "1", "--out", str(tmp_path / "x"),
                 *data]) == 2
    err = capsys.readouterr().err
    assert "has no attribute 'make_mpl' (did you mean 'make_mlp'" in err and not (tmp_path / "x").exists()
    assert main(["evaluate", str(t), "--data", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz not found" in capsys.readouterr().err


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's "Your own model and data" Python example, as written there, on tiny sizes."""
    pytest.importorskip("lightning")
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own model and data", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    assert "epochs=5" in code and '"epochs": 5' in code and "n = 1797" in code
    code = code.replace("epochs=5", "epochs=1").replace('"epochs": 5', '"epochs": 1').replace("n = 1797", "n = 200")
    try:
        exec(compile(textwrap.dedent(code), "README.md", "exec"), {"__name__": "readme_example"})
    finally:
        sys.modules.pop("mymodels", None)
    assert (tmp_path / "runs_example" / "compare" / "results.md").is_file()
