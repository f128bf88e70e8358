"""Text data for the transformer tasks (``inhernet.hf.textdata``): the user's files → classification
splits and causal-LM blocks.

Every file is generated in ``tmp_path``; the tokenizer is a tiny word-level ``transformers``
tokenizer built here (no asset, nothing downloads). The WordNet default is read once, and skipped
with the install command when the Debian package is missing.
"""

from __future__ import annotations

import json
import os
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("transformers")

from inhernet.data.errors import DatasetNotFoundError
from inhernet.errors import ConfigError
from inhernet.hf.textdata import (
    CLASSIFICATION_DEFAULT,
    LM_DEFAULT,
    ClassificationData,
    LMData,
    TextExample,
    encode_classification,
    load_classification,
    load_lm_data,
    pack_blocks,
    read_lm_documents,
    split_documents,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
# LM documents: document i is the words d{i}t0 .. d{i}t19, so every token says which document it is from
LM_DOCS = [" ".join(f"d{i}t{j}" for j in range(20)) for i in range(40)]


def _tokenizer(words, *, eos=True, pad=True):
    """A word-level fast tokenizer over ``words`` (punctuation split off), ``[CLS] a [SEP] (b [SEP])``
    around its inputs, with ``[PAD]`` / ``[EOS]`` as asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIALS, *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    kwargs = dict(unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    if eos:
        kwargs["eos_token"] = "[EOS]"
    if pad:
        kwargs["pad_token"] = "[PAD]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    words = [w for d in LM_DOCS for w in d.split()]
    words += "it s a charming film bad movie the cat sat on mat dog ran".split()
    return _tokenizer(words)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _labelled_tsv(path, counts):
    """A ``sentence\\tlabel`` file with ``counts[label]`` rows per label, texts ``s{label}_{k}``."""
    rows = [f"s{label}_{k}\t{label}" for label, n in counts.items() for k in range(n)]
    return _write(path, "sentence\tlabel\n" + "\n".join(rows) + "\n")


def _texts(split):
    return [e.text for e in split]


# ------------------------------------------------------------------------------------------------
# classification: formats


def test_glue_sst2_tsv_keeps_quote_characters_as_text(tmp_path):
    # a lone " in row 2 would swallow the following rows under CSV quoting: GLUE .tsv is QUOTE_NONE
    path = _write(tmp_path / "train.tsv", "sentence\tlabel\n"
                  "it 's a \"charming\" film\t1\n"
                  "a \"bad movie\t0\n"
                  "the cat sat\t1\n"
                  "\"quoted whole\"\t0\n")
    data = load_classification(str(path), text_column="sentence", val_fraction=0, test_fraction=0)
    assert isinstance(data, ClassificationData)
    assert sorted(_texts(data.train)) == sorted(['it \'s a "charming" film', 'a "bad movie', "the cat sat",
                                                 '"quoted whole"'])
    assert data.labels == ["0", "1"] and data.num_labels == 2
    assert {e.text: e.label for e in data.train}['a "bad movie'] == 0
    assert data.meta["rows"] == 4 and data.meta["dropped"] == 0 and data.meta["format"] == "tsv"
    assert data.meta["source"] == str(path.resolve())


def test_glue_pair_tsv_and_pair_encoding(tmp_path, tokenizer):
    path = _write(tmp_path / "mrpc.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                  "1\t11\t12\tthe cat sat on the mat\tthe cat sat\n"
                  "0\t13\t14\ta \"bad movie\tthe dog ran\n"
                  "1\t15\t16\tit 's a film\tit 's a \"charming\" film\n")
    data = load_classification(str(path), text_column="#1 String", text_pair_column="#2 String",
                               label_column="Quality", val_fraction=0, test_fraction=0)
    pairs = {e.text: (e.text_pair, e.label) for e in data.train}
    assert pairs == {"the cat sat on the mat": ("the cat sat", 1), 'a "bad movie': ("the dog ran", 0),
                     "it 's a film": ('it \'s a "charming" film', 1)}
    enc = encode_classification(tokenizer, data.train)
    assert len(enc) == 3 and enc.labels == [e.label for e in data.train]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for ids, ex in zip(enc.input_ids, data.train):
        assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 2  # [CLS] a [SEP] b [SEP]
        first = tokenizer(ex.text, add_special_tokens=False)["input_ids"]
        assert ids[1:1 + len(first)] == first and ids[1 + len(first)] == sep


def test_csv_quoting_string_labels_and_na_kept_as_text(tmp_path):
    path = _write(tmp_path / "reviews.csv", 'review,stars\n'
                  '"good, really",pos\n'
                  'NA,neutral\n'
                  'plain bad,neg\n'
                  '"he said ""wow""",pos\n')
    data = load_classification(str(path), text_column="review", label_column="stars",
                               val_fraction=0, test_fraction=0)
    assert data.labels == ["neg", "neutral", "pos"]  # sorted strings → 0..K-1
    got = {e.text: data.labels[e.label] for e in data.train}
    assert got == {"good, really": "pos", "NA": "neutral", "plain bad": "neg", 'he said "wow"': "pos"}
    assert data.meta["format"] == "csv"


def test_jsonl_integer_labels_zero_based_kept_other_integers_sorted(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(9)]
    path = _write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = load_classification(str(path), val_fraction=0, test_fraction=0)
    assert data.labels == ["0", "1", "2"]
    assert all(e.label == int(e.text[1:]) % 3 for e in data.train)  # 0..K-1 are the indices themselves
    assert data.meta["format"] == "json"

    # star ratings 1..5 (not 0-based) and digit strings in a CSV: sorted numerically, "10" after "2"
    stars = _write(tmp_path / "stars.csv", "text,label\n" + "".join(f"r{v},{v}\n" for v in (5, 1, 10, 2, 1)))
    data = load_classification(str(stars), val_fraction=0, test_fraction=0)
    assert data.labels == ["1", "2", "5", "10"]
    assert {e.text: data.labels[e.label] for e in data.train} == {"r5": "5", "r1": "1", "r10": "10", "r2": "2"}


def test_delimiter_overrides_the_suffix(tmp_path):
    path = _write(tmp_path / "data.txt", "text|label\na|x\nb|y\n")
    data = load_classification(str(path), delimiter="|", val_fraction=0, test_fraction=0)
    assert sorted((e.text, data.labels[e.label]) for e in data.train) == [("a", "x"), ("b", "y")]


def test_empty_texts_dropped_and_counted_missing_label_is_an_error_naming_the_row(tmp_path):
    path = _write(tmp_path / "d.tsv", "sentence\tlabel\nthe cat\t1\n\t0\n   \t1\nthe dog\t0\n")
    data = load_classification(str(path), text_column="sentence", val_fraction=0, test_fraction=0)
    assert sorted(_texts(data.train)) == ["the cat", "the dog"]
    assert data.meta["rows"] == 4 and data.meta["dropped"] == 2

    bad = _write(tmp_path / "nolabel.tsv", "sentence\tlabel\nthe cat\t1\nthe dog\t\n")
    with pytest.raises(ConfigError, match=r"data row 2 .*no label in column 'label'"):
        load_classification(str(bad), text_column="sentence")
    bad_json = _write(tmp_path / "nolabel.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(ConfigError, match="data row 2"):
        load_classification(str(bad_json))


def test_missing_column_error_lists_the_columns_and_the_option(tmp_path):
    path = _labelled_tsv(tmp_path / "train.tsv", {0: 3, 1: 3})
    with pytest.raises(ConfigError) as info:
        load_classification(str(path))  # text_column defaults to "text"; the file has "sentence"
    msg = str(info.value)
    assert "text_column='text' is not a column of train.tsv" in msg
    assert "'sentence'" in msg and "'label'" in msg and "data.text_column" in msg
    with pytest.raises(ConfigError, match=r"label_column='y' .*'sentence', 'label'.*data\.label_column"):
        load_classification(str(path), text_column="sentence", label_column="y")
    with pytest.raises(ConfigError, match=r"text_pair_column='s2' .*data\.text_pair_column"):
        load_classification(str(path), text_column="sentence", text_pair_column="s2")
    with pytest.raises(ConfigError, match=r"holds int64 values, not text"):
        load_classification(str(path), text_column="label")


@pytest.mark.parametrize("name, content, pattern", [
    ("data.xlsx", "x", r"suffix '\.xlsx'.*\.csv, \.json, \.jsonl, \.tsv.*data\.delimiter"),
    ("empty.csv", "", r"empty.csv' is empty"),
    ("blank.jsonl", "\n  \n", r"blank.jsonl' is empty"),
    ("header.tsv", "sentence\tlabel\n", r"no data rows"),
    ("broken.jsonl", '{"text": "a", "label": 1}\nnot json\n', r"could not be read as json"),
])
def test_bad_files_are_config_errors_naming_the_file(tmp_path, name, content, pattern):
    path = _write(tmp_path / name, content)
    with pytest.raises(ConfigError, match=pattern):
        load_classification(str(path), text_column="sentence" if name.endswith(".tsv") else "text")


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.tsv' does not exist"):
        load_classification(str(tmp_path / "nope.tsv"))
    with pytest.raises(ConfigError, match=r"neither a packaged data set \('wordnet_glosses'\) nor an existing file"):
        load_classification("sst2")


# ------------------------------------------------------------------------------------------------
# classification: splits


def test_splits_are_stratified_disjoint_and_deterministic(tmp_path):
    path = _labelled_tsv(tmp_path / "d.tsv", {0: 50, 1: 30, 2: 20})
    data = load_classification(str(path), text_column="sentence", val_fraction=0.1, test_fraction=0.2, seed=3)
    sizes = {s: Counter(e.label for e in getattr(data, s)) for s in ("train", "val", "test")}
    assert sizes["test"] == {0: 10, 1: 6, 2: 4} and sizes["val"] == {0: 5, 1: 3, 2: 2}
    assert sizes["train"] == {0: 35, 1: 21, 2: 14}
    texts = [set(_texts(getattr(data, s))) for s in ("train", "val", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert len(texts[0] | texts[1] | texts[2]) == 100
    assert all(e.label == int(e.text[1]) for s in ("train", "val", "test") for e in getattr(data, s))
    assert data.meta["sizes"] == {"train": 70, "val": 10, "test": 20}

    again = load_classification(str(path), text_column="sentence", val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (again.train, again.val, again.test) == (data.train, data.val, data.test)
    other = load_classification(str(path), text_column="sentence", val_fraction=0.1, test_fraction=0.2, seed=4)
    assert set(_texts(other.test)) != texts[2]
    assert Counter(e.label for e in other.test) == sizes["test"]  # still stratified


def test_small_classes_and_empty_train_split(tmp_path):
    # a class of one example may miss val / test: fine
    path = _labelled_tsv(tmp_path / "d.tsv", {0: 9, 1: 1})
    data = load_classification(str(path), text_column="sentence", val_fraction=0.1, test_fraction=0.2)
    assert len(data.train) + len(data.val) + len(data.test) == 10 and len(data.test) == 2
    assert data.labels == ["0", "1"]
    two = _labelled_tsv(tmp_path / "two.tsv", {0: 1, 1: 1})
    with pytest.raises(ConfigError, match=r"train split .* is empty \(2 examples"):
        load_classification(str(two), text_column="sentence", val_fraction=0.4, test_fraction=0.5)
    with pytest.raises(ConfigError, match=r"val_fraction \+ data.test_fraction = 1"):
        load_classification(str(two), text_column="sentence", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match=r"data.test_fraction=1.5 must be a number in \[0, 1\)"):
        load_classification(str(two), text_column="sentence", test_fraction=1.5)


def test_test_file_is_the_test_split(tmp_path):
    train = _labelled_tsv(tmp_path / "train.tsv", {0: 20, 1: 20})
    test = _write(tmp_path / "dev.tsv", "sentence\tlabel\nheld a\t0\nheld b\t1\nheld c\t1\n")
    data = load_classification(str(train), text_column="sentence", test_file=str(test), val_fraction=0.25)
    assert sorted(_texts(data.test)) == ["held a", "held b", "held c"]
    assert {e.text: e.label for e in data.test} == {"held a": 0, "held b": 1, "held c": 1}
    assert len(data.val) == 10 and len(data.train) == 30  # the file is split into train / val only
    assert not set(_texts(data.test)) & set(_texts(data.train) + _texts(data.val))
    assert data.meta["test_source"] == str(test.resolve()) and data.meta["test_rows"] == 3

    unlabelled = _write(tmp_path / "test.tsv", "index\tsentence\n0\tsome text\n")
    with pytest.raises(ConfigError, match=r"label_column='label' is not a column of test.tsv .*GLUE test files"):
        load_classification(str(train), text_column="sentence", test_file=str(unlabelled))


def test_per_class_and_max_examples_on_a_file(tmp_path):
    path = _labelled_tsv(tmp_path / "d.tsv", {"a": 50, "b": 30, "c": 5})
    data = load_classification(str(path), text_column="sentence", per_class=10, val_fraction=0, test_fraction=0.2)
    assert data.labels == ["a", "b"] and data.meta["left_out_classes"] == ["c"]
    assert Counter(e.label for e in data.train + data.test) == {0: 10, 1: 10}
    capped = load_classification(str(path), text_column="sentence", max_examples=17, val_fraction=0,
                                 test_fraction=0)
    assert Counter(data_label for data_label in (capped.labels[e.label] for e in capped.train)) == \
        {"a": 10, "b": 6, "c": 1}
    with pytest.raises(ConfigError, match=r"per_class=60: .*the largest has 50"):
        load_classification(str(path), text_column="sentence", per_class=60)


def test_wordnet_glosses_default():
    try:
        data = load_classification(per_class=6, val_fraction=0.5, test_fraction=1 / 6, seed=1)
    except DatasetNotFoundError as exc:
        pytest.skip(f"WordNet glosses need the Debian package wordnet-base (sudo apt-get install wordnet-base): {exc}")
    assert data.name == CLASSIFICATION_DEFAULT and data.meta["rows"] > 100_000
    assert "noun.animal" in data.labels and data.labels == sorted(data.labels)
    k = data.num_labels
    assert 40 <= k <= 45
    assert Counter(e.label for e in data.test) == {i: 1 for i in range(k)}
    assert Counter(e.label for e in data.val) == {i: 3 for i in range(k)}
    assert len(data.train) == 2 * k
    assert all(isinstance(e, TextExample) and e.text and e.text_pair is None for e in data.train)


# ------------------------------------------------------------------------------------------------
# encoding


def test_encode_classification_truncates_and_pads_with_pad_or_eos():
    words = "the cat sat on mat".split()
    examples = [TextExample("the cat sat on the mat", 1), TextExample("cat", 0)]
    tok = _tokenizer(words)
    enc = encode_classification(tok, examples, max_length=4)
    assert enc.input_ids[0] == [tok.cls_token_id, *tok("the cat", add_special_tokens=False)["input_ids"],
                                tok.sep_token_id]
    assert len(enc.input_ids[1]) == 3 and enc.labels == [1, 0] and enc.pad_id == tok.pad_token_id
    assert encode_classification(_tokenizer(words, pad=False), examples).pad_id == tok.eos_token_id
    with pytest.raises(ConfigError, match="neither a pad token nor an EOS token"):
        encode_classification(_tokenizer(words, pad=False, eos=False), examples)
    with pytest.raises(ConfigError, match="1 of 2 examples have a text_pair"):
        encode_classification(tok, [TextExample("cat", 0, "mat"), TextExample("cat", 0)])
    assert len(encode_classification(tok, [])) == 0


# ------------------------------------------------------------------------------------------------
# causal LM


def test_read_lm_documents_from_files(tmp_path):
    txt = _write(tmp_path / "notes.txt", "first para\nsecond line\n\nsecond doc\n\n\n\n  third doc  \n\n")
    jsonl = _write(tmp_path / "docs.jsonl", '{"body": "json one", "id": 1}\n{"body": ""}\n{"body": "json two"}\n')
    docs = read_lm_documents([str(txt), str(jsonl)], text_field="body")
    assert docs == ["first para\nsecond line", "second doc", "third doc", "json one", "json two"]
    assert read_lm_documents(str(txt)) == docs[:3]
    with pytest.raises(ConfigError, match=r"text_field='text' is not a field of docs.jsonl .*'body', 'id'"):
        read_lm_documents(str(jsonl))
    with pytest.raises(ConfigError, match=r"neither a packaged source \(glosses, fortunes, wikitext2\)"):
        read_lm_documents("wikipedia")
    with pytest.raises(ConfigError, match=r"suffix '\.md'"):
        read_lm_documents(str(_write(tmp_path / "x.md", "text")))
    assert LM_DEFAULT == ("glosses", "fortunes")


def test_wikitext2_source_is_cut_into_articles():
    docs = read_lm_documents("wikitext2")
    assert len(docs) == 62
    assert docs[0].startswith("= Robert Boulter =") and docs[1].startswith("= Du Fu =")
    assert all(d.startswith("= ") and not d.startswith("= =") for d in docs)


def test_split_documents_disjoint_ordered_seeded():
    docs = [f"doc {i}" for i in range(50)]
    train, held = split_documents(docs, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40 and not set(train) & set(held)
    assert sorted(train + held, key=docs.index) == docs
    assert train == sorted(train, key=docs.index) and held == sorted(held, key=docs.index)  # original order
    assert split_documents(docs, 0.2, seed=0) == (train, held)
    assert split_documents(docs, 0.2, seed=1)[1] != held
    assert [len(s) for s in split_documents(docs[:3], 0.1)] == [2, 1]  # at least one held out
    assert [len(s) for s in split_documents(docs[:2], 0.9)] == [1, 1]  # at least one kept for training
    assert split_documents(docs[:5], 0.0) == (docs[:5], [])
    with pytest.raises(ConfigError, match="held_out_fraction"):
        split_documents(docs, 1.0)


def test_pack_blocks_shapes_and_separators(tokenizer):
    docs = LM_DOCS[:10]  # 10 × (20 tokens + 1 separator) = 210 tokens
    blocks = pack_blocks(tokenizer, docs, 16)
    assert blocks.shape == (13, 16) and blocks.dtype == torch.long
    flat = blocks.flatten().tolist()
    assert flat[20] == tokenizer.eos_token_id and flat[41] == tokenizer.eos_token_id
    assert flat[:20] == tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    assert pack_blocks(tokenizer, docs, 16, max_blocks=5).shape == (5, 16)
    assert torch.equal(pack_blocks(tokenizer, docs, 16, max_blocks=5), blocks[:5])
    sep = pack_blocks(tokenizer, docs, 16, separator="[SEP]").flatten().tolist()
    assert sep[20] == tokenizer.sep_token_id and tokenizer.eos_token_id not in sep
    with pytest.raises(ConfigError, match=r"separator='d0t0 d0t1' encodes to 2 tokens.*None"):
        pack_blocks(tokenizer, docs, 16, separator="d0t0 d0t1")
    with pytest.raises(ConfigError, match=r"encodes to 0 tokens"):
        pack_blocks(tokenizer, docs, 16, separator="\n\n")  # whitespace is no token for this tokenizer
    with pytest.raises(ConfigError, match="no EOS token"):
        pack_blocks(_tokenizer(["a"], eos=False), ["a a a"], 2)
    with pytest.raises(ConfigError, match="seq_len=1"):
        pack_blocks(tokenizer, docs, 1)
    assert pack_blocks(tokenizer, [], 16).shape == (0, 16)


def _doc_ids(tokenizer, blocks):
    """The document numbers whose tokens appear in ``blocks`` (token ``d{i}t{j}`` → ``i``)."""
    tokens = tokenizer.convert_ids_to_tokens(blocks.flatten().tolist())
    return {int(t[1:t.index("t")]) for t in tokens if t.startswith("d")}


def test_load_lm_data_documents_never_cross_the_split(tmp_path, tokenizer):
    path = _write(tmp_path / "corpus.txt", "\n\n".join(LM_DOCS) + "\n")
    data = load_lm_data(tokenizer, [str(path)], seq_len=8, held_out_fraction=0.25, seed=5)
    assert isinstance(data, LMData) and data.seq_len == 8 and data.name == "corpus.txt"
    train_docs, held_docs = split_documents(LM_DOCS, 0.25, seed=5)
    assert data.meta["documents"] == {"train": 30, "held_out": 10}
    assert data.train.shape == (30 * 21 // 8, 8) and data.held_out.shape == (10 * 21 // 8, 8)
    assert data.meta["tokens"] == {"train": data.train.numel(), "held_out": data.held_out.numel()}
    train_ids, held_ids = _doc_ids(tokenizer, data.train), _doc_ids(tokenizer, data.held_out)
    assert not train_ids & held_ids
    assert train_ids == {int(d.split()[0][1:-2]) for d in train_docs}
    assert held_ids == {int(d.split()[0][1:-2]) for d in held_docs}
    capped = load_lm_data(tokenizer, [str(path)], seq_len=8, held_out_fraction=0.25, seed=5,
                          max_train_blocks=3, max_held_out_blocks=2)
    assert capped.train.shape == (3, 8) and capped.held_out.shape == (2, 8)
    assert torch.equal(capped.train, data.train[:3])


def test_load_lm_data_too_little_text(tmp_path, tokenizer):
    path = _write(tmp_path / "tiny.txt", "d0t0 d0t1 d0t2\n\nd1t0 d1t1\n")
    with pytest.raises(ConfigError, match=r"training documents \(1 of 2\) give \d+ tokens, fewer than one block "
                                          r"of seq_len=64"):
        load_lm_data(tokenizer, str(path), seq_len=64)
    # a seed that holds out the two-word document (3 tokens with its separator, under one block of 4)
    docs = read_lm_documents(str(path))
    seed = next(s for s in range(100) if split_documents(docs, 0.5, seed=s)[1] == [docs[1]])
    with pytest.raises(ConfigError, match=r"held-out documents \(1 of 2\) give 3 tokens, .*seq_len=4.*"
                                          r"held_out_fraction"):
        load_lm_data(tokenizer, str(path), seq_len=4, held_out_fraction=0.5, seed=seed)
    only_train = load_lm_data(tokenizer, str(path), seq_len=4, held_out_fraction=0)  # 4 + 3 tokens
    assert only_train.train.shape == (1, 4) and only_train.held_out.shape == (0, 4)


def test_reading_writes_nothing_into_the_datasets_home_cache(tmp_path):
    import datasets

    cache = datasets.config.HF_DATASETS_CACHE
    before = sorted(os.listdir(cache)) if os.path.isdir(cache) else None
    path = _labelled_tsv(tmp_path / "d.tsv", {0: 2, 1: 2})
    load_classification(str(path), text_column="sentence", val_fraction=0, test_fraction=0)
    read_lm_documents(str(_write(tmp_path / "n.txt", "a\n\nb\n")))
    assert (sorted(os.listdir(cache)) if os.path.isdir(cache) else None) == before
