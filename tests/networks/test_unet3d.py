"""Tests of the DyCON 3D U-Net (custom.networks.UNet3D)."""

import warnings

import pytest
import torch

from custom.networks import UNet3D

REFERENCE_PARAMS = 6.149e6


def _input(seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, size, size, size, generator=g)


@pytest.fixture(scope="module")
def net() -> UNet3D:
    torch.manual_seed(0)
    return UNet3D()


def test_parameter_count_with_head(net):
    n = sum(p.numel() for p in net.parameters())
    n_head = sum(p.numel() for p in net.head.parameters())
    print(f"UNet3D parameters: {n} with projection head ({n - n_head} backbone + {n_head} head)")
    assert abs(n - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.02
    assert n == 6148498
    no_head = UNet3D(with_projection=False)
    assert sum(p.numel() for p in no_head.parameters()) == n - n_head


def test_architecture(net):
    assert net.features == [16, 32, 64, 128, 256]
    assert net.size_divisor == 16
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert len(norms) == 18 and all(not m.affine for m in norms)
    assert net.dropout_bottleneck.p == pytest.approx(0.3) and net.dropout_out.p == pytest.approx(0.3)
    assert isinstance(net.dropout_bottleneck, torch.nn.Dropout)
    assert isinstance(UNet3D(spatial_dropout=True, with_projection=False).dropout_out, torch.nn.Dropout3d)
    head_layers = [type(m).__name__ for m in net.head.proj]
    assert head_layers == ["Conv3d", "BatchNorm3d", "ReLU", "Conv3d", "BatchNorm3d"]


def test_forward_shapes_and_single_tensor(net):
    net.eval()
    x = torch.randn(2, 1, 32, 32, 48)
    with torch.no_grad():
        y = net(x)
        logits, emb = net.forward_with_embeddings(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 2, 32, 32, 48)
    assert logits.shape == (2, 2, 32, 32, 48)
    assert emb.shape == (2, 256, 4, 4, 6)
    torch.testing.assert_close(logits, y)


def test_embeddings_unit_norm(net):
    net.train()
    _, emb = net.forward_with_embeddings(_input(1))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1, 4, 4, 4))


def test_configurable():
    m = UNet3D(in_channels=2, out_channels=3, features=(8, 16, 32), embed_dim=64, proj_hidden=32, dropout=0.0)
    m.eval()
    x = torch.randn(1, 2, 16, 16, 16)
    logits, emb = m.forward_with_embeddings(x)
    assert logits.shape == (1, 3, 16, 16, 16)
    assert emb.shape == (1, 64, 8, 8, 8)  # bottleneck at 1/4, upsampled x2 -> 1/2


def test_dropout_train_vs_eval(net):
    x = _input(2)
    net.train()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert not torch.allclose(a, b), "dropout should make train-mode outputs differ"
    net.eval()
    with torch.no_grad():
        c, d = net(x), net(x)
    torch.testing.assert_close(c, d, rtol=0, atol=0)


def test_without_projection_has_no_embeddings():
    m = UNet3D(with_projection=False)
    assert m.head is None
    with pytest.raises(RuntimeError, match="with_projection"):
        m.forward_with_embeddings(_input())


@pytest.mark.parametrize("shape", [(1, 1, 24, 32, 32), (1, 1, 32, 32, 40), (1, 2, 32, 32, 32), (1, 32, 32, 32)])
def test_bad_input_raises(net, shape):
    with pytest.raises(ValueError):
        net(torch.zeros(shape))


def test_torchscript_script(net):
    net.eval()
    x = _input(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    with torch.no_grad():
        ref = net(x)
        ref_l, ref_e = net.forward_with_embeddings(x)
        out = scripted(x)
        out_l, out_e = scripted.forward_with_embeddings(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_l, ref_l)
    torch.testing.assert_close(out_e, ref_e)
    with pytest.raises(Exception, match="divisible by 16"):
        scripted(torch.zeros(1, 1, 24, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(UNet3D(with_projection=False))


def test_torchscript_trace(net):
    net.eval()
    x = _input(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, x, check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x))
        x2 = _input(5)
        torch.testing.assert_close(traced(x2), net(x2))


def test_gradients_reach_head_and_backbone(net):
    net.train()
    net.zero_grad()
    logits, emb = net.forward_with_embeddings(_input(6))
    (logits.mean() + emb[:, 0].sum()).backward()
    assert net.head.proj[0].weight.grad is not None and net.head.proj[0].weight.grad.abs().sum() > 0
    assert net.encoders[0][0].weight.grad is not None and net.encoders[0][0].weight.grad.abs().sum() > 0
    net.zero_grad()
