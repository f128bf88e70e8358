"""WikiText-2 evaluation (``inhernet.hf.wikitext``): the shipped file, its "\\n\\n" join, and the
windowed perplexity against ``inhernet.hf.lm.perplexity`` on a tiny random Llama (a byte-level fake
tokenizer, so nothing is downloaded)."""

import hashlib

import pytest
import torch

from inhernet.hf.lm import perplexity
from inhernet.hf.wikitext import (WIKITEXT2_SHA256, wikitext2_path, wikitext2_perplexity, wikitext2_text,
                                  wikitext2_windows)
from text_toys import tiny_lm_folder

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


def test_evaluate_command_scores_text_and_wikitext2_as_json(tmp_path, capsys):
    """``inhernet evaluate FOLDER --text FILE --json`` prints one JSON object with the perplexity and
    the scored tokens, equal to windows_perplexity on the same windows; --wikitext2 likewise; an
    inherited folder (inhernet.save with its tokenizer) is read too."""
    import json

    import inhernet
    from inhernet.cli import main
    from inhernet.hf.lm import text_windows, windows_perplexity

    model, tokenizer = tiny_lm_folder(tmp_path / "lm")
    text = "the cat sat on the mat. " * 60
    (tmp_path / "t.txt").write_text(text)
    assert main(["evaluate", str(tmp_path / "lm"), "--text", str(tmp_path / "t.txt"), "--seq-len", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = windows_perplexity(model, text_windows(tokenizer, text, 32))
    assert out["tokens"] == ref["tokens"] > 0 and out["perplexity"] == pytest.approx(ref["ppl"], rel=1e-6)
    assert main(["evaluate", str(tmp_path / "lm"), "--wikitext2", "--seq-len", "32", "--max-windows", "3", "--json"]) == 0
    wt = json.loads(capsys.readouterr().out)
    assert wt["windows"] == 3 and wt["tokens"] == 3 * 31 and wt["text"] == "WikiText-2 (test)"
    inherited = inhernet.inherit(model, rank=4, heads=2, progress=False)
    inhernet.save(inherited, tmp_path / "inh", tokenizer=tokenizer)
    assert main(["evaluate", str(tmp_path / "inh"), "--text", str(tmp_path / "t.txt"), "--seq-len", "32", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["perplexity"] == pytest.approx(windows_perplexity(inherited, text_windows(tokenizer, text, 32))["ppl"],
                                              rel=1e-6)
    assert got["params"] == inhernet.count_parameters(inherited) < out["params"]


def test_a_non_finite_window_is_an_error_that_names_it(tmp_path):
    from inhernet.hf.lm import text_windows, windows_perplexity

    model, tokenizer = tiny_lm_folder(tmp_path / "lm")
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    windows = text_windows(tokenizer, "the cat sat on the mat. " * 30, 16)
    with pytest.raises(ValueError, match=r"windows 0\.\.1 give a non-finite loss"):
        windows_perplexity(model, windows, batch_size=2)
