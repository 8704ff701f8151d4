"""Networks for DyCON: the released 3D U-Net, the FeCL projection head and a wrapper for any MONAI backbone."""

from .embedding_forward import EmbeddingForward
from .projection import EmbeddingNet, ProjectionHead
from .teacher import make_teacher
from .unet3d import UNet3D

__all__ = ["EmbeddingForward", "UNet3D", "ProjectionHead", "EmbeddingNet", "make_teacher"]
