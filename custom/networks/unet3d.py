"""3D U-Net of the released DyCON code (SSL4MIS ``unet_3D``, feature_scale 4) with the FeCL projection head.

Architecture (defaults, see ``docs/dycon_method.md`` sections 2 and 3)::

    input (B, in_channels, X, Y, Z), X, Y, Z divisible by 16
    encoder  level 1..4: [Conv3x3x3 -> InstanceNorm3d(affine=False) -> ReLU] x 2, then MaxPool3d(2)
             channels 16, 32, 64, 128 at resolutions 1, 1/2, 1/4, 1/8
    bottleneck: the same double conv, 256 channels at 1/16, then dropout (p=0.3)
    decoder  level 4..1: trilinear upsample x2 -> concat([skip, upsampled]) -> double conv
             channels 128, 64, 32, 16; dropout (p=0.3) after the last level
    final    Conv1x1x1(16 -> out_channels) -> logits (B, out_channels, X, Y, Z)
    head     (with_projection) the post-dropout bottleneck (B, 256, X/16, Y/16, Z/16) -> trilinear x2 ->
             Conv1x1(256->512) -> BN -> ReLU -> Conv1x1(512->256) -> BN -> L2 norm over channels
             -> embeddings (B, 256, X/8, Y/8, Z/8)

As in the released code the dropout layers are element-wise (:class:`Dropout`, ``nn.Dropout``'s distribution with a
faster mask) and the normalisation is instance norm (:class:`InstanceNorm3d`, computed by the GroupNorm kernel);
``spatial_dropout=True`` switches to ``nn.Dropout3d``. Weights are initialised like the released code (Kaiming
normal, fan_in, for every convolution; BatchNorm weight N(1, 0.02), bias 0). With the defaults the network has
6,148,498 parameters with the projection head (5,884,050 without).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .projection import ProjectionHead

__all__ = ["UNet3D", "InstanceNorm3d", "Dropout"]


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d(affine=False)`` computed by the GroupNorm kernel with one group per channel.

    GroupNorm with ``C`` groups and no affine is the same function (per sample and channel: subtract the mean over
    the spatial dimensions, divide by ``sqrt(biased variance + eps)``), and its fused CPU kernels are faster than
    instance norm's (which runs batch norm on a ``(1, B*C, ...)`` view): about 2x forward in fp32 and 1.5x forward +
    backward in bf16 on the 16-channel full-resolution tensors measured here (benchmarks/README.md). No parameters,
    no buffers: state dicts are those of ``nn.InstanceNorm3d(affine=False)`` (the only setting it implements).

    Shapes: ``(B, C, X, Y, Z)`` -> ``(B, C, X, Y, Z)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=False, track_running_stats=False)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 5 or input.shape[1] != self.num_features:
            raise ValueError(f"expected (B, {self.num_features}, X, Y, Z), got input size {list(input.shape)}")
        if input.shape[2] * input.shape[3] * input.shape[4] <= 1:  # as F.instance_norm: no statistics from 1 voxel
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(input.shape)}")
        if torch.jit.is_scripting() or not _channels_last_with_grad(input):
            return F.group_norm(input, self.num_features, eps=self.eps)
        return self._channels_last(input)

    @torch.jit.unused
    def _channels_last(self, input: Tensor) -> Tensor:
        return _ChannelsLastInstanceNorm.apply(input, self.eps)


def _channels_last_with_grad(x: Tensor) -> bool:
    return (
        x.requires_grad
        and torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not x.is_contiguous()
    )


def _tile(s: int) -> int:
    """A divisor of ``s`` (at most 64) to fold into the channel dimension: per-channel reductions and broadcasts
    over a ``(B, S, C)`` view with a 16-channel inner dimension vectorize poorly, over ``(B, S / k, k * C)`` well."""
    k = 64
    while s % k:
        k //= 2
    return k


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Instance norm of a ``channels_last_3d`` tensor: GroupNorm's forward (fast in that layout) and a backward
    written for it. torch's GroupNorm backward is ~30x slower on channels-last 3D tensors than on contiguous ones
    here, and channels-last is what makes oneDNN's bf16 convolutions, pooling and trilinear upsampling fast on the
    CPU (benchmarks/README.md). With ``y = (x - mean) * rstd`` per sample and channel over the S voxels:
    ``dx = rstd * (dy - mean_S(dy) - y * mean_S(dy * y))``.

    The backward uses the forward's ``y`` (computed by the kernel with float32 statistics), not ``y`` recomputed
    from ``x``: in bf16, ``x - mean`` cancels when ``|mean| >> std``. The network's in-place ReLU would overwrite
    that ``y``, so the function returns a copy of it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        b, c = x.shape[:2]
        y, _, rstd = torch.native_group_norm(x, None, None, b, c, x.numel() // (b * c), c, eps)
        ctx.save_for_backward(y, rstd)
        return y.clone(memory_format=torch.channels_last_3d)

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        y, rstd = ctx.saved_tensors
        b, c = y.shape[:2]
        s = y.numel() // (b * c)
        k = _tile(s)
        shape = (b, s // k, k * c)
        # (B, C, X, Y, Z) channels-last is (B, X, Y, Z, C) in memory: a free view as (B, S/k, k*C)
        yv = y.permute(0, 2, 3, 4, 1).reshape(shape)
        dyv = dy.contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1).reshape(shape)

        def tiled(v: Tensor) -> Tensor:  # (B, C) -> (B, 1, k*C), float32
            return v.float().reshape(b, 1, 1, c).expand(b, 1, k, c).reshape(b, 1, k * c)

        def per_channel_mean(v: Tensor) -> Tensor:  # (B, S/k, k*C) -> (B, 1, k*C), float32
            # the partial sums over S/k voxels accumulate in float32 inside sum() (bf16's accumulation type);
            # asking for a float32 result instead would first copy the whole tensor to float32
            return tiled(v.sum(1).float().reshape(b, k, c).sum(1) / s)

        r = tiled(rstd)
        mean_dy = per_channel_mean(dyv)
        mean_dyy = per_channel_mean(dyv * yv)
        dt = dyv.dtype  # dx = r * dy - r * mean_dy - (r * mean_dyy) * y, per-channel factors in dy's dtype
        dx = torch.addcmul((-r * mean_dy).to(dt), dyv, r.to(dt)).addcmul_(yv, (-r * mean_dyy).to(dt))
        return dx.reshape(b, *y.shape[2:], c).permute(0, 4, 1, 2, 3), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` (element-wise, scaled by ``1 / (1 - p)``) with the mask drawn as ``uniform(0, 1) >= p``.

    The same Bernoulli(1 - p) mask per element, drawn from float32 uniforms whatever the input dtype; torch's CPU
    ``bernoulli_`` is about 2.5x slower than ``rand`` on the full-resolution tensor this network drops
    (benchmarks/README.md). The random stream differs from ``nn.Dropout``'s, the distribution does not.

    Shapes: any -> the same.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return input
        if self.p == 1.0:
            return input * 0.0
        keep = torch.rand_like(input, dtype=torch.float32) >= self.p  # in the input's memory format
        return input * keep.to(input.dtype).mul_(1.0 / (1.0 - self.p))


class _DoubleConv(nn.Sequential):
    """[Conv3x3x3 -> InstanceNorm3d(affine=False) -> ReLU] x 2 (SSL4MIS ``UnetConv3``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            InstanceNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            InstanceNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """DyCON's 3D U-Net (released architecture) with an optional FeCL projection head.

    Args:
        in_channels: input channels (default 1).
        out_channels: number of classes / logit channels (default 2).
        features: channels per level, the last one is the bottleneck (default 16-32-64-128-256: four
            downsamplings, bottleneck at 1/16). Input sizes must be divisible by ``2 ** (len(features) - 1)``.
        dropout: dropout probability on the bottleneck and on the last decoder level (default 0.3).
        spatial_dropout: use ``nn.Dropout3d`` instead of the released code's ``nn.Dropout`` (default False).
        with_projection: build the projection head (default True); without it
            ``forward_with_embeddings`` raises.
        embed_dim: embedding dimension D (default 256).
        proj_hidden: hidden channels of the projection head (default 512).
        proj_scale_factor: upsampling of the bottleneck before the head (default 2.0: 1/16 -> 1/8 grid).

    Shapes:
        ``forward``: ``(B, in_channels, X, Y, Z)`` -> logits ``(B, out_channels, X, Y, Z)``.
        ``forward_with_embeddings``: -> ``(logits, embeddings)``, embeddings
        ``(B, embed_dim, X/16*s, Y/16*s, Z/16*s)`` (``s = proj_scale_factor``; ``X/8`` etc. by default), unit L2
        norm over dim 1.

    ``forward`` returns the logits only, so MONAI inferers, ``torch.jit.script``/``torch.jit.trace`` and MONAI
    Label work unchanged; ``forward_with_embeddings`` is exported to TorchScript too.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.3,
        spatial_dropout: bool = False,
        with_projection: bool = True,
        embed_dim: int = 256,
        proj_hidden: int = 512,
        proj_scale_factor: float = 2.0,
    ) -> None:
        super().__init__()
        feats = [int(f) for f in features]
        if len(feats) < 2:
            raise ValueError(f"features needs at least 2 levels, got {features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.features: List[int] = feats
        self.size_divisor: int = 2 ** (len(feats) - 1)
        self.embed_dim = int(embed_dim)

        encoders: List[nn.Module] = []
        prev = self.in_channels
        for f in feats[:-1]:
            encoders.append(_DoubleConv(prev, f))
            prev = f
        self.encoders = nn.ModuleList(encoders)
        self.pool = nn.MaxPool3d(kernel_size=2)
        self.bottleneck = _DoubleConv(feats[-2], feats[-1])

        decoders: List[nn.Module] = []
        prev = feats[-1]
        for f in reversed(feats[:-1]):
            decoders.append(_DoubleConv(prev + f, f))
            prev = f
        self.decoders = nn.ModuleList(decoders)

        drop = nn.Dropout3d if spatial_dropout else Dropout
        self.dropout_bottleneck = drop(p=dropout)
        self.dropout_out = drop(p=dropout)
        self.final = nn.Conv3d(feats[0], self.out_channels, kernel_size=1)

        if with_projection:
            self.head = ProjectionHead(
                feats[-1], hidden=proj_hidden, out=embed_dim, scale_factor=proj_scale_factor, spatial_dims=3
            )
        else:
            self.head = None

        self._init_weights()

    def _init_weights(self) -> None:
        """Initialisation of the released code (``init_weights(m, init_type='kaiming')``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"UNet3D expects a 5D input (B, C, X, Y, Z), got {x.dim()}D")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D expects {self.in_channels} input channels, got {x.shape[1]}")
        for s in x.shape[2:]:
            if s % self.size_divisor != 0:
                raise ValueError(
                    f"UNet3D input spatial sizes must be divisible by {self.size_divisor}, got {x.shape[2:]}"
                )

    def _encode_decode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns ``(logits (B, out_channels, X, Y, Z), bottleneck (B, features[-1], X/16, Y/16, Z/16))``.

        The bottleneck is taken after its dropout, as in the released code.
        """
        if not torch.jit.is_tracing():  # sizes are static constants in a trace; check eagerly/scripted only
            self._check_input(x)
        skips: List[Tensor] = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = self.pool(h) if torch.jit.is_scripting() else self._pool_in_input_dtype(h)
        h = self.dropout_bottleneck(self.bottleneck(h))
        bottleneck = h
        n = len(skips)
        for i, dec in enumerate(self.decoders):
            h = F.interpolate(h, scale_factor=2.0, mode="trilinear", align_corners=False)
            h = dec(torch.cat([skips[n - 1 - i], h], dim=1))
        h = self.dropout_out(h)
        return self.final(h), bottleneck

    @torch.jit.unused
    def _pool_in_input_dtype(self, h: Tensor) -> Tensor:
        """Max pooling in ``h``'s own dtype. CPU autocast runs ``max_pool3d`` in float32, i.e. casts every
        bf16 activation up and its gradient back; the max of bf16 values is exact in bf16, so the result (and the
        next convolution, which autocast feeds bf16) is bit-identical without the two copies."""
        if not torch.is_autocast_enabled(h.device.type):
            return self.pool(h)
        with torch.autocast(h.device.type, enabled=False):
            return self.pool(h)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` -> logits ``(B, out_channels, X, Y, Z)``."""
        logits, _ = self._encode_decode(x)
        return logits

    @torch.jit.export
    def forward_with_embeddings(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, in_channels, X, Y, Z)`` -> ``(logits (B, out_channels, X, Y, Z), embeddings (B, D, X/8, Y/8, Z/8))``.

        Embeddings are L2-normalised over D (dim 1). One forward pass serves both outputs.
        """
        head = self.head
        if head is None:
            raise RuntimeError("UNet3D was built with with_projection=False: no embeddings available")
        logits, bottleneck = self._encode_decode(x)
        return logits, head(bottleneck)
