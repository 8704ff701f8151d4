"""The transform chains of the DyCON bundles, so that the four bundles' configs stay short and cannot diverge.

Intensity preprocessing specific to a dataset (cropping, clipping, resampling, windowing) happens once, in
``dycon prepare``; the bundles only load, orient (RAS), z-score and augment. Inference applies the same loading and
z-scoring and inverts the orientation afterwards (``Invertd``), so masks come back in the input's geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    SpatialPadd,
)

from .flags import as_bool

__all__ = ["load_transforms", "augmentation", "training_transforms", "evaluation_transforms", "inference_transforms"]


def load_transforms(keys: Sequence[str] = ("image", "label"), normalize_nonzero: bool = False) -> list[MapTransform]:
    """Load, channel-first, RAS, float32 image, z-score per channel.

    Args:
        keys: the image (and label) keys; missing keys are allowed (unlabeled entries have no ``label``).
        normalize_nonzero: z-score over non-zero voxels only (brain-masked MRI: BraTS, ISLES) instead of the
            whole volume (LA, Pancreas).
    """
    keys = list(keys)
    normalize_nonzero = as_bool(normalize_nonzero, "normalize_nonzero")
    return [
        LoadImaged(keys=keys, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
        Orientationd(keys=keys, axcodes="RAS", labels=None, allow_missing_keys=True),
        EnsureTyped(keys="image", dtype=torch.float32),
        NormalizeIntensityd(keys="image", nonzero=normalize_nonzero, channel_wise=True),
    ]


def augmentation(
    patch_size: Sequence[int],
    keys: Sequence[str] = ("image", "label"),
    crop: str = "random",
    pos_neg: Sequence[float] = (1.0, 1.0),
) -> list[MapTransform]:
    """Pad to the patch, crop one patch, random 90-degree rotation in the axial plane, random flips (the released
    code's augmentation).

    Args:
        patch_size: training patch (multiples of 16 for UNet3D).
        keys: image and label keys (a missing label is allowed).
        crop: ``"random"`` (uniform) or ``"pos_neg"`` (foreground / background centres in the ratio ``pos_neg``;
            needs a label: use it for labeled data with small lesions).
        pos_neg: (pos, neg) weights of ``"pos_neg"``.

    The 90-degree rotation (k = 0..3, uniform) is used only when the patch is square in-plane (else rotated patches
    could not be batched); flips along the two in-plane axes (each with probability 1/2) are always on, so the 8
    orientations of the dihedral group of the axial plane are equally likely.
    """
    keys = list(keys)
    patch = [int(p) for p in patch_size]
    chain: list[MapTransform] = [SpatialPadd(keys=keys, spatial_size=patch, allow_missing_keys=True)]
    if crop == "random":
        chain.append(RandSpatialCropd(keys=keys, roi_size=patch, random_size=False, allow_missing_keys=True))
    elif crop == "pos_neg":
        chain.append(
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch, pos=pos_neg[0], neg=pos_neg[1], num_samples=1
            )
        )
    else:
        raise ValueError(f"crop must be 'random' or 'pos_neg', got {crop!r}")
    if patch[0] == patch[1]:
        # MONAI draws k in 1..max_k when it rotates: prob 0.75 makes k = 0, 1, 2, 3 equally likely (1/4 each), and
        # with the two independent flips every one of the 8 in-plane orientations has probability 1/8
        chain.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True))
    chain += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in (0, 1)]
    return chain


def training_transforms(
    patch_size: Sequence[int],
    labeled: bool = True,
    crop: str = "random",
    normalize_nonzero: bool = False,
    pos_neg: Sequence[float] = (1.0, 1.0),
) -> Compose:
    """The labeled (image + label) or unlabeled (image only) training chain; ``crop="pos_neg"`` applies to labeled
    data only (unlabeled data are cropped uniformly)."""
    keys = ("image", "label") if labeled else ("image",)
    crop = crop if labeled else "random"
    return Compose(
        load_transforms(keys, normalize_nonzero) + augmentation(patch_size, keys, crop, pos_neg), map_items=True
    )


def evaluation_transforms(normalize_nonzero: bool = False) -> Compose:
    """Validation / test chain (image + label, whole volumes)."""
    return Compose(load_transforms(("image", "label"), normalize_nonzero))


def inference_transforms(normalize_nonzero: bool = False) -> Compose:
    """Inference chain (image only); ``Invertd`` with this Compose restores the input's orientation."""
    return Compose(load_transforms(("image",), normalize_nonzero))
