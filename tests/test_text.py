"""Text data (WordNet glosses, fortunes), the sentence classifier and depth pruning.

Parsing is tested on generated files; the real Debian data is read whole (about a second) when
installed, and its tests skip with the install command otherwise.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from inhernet.data import DatasetNotFoundError
from inhernet.data.errors import DataFormatError
from inhernet.data.text import (
    FORTUNES_DIR,
    WORDNET_DIR,
    LabelledText,
    balanced_split,
    label_index,
    read_fortunes,
    read_wordnet_glosses,
)

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def _write_wordnet(root, noun_lines):
    root.mkdir()
    (root / "data.noun").write_text(HEADER + "".join(noun_lines))
    for pos in ("verb", "adj", "adv"):
        (root / f"data.{pos}").write_text(HEADER)
    return root


def test_wordnet_parser_takes_lexname_and_definition_without_examples(tmp_path):
    root = _write_wordnet(tmp_path / "wn", [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to exist  \n",
        '01234567 05 n 01 dog 0 000 | a domesticated canid; "the dog barked all night"  \n',
    ])
    got = read_wordnet_glosses(root)
    assert got == [LabelledText("that which is perceived to exist", "noun.Tops"),
                   LabelledText("a domesticated canid", "noun.animal")]


def test_wordnet_parser_rejects_a_malformed_line_and_a_missing_folder(tmp_path):
    root = _write_wordnet(tmp_path / "wn", ["this is not a data line\n"])
    with pytest.raises(DataFormatError, match="data.noun:2"):
        read_wordnet_glosses(root)
    with pytest.raises(DatasetNotFoundError, match="wordnet-base"):
        read_wordnet_glosses(tmp_path / "nowhere")


def test_fortunes_split_on_percent_lines_and_skip_indexes(tmp_path):
    (tmp_path / "art").write_text("First quote.\n\t-- Someone\n%\nSecond quote.\n%\n")
    (tmp_path / "art.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "long").write_text("x" * 50 + "\n%\nshort\n")
    got = read_fortunes(tmp_path, max_chars=20)
    assert got == [LabelledText("Second quote.", "art"), LabelledText("short", "long")]  # the 24- and 50-char ones dropped
    assert {t.label for t in read_fortunes(tmp_path)} == {"art", "long"} and len(read_fortunes(tmp_path)) == 4


def test_environment_variables_replace_the_default_folders(tmp_path, monkeypatch):
    """INHERNET_WORDNET_DIR / INHERNET_FORTUNES_DIR stand in for the Debian folders (a machine without
    the packages, e.g. benchmarks/gpu_llm.sh's GPU machine); an explicit root still wins; the
    lm sources ``glosses`` / ``fortunes`` read them too."""
    wn = _write_wordnet(tmp_path / "wn", ["00001740 03 n 01 entity 0 000 | that which is perceived to exist  \n"])
    fo = tmp_path / "fo"
    fo.mkdir()
    (fo / "art").write_text("A quote.\n%\n")
    monkeypatch.setenv("INHERNET_WORDNET_DIR", str(wn))
    monkeypatch.setenv("INHERNET_FORTUNES_DIR", str(fo))
    assert read_wordnet_glosses() == [LabelledText("that which is perceived to exist", "noun.Tops")]
    assert read_fortunes() == [LabelledText("A quote.", "art")]
    from inhernet.hf.textdata import read_lm_documents

    assert read_lm_documents(["glosses", "fortunes"]) == ["that which is perceived to exist", "A quote."]
    with pytest.raises(DatasetNotFoundError, match="INHERNET_FORTUNES_DIR"):
        read_fortunes(tmp_path / "nowhere")  # the explicit root, not the variable
    monkeypatch.setenv("INHERNET_WORDNET_DIR", str(tmp_path / "missing"))
    with pytest.raises(DatasetNotFoundError, match="missing.*INHERNET_WORDNET_DIR"):
        read_wordnet_glosses()


def test_balanced_split_is_disjoint_balanced_seeded_and_drops_rare_classes():
    items = [LabelledText(f"{c}{i}", c) for c, n in (("a", 10), ("b", 7), ("rare", 3)) for i in range(n)]
    train, test = balanced_split(items, 4, 2, seed=3)
    assert Counter(t.label for t in train) == {"a": 4, "b": 4}
    assert Counter(t.label for t in test) == {"a": 2, "b": 2}
    assert not set(train) & set(test)
    assert (train, test) == balanced_split(items, 4, 2, seed=3)
    assert train != balanced_split(items, 4, 2, seed=4)[0]
    assert label_index(train) == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="no class has"):
        balanced_split(items, 20, 5)


@pytest.mark.skipif(not WORDNET_DIR.is_dir(), reason="WordNet not installed: sudo apt-get install wordnet-base")
def test_real_wordnet_has_all_synsets_and_45_classes():
    glosses = read_wordnet_glosses()
    assert len(glosses) == 117_659
    assert len({g.label for g in glosses}) == 45
    assert all(g.text and " | " not in g.text for g in glosses[:1000])


@pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="fortunes not installed: sudo apt-get install fortunes")
def test_real_fortunes_have_many_topics():
    quotes = read_fortunes()
    assert len(quotes) > 10_000 and len({q.label for q in quotes}) > 30


tf = pytest.importorskip("transformers")


def _tiny(kind, layers=4):
    small = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=50, num_key_value_heads=2, max_position_embeddings=32,
                                                  bos_token_id=1, eos_token_id=2, pad_token_id=0, **small)).eval()
    return tf.BertModel(tf.BertConfig(vocab_size=50, max_position_embeddings=32, **small),
                        add_pooling_layer=False).eval()


def test_depth_prune_keeps_the_chosen_blocks_and_leaves_the_teacher_alone():
    from inhernet.hf.prune import depth_prune, every_other_layer

    torch.manual_seed(0)
    teacher = _tiny("llama")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    keep = every_other_layer(teacher)
    assert keep == [0, 2]
    student = depth_prune(teacher, keep)
    assert len(teacher.model.layers) == 4 and teacher.config.num_hidden_layers == 4
    assert len(student.model.layers) == 2 and student.config.num_hidden_layers == 2
    assert [b.self_attn.layer_idx for b in student.model.layers] == [0, 1]  # the KV cache is indexed by these
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    ids = torch.tensor([[5, 6, 7]])
    out = student.generate(ids, max_new_tokens=3, do_sample=False)  # the cache works with the renumbered blocks
    assert out.shape == (1, 6)
    with pytest.raises(ValueError, match="distinct block indices"):
        depth_prune(teacher, [0, 0])
    with pytest.raises(ValueError, match="distinct block indices"):
        depth_prune(teacher, [4])


def test_sentence_classifier_ignores_padding():
    from inhernet.hf.sentence import SentenceClassifier, pad_batches

    torch.manual_seed(0)
    clf = SentenceClassifier(_tiny("bert", layers=2), num_labels=3).eval()
    ids = [[5, 6, 7, 8, 9], [10, 11]]
    (x, mask, y), = list(pad_batches(ids, [0, 2], batch_size=2, pad_id=0))
    assert x.tolist() == [[5, 6, 7, 8, 9], [10, 11, 0, 0, 0]] and mask.sum().item() == 7 and y.tolist() == [0, 2]
    with torch.no_grad():
        batched = clf(x, mask)
        alone = clf(torch.tensor([[10, 11]]), torch.ones(1, 2, dtype=torch.long))
    torch.testing.assert_close(batched[1:], alone, rtol=1e-5, atol=1e-5)
