"""The `inhernet` command: help texts, and a tiny train-teacher -> inherit -> evaluate round trip."""

import json
import subprocess
import sys

import pytest

from inhernet.cli import build_parser, main

COMMANDS = ["train-teacher", "inherit", "finetune", "evaluate", "compare", "report", "models"]


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out
    assert "examples:" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: inhernet " + command in out
    if command in ("train-teacher", "finetune", "compare"):
        for flag in ("--devices", "--num-nodes", "--strategy"):
            assert flag in out
    if command == "inherit":
        for flag in ("--rank", "--heads", "--budget", "--init", "--gate", "--structure"):
            assert flag in out
    if command == "compare":
        assert "--force" in out and "--resume" in out


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "inhernet.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "train-teacher" in proc.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: inhernet" in capsys.readouterr().out


def test_train_inherit_evaluate_roundtrip(tmp_path, capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    data = ["--data", "digits", "--subset", "120", "--test-subset", "60"]
    t = tmp_path / "teacher"
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "1", "--out", str(t), "--progress", "none",
                 "--threads", "1", *data]) == 0
    assert (t / "model" / "model.safetensors").is_file() and (t / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    inh = tmp_path / "inh"
    assert main(["inherit", str(t), "--rank", "2", "--heads", "2", "--out", str(inh)]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "inherited" in out and "saved" in out
    assert main(["evaluate", str(inh), "--json", *data]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["inherited"] and res["arch"] == "resnet8" and res["n"] == 60 and 0 <= res["acc"] <= 1
    # the teacher's checkpoint evaluates like its saved model
    assert main(["evaluate", str(t / "checkpoints" / "last.ckpt"), "--json", *data]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(t), "--json", *data]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["acc"] == b["acc"] and a["params"] == b["params"]
    # errors are one clear line and exit code 2
    assert main(["evaluate", str(tmp_path / "missing"), *data]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_budget_argument_parsing():
    from inhernet.cli import _parse_budget

    assert _parse_budget("12000", 10, 1) == 12000
    assert _parse_budget("0.25", 10, 1) == 0.25
    m = _parse_budget("resnet8", 10, 1)
    assert sum(p.numel() for p in m.parameters()) > 0
    assert build_parser().parse_args(["compare", "x.yaml", "--force"]).force


# ------------------------------------------------------------------- no silent reuse of an old run
TINY = ["--data", "digits", "--subset", "120", "--test-subset", "60", "--progress", "none", "--threads", "1"]


def _stamp(run):
    """What a second command must not touch: the checkpoint's bytes and the metrics file."""
    return (run / "checkpoints" / "last.ckpt").read_bytes(), (run / "metrics.jsonl").read_text()


def test_train_teacher_never_silently_reuses_a_run(tmp_path, capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    t = tmp_path / "teacher"
    base = ["train-teacher", "--arch", "resnet8", "--out", str(t), *TINY]
    assert main([*base, "--epochs", "1"]) == 0
    record = json.loads((t / "run.json").read_text())
    assert record["finished"] and record["identity"]["schedule"]["epochs"] == 1
    capsys.readouterr()
    before = _stamp(t)
    # the same settings: skipped, and the output says so
    assert main([*base, "--epochs", "1"]) == 0
    assert "finished run with the same settings" in capsys.readouterr().out
    assert _stamp(t) == before
    # other settings: refused, nothing changed, the message says what differs and what to do
    for flags in (["--epochs", "2"], ["--epochs", "1", "--lr", "0.1"], ["--epochs", "1", "--seed", "1"],
                  ["--epochs", "1", "--resume", "--subset", "100"]):
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert "other settings" in err and "--force" in err and "Traceback" not in err
        assert _stamp(t) == before
    assert main([*base, "--epochs", "2"]) == 2
    assert "schedule.epochs: 1 -> 2" in capsys.readouterr().err
    # --force retrains with the new settings; files that are not the run's are kept
    (t / "notes.txt").write_text("mine")
    assert main([*base, "--epochs", "2", "--force"]) == 0
    assert "--force" in capsys.readouterr().out
    assert len((t / "metrics.jsonl").read_text().splitlines()) == 2 and (t / "notes.txt").read_text() == "mine"
    assert json.loads((t / "run.json").read_text())["identity"]["schedule"]["epochs"] == 2


def test_train_teacher_run_without_a_record(tmp_path, capsys):
    """A run folder from before run.json: its settings are unknown, so only --resume or --force use it."""
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    t = tmp_path / "teacher"
    base = ["train-teacher", "--arch", "resnet8", "--epochs", "1", "--out", str(t), *TINY]
    assert main(base) == 0
    (t / "run.json").unlink()
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "--resume" in err and "--force" in err
    assert not (t / "run.json").exists()
    assert main([*base, "--resume"]) == 0  # taken as a run of these settings: resumed (nothing left to train)
    assert "same settings" in capsys.readouterr().out
    assert json.loads((t / "run.json").read_text())["finished"]


def test_finetune_never_silently_reuses_a_run(tmp_path, capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    t, t2, inh, ft = (tmp_path / n for n in ("teacher", "teacher2", "inh", "ft"))
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "1", "--out", str(t), *TINY]) == 0
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "1", "--seed", "1", "--out", str(t2), *TINY]) == 0
    assert main(["inherit", str(t), "--rank", "2", "--heads", "2", "--out", str(inh)]) == 0
    base = ["finetune", str(inh), "--out", str(ft), "--epochs", "1", "--loss", "kd", *TINY]
    assert main([*base, "--teacher", str(t)]) == 0
    identity = json.loads((ft / "run.json").read_text())["identity"]
    assert identity["model"]["sha256"] and identity["teacher"]["sha256"] and identity["loss"]["kind"] == "kd"
    capsys.readouterr()
    before = _stamp(ft)
    assert main([*base, "--teacher", str(t)]) == 0
    assert "finished run with the same settings" in capsys.readouterr().out
    # another loss, another teacher (same architecture, other weights), another starting model: refused
    for cmd in ([*base, "--teacher", str(t), "--temperature", "2"], [*base, "--teacher", str(t2)],
                ["finetune", str(t), "--out", str(ft), "--epochs", "1", "--loss", "kd", "--teacher", str(t), *TINY]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "other settings" in err and "--force" in err
        assert _stamp(ft) == before
    assert main([*base, "--teacher", str(t2)]) == 2
    assert "teacher.sha256" in capsys.readouterr().err


def test_finetune_gate_lr_scale_trains_the_gates_faster_and_is_part_of_the_run(tmp_path, capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    import torch

    t, inh, ft = (tmp_path / n for n in ("teacher", "inh", "ft"))
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "1", "--out", str(t), *TINY]) == 0
    # a dense model has no gate to speed up: refused before --out is touched
    assert main(["finetune", str(t), "--out", str(ft), "--epochs", "1", "--gate-lr-scale", "10", *TINY]) == 2
    _one_error_line(capsys, "--gate-lr-scale=10", "no gated inherited layer")
    assert not ft.exists()
    assert main(["inherit", str(t), "--rank", "2", "--heads", "2", "--out", str(inh)]) == 0
    base = ["finetune", str(inh), "--out", str(ft), "--epochs", "1", *TINY]
    assert main([*base, "--gate-lr-scale", "10"]) == 0
    assert json.loads((ft / "run.json").read_text())["identity"]["gate_lr_scale"] == 10
    groups = torch.load(ft / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    capsys.readouterr()
    assert main(base) == 2  # the default scale is another run
    assert "other settings" in capsys.readouterr().err


# ------------------------------------------------------------------ user errors: one line, no traceback
def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def dense_teacher(tmp_path):
    from inhernet.models import create_model
    from inhernet.train.store import save_model

    folder = tmp_path / "teacher"
    save_model(create_model("resnet8", num_classes=10, in_channels=1), folder, arch="resnet8", num_classes=10,
               in_channels=1)
    return folder


@pytest.mark.parametrize("command", ["train-teacher", "finetune", "compare"])
def test_accelerator_gpu_without_cuda_is_a_one_line_error(command, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = {"train-teacher": ["--arch", "resnet8", "--data", "digits", "--out", str(tmp_path / "t")],
            "finetune": ["model-unused", "--data", "digits", "--out", str(tmp_path / "f")],
            "compare": ["config-unused.yaml"]}[command]
    assert main([command, *args, "--accelerator", "gpu"]) == 2
    _one_error_line(capsys, "--accelerator gpu", "no CUDA GPU", "cpu")
    assert not (tmp_path / "t").exists() and not (tmp_path / "f").exists()  # refused before anything is written


@pytest.mark.parametrize("extra,needles", [
    (["--input-shape", "1", "0", "8"], ["--input-shape 1 0 8", "at least 1"]),
    (["--opset", "5"], ["opset=5", "from 7 to"]),
])
def test_export_bad_input_shape_or_opset_is_a_one_line_error(dense_teacher, tmp_path, capsys, extra, needles):
    assert main(["export", str(dense_teacher), "--out", str(tmp_path / "m.onnx"), *extra]) == 2
    _one_error_line(capsys, *needles)
    assert not (tmp_path / "m.onnx").exists()


def test_inherit_refuses_an_out_holding_a_model_unless_overwrite(dense_teacher, tmp_path, capsys):
    out = tmp_path / "inh"
    out.mkdir()
    (out / "README.txt").write_text("notes")
    base = ["inherit", str(dense_teacher), "--rank", "2", "--heads", "2", "--out", str(out)]
    assert main(base) == 0
    config = (out / "inhernet_config.json").read_text()
    capsys.readouterr()
    assert main([*base[:3], "3", *base[4:]]) == 2
    _one_error_line(capsys, "already holds a saved model", "--overwrite")
    assert (out / "inhernet_config.json").read_text() == config and (out / "README.txt").read_text() == "notes"
    assert main([*base[:3], "3", *base[4:], "--overwrite"]) == 0
    assert json.loads((out / "inhernet_config.json").read_text())["plan"]["config"]["rank"] == 3
    assert (out / "README.txt").read_text() == "notes"
    assert main(["inherit", str(dense_teacher), "--rank", "2", "--out", str(dense_teacher)]) == 2  # the teacher's own
    _one_error_line(capsys, "already holds a saved model")


def test_read_only_out_is_a_one_line_error(dense_teacher, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not deny root writes (see the simulated variant below)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["inherit", str(dense_teacher), "--rank", "2", "--out", str(ro / "inh")]) == 2
        _one_error_line(capsys, "permission denied", str(ro / "inh"), "--out")
    finally:
        ro.chmod(0o755)


def test_an_unwritable_out_is_a_one_line_error_simulated(dense_teacher, tmp_path, capsys, monkeypatch):
    """The same path as a read-only folder, for runs as root: the folder cannot be created."""
    from pathlib import Path

    def deny(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", deny)
    assert main(["inherit", str(dense_teacher), "--rank", "2", "--out", str(tmp_path / "inh")]) == 2
    _one_error_line(capsys, "permission denied", str(tmp_path / "inh"), "--out")


def test_a_bare_state_dict_error_names_only_options_the_command_has(tmp_path, capsys):
    import torch

    from inhernet.models import create_model

    bare = tmp_path / "weights.pt"
    torch.save(create_model("resnet8", num_classes=10, in_channels=1).state_dict(), bare)
    assert main(["evaluate", str(bare), "--data", "digits"]) == 2
    _one_error_line(capsys, "bare state dict", "--arch NAME")
    assert main(["finetune", str(bare), "--data", "digits", "--out", str(tmp_path / "ft")]) == 2
    line = _one_error_line(capsys, "bare state dict", "saved model folder")
    assert "--arch" not in line  # finetune has no --arch option


def test_a_damaged_saved_config_is_a_one_line_error(dense_teacher, tmp_path, capsys):
    out = tmp_path / "inh"
    assert main(["inherit", str(dense_teacher), "--rank", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "inhernet_config.json").write_text("[]")
    assert main(["export", str(out), "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "is damaged", "JSON array")


@pytest.mark.parametrize("base", ["InherNetError", "TrainingError", "DependencyError", "CorruptCheckpointError"])
def test_any_inhernet_error_in_a_command_is_one_line_and_exit_2(base, monkeypatch, capsys):
    """The command line catches the root of the hierarchy: an error class it has never heard of, raised
    deep inside a command, is still reported as its one-line message, without a traceback."""
    from inhernet import cli, errors

    class SomeNewError(getattr(errors, base)):
        """A leaf added later, anywhere in the package."""

    def command(a):
        raise SomeNewError("the cause, and the fix")

    monkeypatch.setitem(cli.COMMANDS, "models", command)
    assert main(["models"]) == 2
    line = _one_error_line(capsys, "the cause, and the fix")
    assert line == "inhernet models: error: the cause, and the fix"


def test_a_bug_is_not_dressed_up_as_a_user_error(monkeypatch):
    """Only InherNet's errors (and bad-input built-ins) become one-line messages: a bug still shows
    its traceback."""
    from inhernet import cli

    def command(a):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "models", command)
    with pytest.raises(ZeroDivisionError):
        main(["models"])


def test_a_damaged_dense_model_is_a_one_line_error_not_a_mismatch(dense_teacher, capsys):
    weights = dense_teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert main(["evaluate", str(dense_teacher), "--data", "digits"]) == 2
    line = _one_error_line(capsys, str(weights), "is damaged", "again")
    assert "architecture" not in line


# ------------------------------------------------------- finetune of a Hugging Face folder (issue 12)
WORDS = [f"w{i}" for i in range(40)]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def _documents(n=60, seed=0):
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        start = rng.randrange(len(WORDS))
        docs.append(" ".join(WORDS[(start + k) % len(WORDS)] for k in range(rng.randrange(8, 16))))
    return docs


@pytest.fixture()
def hf_text(tmp_path):
    """A tiny Llama folder (save_pretrained + tokenizer) and a .txt file of documents."""
    tf = pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    pytest.importorskip("datasets")
    import torch

    torch.manual_seed(0)
    tok = _tiny_tokenizer()
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = tf.LlamaForCausalLM(cfg)
    folder = tmp_path / "llama"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(_documents()) + "\n", encoding="utf-8")
    return folder, text, model, tok


def test_finetune_a_hugging_face_causal_lm_folder_then_evaluate_it(hf_text, tmp_path, capsys):
    folder, text, _, _ = hf_text
    out = tmp_path / "ft"
    cmd = ["finetune", str(folder), "--text", str(text), "--out", str(out), "--max-steps", "3", "--seq-len", "8",
           "--batch-size", "2", "--lr", "1e-3", "--progress", "none"]
    assert main(cmd) == 0
    printed = capsys.readouterr().out
    assert "eval/ppl" in printed and str(out / "model") in printed
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "eval/ppl" in rows[-1]
    assert main(["evaluate", str(out / "model"), "--text", str(text), "--seq-len", "8", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["perplexity"] > 1 and ev["tokens"] > 0
    # the same command again: the finished run is skipped, not retrained
    assert main(cmd) == 0
    assert "finished run with the same settings" in capsys.readouterr().out


def test_finetune_an_inherited_hugging_face_folder_with_kd(hf_text, tmp_path, capsys):
    import torch

    import inhernet

    folder, text, model, tok = hf_text
    inh = tmp_path / "inh"
    inhernet.save(inhernet.inherit(model, rank=4, heads=2, progress=False), inh, tokenizer=tok)
    out = tmp_path / "ft"
    assert main(["finetune", str(inh), "--text", str(text), "--out", str(out), "--max-steps", "2", "--seq-len", "8",
                 "--batch-size", "2", "--teacher", str(folder), "--kd-alpha", "0.5", "--progress", "none"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "train/kd_loss" in rows[0]
    back = inhernet.load(out / "model")  # an InherNet again, with its tokenizer
    assert back.inhernet_plan.inherited
    ids = torch.tensor([[3, 4, 5, 6]])
    assert torch.isfinite(back(input_ids=ids).logits).all()
    assert main(["evaluate", str(out / "model"), "--text", str(text), "--seq-len", "8", "--json"]) == 0


def test_finetune_a_hugging_face_classifier_on_a_csv_file(tmp_path, capsys):
    tf = pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    pytest.importorskip("datasets")
    import csv

    import torch

    torch.manual_seed(0)
    tok = _tiny_tokenizer()
    folder = tmp_path / "bert"
    tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=tok.pad_token_id)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    data = tmp_path / "data.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        for i, doc in enumerate(_documents(80, seed=1)):
            w.writerow([doc, "low" if int(doc.split()[0][1:]) < 20 else "high"])
    out = tmp_path / "ft"
    assert main(["finetune", str(folder), "--data", str(data), "--text-column", "sentence", "--out", str(out),
                 "--max-steps", "3", "--batch-size", "4", "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    assert "val/acc" in printed and "test/acc" in printed
    back = tf.AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert back.config.num_labels == 2


@pytest.mark.parametrize("extra, needles", [
    ([], ["--max-steps N is required"]),
    (["--max-steps", "2", "--epochs", "3"], ["--epochs is for image models", "--max-steps"]),
    (["--max-steps", "0"], ["--max-steps=0"]),
    (["--max-steps", "2", "--warmup", "5"], ["--warmup=5"]),
    (["--max-steps", "2", "--kd-alpha", "0.5"], ["--kd-alpha=0.5", "--teacher"]),
    (["--max-steps", "2", "--schedule", "step"], ["--schedule='step'"]),
    (["--max-steps", "2", "--gate-lr-scale", "0"], ["--gate-lr-scale=0"]),
])
def test_finetune_hugging_face_option_errors_are_one_line_and_write_nothing(hf_text, tmp_path, capsys, extra,
                                                                            needles):
    folder, text, _, _ = hf_text
    out = tmp_path / "ft"
    assert main(["finetune", str(folder), "--text", str(text), "--out", str(out), *extra]) == 2
    _one_error_line(capsys, *needles)
    assert not out.exists()


def test_finetune_gate_lr_scale_of_a_dense_hugging_face_model_is_refused_before_out_is_claimed(hf_text, tmp_path,
                                                                                               capsys):
    folder, text, _, _ = hf_text
    out = tmp_path / "ft"
    assert main(["finetune", str(folder), "--text", str(text), "--out", str(out), "--max-steps", "2", "--seq-len", "8",
                 "--gate-lr-scale", "10", "--progress", "none"]) == 2
    assert "--gate-lr-scale=10.0, but the model has no gated inherited layer" in capsys.readouterr().err
    assert not out.exists()


def test_finetune_of_an_image_model_refuses_the_hugging_face_options(dense_teacher, tmp_path, capsys):
    assert main(["finetune", str(dense_teacher), "--data", "digits", "--max-steps", "3",
                 "--out", str(tmp_path / "ft")]) == 2
    _one_error_line(capsys, "--max-steps is for a Hugging Face model folder")
    assert main(["finetune", str(dense_teacher), "--out", str(tmp_path / "ft")]) == 2
    _one_error_line(capsys, "needs --data NAME")


def test_inherit_options_default_to_the_library_defaults_and_head_init_is_passed():
    """`inhernet inherit` without --heads / --head-init builds InheritConfig's defaults (H = 1 now), not
    a default of its own; --head-init reaches the config, and a bad one is a ConfigError naming the choices
    (which the command prints as one line, exit 2)."""
    import inhernet
    from inhernet.cli import _inherit_config, build_parser

    parse = build_parser().parse_args
    cfg = _inherit_config(parse(["inherit", "t", "--rank", "2", "--out", "o"]), None)
    assert (cfg.heads, cfg.head_init) == (inhernet.InheritConfig().heads, inhernet.InheritConfig().head_init) == (1, "perturbed")
    cfg = _inherit_config(parse(["inherit", "t", "--rank", "2", "--heads", "2", "--head-init", "copies", "--out", "o"]), None)
    assert (cfg.heads, cfg.head_init) == (2, "copies")
    from inhernet.config import ConfigError

    with pytest.raises(ConfigError, match=r"head_init.*perturbed"):
        _inherit_config(parse(["inherit", "t", "--rank", "2", "--heads", "2", "--head-init", "shuffled", "--out", "o"]),
                        None)
