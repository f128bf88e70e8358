"""WikiText-2 evaluation (``inhernet.hf.wikitext``): the shipped file, its "\\n\\n" join, and the
windowed perplexity against ``inhernet.hf.lm.perplexity`` on a tiny random Llama (a byte-level fake
tokenizer, so nothing is downloaded)."""

import hashlib

import pytest
import torch

from inhernet.hf.lm import perplexity
from inhernet.hf.wikitext import (WIKITEXT2_SHA256, wikitext2_path, wikitext2_perplexity, wikitext2_text,
                                  wikitext2_windows)

tf = pytest.importorskip("transformers")


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocabulary 256), called as the field calls it: ``tokenizer(text)``."""

    vocab_size = 256

    def __call__(self, text):
        assert isinstance(text, str)
        return {"input_ids": list(text.encode("utf-8"))}


def _tiny_llama(seq_len: int):
    cfg = tf.LlamaConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max(64, seq_len), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return tf.LlamaForCausalLM(cfg)


def test_shipped_file_has_the_readme_checksum_and_licence_note():
    path = wikitext2_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == WIKITEXT2_SHA256
    readme = (path.parent / "README.md").read_text(encoding="utf-8")
    assert WIKITEXT2_SHA256 in readme and "CC BY-SA" in readme
    wikitext2_text(verify=True)  # no ValueError


def test_text_is_the_rows_joined_by_blank_lines():
    raw_rows = wikitext2_path().read_bytes().decode("utf-8").split("\r\n")[:-1]
    assert len(raw_rows) == 2891 and all(raw_rows)
    text = wikitext2_text()
    assert "\r" not in text
    assert text.split("\n\n") == raw_rows
    assert text.startswith(" = Robert Boulter = \n\n Robert Boulter is an English film")
    assert text == "\n\n".join(raw_rows)


def test_windows_are_non_overlapping_and_drop_the_tail():
    ids = torch.tensor(list(wikitext2_text().encode("utf-8")))
    seq_len = 100_000
    w = wikitext2_windows(ByteTokenizer(), seq_len)
    assert w.shape == (ids.numel() // seq_len, seq_len) and w.dtype == torch.long
    assert torch.equal(w.flatten(), ids[:w.numel()])
    assert wikitext2_windows(ByteTokenizer(), 16, max_windows=3).shape == (3, 16)


def test_perplexity_equals_lm_perplexity_on_the_same_windows_and_restores_the_mode():
    seq_len, n = 16, 5
    model = _tiny_llama(seq_len).train()
    got = wikitext2_perplexity(model, ByteTokenizer(), seq_len=seq_len, batch_size=2, max_windows=n,
                               progress=False)
    assert model.training  # mode restored
    windows = torch.tensor(list(wikitext2_text().encode("utf-8"))[:n * seq_len]).view(n, seq_len)
    ref = perplexity(model, windows, batch_size=n)
    assert got["windows"] == n and got["seq_len"] == seq_len
    assert got["tokens"] == ref["tokens"] == n * (seq_len - 1)
    assert got["nll"] == pytest.approx(ref["nll"], rel=1e-6)
    assert got["ppl"] == pytest.approx(ref["ppl"], rel=1e-6)
    assert set(got) == {"ppl", "nll", "tokens", "windows", "seq_len"}
    fewer = wikitext2_perplexity(model, ByteTokenizer(), seq_len=seq_len, max_windows=2, progress=False)
    assert fewer["windows"] == 2 and fewer["tokens"] == 2 * (seq_len - 1)
    assert fewer["nll"] == pytest.approx(perplexity(model, windows[:2])["nll"], rel=1e-6)
