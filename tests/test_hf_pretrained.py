"""``save_pretrained`` / ``from_pretrained`` / PEFT LoRA / ``transformers.Trainer`` on an inherited model.

``model.save_pretrained`` (what ``Trainer.save_model`` and every Trainer checkpoint call) writes the
inhernet folder, which ``inhernet.load`` reads back exactly; transformers' ``from_pretrained`` on it
refuses with a message naming ``inhernet.load`` (a dense model with random projections is never
built), while the tokenizer saved with the model still loads with ``AutoTokenizer``. PEFT LoRA wraps
InherLinear layers (``q_proj``/``v_proj``, ``"all-linear"`` without any gate). Trainer trains, its
checkpoint loads with ``inhernet.load``, and resuming from it ends where an uninterrupted run ends.
"""

import importlib.util
import io
import json
import os

import pytest
import torch

import inhernet
from inhernet import InherLinear

tf = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

V = 64


def _llama(seed=0):
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return tf.LlamaForCausalLM(cfg).eval()


def _inherited(seed=0):
    return inhernet.inherit(_llama(seed), rank=4, heads=2, progress=False)


IDS = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _logits(model):
    return model.eval()(input_ids=IDS).logits


def test_save_pretrained_writes_the_inhernet_folder(tmp_path):
    model = _inherited()
    assert type(model).__name__ == "LlamaForCausalLM" and isinstance(model, tf.LlamaForCausalLM)
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "inhernet_config.json").read_text())
    # the class swap changes nothing that is recorded
    assert meta["base_model_class"] == "transformers.models.llama.modeling_llama.LlamaForCausalLM"
    assert meta["hf"]["architecture"] == "LlamaForCausalLM"
    again = inhernet.load(tmp_path / "m")
    torch.testing.assert_close(_logits(again), _logits(model), rtol=0, atol=0)
    # a loaded model saves the same way again (overwriting, as save_pretrained does)
    again.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(_logits(inhernet.load(tmp_path / "m")), _logits(model), rtol=0, atol=0)
    # Trainer's arguments: is_main_process=False writes nothing; a given state_dict is what is written
    model.save_pretrained(tmp_path / "none", is_main_process=False)
    assert not (tmp_path / "none").exists()
    state = {k: v + 1 if k.endswith(".up") else v for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "s", state_dict=state, safe_serialization=True, max_shard_size="50GB")
    other = inhernet.load(tmp_path / "s")
    name = next(k for k in state if k.endswith(".up"))
    torch.testing.assert_close(other.state_dict()[name], state[name])
    with pytest.raises(inhernet.errors.ArchitectureMismatchError):
        model.save_pretrained(tmp_path / "bad", state_dict={"x": torch.zeros(1)})
    # whole-model pickling finds the class
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    torch.testing.assert_close(_logits(torch.load(buf, weights_only=False)), _logits(model), rtol=0, atol=0)


def _tokenizer():
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(V - 1)} | {"[UNK]": V - 1}
    return tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                      unk_token="[UNK]")


def test_from_pretrained_refuses_naming_inhernet_load(tmp_path):
    model = _inherited()
    inhernet.save(model, tmp_path / "m", tokenizer=_tokenizer())
    for load in (tf.AutoModelForCausalLM.from_pretrained, tf.LlamaForCausalLM.from_pretrained,
                 tf.AutoConfig.from_pretrained, tf.AutoModel.from_pretrained):
        with pytest.raises(Exception, match=r"inhernet\.load"):
            load(str(tmp_path / "m"))
    # Trainer's resume reads the config generically: that keeps working
    assert tf.PreTrainedConfig.from_json_file(str(tmp_path / "m" / "config.json")).transformers_version
    # ... and so does AutoTokenizer (it falls back to the generic config)
    tok = tf.AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert tok.convert_tokens_to_ids("w5") == 5
    # inhernet.load reads the real config back
    again = inhernet.load(tmp_path / "m")
    assert again.config.model_type == "llama" and again.config.hidden_size == 32
    torch.testing.assert_close(_logits(again), _logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_other_architectures_are_protected(tmp_path, arch):
    if arch == "gpt2":
        teacher = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=16))
        auto, own = tf.AutoModelForCausalLM, tf.GPT2LMHeadModel
    else:
        teacher = tf.BertForMaskedLM(tf.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=4, intermediate_size=64))
        auto, own = tf.AutoModelForMaskedLM, tf.BertForMaskedLM
    model = inhernet.inherit(teacher.eval(), rank=4, heads=2, progress=False)
    model.save_pretrained(tmp_path / "m")
    restore = json.loads((tmp_path / "m" / "config.json").read_text())["inhernet"]["restore"]
    assert restore["model_type"] == arch and len(restore) == 2  # model_type and one type-checked field
    for load in (auto.from_pretrained, own.from_pretrained):
        with pytest.raises(Exception, match=r"inhernet\.load"):
            load(str(tmp_path / "m"))
    torch.testing.assert_close(_logits(inhernet.load(tmp_path / "m")), _logits(model), rtol=0, atol=0)


needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")


@needs_peft
def test_lora_on_q_and_v():
    from peft import LoraConfig

    from inhernet.hf.lora import InherLoraLinear, get_peft_model

    model = _inherited()
    before = _logits(model)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    wrapped = [n for n, m in peft_model.named_modules() if isinstance(m, InherLoraLinear)]
    assert len(wrapped) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in wrapped)
    torch.testing.assert_close(_logits(peft_model), before, rtol=0, atol=0)  # LoRA B = 0 at init
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    peft_model.train()
    peft_model(input_ids=IDS, labels=IDS).loss.backward()
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    with pytest.raises(NotImplementedError, match="InherLinear"):
        peft_model.merge_and_unload()


@needs_peft
def test_lora_all_linear_never_wraps_a_gate():
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    from inhernet.hf.lora import InherLoraLinear, get_peft_model

    model = _inherited()
    before = _logits(model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    tuned = {n: m for n, m in peft_model.named_modules() if isinstance(m, BaseTunerLayer)}
    assert len(tuned) == 14 and all(isinstance(m, InherLoraLinear) for m in tuned.values())  # 2 × q k v o gate up down
    assert not any(n.endswith(".gate") for n in tuned) and not any("lm_head" in n for n in tuned)
    torch.testing.assert_close(_logits(peft_model), before, rtol=0, atol=0)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(3, V, (16, 8), generator=torch.Generator().manual_seed(2))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(model, out, **over):
    args = tf.TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, save_steps=2,
                                logging_steps=1, learning_rate=1e-2, report_to=[], use_cpu=True, seed=0,
                                dataloader_num_workers=0, disable_tqdm=True, **over)
    return tf.Trainer(model=model, args=args, train_dataset=_Tokens())


def test_trainer_trains_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("accelerate")
    full = _trainer(_inherited(), tmp_path / "full")
    full.train()
    losses = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}
    assert len(losses) == 4
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / "inhernet_config.json").is_file()
    loaded = inhernet.load(ckpt)
    assert isinstance(loaded.model.layers[0].mlp.up_proj, InherLinear)
    full.save_model(str(tmp_path / "final"))
    final = inhernet.load(tmp_path / "final")
    for (n, p), (_, q) in zip(full.model.named_parameters(), final.named_parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=n)

    # a fresh inherited model resumed from checkpoint-2 ends where the uninterrupted run ended
    # (another seed: the weights must come from the checkpoint)
    resumed = _trainer(_inherited(seed=5), tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(ckpt))
    again = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    for step in (3, 4):
        assert again[step] == pytest.approx(losses[step], rel=1e-5)
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)
