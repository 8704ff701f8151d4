"""Transforms of the DyCON bundles that MONAI lacks, and the training augmentation the four bundles share.

Every preprocessing step a model depends on (orientation, resampling, intensity window or clip, crop,
normalisation) is listed in the bundle's configs (``preprocessing_transforms`` in train.yaml and inference.yaml: the
same list for training, validation, evaluation, inference and MONAI Label); ``dycon prepare`` only converts formats.
This module adds what those lists need beyond MONAI:

* :class:`Spacingd` - MONAI's ``Spacingd`` that works under MONAI Label 0.8.5 with monai 1.6.1;
* :class:`CropAroundLabeld` - the literature's crop around the ground-truth label (a protocol option for comparison
  with papers only; a no-op where an item has no label);
* :class:`ClipNonzeroPercentiled` - BraTS: clip at a percentile of the brain (non-zero) voxels, as the literature does;
* :class:`BrainNormalized` - ISLES: z-score over the brain (exact-zero background, else an Otsu threshold of DWI);
* :func:`augmentation` - pad, crop one patch, 90-degree rotations and flips (the released code's augmentation);
* :func:`protocol_name` - how outputs say whether the label was used to crop.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import monai.transforms
import numpy as np
import torch
from monai.transforms import (
    CropForegroundd,
    MapTransform,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    SpatialPadd,
)

from .data.datalist import DatasetError
from .flags import as_bool

__all__ = ["BrainNormalized", "ClipNonzeroPercentiled", "CropAroundLabeld", "Spacingd", "augmentation", "protocol_name"]

LABEL_CROP_NOTE = (
    "label_crop: images cropped around the ground-truth label (uses the label; for comparison with papers only)"
)


class Spacingd(monai.transforms.Spacingd):
    """``monai.transforms.Spacingd`` (resample ``keys`` to ``pixdim``) that leaves items such as ``image_path``
    alone.

    monai 1.6's ``Spacingd`` calls ``.update(meta)`` on every item whose key starts with ``"<key>_"`` once it has
    resampled a NIfTI ``<key>``; MONAI Label 0.8.5 puts the string ``image_path`` into the data, so the bundle's
    inference fails there (HTTP 500: ``'str' object has no attribute 'update'``). This subclass sets such non-dict
    items aside around the call and puts them back unchanged; everything else, including the inverse that
    ``Invertd`` applies, is MONAI's. Arguments are those of ``monai.transforms.Spacingd``.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: v
            for k, v in data.items()
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(v, Mapping)
        }
        d = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        d.update(aside)
        return d


class CropAroundLabeld(CropForegroundd):
    """The literature's crop of LA and Pancreas: ``keys`` cropped to the bounding box of ``label_key`` > 0 plus
    ``margin`` voxels per spatial axis (``None``: that axis is not cropped), clipped to the image.

    A protocol option for comparison with papers only (UA-MT, MC-Net+, DyCON crop every case, test cases included,
    around its ground truth): a model trained this way needs the label at inference. Items without ``label_key``
    (unlabeled training cases, inference inputs) pass unchanged, so labels of unlabeled cases are never needed.
    Invertible like ``CropForegroundd`` (``Invertd`` pads predictions back to the uncropped grid).

    Args:
        keys: keys to crop, e.g. ``["image", "label"]`` (missing keys are allowed).
        label_key: the label whose foreground places the box.
        margin: voxels added on both sides per spatial axis, e.g. ``[20, 20, None]`` (x and y, z whole).
    """

    def __init__(
        self,
        keys: Sequence[str],
        label_key: str = "label",
        margin: Sequence[int | None] = (20, 20, None),
        **kwargs: Any,
    ) -> None:
        big = 1 << 30  # larger than any image: the clipped box is the whole axis
        self.label_margin = tuple(None if m is None else int(m) for m in margin)
        super().__init__(
            keys=keys,
            source_key=label_key,
            margin=[big if m is None else m for m in self.label_margin],
            allow_smaller=True,
            allow_missing_keys=True,
            **kwargs,
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        if self.source_key not in data:
            return dict(data)
        return super().__call__(data, lazy=lazy)


def protocol_name(label_crop: Any) -> str:
    """``"label_free"``, or :data:`LABEL_CROP_NOTE` when images were cropped around their ground-truth label: the
    evaluation writes it into its metrics files, so no number made with the label reads as a label-free one."""
    return LABEL_CROP_NOTE if as_bool(label_crop, "label_crop") else "label_free"


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


# ------------------------------------------------------------------ BraTS 2019


class ClipNonzeroPercentiled(MapTransform):
    """Clip ``keys`` from above at the ``upper`` percentile of their NON-ZERO voxels, per channel.

    The BraTS convention (SSL4MIS, DyCON): on skull-stripped MRI the percentile is taken over the brain voxels
    (the exact-zero background excluded), which ``ClipIntensityPercentilesd`` (all voxels) cannot do. Zero voxels
    stay zero; a channel without non-zero voxels is left unchanged. Not spatial, so ``Invertd`` has nothing to undo.

    Args:
        keys: image keys, tensors (C, *spatial).
        upper: percentile in [0, 100] of the non-zero voxels of each channel, e.g. 99.9.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: Sequence[str] | str, upper: float = 99.9, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= float(upper) <= 100.0:
            raise ValueError(f"upper must be a percentile in [0, 100], got {upper!r}")
        self.upper = float(upper)

    def clip(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (C, *spatial) clipped channel by channel; same type, dtype and device."""
        out = image.clone()
        for c in range(image.shape[0]):
            values = image[c].detach().cpu().numpy()
            nonzero = values[values != 0]
            if nonzero.size:
                hi = float(np.percentile(nonzero.astype(np.float64), self.upper))
                out[c] = torch.clamp(image[c], max=hi)
        return out

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clip(d[key])
        return d


# ------------------------------------------------------------------ ISLES 2022


class BrainNormalized(MapTransform):
    """Brain-masked z-score of stroke MRI (ISLES 2022 DWI, optionally + ADC), the normalisation DyCON's ISLES model
    was trained with.

    The brain is found on the FIRST channel (the DWI) of ``(C, X, Y, Z)`` images: ``DWI > 0`` when at least
    ``zero_share`` of its voxels are exactly 0 (a masked, zero background), else ``DWI >`` Otsu's threshold of the
    DWI histogram (``bins`` bins from the minimum to the 99.9th percentile: a noisy, non-zero background). Every
    channel is then z-scored with the mean and standard deviation over those brain voxels (float64 statistics) and
    set to 0 outside the brain, so a following ``CropForegroundd(select_fn=x != 0)`` crops to the brain without the
    label. Not spatial: ``Invertd`` passes over it. On a zero background this equals MONAI's
    ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` for the DWI channel.

    Args:
        keys: image keys (``(C, X, Y, Z)`` tensors or arrays, C >= 1).
        zero_share: share of exactly-zero DWI voxels from which the background counts as masked.
        bins: histogram bins of the Otsu threshold.
        allow_missing_keys: skip missing keys.

    Raises:
        DatasetError: (one error line from the bundles) when the brain has fewer than 2 voxels or a channel is constant over it.
    """

    def __init__(
        self, keys: Sequence[str], zero_share: float = 0.05, bins: int = 256, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.zero_share = float(zero_share)
        self.bins = int(bins)

    @staticmethod
    def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
        """Otsu's threshold of the 1-D ``values`` (histogram of ``bins`` bins from the minimum to the 99.9th
        percentile; values above it count in the last bin)."""
        v = values.detach().to(torch.float64).flatten().cpu()
        lo = float(v.min())
        hi = float(torch.quantile(v, 0.999)) if v.numel() <= 1 << 24 else float(v.kthvalue(int(0.999 * v.numel())))
        if not hi > lo:
            return lo
        hist = torch.histc(v.clamp(lo, hi), bins=bins, min=lo, max=hi)
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        centers = (edges[:-1] + edges[1:]) / 2
        w0 = torch.cumsum(hist, 0)
        w1 = w0[-1] - w0
        m0 = torch.cumsum(hist * centers, 0)
        mu0 = m0 / w0.clamp(min=1)
        mu1 = (m0[-1] - m0) / w1.clamp(min=1)
        between = w0 * w1 * (mu0 - mu1) ** 2
        k = int(torch.argmax(between[:-1]))
        return float(edges[k + 1])

    def brain(self, dwi: torch.Tensor) -> torch.Tensor:
        """Boolean brain mask ``(X, Y, Z)`` of a DWI volume ``(X, Y, Z)`` (the rule above)."""
        d = dwi.detach().to(torch.float64)
        if int(torch.count_nonzero(d == 0)) >= self.zero_share * d.numel():
            return d > 0
        return d > self.otsu_threshold(d, self.bins)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = torch.as_tensor(img)
            brain = self.brain(x[0])
            n = int(brain.sum())
            if n < 2:
                raise DatasetError(f"BrainNormalized: the brain mask of '{key}' has {n} voxel(s), cannot normalise")
            out = torch.zeros_like(x, dtype=torch.float32)
            for c in range(x.shape[0]):
                vals = x[c][brain].to(torch.float64)
                mean, std = vals.mean(), vals.std(unbiased=False)
                if not (torch.isfinite(std) and std > 0):
                    raise DatasetError(f"BrainNormalized: channel {c} of '{key}' is constant over the brain")
                out[c][brain] = ((vals - mean) / std).to(torch.float32)
            if isinstance(img, monai.data.MetaTensor):
                out = monai.data.MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = out
        return d
