"""Networks for DyCON: the released 3D U-Net, the FeCL projection head and a wrapper for any MONAI backbone."""

from custom.networks.embedding_forward import EmbeddingForward
from custom.networks.projection import EmbeddingNet, ProjectionHead
from custom.networks.teacher import make_teacher
from custom.networks.unet3d import UNet3D

__all__ = ["EmbeddingForward", "UNet3D", "ProjectionHead", "EmbeddingNet", "make_teacher"]
