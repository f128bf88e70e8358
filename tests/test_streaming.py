"""inhernet.hf.inherit_checkpoint: a sharded checkpoint inherited tensor by tensor gives the same
InherNet as inheriting the loaded teacher in memory."""

import json

import pytest
import torch
from safetensors.torch import load_file

import inhernet
from inhernet.config import ConfigError
from inhernet.shards import INDEX_NAME, checkpoint_index, parse_size

tf = pytest.importorskip("transformers")
from inhernet.hf import inherit_checkpoint  # noqa: E402


def _tensors(folder):
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    """A tiny random Llama (tied embeddings) saved by save_pretrained into several shards."""
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    folder = tmp_path_factory.mktemp("ckpt") / "llama"
    tf.LlamaForCausalLM(cfg).save_pretrained(str(folder), max_shard_size="20KB")
    assert len(list(folder.glob("*.safetensors"))) > 3 and (folder / INDEX_NAME).is_file()
    return folder


@pytest.mark.parametrize("policy", [
    dict(rank=6, heads=3),
    dict(rank_fraction=0.5, heads=2, rank_pattern={r".*mlp\.down_proj": 3}),
    dict(energy=0.8, heads=2),
    dict(budget=0.7, heads=2),  # spectral budget: a first pass computes the spectra
    dict(budget=0.7, budget_mode="uniform"),
])
def test_streaming_equals_in_memory(llama_checkpoint, tmp_path, policy):
    cfg = inhernet.InheritConfig(**policy)
    teacher = tf.LlamaForCausalLM.from_pretrained(str(llama_checkpoint))
    mem = inhernet.save(inhernet.inherit(teacher, cfg, progress=False), tmp_path / "mem")
    out = inherit_checkpoint(llama_checkpoint, tmp_path / "stream", cfg, max_shard_size="30KB", progress=False)

    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / INDEX_NAME).is_file() and (out / "config.json").is_file()
    a, b = _tensors(mem), _tensors(out)
    assert a.keys() == b.keys()  # tied embeddings stored once, under the same name
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    meta = json.loads((out / "inhernet_config.json").read_text())
    assert meta["format_version"] == 2 and len(meta["weights"]["files"]) == len(shards)
    assert meta["plan"] == json.loads((mem / "inhernet_config.json").read_text())["plan"]

    A, B = inhernet.load(mem), inhernet.load(out)
    assert B.get_input_embeddings().weight is B.get_output_embeddings().weight
    ids = torch.tensor([[5, 17, 42]])
    greedy = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(A.generate(ids, **greedy), B.generate(ids, **greedy))


def test_streaming_gpt2_conv1d_single_shard(tmp_path):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2)
    tf.GPT2LMHeadModel(cfg).save_pretrained(str(tmp_path / "src"))
    teacher = tf.GPT2LMHeadModel.from_pretrained(str(tmp_path / "src"))
    mem = inhernet.save(inhernet.inherit(teacher, rank=5, progress=False), tmp_path / "mem")
    out = inherit_checkpoint(tmp_path / "src", tmp_path / "out", rank=5, progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    a, b = _tensors(mem), _tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.tensor([[3, 9, 27]])
    with torch.no_grad():
        assert torch.equal(inhernet.load(out)(x).logits, inhernet.load(mem)(x).logits)


def test_streaming_errors(llama_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="dst must differ from src"):
        inherit_checkpoint(llama_checkpoint, llama_checkpoint, rank=4, progress=False)
    with pytest.raises(ConfigError, match="selects no layer"), pytest.warns(UserWarning):
        inherit_checkpoint(llama_checkpoint, tmp_path / "x", rank=4, target_modules=["nothing"], progress=False)
    with pytest.raises(ConfigError, match="max_shard_size"):
        parse_size("lots")
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1KiB") == 1024 and parse_size(7) == 7
    index = checkpoint_index(llama_checkpoint)
    assert "model.layers.0.self_attn.q_proj.weight" in index and "lm_head.weight" not in index


def test_tensor_by_tensor_writer_is_valid_safetensors(tmp_path):
    from inhernet.shards import write_safetensors

    tensors = {"w": torch.randn(3, 4), "scalar": torch.tensor(2.5), "half": torch.randn(5, dtype=torch.bfloat16),
               "empty": torch.zeros(0, 3), "ids": torch.arange(7), "view": torch.randn(4, 6)[:, ::2]}
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_cli_inherit_streams_a_hugging_face_folder(llama_checkpoint, tmp_path, capsys):
    from inhernet.cli import main

    out = tmp_path / "cli"
    assert main(["inherit", str(llama_checkpoint), "--rank", "4", "--heads", "2", "--max-shard-size", "30KB",
                 "--out", str(out)]) == 0
    assert "saved" in capsys.readouterr().out
    ref = inherit_checkpoint(llama_checkpoint, tmp_path / "api", inhernet.InheritConfig(rank=4, heads=2),
                             max_shard_size="30KB", progress=False)
    got, want = _tensors(out), _tensors(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert main(["inherit", str(llama_checkpoint), "--budget", "resnet20", "--out", str(tmp_path / "bad")]) == 2
    assert "parameter count or a fraction" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_streaming_into_a_folder_holding_a_model_refuses_unless_overwrite(llama_checkpoint, tmp_path):
    from inhernet.io import ModelExistsError

    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "README.txt").write_text("notes")
    inherit_checkpoint(llama_checkpoint, dst, rank=4, max_shard_size="30KB", progress=False)
    shards = sorted(p.name for p in dst.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    with pytest.raises(ModelExistsError, match="overwrite=True"):
        inherit_checkpoint(llama_checkpoint, dst, rank=6, progress=False)
    assert sorted(p.name for p in dst.glob("model-*-of-*.safetensors")) == shards
    inherit_checkpoint(llama_checkpoint, dst, rank=6, max_shard_size="1GB", progress=False, overwrite=True)
    assert not list(dst.glob("model-*-of-*.safetensors"))  # the old model's shards went with it
    assert not (dst / INDEX_NAME).exists()
    assert (dst / "README.txt").read_text() == "notes"
    assert json.loads((dst / "inhernet_config.json").read_text())["plan"]["config"]["rank"] == 6
    inhernet.load(dst)
