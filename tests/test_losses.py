"""Losses against hand-computed values and the DKD decomposition identity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inhernet.train.losses import (
    DistillLoss,
    DistillLossModule,
    ce_loss,
    dkd_loss,
    dkd_parts,
    kd_kl,
    kd_loss,
    lskd_loss,
    standardize_logits,
)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_ce_two_class_by_hand():
    # logits [2, 0], target 0: CE = -log(e^2 / (e^2 + 1)) = log(1 + e^-2)
    z = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    assert ce_loss(z, y).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_kd_two_class_by_hand():
    # student [1, 0], teacher [3, 0], T = 2, alpha = 0.9, target 0.
    zs, zt, t, a = np.array([1.0, 0.0]), np.array([3.0, 0.0]), 2.0, 0.9
    ps, pt = _softmax(zs / t), _softmax(zt / t)
    kl = float((pt * np.log(pt / ps)).sum())
    ce = -math.log(_softmax(zs)[0])
    expected = (1 - a) * ce + a * t * t * kl
    got = kd_loss(torch.tensor(zs[None], dtype=torch.float32), torch.tensor(zt[None], dtype=torch.float32),
                  torch.tensor([0]), alpha=a, temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the explicit-weights form used by the "0.1 CE + 9 KL" recipe
    got2 = kd_loss(torch.tensor(zs[None]).float(), torch.tensor(zt[None]).float(), torch.tensor([0]),
                   temperature=t, ce_weight=0.1, kd_weight=9.0)
    assert got2.item() == pytest.approx(0.1 * ce + 9 * t * t * kl, rel=1e-5)


def test_kd_batchmean_and_zero_when_equal():
    torch.manual_seed(0)
    z = torch.randn(5, 7)
    assert kd_kl(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    zs, zt = torch.randn(4, 3), torch.randn(4, 3)
    per = [kd_kl(zs[i:i + 1], zt[i:i + 1], 3.0).item() for i in range(4)]
    assert kd_kl(zs, zt, 3.0).item() == pytest.approx(sum(per) / 4, rel=1e-5)


def test_dkd_three_class_by_hand():
    zs, zt, t = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.0, 1.0]), 2.0
    target = 0
    ps, pt = _softmax(zs / t), _softmax(zt / t)
    bs, bt = np.array([ps[0], 1 - ps[0]]), np.array([pt[0], 1 - pt[0]])
    tckd = float((bt * np.log(bt / bs)).sum())
    hs, ht = ps[1:] / ps[1:].sum(), pt[1:] / pt[1:].sum()
    nckd = float((ht * np.log(ht / hs)).sum())
    s, te, y = torch.tensor(zs[None]).float(), torch.tensor(zt[None]).float(), torch.tensor([target])
    got_t, got_n, got_pt = dkd_parts(s, te, y, t)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)
    assert got_pt.item() == pytest.approx(pt[0], rel=1e-6)
    alpha, beta = 1.0, 8.0
    ce = -math.log(_softmax(zs)[0])
    expected = ce + t * t * (alpha * tckd + beta * nckd)
    assert dkd_loss(s, te, y, alpha=alpha, beta=beta, temperature=t).item() == pytest.approx(expected, rel=1e-5)
    # without CE and half-way through the warm-up
    assert dkd_loss(s, te, y, alpha=alpha, beta=beta, temperature=t, ce_weight=0.0, warmup=0.5).item() \
        == pytest.approx(0.5 * t * t * (alpha * tckd + beta * nckd), rel=1e-5)


def test_dkd_two_classes_has_no_nckd():
    # with two classes the non-target distribution is a point mass: NCKD = 0 and TCKD = the full KL
    s, te, y = torch.tensor([[0.3, -1.0]]), torch.tensor([[2.0, 0.5]]), torch.tensor([1])
    tckd, nckd, _ = dkd_parts(s, te, y, 1.0)
    assert nckd.item() == pytest.approx(0.0, abs=1e-7)
    assert tckd.item() == pytest.approx(kd_kl(s, te, 1.0).item(), rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dkd_decomposition_identity(t):
    # Zhao et al. 2022, eq. (5): KL(p^T || p^S) = TCKD + (1 - p_t^T) * NCKD, per sample.
    g = torch.Generator().manual_seed(1)
    s, te = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    tckd, nckd, pt = dkd_parts(s, te, y, t)
    kl = F.kl_div(F.log_softmax(s / t, 1), F.softmax(te / t, 1), reduction="none").sum(1)
    torch.testing.assert_close(kl, tckd + (1 - pt) * nckd, rtol=1e-5, atol=1e-6)
    # hence DKD with beta weighting each sample by (1 - p_t^T) and alpha = 1 is KD
    ce0 = dict(ce_weight=0.0)
    kd = kd_loss(s, te, y, temperature=t, ce_weight=0.0, kd_weight=1.0)
    dkd_weighted = t * t * (tckd + (1 - pt) * nckd).mean()
    torch.testing.assert_close(kd, dkd_weighted, rtol=1e-5, atol=1e-6)
    assert dkd_loss(s, te, y, alpha=1.0, beta=0.0, temperature=t, **ce0).item() == \
        pytest.approx(t * t * tckd.mean().item(), rel=1e-5)


def test_lskd_is_kd_on_zscored_logits():
    zs, zt = np.array([1.0, 2.0, 4.0]), np.array([10.0, 0.0, 5.0])
    zn = lambda z: (z - z.mean()) / (z.std(ddof=1) + 1e-7)  # noqa: E731
    t = 2.0
    ps, pt = _softmax(zn(zs) / t), _softmax(zn(zt) / t)
    kl = float((pt * np.log(pt / ps)).sum())
    ce = -math.log(_softmax(zs)[2])
    s, te, y = torch.tensor(zs[None]).float(), torch.tensor(zt[None]).float(), torch.tensor([2])
    got = lskd_loss(s, te, y, alpha=0.9, temperature=t)
    assert got.item() == pytest.approx(0.1 * ce + 0.9 * t * t * kl, rel=1e-5)
    # invariant to shifting and scaling the logits
    z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(z, standardize_logits(torch.tensor([[11.0, 13.0, 15.0]])))


def test_distill_loss_dataclass_and_module():
    g = torch.Generator().manual_seed(2)
    s, te = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    assert DistillLoss("ce")(s, None, y).item() == pytest.approx(F.cross_entropy(s, y).item())
    assert DistillLoss("kd", alpha=0.5, temperature=3)(s, te, y).item() == \
        pytest.approx(kd_loss(s, te, y, alpha=0.5, temperature=3).item())
    # DKD warm-up over 20/240 of the run (mdistiller: epoch e of 240 -> e/20)
    d = DistillLoss("dkd")
    assert d.warmup_factor(1 / 240) == pytest.approx(1 / 20)
    assert d.warmup_factor(10 / 240) == pytest.approx(0.5)
    assert d.warmup_factor(0.5) == 1.0 and DistillLoss("kd").warmup_factor(0.0) == 1.0
    assert d(s, te, y, progress=10 / 240).item() == pytest.approx(dkd_loss(s, te, y, warmup=0.5).item(), rel=1e-6)
    assert d(s, te, y).item() == pytest.approx(dkd_loss(s, te, y).item(), rel=1e-6)
    m = DistillLossModule("lskd")
    assert m(s, te, y).item() == pytest.approx(lskd_loss(s, te, y).item(), rel=1e-6)
    assert not DistillLoss("ce").needs_teacher and DistillLoss("dkd").needs_teacher
    with pytest.raises(ValueError, match="unknown loss kind"):
        DistillLoss("mse")
    with pytest.raises(ValueError, match="needs teacher"):
        DistillLoss("kd")(s, None, y)
    with pytest.raises(ValueError, match="unknown loss option"):
        DistillLoss.from_dict({"kind": "kd", "temprature": 2})
