"""Route ``forward`` to ``forward_with_embeddings``, so that DistributedDataParallel sees the embedding pass."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EmbeddingForward"]


class EmbeddingForward(nn.Module):
    """``forward(x) -> (logits, embeddings)`` of the wrapped network.

    DDP synchronises gradients only for passes made through its own ``forward``; wrapping the network in this
    module before DDP (``DDP(EmbeddingForward(net))``) lets :class:`custom.engines.MeanTeacherTrainer` run the
    embedding pass through DDP. Its state dict is the wrapped network's under ``net.``; save ``net`` itself to get
    a checkpoint that loads into the single-GPU configs.

    Args:
        net: a network with ``forward_with_embeddings(x) -> (logits (B, C, *spatial), embeddings (B, D, *grid))``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not hasattr(net, "forward_with_embeddings"):
            raise TypeError(f"{type(net).__name__} has no forward_with_embeddings")
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_with_embeddings(x)

    def forward_with_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_with_embeddings(x)
