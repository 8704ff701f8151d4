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

As in the released code the dropout layers are ``nn.Dropout`` (element-wise); ``spatial_dropout=True`` switches
to ``nn.Dropout3d``. Weights are initialised like the released code (Kaiming normal, fan_in, for every
convolution; BatchNorm weight N(1, 0.02), bias 0). With the defaults the network has 6,148,498 parameters with
the projection head (5,884,050 without).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from custom.networks.projection import ProjectionHead

__all__ = ["UNet3D"]


class _DoubleConv(nn.Sequential):
    """[Conv3x3x3 -> InstanceNorm3d(affine=False) -> ReLU] x 2 (SSL4MIS ``UnetConv3``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=False),
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

        drop = nn.Dropout3d if spatial_dropout else nn.Dropout
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
            h = self.pool(h)
        h = self.dropout_bottleneck(self.bottleneck(h))
        bottleneck = h
        n = len(skips)
        for i, dec in enumerate(self.decoders):
            h = F.interpolate(h, scale_factor=2.0, mode="trilinear", align_corners=False)
            h = dec(torch.cat([skips[n - 1 - i], h], dim=1))
        h = self.dropout_out(h)
        return self.final(h), bottleneck

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
