"""The CPU-speed building blocks of UNet3D (benchmarks/README.md, "CPU training speed"): each one computes the
released network's function, checked here against torch's own implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from custom.networks import UNet3D
from custom.networks.unet3d import Dropout, InstanceNorm3d, _tile

CL = torch.channels_last_3d


def _x(shape=(2, 8, 12, 10, 6), seed=0, scale=2.0, shift=3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale + shift


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_instance_norm_is_torch_instance_norm_fp32(layout):
    x0, dy0 = _x(), _x(seed=1, shift=0.0)
    ref_in = x0.clone().requires_grad_()
    ref = F.instance_norm(ref_in)
    ref.backward(dy0)
    x, dy = (x0, dy0) if layout == "contiguous" else (x0.contiguous(memory_format=CL), dy0.contiguous(memory_format=CL))
    x = x.clone().requires_grad_()
    y = InstanceNorm3d(8)(x)
    y.backward(dy)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, ref_in.grad, rtol=1e-4, atol=1e-4)
    if layout == "channels_last":  # the layout survives forward and backward (no conversion in between)
        assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
        assert x.grad.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("shift", [0.0, 3.0, 20.0])
def test_instance_norm_bf16_channels_last_gradient_accuracy(shift):
    """bf16 gradients of the channels-last backward are as close to the fp32 ones as torch's own bf16 kernel's,
    also for channels whose mean is far from 0 relative to their spread (mean / std = shift)."""
    x0, dy0 = _x((2, 16, 16, 16, 8), scale=1.0, shift=shift), _x((2, 16, 16, 16, 8), seed=1, shift=0.0)
    ref_in = x0.clone().requires_grad_()
    F.instance_norm(ref_in).backward(dy0)

    def grad(layout_fn) -> torch.Tensor:
        x = layout_fn(x0.bfloat16()).requires_grad_()
        InstanceNorm3d(16)(x).backward(layout_fn(dy0.bfloat16()))
        return x.grad.float()

    scale = ref_in.grad.abs().max()
    err_cl = (grad(lambda t: t.contiguous(memory_format=CL)) - ref_in.grad).abs().max() / scale
    err_torch = (grad(lambda t: t.contiguous()) - ref_in.grad).abs().max() / scale
    assert err_cl < 0.02 and err_cl < 1.5 * err_torch


def test_instance_norm_state_and_errors():
    norm = InstanceNorm3d(4)
    assert isinstance(norm, nn.InstanceNorm3d) and not norm.affine and not norm.track_running_stats
    assert dict(norm.state_dict()) == {} == dict(nn.InstanceNorm3d(4).state_dict())
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        norm(torch.randn(1, 4, 1, 1, 1))
    with pytest.raises(ValueError, match="expected"):
        norm(torch.randn(1, 3, 4, 4, 4))
    assert [_tile(s) for s in (196608, 48, 12, 7)] == [64, 16, 4, 1]


def test_dropout_distribution_scale_and_gradient():
    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(1_000_000, requires_grad=True)
    y = drop(x)
    kept = y > 0
    # Bernoulli(0.7) over 1e6 elements: sd 4.6e-4, 5 sd bound
    assert abs(kept.float().mean().item() - 0.7) < 5 * (0.7 * 0.3 / 1e6) ** 0.5
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    drop.eval()
    assert drop(x) is x
    assert torch.equal(Dropout(1.0)(torch.ones(5)), torch.zeros(5))
    z = torch.randn(2, 4, 6, 6, 6).contiguous(memory_format=CL)
    assert Dropout(0.3)(z).is_contiguous(memory_format=CL)


def test_pooling_under_bf16_autocast_is_bit_identical():
    net = UNet3D(features=(4, 8), with_projection=False)
    h = torch.randn(2, 4, 8, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        upcast = net.pool(h)  # what autocast does: max_pool3d in float32
        native = net._pool_in_input_dtype(h)
    assert upcast.dtype == torch.float32 and native.dtype == torch.bfloat16
    assert torch.equal(native.float(), upcast)
    assert torch.equal(net._pool_in_input_dtype(h.float()), net.pool(h.float()))  # no autocast: plain pooling


def test_channels_last_bf16_network_matches_fp32():
    """The fastest CPU setting (bf16 autocast, channels-last input): the layout propagates through the whole network
    (no conversion back), and logits and gradients agree with the fp32 contiguous network within bf16 rounding."""
    torch.manual_seed(0)
    net = UNet3D(features=(4, 8, 16), dropout=0.0).train()  # no dropout: masks are drawn in memory order
    x = torch.randn(2, 1, 16, 16, 8)

    def run(inp, bf16):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, emb = net.forward_with_embeddings(inp)
        (logits.float().square().mean() + emb.float().sum()).backward()
        return logits, torch.cat([p.grad.flatten() for p in net.parameters()])

    ref_logits, ref_grad = run(x, False)
    net.to(memory_format=CL)  # what MeanTeacherTrainer(channels_last=True) does to the weights
    logits, grad = run(x.contiguous(memory_format=CL), True)
    assert logits.dtype == torch.bfloat16 and logits.is_contiguous(memory_format=CL)
    assert (logits.float() - ref_logits).abs().max() < 0.05 * ref_logits.abs().max()
    cos = F.cosine_similarity(grad, ref_grad, dim=0)
    assert cos > 0.99
