"""inherit(): selection, the teacher left untouched, bad input, ablation switches."""

import math

import pytest
import torch
from torch import nn

import inhernet
from inhernet import InheritConfig, InherConv2d, InherLinear, inherit
from inhernet.config import ConfigError


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10),
    )


def _reason(model, name):
    return next(r.skipped for r in inhernet.layer_report(model).rows if r.name == name)


def test_teacher_is_bit_identical_after_inherit():
    teacher = inhernet.models.create_model("resnet20", num_classes=10)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modules_before = [type(m) for m in teacher.modules()]
    model = inherit(teacher, rank=4, heads=3, progress=False)
    model(torch.randn(2, 3, 32, 32))  # training-mode forward updates the copy's BN stats only
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in teacher.modules()] == modules_before
    assert not hasattr(teacher, "inhernet_plan")


def test_inplace_changes_the_teacher_when_asked():
    teacher = small_cnn()
    model = inherit(teacher, rank=2, heads=2, inplace=True, progress=False)
    assert model is teacher and isinstance(teacher[0], InherConv2d)


def test_default_selection_and_skip_reasons():
    model = inherit(small_cnn(), rank=4, heads=3, progress=False)
    assert isinstance(model[0], InherConv2d) and isinstance(model[5], InherConv2d)
    assert isinstance(model[9], InherLinear) and type(model[11]) is nn.Linear
    assert "final classifier" in _reason(model, "11")
    assert "groups=4" in _reason(model, "3")
    assert isinstance(model[1], nn.BatchNorm2d)  # norms are kept with the teacher's statistics


def test_full_rank_layer_stays_dense_by_paper_rule():
    model = inherit(small_cnn(), rank=16, heads=3, progress=False)
    assert type(model[0]) is nn.Conv2d  # min(16, 27) = 16
    assert ">= min(d_out, d_in) = 16" in _reason(model, "0")


def test_target_and_exclude_modules_names_suffixes_and_regex():
    teacher = inhernet.models.create_model("resnet20", num_classes=10)
    m = inherit(teacher, rank=4, target_modules=["conv1"], progress=False)  # suffix match
    inherited = {r.name for r in inhernet.layer_report(m).rows if r.rank is not None}
    assert inherited and all(n.endswith("conv1") for n in inherited)
    m = inherit(teacher, rank=4, target_modules=r"layer3\..*", progress=False)  # one regex, full match
    inherited = {r.name for r in inhernet.layer_report(m).rows if r.rank is not None}
    assert inherited and all(n.startswith("layer3.") for n in inherited)
    m = inherit(teacher, rank=4, exclude_modules=[r"layer1\..*"], progress=False)
    assert all(not r.name.startswith("layer1.") for r in inhernet.layer_report(m).rows if r.rank is not None)
    assert _reason(m, "layer1.0.conv1") == "in exclude_modules"


def test_classifier_can_be_targeted_explicitly():
    model = inherit(small_cnn(), rank=4, target_modules=["11"], min_saving=None, progress=False)
    assert isinstance(model[11], InherLinear)


def test_no_matching_layer_lists_candidates():
    with pytest.raises(ConfigError, match="Candidate layers: 0, 3, 5, 9, 11"), \
            pytest.warns(UserWarning, match="'q_proj' matches no Linear"):
        inherit(small_cnn(), rank=4, target_modules=["q_proj"], progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank=0 must be an integer >= 1"),
    ({"rank": -3}, "rank=-3"),
    ({"heads": 0}, "heads=0 must be an integer >= 1"),
    ({"heads": 10**9}, "heads=1000000000: .* at most 64"),  # found by the property test as an OOM kill
    ({"rank": 2.5}, "rank=2.5"),
    ({"rank": 4, "energy": 0.9}, "give one rank policy"),
    ({"energy": 1.5}, "energy=1.5 must lie in"),
    ({"budget": -10}, "budget=-10"),
    ({"budget": 2.0}, "fraction of the teacher"),
    ({"budget": "half"}, "budget='half'"),
    ({"head_scale": "demo"}, "head_scale='demo' is not valid"),
    ({"layer_types": ["Conv3d"]}, "layer_types entry='Conv3d'"),
])
def test_bad_config_values_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        InheritConfig(**kwargs)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'rnak' \(did you mean 'rank'\?\).*Valid options: rank, heads"):
        InheritConfig.from_dict({"rnak": 8})
    with pytest.raises(ConfigError, match="unknown InheritConfig option"):
        inherit(small_cnn(), rnak=8)
    with pytest.raises(TypeError, match="InheritConfig.from_dict"):
        inherit(small_cnn(), {"rank": 8})


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_teacher_weights_are_rejected(bad):
    teacher = small_cnn()
    with torch.no_grad():
        teacher[9].weight[0, 0] = bad
    with pytest.raises(ValueError, match=r"teacher layer '9' has non-finite values .* in its weight"):
        inherit(teacher, rank=4, progress=False)


def test_inheriting_twice_is_an_error():
    model = inherit(small_cnn(), rank=4, progress=False)
    with pytest.raises(ConfigError, match="already contains inherited layers"):
        inherit(model, rank=4)


def test_random_init_ablation_keeps_everything_else_inherited():
    teacher = small_cnn()
    svd = inherit(teacher, rank=4, heads=3, progress=False)
    rnd = inherit(teacher, rank=4, heads=3, init="random", progress=False)
    assert not torch.allclose(svd[0].down, rnd[0].down)
    assert not torch.equal(rnd[0].up[0], rnd[0].up[1])  # independent random heads
    torch.testing.assert_close(rnd[0].bias[0], teacher[0].bias)  # bias inherited
    torch.testing.assert_close(rnd[1].running_var, teacher[1].running_var)
    torch.testing.assert_close(rnd[11].weight, teacher[11].weight)  # classifier inherited
    assert inhernet.count_parameters(rnd) == inhernet.count_parameters(svd)


def test_symmetric_ablation_has_h_down_projections():
    model = inherit(small_cnn(), rank=4, heads=3, structure="symmetric", progress=False)
    assert model[5].down.shape == (12, 16, 3, 3)
    assert model[5].gate.in_features == 12


def test_same_seed_same_model_and_global_rng_untouched():
    teacher = small_cnn()
    state = torch.get_rng_state()
    a = inherit(teacher, rank=4, heads=3, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = inherit(teacher, rank=4, heads=3, seed=3, progress=False)
    c = inherit(teacher, rank=4, heads=3, seed=4, progress=False)
    assert torch.equal(a[0].up, b[0].up)  # the heads' perturbations (head_init="perturbed") are drawn
    assert not torch.equal(a[0].up, c[0].up)
    copies = [inherit(teacher, rank=4, heads=3, head_init="copies", seed=s, progress=False) for s in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(copies[0][0].gate.weight, copies[1][0].gate.weight)  # the paper's random gate is drawn
    assert not torch.equal(copies[0][0].gate.weight, copies[2][0].gate.weight)


def test_randomized_svd_matches_exact_on_a_low_rank_matrix():
    torch.manual_seed(1)
    lin = nn.Linear(300, 200)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(200, 6) @ torch.randn(6, 300))
    teacher = nn.Sequential(lin, nn.ReLU(), nn.Linear(200, 2))
    exact = inherit(teacher, rank=6, progress=False)
    fast = inherit(teacher, rank=6, svd="randomized", progress=False)
    torch.testing.assert_close(fast[0].effective_weight(), exact[0].effective_weight(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("extra", [{}, {"init": "random"}, {"svd": "randomized"}])
def test_inherit_leaves_global_rng_alone_and_repeats_across_threads(extra):
    """Every draw (head perturbations, gate, random factors, randomized SVD) comes from a per-layer generator: the
    global RNG state is unchanged, and 24 calls from 6 threads at once give the sequential result."""
    from concurrent.futures import ThreadPoolExecutor

    teacher = small_cnn()
    cfg = InheritConfig(rank=3, heads=3, seed=5, min_saving=None, **extra)
    state = torch.get_rng_state()
    reference = inherit(teacher, cfg, progress=False).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    with ThreadPoolExecutor(max_workers=6) as pool:
        models = list(pool.map(lambda _: inherit(teacher, cfg, progress=False).state_dict(), range(24)))
    assert torch.equal(torch.get_rng_state(), state)
    for sd in models:
        assert sd.keys() == reference.keys()
        assert all(torch.equal(sd[k], reference[k]) for k in sd)
    other = inherit(teacher, InheritConfig(rank=3, heads=3, seed=6, min_saving=None, **extra), progress=False)
    heads = next(k for k in reference if k.endswith(".up"))
    assert not torch.equal(other.state_dict()[heads], reference[heads])  # the seed matters


def test_inherited_parameters_are_trainable_whatever_the_teacher_flags():
    teacher = small_cnn().eval().requires_grad_(False)
    model = inherit(teacher, rank=3, heads=2, progress=False)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher keeps its own flags


def test_energy_policy_never_grows_the_network():
    """energy=0.9 once gave 141 % of the teacher on an MLP: now a layer whose factorised form would
    not be smaller stays dense, with the reason."""
    teacher = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    model = inherit(teacher, energy=0.9, heads=3, progress=False)
    assert inhernet.count_parameters(model) <= inhernet.count_parameters(teacher)
    for r in inhernet.layer_report(model).rows:
        assert r.params_after <= r.params_before
        if r.rank is None and r.name != "4":
            assert "no smaller than dense" in r.skipped


@pytest.mark.parametrize("budget", [1.0, 10**9, "teacher"])
def test_budget_at_or_above_the_teacher_is_an_error(budget):
    teacher = small_cnn()
    b = teacher if budget == "teacher" else budget
    with pytest.raises(ConfigError, match="at or above the teacher's size"):
        inherit(teacher, budget=b, progress=False)


def test_a_bare_linear_says_it_is_the_excluded_classifier_and_how_to_include_it():
    with pytest.raises(ConfigError, match=r"only layer to inherit.*is the final classifier.*exclude_classifier=True"
                                          r".*exclude_classifier=False.*target it by name") as err:
        inherit(nn.Linear(64, 10), progress=False)
    assert "selects no layer" not in str(err.value) and "Candidate layers" not in str(err.value)
    # included, a bare layer cannot replace itself: the error says to wrap it, and wrapped it works
    with pytest.raises(ConfigError, match=r"wrap it: inhernet.inherit\(nn.Sequential\(layer\)"):
        inherit(nn.Linear(64, 10), rank=4, exclude_classifier=False, progress=False)
    assert isinstance(inherit(nn.Sequential(nn.Linear(64, 10)), rank=4, exclude_classifier=False,
                              min_saving=None, progress=False)[0], InherLinear)
    # inside a network, the message names the layer and the target_modules spelling
    with pytest.raises(ConfigError, match=r"'1', is the final classifier.*target_modules=\['1'\]"):
        inherit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), progress=False)


def test_a_teacher_on_the_meta_device_is_a_clear_error():
    with torch.device("meta"):
        teacher = small_cnn()
    with pytest.raises(ConfigError, match=r"meta device \(e.g. '0.weight'\).*Load the real weights first.*"
                                          r"inhernet.hf.inherit_checkpoint"):
        inherit(teacher, rank=4, progress=False)


@pytest.mark.parametrize("budget", [1, 2, 99])
def test_a_tiny_int_budget_says_an_int_is_a_count(budget):
    with pytest.raises(ConfigError, match=rf"budget={budget}: an int is a parameter count.*1.0 for the whole teacher"):
        InheritConfig(budget=budget)
    InheritConfig(budget=100)  # the smallest count accepted
