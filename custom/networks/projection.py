"""Projection head for DyCON's feature-level contrastive loss (FeCL) and a wrapper that adds it to any backbone.

The head follows the released DyCON code (see ``docs/dycon_method.md`` section 2)::

    features (B, C_in, *grid)
      -> optional upsampling by ``scale_factor`` (trilinear in 3D, bilinear in 2D, align_corners=False)
      -> Conv1x1(C_in -> hidden) -> BatchNorm -> ReLU -> Conv1x1(hidden -> out) -> BatchNorm
      -> L2 normalisation over the channel dimension
    embeddings (B, out, *grid * scale_factor), unit norm over dim 1

:class:`EmbeddingNet` wraps an arbitrary segmentation network (``monai.networks.nets.UNet``, ``VNet``,
``SegResNet``, ...): ``forward`` is the backbone's own forward (logits only, so MONAI inferers, TorchScript
tracing and MONAI Label keep working), and ``forward_with_embeddings`` additionally returns the embeddings of the
features produced by the sub-module named ``feature_module`` (captured with a forward hook).
"""

from __future__ import annotations

import difflib
from typing import Any, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectionHead", "EmbeddingNet"]


class ProjectionHead(nn.Module):
    """Conv1x1 -> BN -> ReLU -> Conv1x1 -> BN projection head with L2-normalised output.

    Args:
        in_channels: channels of the input feature map.
        hidden: channels of the hidden layer (released code: 512).
        out: embedding dimension D (released code: 256).
        scale_factor: the input features are first resized by this factor (``F.interpolate``, trilinear for
            ``spatial_dims=3``, bilinear for 2, ``align_corners=False``). ``1.0`` means no resizing. The released
            DyCON code upsamples the 1/16-resolution bottleneck by 2 to the 1/8 grid.
        spatial_dims: 2 or 3.
        normalize: L2-normalise the output over the channel dimension (default True).

    Shapes:
        input ``(B, in_channels, *S)`` -> output ``(B, out, *(S * scale_factor))``; with ``normalize`` every
        output vector ``y[b, :, i, j, k]`` has unit L2 norm.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 512,
        out: int = 256,
        scale_factor: float = 2.0,
        spatial_dims: int = 3,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if scale_factor <= 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        self.in_channels = int(in_channels)
        self.out_channels = int(out)
        self.scale_factor = float(scale_factor)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.normalize = bool(normalize)
        self.proj = nn.Sequential(
            conv(in_channels, hidden, kernel_size=1),
            norm(hidden),
            nn.ReLU(inplace=True),
            conv(hidden, out, kernel_size=1),
            norm(out),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, *S)`` -> ``(B, out, *(S * scale_factor))``, unit norm over dim 1."""
        if self.scale_factor != 1.0:
            x = F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=False)
        x = self.proj(x)
        if self.normalize:
            x = F.normalize(x, p=2.0, dim=1)
        return x


def _first_tensor(output: Any) -> Optional[Tensor]:
    """The tensor a module produced: the output itself, or the first tensor of a tuple/list/dict output."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    if isinstance(output, dict):
        for item in output.values():
            if isinstance(item, Tensor):
                return item
    return None


class EmbeddingNet(nn.Module):
    """Adds a :class:`ProjectionHead` to any backbone, fed by the output of one of its sub-modules.

    Args:
        backbone: the segmentation network; ``backbone(x)`` returns the logits ``(B, C, *spatial)``.
        feature_module: dotted name (as in ``backbone.named_modules()``) of the sub-module whose output feeds the
            head, e.g. ``"down_tr256"`` for ``monai.networks.nets.VNet`` or ``"model.1.submodule.1.submodule"``
            (bottleneck) for ``monai.networks.nets.UNet(channels=(8, 16, 32), strides=(2, 2))``.
        feature_channels: number of channels of those features (checked at run time).
        scale_factor: resizing of the features before the head (default 1.0: none).
        hidden: hidden channels of the head (default 512).
        embed_dim: embedding dimension D (default 256).
        spatial_dims: 2 or 3 (default 3).

    State dict layout: backbone parameters under ``backbone.``, head parameters under ``head.``.

    ``forward(x)`` is exactly ``backbone(x)`` (traceable with ``torch.jit.trace``; the hook stores nothing
    then). ``forward_with_embeddings(x)`` returns ``(logits, embeddings)`` with embeddings
    ``(B, embed_dim, *(feature grid * scale_factor))``, unit norm over dim 1. The hook is registered once in
    ``__init__``; the captured feature tensor is held only during a ``forward_with_embeddings`` call. If the named
    module runs several times in one forward pass, its last output is used. ``copy.deepcopy`` (e.g. to build a
    mean teacher) gives an independent copy whose hook captures the copy's own features.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_module: str,
        feature_channels: int,
        scale_factor: float = 1.0,
        hidden: int = 512,
        embed_dim: int = 256,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(
            feature_channels, hidden=hidden, out=embed_dim, scale_factor=scale_factor, spatial_dims=spatial_dims
        )
        modules = dict(backbone.named_modules())
        if not feature_module or feature_module not in modules:
            names: List[str] = [n for n in modules if n]
            close = difflib.get_close_matches(feature_module, names, n=5, cutoff=0.4)
            top_level = [n for n in names if "." not in n]
            candidates = close + [n for n in top_level if n not in close]
            raise ValueError(
                f"feature_module {feature_module!r} is not a sub-module of {type(backbone).__name__}; "
                f"candidates: {candidates[:12]} (see backbone.named_modules() for all {len(names)} names)"
            )
        self.feature_module = feature_module
        self.feature_channels = int(feature_channels)
        self._capturing = False
        self._captured: Optional[Tensor] = None
        self._hook_handle = modules[feature_module].register_forward_hook(self._capture_hook)

    def _capture_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self._capturing:
            return
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(f"feature_module {self.feature_module!r} returned {type(output).__name__}, not a tensor")
        self._captured = tensor

    def forward(self, x: Tensor) -> Any:
        """The backbone's output (logits ``(B, C, *spatial)`` for the usual segmentation networks)."""
        return self.backbone(x)

    def forward_with_embeddings(self, x: Tensor) -> Tuple[Any, Tensor]:
        """Returns ``(logits, embeddings)``; embeddings ``(B, embed_dim, *grid)`` unit norm over dim 1."""
        self._captured = None
        self._capturing = True
        try:
            logits = self.backbone(x)
            features = self._captured
        finally:
            self._capturing = False
            self._captured = None
        if features is None:
            raise RuntimeError(f"feature_module {self.feature_module!r} did not run during the backbone's forward pass")
        if features.ndim < 2 or features.shape[1] != self.feature_channels:
            raise ValueError(
                f"feature_module {self.feature_module!r} produced shape {tuple(features.shape)}; "
                f"expected {self.feature_channels} channels in dim 1 (feature_channels)"
            )
        return logits, self.head(features)

    def remove_hook(self) -> None:
        """Detach the forward hook from the backbone (``forward_with_embeddings`` no longer works)."""
        self._hook_handle.remove()

    def extra_repr(self) -> str:
        return f"feature_module={self.feature_module!r}, feature_channels={self.feature_channels}"
