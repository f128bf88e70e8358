"""``inhernet compare`` for the transformer tasks (``task: causal-lm`` / ``sequence-classification``):
the schema's errors, and whole comparisons on tiny random models built from code (a Llama and a
BERT with a tokenizer trained on the spot): every method scored before and after fine-tuning, the
budgets as documented, resumable, stale folders refused."""

import json

import pytest
import torch
import yaml

from inhernet.compare import CompareConfig, CompareConfigError, TextCompareConfig, load_config, run_compare
from inhernet.compare.text_runner import block_linear_parameters
from text_toys import tiny_bert_folder, tiny_lm_folder

tf = pytest.importorskip("transformers")
pytest.importorskip("datasets")

LM_TEXT = "\n\n".join(f"document {i}: the cat sat on the mat and a dog ran in the park {i % 7} times." for i in range(60))


def _lm_config(tmp_path, **over):
    tiny_lm_folder(tmp_path / "lm", layers=4)
    (tmp_path / "corpus.txt").write_text(LM_TEXT)
    cfg = {
        "name": "tiny_lm", "task": "causal-lm", "out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "teacher": {"model": str(tmp_path / "lm")},
        "data": {"sources": [str(tmp_path / "corpus.txt")], "seq_len": 16, "held_out_fraction": 0.2},
        "evaluation": {"wikitext2": True, "seq_len": 32, "max_windows": 2, "rounds": 1, "new_tokens": 2,
                       "speed_tokens": 8},
        "schedule": {"max_steps": 3, "batch_size": 2, "lr": 1e-3, "warmup": 1, "eval_batch_size": 4},
        "seeds": [0, 1],
        "calibration_blocks": 4,
        "trainer": {"progress": False, "threads": 1},
        "methods": [
            {"name": "teacher", "kind": "teacher", "finetune": False},
            {"name": "teacher_ft", "kind": "teacher"},
            {"name": "depth_50", "kind": "depth_pruned", "budget": 0.5},
            {"name": "svd_llm_50", "kind": "svd_llm", "budget": 0.5, "finetune": False},
            {"name": "inhernet_50", "kind": "inhernet", "budget": 0.5, "kd": 0.5},
        ],
    }
    cfg.update(over)
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_load_config_dispatches_on_task(tmp_path):
    """A config with ``task: causal-lm`` is a TextCompareConfig, one without a task the image schema;
    a mistyped task is refused with the closest name."""
    path = _lm_config(tmp_path)
    assert isinstance(load_config(path), TextCompareConfig)
    raw = yaml.safe_load(path.read_text())
    raw["task"] = "causal_lm"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CompareConfigError, match="causal-lm"):
        load_config(path)
    img = tmp_path / "img.yaml"
    img.write_text(yaml.safe_dump({"methods": [{"name": "s", "kind": "student"}]}))
    assert isinstance(load_config(img), CompareConfig)


@pytest.mark.parametrize("method, message", [
    ({"name": "x", "kind": "distil"}, "valid kinds"),
    ({"name": "x", "kind": "depth_pruned"}, "fraction in \\(0, 1\\) of the teacher's blocks"),
    ({"name": "x", "kind": "inhernet", "budget": "student"}, "layer_subset"),
    ({"name": "x", "kind": "teacher", "kd": 0.5}, "cannot distil from itself"),
    ({"name": "x", "kind": "inhernet", "budget": 0.5, "kd": 2}, "in \\[0, 1\\]"),
    ({"name": "x", "kind": "svd_llm", "budget": 0.5, "inherit": {"heads": 2}}, "only apply to kind: inhernet"),
    ({"name": "x", "kind": "inhernet", "budget": 0.5, "inherit": {"hedas": 2}}, "heads"),
    ({"name": "x", "kind": "inhernet", "budget": 0.5, "kd": 0.5, "finetune": False}, "kd needs finetune"),
])
def test_method_errors_name_the_problem(method, message):
    with pytest.raises(CompareConfigError, match=message):
        TextCompareConfig.from_dict({"task": "causal-lm", "methods": [method]})


def test_unknown_schedule_key_suggests_the_closest():
    with pytest.raises(CompareConfigError, match="max_steps"):
        TextCompareConfig.from_dict({"task": "causal-lm", "schedule": {"max_step": 3},
                                     "methods": [{"name": "t", "kind": "teacher"}]})


def test_causal_lm_comparison_end_to_end(tmp_path, capsys):
    """Every method is scored before and after fine-tuning; methods that are neither fine-tuned nor
    random run once (n = 1); the budgets keep the documented share of the block-linear parameters;
    a second invocation trains nothing; a changed config is refused without --force."""
    import inhernet

    path = _lm_config(tmp_path)
    cfg = load_config(path)
    capsys.readouterr()  # what building the toy teacher folder printed
    res = run_compare(cfg)
    out = tmp_path / "out"
    assert (out / "results.md").is_file() and (out / "results.json").is_file()
    # progress: false silences transformers' own bars too (loading weights, writing shards)
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err[-500:]
    by = {m["name"]: m for m in res["methods"]}
    teacher_blp = res["teacher"]["block_linear_params"]
    assert by["teacher"]["seeds"] == [0] and by["svd_llm_50"]["seeds"] == [0]   # deterministic: once
    assert by["teacher_ft"]["seeds"] == [0, 1] and by["inhernet_50"]["seeds"] == [0, 1]
    for m in res["methods"]:
        assert {"held_out_ppl", "wikitext2_ppl"} <= set(m["before"]), m["name"]
        if m["finetune"]:
            assert {"held_out_ppl", "wikitext2_ppl"} <= set(m["after"]), m["name"]
        assert m["speed"]["forward_tokens_per_s"] > 0
    # the teacher, not fine-tuned, scores what the teacher scores
    assert by["teacher"]["before"]["held_out_ppl"]["mean"] == pytest.approx(res["teacher"]["scores"]["held_out_ppl"])
    # depth pruning keeps 2 of 4 blocks: half the block-linear parameters exactly
    assert by["depth_50"]["block_linear_fraction"] == pytest.approx(0.5)
    # the factorised budgets spend at most half of the targeted parameters
    for name in ("svd_llm_50", "inhernet_50"):
        assert 0.3 < by[name]["block_linear_fraction"] <= 0.5 + 1e-9, (name, by[name]["block_linear_fraction"])
    # svd_llm: one head, no gate
    svd = inhernet.load(out / "runs" / "svd_llm_50" / "seed0" / "model")
    assert svd.inhernet_plan.config["heads"] == 1 and svd.inhernet_plan.config["gate"] == "none"
    assert block_linear_parameters(svd) == by["svd_llm_50"]["block_linear_params"] <= teacher_blp // 2
    # the score after fine-tuning is fine-tuning's own last evaluation (same split), not a second pass
    last = [json.loads(line) for line in (out / "runs" / "inhernet_50" / "seed0" / "metrics.jsonl").read_text().splitlines()
            if "eval/ppl" in line][-1]
    done = json.loads((out / "runs" / "inhernet_50" / "seed0" / "done.json").read_text())
    assert done["after"]["held_out_ppl"] == last["eval/ppl"]
    # fine-tuning changed the teacher copy, never the teacher
    ft = by["teacher_ft"]["after"]["held_out_ppl"]["mean"]
    assert ft != pytest.approx(by["teacher"]["before"]["held_out_ppl"]["mean"])
    table = (out / "results.md").read_text()
    assert "(n = 1)" in table and "±" in table and "block-linear" in table
    # `inhernet report` rebuilds the table from the run folders, keeping the measured speed
    from inhernet.compare import rebuild_report

    again = rebuild_report(out)
    assert [m.get("speed") for m in again["methods"]] == [m.get("speed") for m in res["methods"]]
    assert "(n = 1)" in (out / "results.md").read_text()
    # a second run reuses every finished run
    capsys.readouterr()
    run_compare(load_config(path))
    log = capsys.readouterr().out
    assert log.count("skipped") == len([r for m in res["methods"] for r in m["seeds"]])
    assert "fine-tuning (" not in log
    # --status reads the same state without training or loading anything
    from inhernet.compare import comparison_status

    n = len([r for m in res["methods"] for r in m["seeds"]])
    status = comparison_status(load_config(path))
    assert "teacher: pretrained" in status and f"{n} of {n} runs done" in status
    assert "inhernet_50 seed 1: done" in status
    # a changed schedule is another experiment: refused, nothing deleted
    raw = yaml.safe_load(path.read_text())
    raw["schedule"]["lr"] = 5e-4
    path.write_text(yaml.safe_dump(raw))
    from inhernet.compare import StaleRunError

    with pytest.raises(StaleRunError, match="--force"):
        run_compare(load_config(path))
    assert (out / "runs" / "teacher_ft" / "seed0" / "done.json").is_file()
    # --force with methods= clears and retrains those methods only; the others' old runs stay on disk
    # (and out of the table: they belong to the old schedule)
    stale_ft = (out / "runs" / "teacher_ft" / "seed0" / "done.json").read_bytes()
    part = run_compare(load_config(path), force=True, methods=["svd_llm_50"])
    by = {m["name"]: m for m in part["methods"]}
    assert by["svd_llm_50"]["seeds"] == [0] and by["teacher_ft"]["seeds"] == [] and by["inhernet_50"]["seeds"] == []
    assert (out / "runs" / "teacher_ft" / "seed0" / "done.json").read_bytes() == stale_ft


def test_sequence_classification_comparison_end_to_end(tmp_path):
    """A CSV data set, a BERT teacher fine-tuned once (cached), the DistilBERT layer subset with and
    without KD, and an InherNet at the layer subset's parameter count."""
    tiny_bert_folder(tmp_path / "bert", layers=4)
    rows = ["text,label"] + [f"{'the cat sat on the mat' if i % 2 else 'rain falls on the hills'} {i},"
                             f"{'cat' if i % 2 else 'rain'}" for i in range(80)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    cfg = {
        "name": "tiny_cls", "task": "sequence-classification", "out_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"), "teacher": {"model": str(tmp_path / "bert"), "finetune_steps": 12},
        "data": {"name": str(tmp_path / "d.csv"), "max_length": 16, "val_fraction": 0.1, "test_fraction": 0.25},
        "schedule": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "warmup": 0},
        "evaluation": {"rounds": 1},
        "seeds": [0], "trainer": {"progress": False},
        "calibration_blocks": 2,
        "methods": [
            {"name": "teacher", "kind": "teacher", "finetune": False},
            {"name": "layer_subset", "kind": "layer_subset"},
            {"name": "layer_subset_kd", "kind": "layer_subset", "kd": 0.9, "temperature": 4.0},
            {"name": "inhernet", "kind": "inhernet", "budget": "layer_subset", "inherit": {"heads": 2}},
        ],
    }
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_compare(load_config(path))
    by = {m["name"]: m for m in res["methods"]}
    assert res["teacher"]["source"] == "trained" and res["teacher"]["scores"]["test_acc"] >= 0.9
    assert by["teacher"]["before"]["test_acc"]["mean"] == pytest.approx(res["teacher"]["scores"]["test_acc"])
    assert by["inhernet"]["params"] <= by["layer_subset"]["params"]
    assert by["layer_subset"]["block_linear_fraction"] == pytest.approx(0.5)
    for name in ("layer_subset", "layer_subset_kd", "inhernet"):
        assert 0 <= by[name]["after"]["test_acc"]["mean"] <= 1
    table = (tmp_path / "out" / "results.md").read_text()
    assert "sentences/s" in table and "test acc % after FT" in table
    # the fine-tuned teacher is cached: a new out_dir reuses it
    cfg["out_dir"] = str(tmp_path / "out2")
    cfg["methods"] = cfg["methods"][:1]
    path.write_text(yaml.safe_dump(cfg))
    res2 = run_compare(load_config(path))
    assert res2["teacher"]["source"] == "cache"
    assert res2["teacher"]["scores"]["test_acc"] == pytest.approx(res["teacher"]["scores"]["test_acc"])
    saved = json.loads((tmp_path / "out2" / "teacher.json").read_text())
    assert saved["key"] == res["teacher"]["key"]


def test_block_linear_parameters_counts_projections_only():
    """Block-linear parameters: the attention and MLP projections of the blocks (no embeddings,
    norms or LM head); an inherited layer counts its factors and gate."""
    import inhernet

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = tf.LlamaForCausalLM(cfg)
    per_block = 16 * 16 * 2 + 16 * 8 * 2 + 3 * 16 * 32   # q, o; k, v (one KV head of 8); gate, up, down
    assert block_linear_parameters(model) == 2 * per_block
    inh = inhernet.inherit(model, rank=2, heads=2, progress=False)
    layers = [m for m in inh.modules() if type(m).__name__ == "InherLinear"]
    assert len(layers) == 14   # every projection of both blocks factorised at rank 2
    assert block_linear_parameters(inh) == sum(p.numel() for m in layers for p in m.parameters()) < 2 * per_block
