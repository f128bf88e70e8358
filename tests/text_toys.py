"""Tiny Hugging Face models and tokenizers built from code (nothing downloads), shared by the text
tests: a byte-level BPE tokenizer trained on the spot, a tiny random Llama (causal LM) and a tiny
random BERT classifier, each saved as a ``save_pretrained`` folder with its tokenizer."""

import pytest
import torch

WORDS = ("the cat sat on the mat", "a dog ran in the park", "wiki text rows", "birds sing at dawn",
         "rain falls on the hills", "numbers add up to ten")


def tiny_tokenizer(texts=WORDS, vocab_size=300):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<eos>`` (also the pad token) and ``[CLS]`` / ``[SEP]``."""
    tf = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "[CLS]", "[SEP]"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) * 20, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>",
                                      cls_token="[CLS]", sep_token="[SEP]")


def tiny_lm_folder(folder, layers=2):
    """A tiny random Llama and its tokenizer, saved into ``folder``; returns ``(model, tokenizer)``."""
    tf = pytest.importorskip("transformers")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = tf.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def tiny_bert_folder(folder, layers=4, num_labels=2):
    """A tiny random BERT encoder (``BertModel``, as a sentence-transformers folder holds it) and its
    tokenizer, saved into ``folder``; returns ``(model, tokenizer)``."""
    tf = pytest.importorskip("transformers")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        pad_token_id=tokenizer.pad_token_id)
    model = tf.BertModel(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer
