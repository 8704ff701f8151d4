"""scripts.transforms.BrainNormalized (ISLES 2022 bundle chain): the brain-masked z-score that DyCON's ISLES model was
trained with (formerly applied offline by ``dycon prepare isles22``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensityd

from custom.data.datalist import DatasetError
from custom.transforms import BrainNormalized


def _head(rng: np.random.Generator, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    grid = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    brain = sum(g**2 for g in grid) < 0.6
    return brain, np.where(brain, 400 + rng.normal(0, 20, brain.shape), 0.0)


def test_zero_background_is_nonzero_zscore():
    """Zero background: brain = DWI > 0; z-score over it per channel (the DWI brain for every channel), 0 outside;
    the DWI channel equals MONAI's NormalizeIntensityd(nonzero=True)."""
    rng = np.random.default_rng(0)
    brain, dwi = _head(rng)
    adc = np.where(brain, 800 + rng.normal(0, 50, brain.shape), 0.0)
    adc[~brain] = 5.0  # a non-zero ADC background is ignored: the brain comes from the DWI
    affine = torch.diag(torch.tensor([2.0, 2, 3, 1]))
    x = MetaTensor(torch.tensor(np.stack([dwi, adc]), dtype=torch.float32), affine=affine)
    out = BrainNormalized(keys="image")({"image": x})["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and tuple(out.shape) == (2, 30, 30, 30)
    torch.testing.assert_close(out.affine, x.affine)
    o = out.numpy().astype(np.float64)
    for c, raw in enumerate((dwi, adc)):
        r = raw.astype(np.float32).astype(np.float64)[brain]
        np.testing.assert_allclose(o[c][brain], (r - r.mean()) / r.std(), atol=1e-5)
        assert np.all(o[c][~brain] == 0)
        assert abs(o[c][brain].mean()) < 1e-5 and o[c][brain].std() == pytest.approx(1.0, abs=1e-5)
    ref = NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)({"image": x[:1].clone()})["image"]
    np.testing.assert_allclose(o[0], ref.numpy()[0], atol=1e-4)


def test_noisy_background_uses_otsu():
    """A noisy, non-zero background (fewer than 5 % exact zeros): brain = DWI > Otsu threshold."""
    rng = np.random.default_rng(1)
    brain, dwi = _head(rng)
    noisy = np.abs(dwi + rng.normal(0, 15, brain.shape)) + 1e-3
    t = BrainNormalized.otsu_threshold(torch.tensor(noisy))
    assert 60 < t < 380  # between the background noise and the tissue
    mask = BrainNormalized(keys="image").brain(torch.tensor(noisy)).numpy()
    assert np.mean(mask == brain) > 0.99
    out = BrainNormalized(keys="image")({"image": torch.tensor(noisy[None])})["image"][0].numpy()
    assert np.all(out[~mask] == 0)
    v = noisy[mask]
    np.testing.assert_allclose(out[mask], (v - v.mean()) / v.std(), atol=1e-5)


def test_rule_threshold_and_errors():
    rng = np.random.default_rng(2)
    brain, dwi = _head(rng)
    t = BrainNormalized(keys="image", zero_share=1.0)  # never "masked": Otsu even on a zero background
    assert np.mean(t.brain(torch.tensor(dwi)).numpy() == brain) > 0.99
    with pytest.raises(DatasetError, match="brain mask of 'image' has 0 voxel"):
        BrainNormalized(keys="image")({"image": torch.zeros(1, 8, 8, 8)})
    const = torch.tensor(np.stack([dwi, np.where(brain, 7.0, 0.0)]))
    with pytest.raises(DatasetError, match="channel 1 of 'image' is constant"):
        BrainNormalized(keys="image")({"image": const})
    assert BrainNormalized(keys="image", allow_missing_keys=True)({"label": 1}) == {"label": 1}
