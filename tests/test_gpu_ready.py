"""The GPU options of training, tested on the CPU (issue 11, item 5).

``precision``, ``channels_last`` and ``data_on_device`` are validated with clear errors and reach
the Trainer; data held on the training device gives the very same batches (hence bit-identical
training on a CPU), and the augmentation draws its random numbers on the CPU generator whatever the
batch's device. The GPU script itself (``benchmarks/gpu_heads.sh``, smoke-tested with
``GPU_SMOKE=1``) takes minutes and is not part of this suite.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("lightning")

from inhernet.compare import CompareConfig, CompareConfigError, load_config, run_compare  # noqa: E402
from inhernet.config import ConfigError  # noqa: E402
from inhernet.data import RandomCropFlip  # noqa: E402
from inhernet.train import TensorLoader, fit  # noqa: E402
from inhernet.train.validate import check_accelerator, check_precision, cli_option  # noqa: E402


from toy import toy_data as _data, toy_net as _net  # noqa: E402


# ------------------------------------------------------------------------------------ augmentation
def _crop_flip_by_hand(x, dy, dx, flips, padding):
    """The augmentation spelled out image by image: pad, slice the crop, mirror."""
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        img = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(img.flip(-1) if flips[i] else img)
    return torch.stack(out)


def test_augmentation_draws_on_the_cpu_generator_and_matches_the_hand_made_crop():
    x = torch.randn(40, 3, 9, 7)
    aug = RandomCropFlip(padding=3, flip=True, seed=11)
    dy, dx, flips = RandomCropFlip(padding=3, flip=True, seed=11).draw(len(x))  # the same stream
    assert flips.any() and not flips.all() and dy.unique().numel() > 1
    assert torch.equal(aug(x), _crop_flip_by_hand(x, dy, dx, flips, 3))
    # a batch on another device takes the same draws: here the "meta" device checks the code path
    # (no value crosses back), the values are checked by the GPU script's run
    meta = RandomCropFlip(padding=3, flip=True, seed=11)(x.to("meta"))
    assert meta.device.type == "meta" and meta.shape == x.shape


def test_loader_on_a_device_gives_the_same_batches():
    d = _data(n_train=70).train
    for rank, world in ((0, 1), (1, 2)):
        plain = TensorLoader(d, 16, shuffle=True, augment="crop_flip", seed=4, rank=rank, world_size=world)
        on_cpu = TensorLoader(d, 16, shuffle=True, augment="crop_flip", seed=4, rank=rank, world_size=world,
                              device="cpu")
        for epoch in range(3):
            plain.set_epoch(epoch)
            on_cpu.set_epoch(epoch)
            a, b = list(plain), list(on_cpu)
            assert len(a) == len(b) == len(plain)
            for (xa, ya), (xb, yb) in zip(a, b):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # on another device every tensor of a batch is there (indices, labels, augmentation)
    meta = TensorLoader(d, 16, shuffle=True, augment="crop_flip", seed=4, device="meta")
    for x, y in meta:
        assert x.device.type == y.device.type == "meta"


# ---------------------------------------------------------------------------------------- training
def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_data_on_device_on_a_cpu_trains_bit_identically(tmp_path):
    data = _data()
    kw = dict(epochs=2, batch_size=16, milestones=[1], seed=5, progress=False, augment="crop_flip")
    devices = []

    class Where(__import__("lightning").pytorch.callbacks.Callback):
        def on_train_start(self, trainer, pl_module):
            devices.append(trainer.datamodule.device())

    plain = fit(_net(), data, out_dir=tmp_path / "a", **kw)
    moved = fit(_net(), data, out_dir=tmp_path / "b", data_on_device=True, callbacks=[Where()], **kw)
    assert devices == [torch.device("cpu")]  # the loaders did hold the data on the training device
    wa, wb = _weights(plain.model), _weights(moved.model)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    drop = lambda r: {k: v for k, v in r.items() if k != "epoch_time_s"}  # noqa: E731
    assert [drop(r) for r in plain.metrics] == [drop(r) for r in moved.metrics]


def test_bf16_and_channels_last_train_on_a_cpu_and_return_a_plain_model(tmp_path):
    data = _data()
    seen = {}

    class Look(__import__("lightning").pytorch.callbacks.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            conv = pl_module.model[0].weight
            seen["weight_channels_last"] = conv.is_contiguous(memory_format=torch.channels_last)
            seen["precision"] = trainer.precision

    res = fit(_net(), data, out_dir=tmp_path / "r", epochs=1, batch_size=16, progress=False,
              precision="bf16-mixed", channels_last=True, callbacks=[Look()])
    assert seen == {"weight_channels_last": True, "precision": "bf16-mixed"}
    assert all(v.is_contiguous() for v in res.model.state_dict().values())  # safetensors-ready again
    assert torch.isfinite(torch.tensor(res.final["train/loss"]))


@pytest.mark.parametrize("kw,needle", [
    ({"precision": "bf16"}, "historical aliases"),
    ({"precision": "bf16-true"}, "frozen teacher"),
    ({"precision": "16-mixed"}, "needs a GPU"),
    ({"precision": "fp8"}, "not a training precision"),
    ({"channels_last": "yes"}, "channels_last='yes' must be True or False"),
    ({"data_on_device": 1}, "data_on_device=1 must be True or False"),
])
def test_fit_refuses_bad_gpu_options_before_writing(kw, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        fit(_net(), _data(), out_dir=tmp_path / "x", epochs=1, progress=False, **kw)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------- the validators
def test_precision_rules():
    for ok in (None, 32, "32", "32-true", "bf16-mixed"):
        check_precision("precision", ok, accelerator="cpu")
    check_precision("precision", "16-mixed", accelerator="gpu")
    with pytest.raises(ConfigError, match=r"trainer\.precision='16-mixed': float16 autocast needs a GPU"):
        check_precision("precision", "16-mixed", accelerator="cpu", option="trainer.{}".format)
    with pytest.raises(ConfigError, match="write 'bf16-mixed'"):
        check_precision("precision", "bf16")
    with pytest.raises(ConfigError, match="write '16-mixed'"):
        check_precision("precision", 16, accelerator="gpu")


def test_accelerator_rule_is_the_command_lines(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--accelerator gpu: no CUDA GPU is usable here"):
        check_accelerator("accelerator", "gpu", option=cli_option)
    with pytest.raises(ConfigError, match=r"trainer\.accelerator='cuda': no CUDA GPU"):
        check_accelerator("accelerator", "cuda", option="trainer.{}".format)
    check_accelerator("accelerator", "gpu", available=False)  # the name alone is fine
    with pytest.raises(ConfigError, match="'gpus' is not known"):
        check_accelerator("accelerator", "gpus", available=False)


# ----------------------------------------------------------------------------------------- compare
def _tiny(tmp: Path, trainer: dict, methods=None) -> dict:
    return {
        "name": "tiny_gpu_options",
        "out_dir": str(tmp / "out"),
        "cache_dir": str(tmp / "cache"),
        "data": {"name": "digits", "subset": 160, "test_subset": 80, "val_fraction": 0.05, "seed": 0},
        "teacher": {"arch": "resnet14", "epochs": 1},
        "student": {"arch": "resnet8"},
        "schedule": {"epochs": 1, "batch_size": 64, "eval_batch_size": 256},
        "seeds": [0],
        "methods": methods or [
            {"name": "student_kd", "kind": "student_kd"},
            {"name": "inh", "kind": "inhernet", "kd": True, "inherit": {"budget": "student", "heads": 2}},
        ],
        "trainer": {"progress": False, "threads": 1, **trainer},
        "latency": {"enabled": False},
    }


@pytest.mark.parametrize("trainer,needle", [
    ({"precision": "bf16"}, r"trainer\.precision='bf16'"),
    ({"precision": "16-mixed"}, "float16 autocast needs a GPU"),
    ({"channels_last": "yes"}, r"trainer\.channels_last='yes' has the wrong type"),
    ({"data_on_device": "auto"}, r"trainer\.data_on_device='auto' has the wrong type"),
    ({"accelerator": "gpus"}, r"trainer\.accelerator='gpus' is not known"),
])
def test_compare_config_checks_the_gpu_options(trainer, needle, tmp_path):
    pytest.importorskip("sklearn")
    with pytest.raises(CompareConfigError, match=needle):
        CompareConfig.from_dict(_tiny(tmp_path, trainer))


def test_compare_on_a_gpu_config_without_a_gpu_fails_before_writing(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(_tiny(tmp_path, {"accelerator": "gpu", "precision": "16-mixed"})))
    cfg = load_config(path)  # loads (inhernet report of a GPU run works on a CPU machine) ...
    with pytest.raises(CompareConfigError, match=r"gpu\.yaml: trainer\.accelerator='gpu': no CUDA GPU"):
        run_compare(cfg)  # ... but does not train
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_compare_passes_the_gpu_options_to_every_training(tmp_path, monkeypatch):
    """A tiny comparison under bf16-mixed autocast and channels_last on the CPU: the teacher and
    both methods train with the options and the results are written."""
    pytest.importorskip("sklearn")
    import inhernet.train

    real_fit = inhernet.train.fit
    calls = []

    def spy(model, data, **kw):
        calls.append({k: kw.get(k) for k in ("precision", "channels_last", "data_on_device", "accelerator")})
        return real_fit(model, data, **kw)

    monkeypatch.setattr(inhernet.train, "fit", spy)
    trainer = {"precision": "bf16-mixed", "channels_last": True, "data_on_device": True}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_tiny(tmp_path, trainer)))
    results = run_compare(load_config(path), log=lambda msg: None)
    want = {"precision": "bf16-mixed", "channels_last": True, "data_on_device": True, "accelerator": "cpu"}
    assert calls == [want] * 3  # the teacher, student_kd, inh
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [m["name"] for m in res["methods"]] == ["student_kd", "inh"]
    assert all(m["complete"] and 0 <= m["test_acc_mean"] <= 1 for m in res["methods"])
    assert results["methods"][1]["params"] > 0
    assert (tmp_path / "out" / "results.md").is_file()
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["trainer"]
    assert {k: saved[k] for k in trainer} == trainer
