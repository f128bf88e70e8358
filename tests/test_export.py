"""ONNX export: InherNets and dense zoo models run in ONNX Runtime as they do in PyTorch."""

import pytest
import torch

import inhernet
from inhernet.config import ConfigError
from inhernet.models import create_model

ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (requirements.txt)")


def _inherited():
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    return inhernet.inherit(teacher, rank=4, heads=3, progress=False)


def _run(path, x):
    from inhernet.export import OnnxModule

    return OnnxModule(path, threads=1)(x)


def test_inhernet_exports_with_dynamic_batch_and_size_and_matches_pytorch(tmp_path):
    model = _inherited().train()
    res = inhernet.export_onnx(model, tmp_path / "inh.onnx", torch.randn(1, 1, 16, 16), dynamic_spatial=True)
    assert model.training  # the caller's mode is restored
    assert res["max_abs_diff"] < 1e-4 and res["bytes"] > 0 and res["opset"] >= 17
    x = torch.randn(4, 1, 20, 12)  # another batch size and image size
    with torch.no_grad():
        torch.testing.assert_close(_run(tmp_path / "inh.onnx", x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_a_wrong_export_is_refused_and_not_kept(tmp_path, monkeypatch):
    import inhernet.export as export

    monkeypatch.setattr(export, "CHECK_TOLERANCE", -1.0)  # nothing can pass
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        inhernet.export_onnx(create_model("resnet8", num_classes=10, in_channels=1), tmp_path / "m.onnx",
                             torch.randn(1, 1, 16, 16))
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier export"  # left as it was
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]  # no partial file left behind
    with pytest.raises(ConfigError, match="one input tensor"):
        inhernet.export_onnx(_inherited(), tmp_path / "m.onnx", [torch.randn(1, 1, 16, 16)])
    with pytest.raises(ConfigError, match="N×C×H×W"):
        inhernet.export_onnx(torch.nn.Linear(4, 2), tmp_path / "m.onnx", torch.randn(1, 4), dynamic_spatial=True)


def test_cli_exports_a_saved_inhernet(tmp_path, capsys):
    from inhernet.cli import main
    from inhernet.train import save_model

    save_model(_inherited(), tmp_path / "model", arch="resnet8", num_classes=10, in_channels=1)
    assert main(["export", str(tmp_path / "model"), "--input-shape", "1", "16", "16",
                 "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime matches PyTorch" in out and "N×1×16×16" in out
    assert (tmp_path / "m.onnx").is_file()


def test_folded_heads_export_as_plain_convolutions(tmp_path):
    """Without a gate the heads fold into one up-projection, exported as a 1×1 Conv (what ONNX
    Runtime runs fastest) instead of the Expand + MatMul the eager path uses (the layer's own export
    path: optimize=False; optimize_for_inference may make some of them one dense conv)."""
    import onnx

    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    model = inhernet.inherit(teacher, rank=4, heads=3, gate="none", progress=False)
    res = inhernet.export_onnx(model, tmp_path / "wo_gate.onnx", torch.randn(1, 1, 16, 16), optimize=False)
    ops = [n.op_type for n in onnx.load(res["path"]).graph.node]
    inherited = sum(isinstance(m, inhernet.InherConv2d) for m in model.modules())
    dense = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert inherited > 0 and ops.count("Conv") == 2 * inherited + dense and "MatMul" not in ops
    assert res["max_abs_diff"] < 1e-4


def test_unusable_opsets_and_inputs_are_config_errors_and_write_nothing(tmp_path, capsys):
    model = create_model("resnet8", num_classes=10, in_channels=1)
    x = torch.randn(1, 1, 16, 16)
    for opset in (5, 10**3, "18"):
        with pytest.raises(ConfigError, match="give an ONNX opset from 7 to"):
            inhernet.export_onnx(model, tmp_path / "m.onnx", x, opset=opset)
    # in range, but the converter cannot bring this model down to it: refused, not silently opset 18
    with pytest.raises(ConfigError, match=r"opset=11: the exporter could not convert this model to opset 11.*"
                                          r"stayed at 18"):
        inhernet.export_onnx(model, tmp_path / "m.onnx", x, opset=11)
    assert "Traceback" not in capsys.readouterr().err  # the converter's own logged trace is silenced
    with pytest.raises(ConfigError, match="every size must be at least 1"):
        inhernet.export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 0, 8))
    with pytest.raises(ConfigError, match=r"cannot run on an input of shape \(1, 3, 16, 16\).*--input-shape"):
        inhernet.export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 16, 16))  # 3 channels for a 1-channel model
    assert list(tmp_path.iterdir()) == []
