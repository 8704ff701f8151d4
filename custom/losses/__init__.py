"""DyCON losses: UnCL, FeCL, the patch-label helpers and the full objective."""

from .dycon import DyCONLoss, dycon_supervised_loss
from .fecl import FeCLLoss
from .patch_labels import IGNORE_INDEX, mask_to_patch_labels, pool_to_grid, pooled_entropy, teacher_patch_labels
from .uncl import UnCLLoss, voxel_entropy

__all__ = [
    "DyCONLoss",
    "FeCLLoss",
    "IGNORE_INDEX",
    "UnCLLoss",
    "dycon_supervised_loss",
    "mask_to_patch_labels",
    "pool_to_grid",
    "pooled_entropy",
    "teacher_patch_labels",
    "voxel_entropy",
]
