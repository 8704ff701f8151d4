"""UnCL (method doc, section 1): golden values, gradients, identities, memory behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from custom.losses import UnCLLoss, voxel_entropy

REL = 1e-9


def golden_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(32, dtype=torch.float64)
    s = (2.0 * torch.sin(0.7 * k)).reshape(2, 2, 2, 2, 2)
    t = (1.5 * torch.cos(0.4 * k)).reshape(2, 2, 2, 2, 2)
    return s, t


def reference_uncl(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """The per-voxel formula of the method doc, written out independently."""
    ps, pt = torch.softmax(s, 1), torch.softmax(t, 1)
    hs = -(ps * torch.log(ps + 1e-6)).sum(1)
    ht = -(pt * torch.log(pt + 1e-6)).sum(1)
    w = 1.0 / (torch.exp(beta * hs) + torch.exp(beta * ht))
    return (w * ((ps - pt) ** 2).sum(1) + beta * (hs + ht)).mean()


@pytest.mark.parametrize(
    "beta, expected",
    [(0.0, 0.059387224827), (0.5, 0.537002833006), (1.0, 1.017272580283), (5.0, 4.911099094995)],
)
def test_golden_values(beta, expected):
    s, t = golden_inputs()
    value = UnCLLoss()(s, t, beta)
    assert value.dtype == torch.float64 and value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=REL)


def test_golden_gradient_beta_1():
    s, t = golden_inputs()
    s.requires_grad_(True)
    UnCLLoss()(s, t, 1.0).backward()
    assert s.grad.norm().item() == pytest.approx(0.070443663598, rel=REL)
    g = s.grad[0, :, 0, 0, 0]
    assert g[0].item() == pytest.approx(-0.0159601775763, rel=REL)
    assert g[1].item() == pytest.approx(0.0159601775763, rel=REL)


def test_golden_three_classes():
    k = torch.arange(24, dtype=torch.float64)
    s = (3.0 * torch.sin(1.3 * k + 0.2)).reshape(1, 3, 2, 2, 2)
    t = torch.cos(0.9 * k).reshape(1, 3, 2, 2, 2)
    assert UnCLLoss()(s, t, 2.0).item() == pytest.approx(2.737741573557, rel=REL)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.7])
def test_identity_same_logits(beta):
    s = torch.randn(3, 2, 4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = 2.0 * beta * voxel_entropy(torch.softmax(s, 1)).mean()
    assert UnCLLoss()(s, s.clone(), beta).item() == pytest.approx(expected.item(), rel=REL, abs=1e-15)


def test_matches_independent_formula_random():
    g = torch.Generator().manual_seed(7)
    for c, spatial in [(2, (3, 4, 5)), (4, (2, 3)), (3, (7,))]:
        s = 3 * torch.randn(2, c, *spatial, dtype=torch.float64, generator=g)
        t = 3 * torch.randn(2, c, *spatial, dtype=torch.float64, generator=g)
        for beta in (0.1, 1.0, 5.0):
            assert UnCLLoss()(s, t, beta).item() == pytest.approx(reference_uncl(s, t, beta).item(), rel=REL)


def test_voxel_entropy_values():
    p = torch.tensor([[[0.5], [0.5]], [[1.0], [0.0]]], dtype=torch.float64)  # (2, 2, 1)
    h = voxel_entropy(p)
    assert h.shape == (2, 1)
    assert h[0, 0].item() == pytest.approx(-math.log(0.5 + 1e-6), rel=REL)
    assert h[1, 0].item() == pytest.approx(-math.log(1.0 + 1e-6), rel=REL)  # ~ -1e-6, eps inside the log


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 3, 2, 2, 1, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, 1, dtype=torch.float64, generator=g)
    for beta in (0.0, 0.7, 2.5):
        assert torch.autograd.gradcheck(lambda x: UnCLLoss()(x, t, beta), (s,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    UnCLLoss()(s, t, 1.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None or torch.count_nonzero(t.grad) == 0


def test_weight_is_not_detached():
    """The gradient flows through H_s inside w: it differs from the gradient with w detached."""
    s, t = golden_inputs()
    s = s.clone().requires_grad_(True)
    UnCLLoss()(s, t, 1.0).backward()

    s2 = s.detach().clone().requires_grad_(True)
    ps, pt = torch.softmax(s2, 1), torch.softmax(t, 1)
    hs, ht = voxel_entropy(ps), voxel_entropy(pt)
    w = (1.0 / (torch.exp(hs) + torch.exp(ht))).detach()
    (w * ((ps - pt) ** 2).sum(1) + (hs + ht)).mean().backward()
    assert not torch.allclose(s.grad, s2.grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "s_shape, t_shape", [((2, 2, 4, 4, 4), (2, 2, 4, 4, 3)), ((2, 2, 4, 4, 4), (1, 2, 4, 4, 4)), ((2, 2), (2, 2))]
)
def test_shape_errors(s_shape, t_shape):
    with pytest.raises(ValueError):
        UnCLLoss()(torch.zeros(s_shape), torch.zeros(t_shape), 1.0)


def test_repeated_volumes_give_the_same_value():
    """B = 8 copies of one volume give the B = 1 value (no cross-volume (B, B, ...) mixing)."""
    g = torch.Generator().manual_seed(5)
    s = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, generator=g)
    t = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, generator=g)
    one = UnCLLoss()(s, t, 1.3)
    eight = UnCLLoss()(s.repeat(8, 1, 1, 1, 1), t.repeat(8, 1, 1, 1, 1), 1.3)
    assert eight.item() == pytest.approx(one.item(), rel=1e-12)
    # and the batch value is the mean of the per-volume values
    s2 = torch.randn(5, 2, 4, 4, 4, dtype=torch.float64, generator=g)
    t2 = torch.randn(5, 2, 4, 4, 4, dtype=torch.float64, generator=g)
    per = torch.stack([UnCLLoss()(s2[i : i + 1], t2[i : i + 1], 1.3) for i in range(5)])
    assert UnCLLoss()(s2, t2, 1.3).item() == pytest.approx(per.mean().item(), rel=1e-12)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced by an aten op."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.max_numel = max(self.max_numel, o.numel())
        return out


def test_no_batch_squared_temporary():
    """No op of forward or backward produces a tensor larger than the logits (a (B, B, *spatial) temporary of
    the released code would be B / C times larger)."""
    s = torch.randn(8, 2, 6, 6, 6, requires_grad=True)
    t = torch.randn(8, 2, 6, 6, 6)
    with _LargestTensor() as rec:
        UnCLLoss()(s, t, 2.0).backward()
    assert 0 < rec.max_numel <= s.numel()
