"""The DyCON objective: parts, weights, FeCL volume selection and the absence of label leakage."""

from __future__ import annotations

import pytest
import torch

from custom.losses import (
    DyCONLoss,
    FeCLLoss,
    UnCLLoss,
    mask_to_patch_labels,
    pooled_entropy,
    teacher_patch_labels,
)

L, U, C, D = 2, 2, 2, 5
SPATIAL = (4, 4, 4)
GRID = (2, 2, 2)
SUP_REL = 1e-6  # see manual_dice_ce


def make_batch(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b = L + U
    s = 2 * torch.randn(b, C, *SPATIAL, dtype=dtype, generator=g)
    t = 2 * torch.randn(b, C, *SPATIAL, dtype=dtype, generator=g)
    gt = (torch.rand(b, 1, *SPATIAL, generator=g) < 0.4).long()  # a hypothetical full ground truth
    z = torch.nn.functional.normalize(torch.randn(b, D, *GRID, dtype=dtype, generator=g), dim=1)
    zt = torch.nn.functional.normalize(torch.randn(b, D, *GRID, dtype=dtype, generator=g), dim=1)
    return s, t, gt, z, zt


def flat(e: torch.Tensor) -> torch.Tensor:
    """(B, D, *grid) -> (B, N, D), cells in C order."""
    return e.flatten(2).transpose(1, 2)


def manual_dice_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """CE + Dice (squared denominators, foreground only, batch-joint, smoothing 1e-5) written out.

    MONAI computes |one_hot(y)|^2 as a float32 norm squared, so it agrees with this to ~1e-7 only (SUP_REL)."""
    p = torch.softmax(logits, 1)
    y = label[:, 0]
    ce = -torch.log(p.gather(1, y.unsqueeze(1))).mean()
    fg = p[:, 1]
    g = (y == 1).to(p.dtype)
    dice = 1 - (2 * (fg * g).sum() + 1e-5) / ((fg**2).sum() + (g**2).sum() + 1e-5)
    return ce + dice


class Spy:
    """Captures the arguments of every FeCLLoss.forward call."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        original = FeCLLoss.forward

        def forward(loss_self, embeddings, labels, teacher_embeddings=None, entropy=None, step=0):
            self.calls.append(dict(z=embeddings.detach().clone(), labels=labels.clone(),
                                   zt=None if teacher_embeddings is None else teacher_embeddings.clone(),
                                   entropy=None if entropy is None else entropy.clone(), step=step))
            return original(loss_self, embeddings, labels, teacher_embeddings, entropy, step)

        monkeypatch.setattr(FeCLLoss, "forward", forward)


def test_supervised_only_without_teacher():
    s, _, gt, z, _ = make_batch()
    s.requires_grad_(True)
    out = DyCONLoss()(s, gt[:L], None, beta=1.0, student_embeddings=z)
    assert out["loss"].item() == pytest.approx(manual_dice_ce(s[:L], gt[:L]).item(), rel=SUP_REL)
    assert out["supervised"].item() == pytest.approx(out["loss"].item(), rel=1e-12)
    for part in ("uncl", "fecl", "mse"):
        assert out[part].item() == 0.0
    out["loss"].backward()
    # only the labeled volumes enter the supervised loss
    assert torch.count_nonzero(s.grad[L:]) == 0 and torch.count_nonzero(s.grad[:L]) > 0


def test_supervised_only_labeled_volumes():
    s, _, gt, _, _ = make_batch(1)
    a = DyCONLoss()(s, gt[:L])["loss"]
    s2 = s.clone()
    s2[L:] = 100 * torch.randn_like(s2[L:])
    assert DyCONLoss()(s2, gt[:L])["loss"].item() == a.item()


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("eta, eta_call", [(0.5, None), (0.5, 0.125), (1.0, None)])
def test_total_is_sup_plus_eta_times_unsupervised(variant, eta, eta_call):
    s, t, gt, z, zt = make_batch(2)
    fecl = FeCLLoss(variant, top_k=3)
    loss = DyCONLoss(eta=eta, fecl=fecl, confidence_threshold=0.6)
    out = loss(s, gt[:L], t, beta=1.7, eta=eta_call, student_embeddings=z, teacher_embeddings=zt, step=300)

    sup = manual_dice_ce(s[:L], gt[:L])
    uncl = UnCLLoss()(s, t, 1.7)
    labels = torch.cat([mask_to_patch_labels(gt[:L], GRID),
                        teacher_patch_labels(torch.softmax(t[L:], 1), GRID, 0.6)])
    entropy = pooled_entropy(torch.softmax(s, 1), GRID)
    fe = FeCLLoss(variant, top_k=3)(flat(z), labels, flat(zt), entropy, step=300)
    e = eta if eta_call is None else eta_call

    assert out["supervised"].item() == pytest.approx(sup.item(), rel=SUP_REL)
    assert out["uncl"].item() == pytest.approx(uncl.item(), rel=1e-12)
    assert out["fecl"].item() == pytest.approx(fe.item(), rel=1e-12)
    assert out["mse"].item() == 0.0
    assert out["loss"].item() == pytest.approx((out["supervised"] + e * (uncl + fe)).item(), rel=1e-12)
    assert out["fecl"].item() > 0 and out["uncl"].item() > 0
    for k in ("supervised", "uncl", "fecl", "mse"):
        assert not out[k].requires_grad


def test_weights_inside_the_unsupervised_part():
    s, t, gt, z, zt = make_batch(3)
    base = DyCONLoss(eta=0.5)(s, gt[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    w = DyCONLoss(eta=0.5, uncl_weight=0.3, fecl_weight=2.0, mse_weight=0.7)(
        s, gt[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt
    )
    mse = ((torch.softmax(s[L:], 1) - torch.softmax(t[L:], 1)) ** 2).mean()  # the unlabeled part only
    assert w["mse"].item() == pytest.approx(mse.item(), rel=1e-12)
    assert w["uncl"].item() == base["uncl"].item() and w["fecl"].item() == base["fecl"].item()
    expected = base["supervised"] + 0.5 * (0.3 * base["uncl"] + 2.0 * base["fecl"] + 0.7 * mse)
    assert w["loss"].item() == pytest.approx(expected.item(), rel=1e-12)

    off = DyCONLoss(uncl_weight=0.0, fecl_weight=0.0)
    assert not off.needs_embeddings and DyCONLoss().needs_embeddings
    o = off(s, gt[:L], t, beta=1.0)  # no embeddings needed with FeCL off
    assert o["uncl"].item() == 0.0 and o["fecl"].item() == 0.0
    assert o["loss"].item() == pytest.approx(o["supervised"].item(), rel=1e-12)


def test_mse_is_single_softmax():
    s, t, gt, _, _ = make_batch(4)
    out = DyCONLoss(fecl_weight=0.0, uncl_weight=0.0, mse_weight=1.0)(s, gt[:L], t)
    single = ((torch.softmax(s[L:], 1) - torch.softmax(t[L:], 1)) ** 2).mean()
    double = ((torch.softmax(torch.softmax(s[L:], 1), 1) - torch.softmax(torch.softmax(t[L:], 1), 1)) ** 2).mean()
    assert out["mse"].item() == pytest.approx(single.item(), rel=1e-12)
    assert out["mse"].item() != pytest.approx(double.item(), rel=1e-3)


def test_mse_ignores_the_labeled_volumes():
    # the released consistency term averages over the unlabeled part: labeled volumes that disagree change nothing
    s, t, gt, _, _ = make_batch(6)
    loss = DyCONLoss(fecl_weight=0.0, uncl_weight=0.0, mse_weight=1.0)
    before = loss(s, gt[:L], t)["mse"].item()
    t2 = t.clone()
    t2[:L] = -t2[:L] * 10  # a very different teacher on the labeled volumes
    assert loss(s, gt[:L], t2)["mse"].item() == before
    t3 = t.clone()
    t3[L:] = -t3[L:]
    assert loss(s, gt[:L], t3)["mse"].item() != pytest.approx(before, rel=1e-3)


def test_no_gradient_into_teacher():
    s, t, gt, z, zt = make_batch(5)
    for x in (s, t, z, zt):
        x.requires_grad_(True)
    out = DyCONLoss(mse_weight=1.0, fecl=FeCLLoss("paper"))(s, gt[:L], t, beta=1.0, student_embeddings=z,
                                                           teacher_embeddings=zt)
    out["loss"].backward()
    assert s.grad is not None and z.grad is not None and torch.count_nonzero(z.grad) > 0
    for x in (t, zt):
        assert x.grad is None or torch.count_nonzero(x.grad) == 0


def _blocky_gt_and_opposite_teacher(seed: int):
    """A full hypothetical ground truth that is constant on every grid cell, and teacher logits whose unlabeled
    predictions are confidently the opposite of that ground truth."""
    g = torch.Generator().manual_seed(seed)
    cells = (torch.rand(L + U, 1, *GRID, generator=g) < 0.5).long()
    gt = cells.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    t = torch.zeros(L + U, C, *SPATIAL, dtype=torch.float64)
    t[:, 1] = torch.where(gt[:, 0] == 1, 6.0, -6.0)  # teacher agrees with gt ...
    t[L:, 1] = -t[L:, 1]  # ... except on the unlabeled volumes, where it says the opposite
    return gt, t


def test_no_label_leakage(monkeypatch):
    """The unlabeled FeCL labels are the teacher's pseudo-labels and never the (hypothetical) ground truth."""
    spy = Spy(monkeypatch)
    s, _, _, z, zt = make_batch(6)
    gt, t = _blocky_gt_and_opposite_teacher(6)
    loss = DyCONLoss(confidence_threshold=0.75)
    out = loss(s, gt[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    assert len(spy.calls) == 1
    labels = spy.calls[0]["labels"]
    teacher_labels = teacher_patch_labels(torch.softmax(t[L:], 1), GRID, 0.75)
    gt_labels = mask_to_patch_labels(gt, GRID)
    assert torch.equal(labels[:L], gt_labels[:L])
    assert torch.equal(labels[L:], teacher_labels)
    assert torch.equal(labels[L:], 1 - gt_labels[L:])  # opposite of the truth everywhere: no leak

    # changing nothing but the unlabeled ground truth cannot change anything: the objective only gets L labels
    gt2 = gt.clone()
    gt2[L:] = 1 - gt2[L:]
    out2 = loss(s, gt2[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    assert torch.equal(spy.calls[1]["labels"], labels)
    for k in out:
        assert torch.equal(out[k], out2[k])

    # the only way a ground truth reaches the objective is to declare its volume labeled: labels for all L + U
    # volumes make every volume a labeled one (supervised loss and FeCL on the ground truth, no pseudo-labels)
    out3 = loss(s, gt, t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    assert torch.equal(spy.calls[2]["labels"], gt_labels)
    assert out3["supervised"].item() == pytest.approx(manual_dice_ce(s, gt).item(), rel=SUP_REL)


def test_teacher_confidence_threshold_ignores_unlabeled_cells(monkeypatch):
    spy = Spy(monkeypatch)
    s, _, _, z, zt = make_batch(7)
    gt, t = _blocky_gt_and_opposite_teacher(7)
    t[L:] = t[L:] * 0.01  # an unsure teacher on the unlabeled volumes: max probability ~0.53
    DyCONLoss(confidence_threshold=0.75)(s, gt[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    labels = spy.calls[0]["labels"]
    assert (labels[L:] == -1).all()
    assert (labels[:L] >= 0).all()  # ground truth cells are never ignored
    DyCONLoss(confidence_threshold=0.0)(s, gt[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    assert (spy.calls[1]["labels"] >= 0).all()


@pytest.mark.parametrize("fecl_on, rows", [("all", slice(0, L + U)), ("labeled", slice(0, L)), ("unlabeled", slice(L, L + U))])
def test_fecl_on_selects_volumes(monkeypatch, fecl_on, rows):
    spy = Spy(monkeypatch)
    s, t, gt, z, zt = make_batch(8)
    out = DyCONLoss(fecl_on=fecl_on, confidence_threshold=0.0)(
        s, gt[:L], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt, step=42
    )
    call = spy.calls[0]
    all_labels = torch.cat([mask_to_patch_labels(gt[:L], GRID), teacher_patch_labels(torch.softmax(t[L:], 1), GRID)])
    assert torch.equal(call["z"], flat(z)[rows])
    assert torch.equal(call["zt"], flat(zt)[rows])
    assert torch.equal(call["labels"], all_labels[rows])
    torch.testing.assert_close(call["entropy"], pooled_entropy(torch.softmax(s, 1), GRID)[rows])
    assert call["step"] == 42
    expected = FeCLLoss()(flat(z)[rows], all_labels[rows], flat(zt)[rows], step=42)
    assert out["fecl"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_fecl_on_unlabeled_with_no_unlabeled_volume_is_zero():
    s, t, gt, z, zt = make_batch(9)
    n = L + U
    z.requires_grad_(True)
    out = DyCONLoss(fecl_on="unlabeled")(s, gt[:n], t, beta=1.0, student_embeddings=z, teacher_embeddings=zt)
    assert out["fecl"].item() == 0.0
    out["loss"].backward()
    assert torch.count_nonzero(z.grad) == 0


def test_validation():
    s, t, gt, z, _ = make_batch(10)
    with pytest.raises(ValueError):
        DyCONLoss(fecl_on="some")
    with pytest.raises(ValueError):
        DyCONLoss(confidence_threshold=1.5)
    with pytest.raises(ValueError):
        DyCONLoss()(s, gt[:0], t)
    with pytest.raises(ValueError):
        DyCONLoss()(s, torch.cat([gt, gt[:1]]), t)
    with pytest.raises(ValueError, match="embeddings"):
        DyCONLoss()(s, gt[:L], t, beta=1.0)  # FeCL on, no embeddings
