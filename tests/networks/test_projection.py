"""Tests of ProjectionHead and EmbeddingNet (projection head on any MONAI backbone)."""

import copy
import gc
import warnings
import weakref

import pytest
import torch
from monai.networks.nets import UNet, VNet

from custom.networks import EmbeddingNet, ProjectionHead

# bottleneck (32 channels at 1/4 resolution) of the small MONAI UNet below
UNET_FEATURE = "model.1.submodule.1.submodule"
# deepest VNet encoder stage (256 channels at 1/16 resolution), like DyCON's bottleneck
VNET_FEATURE = "down_tr256"


def _monai_unet() -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def _input(seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 32, 32, 32, generator=g)


@pytest.fixture(scope="module")
def unet_net() -> EmbeddingNet:
    torch.manual_seed(0)
    return EmbeddingNet(_monai_unet(), feature_module=UNET_FEATURE, feature_channels=32, embed_dim=64, hidden=128)


@pytest.fixture(scope="module")
def vnet_net() -> EmbeddingNet:
    torch.manual_seed(0)
    return EmbeddingNet(VNet(spatial_dims=3, in_channels=1, out_channels=2), VNET_FEATURE, 256, scale_factor=2.0)


# ----------------------------------------------------------------------------------------------- ProjectionHead


def test_projection_head_shapes_and_norm():
    head = ProjectionHead(256)
    n = sum(p.numel() for p in head.parameters())
    assert n == 256 * 512 + 512 + 2 * 512 + 512 * 256 + 256 + 2 * 256
    z = head(torch.randn(2, 256, 2, 3, 2))
    assert z.shape == (2, 256, 4, 6, 4)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 4, 6, 4))
    z1 = ProjectionHead(8, hidden=16, out=4, scale_factor=1.0)(torch.randn(2, 8, 3, 3, 3))
    assert z1.shape == (2, 4, 3, 3, 3)
    z2 = ProjectionHead(8, hidden=16, out=4, scale_factor=2.0, spatial_dims=2)(torch.randn(2, 8, 3, 3))
    assert z2.shape == (2, 4, 6, 6)
    torch.testing.assert_close(z2.norm(dim=1), torch.ones(2, 6, 6))


def test_projection_head_scriptable():
    head = ProjectionHead(16, hidden=32, out=8).eval()
    x = torch.randn(1, 16, 2, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(head)
    torch.testing.assert_close(scripted(x), head(x))


# ------------------------------------------------------------------------------------------------- EmbeddingNet


def _check_embedding_net(net: EmbeddingNet, grid: tuple, dim: int) -> None:
    net.train()
    net.zero_grad()
    x = _input()
    logits, emb = net.forward_with_embeddings(x)
    assert logits.shape == (2, 2, 32, 32, 32)
    assert emb.shape == (2, dim) + grid
    torch.testing.assert_close(emb.norm(dim=1), torch.ones((2,) + grid))
    (logits.square().mean() + emb[:, :3].sum()).backward()
    head_grads = [p.grad for p in net.head.parameters()]
    backbone_grads = [p.grad for p in net.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in head_grads) and any(g.abs().sum() > 0 for g in head_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)
    # the embedding loss alone reaches the backbone (through the hooked features)
    net.zero_grad()
    _, emb = net.forward_with_embeddings(x)
    emb[:, :3].sum().backward()
    first = next(p for p in net.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    net.zero_grad()
    assert net._captured is None


def test_embedding_net_monai_unet(unet_net):
    _check_embedding_net(unet_net, grid=(8, 8, 8), dim=64)


def test_embedding_net_monai_vnet(vnet_net):
    _check_embedding_net(vnet_net, grid=(4, 4, 4), dim=256)


def test_forward_equals_backbone_and_returns_single_tensor(unet_net):
    unet_net.eval()
    x = _input(1)
    with torch.no_grad():
        y = unet_net(x)
        ref = unet_net.backbone(x)
        logits, _ = unet_net.forward_with_embeddings(x)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(logits, ref)


def test_plain_forward_captures_nothing(unet_net):
    unet_net.eval()
    with torch.no_grad():
        unet_net(_input(2))
    assert unet_net._captured is None


def test_no_tensor_leak_between_calls(unet_net):
    unet_net.eval()
    refs = []

    def spy(module, inputs, output):
        refs.append(weakref.ref(output))

    module = dict(unet_net.backbone.named_modules())[UNET_FEATURE]
    handle = module.register_forward_hook(spy)
    try:
        with torch.no_grad():
            out = unet_net.forward_with_embeddings(_input(3))
        del out
        gc.collect()
        assert unet_net._captured is None
        assert refs and all(r() is None for r in refs), "captured feature tensor outlived the call"
    finally:
        handle.remove()


def test_embeddings_depend_on_input(unet_net):
    unet_net.eval()
    with torch.no_grad():
        _, e1 = unet_net.forward_with_embeddings(_input(4))
        _, e2 = unet_net.forward_with_embeddings(_input(5))
    assert not torch.allclose(e1, e2)


def test_state_dict_layout(unet_net):
    keys = list(unet_net.state_dict())
    assert keys and all(k.startswith("backbone.") or k.startswith("head.") for k in keys)
    assert any(k.startswith("head.") for k in keys)
    backbone_keys = {k[len("backbone."):] for k in keys if k.startswith("backbone.")}
    assert backbone_keys == set(unet_net.backbone.state_dict())
    # a plain backbone checkpoint loads into the wrapper's backbone
    fresh = EmbeddingNet(_monai_unet(), UNET_FEATURE, 32, embed_dim=64, hidden=128)
    fresh.backbone.load_state_dict(unet_net.backbone.state_dict())
    fresh.load_state_dict(unet_net.state_dict())


def test_trace_forward(unet_net):
    unet_net.eval()
    x = _input(6, batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(unet_net, x, check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), unet_net(x))
        x2 = _input(7, batch=1)
        torch.testing.assert_close(traced(x2), unet_net(x2))


def test_deepcopy_gives_independent_hook(unet_net):
    """A mean teacher built with deepcopy must capture its own backbone's features."""
    student = unet_net.eval()
    teacher = copy.deepcopy(student)
    x = _input(8)
    with torch.no_grad():
        _, es = student.forward_with_embeddings(x)
        _, et = teacher.forward_with_embeddings(x)
        torch.testing.assert_close(es, et)
        for p in teacher.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
        _, es2 = student.forward_with_embeddings(x)
        _, et2 = teacher.forward_with_embeddings(x)
    torch.testing.assert_close(es2, es)
    assert not torch.allclose(et2, et)
    assert teacher._captured is None and student._captured is None


def test_bad_feature_module_raises():
    with pytest.raises(ValueError, match="candidates") as info:
        EmbeddingNet(_monai_unet(), "model.1.submodul", 32)
    assert "model.1.submodule" in str(info.value)
    with pytest.raises(ValueError, match="not a sub-module"):
        EmbeddingNet(_monai_unet(), "", 32)


def test_wrong_feature_channels_raises():
    net = EmbeddingNet(_monai_unet(), UNET_FEATURE, 16)
    with pytest.raises(ValueError, match="feature_channels"):
        net.forward_with_embeddings(_input(9))
    assert net._captured is None
