"""BraTS 2019 preprocessing in the bundle: ``ClipNonzeroPercentiled`` (custom/transforms.py, ``# ---- brats19``) and
the chain of bundles/dycon_brats19 (``preprocessing_transforms``) against the literature's offline preprocessing
(SSL4MIS / DyCON: crop to the brain bounding box, clip at the 99.9th percentile of the brain voxels, z-score over
the brain voxels, 0 outside), which ``dycon prepare brats19`` 1.x applied and the bundle now applies to raw files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from custom.data.brats19 import RELEASE_FOLDER, synth_brats19
from custom.export import bundle_code
from custom.transforms import ClipNonzeroPercentiled

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "dycon_brats19"


def test_clip_nonzero_percentile_per_channel():
    rng = np.random.default_rng(0)
    x = np.zeros((2, 10, 10, 10), dtype=np.float32)
    x[0, 2:8, 2:8, 2:8] = rng.uniform(1, 100, (6, 6, 6))
    x[1, 1:9, 1:9, 1:9] = rng.uniform(1000, 2000, (8, 8, 8))
    out = ClipNonzeroPercentiled(keys="image", upper=99.0)({"image": torch.as_tensor(x)})["image"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == x.shape
    for c in range(2):
        nz = x[c][x[c] != 0]
        hi = np.percentile(nz.astype(np.float64), 99.0)  # of the non-zero voxels, not of the whole volume
        if c == 0:  # mostly zero: the percentile over all voxels would clip the brain far lower
            assert hi > np.percentile(x[c], 99.0) + 1
        np.testing.assert_allclose(out[c].numpy(), np.minimum(x[c], hi), rtol=1e-6)
        assert (out[c].numpy()[x[c] == 0] == 0).all()
    empty = ClipNonzeroPercentiled(keys="image")({"image": torch.zeros(1, 4, 4, 4)})["image"]
    assert not empty.any()
    with pytest.raises(ValueError, match="percentile"):
        ClipNonzeroPercentiled(keys="image", upper=100.5)


def _literature(raw: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The 1.x offline preprocessing of one FLAIR (float64 reference)."""
    brain = raw > 0
    nz = np.nonzero(brain)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    x, b = raw[box].astype(np.float64), brain[box]
    x = np.minimum(x, np.percentile(x[b], 99.9))
    out = (x - x[b].mean()) / x[b].std()
    out[~b] = 0
    return out, box


def test_bundle_chain_equals_literature_preprocessing(tmp_path: Path):
    """The bundle's inference chain on a raw FLAIR (LPS-like 1 mm, as released) gives the literature's crop, clip
    and z-score, in RAS order; Invertd-able metadata aside, nothing else changes."""
    from monai.bundle import ConfigParser

    src = synth_brats19(tmp_path / "raw", ids=["BraTS19_CBICA_ASA_1"], shape=(40, 36, 28), seed=0)
    path = next((src / RELEASE_FOLDER).glob("*/*/*_flair.nii.gz"))
    raw_img = nib.load(path)
    raw = np.asarray(raw_img.dataobj)
    with bundle_code(BUNDLE):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
        chain = parser.get_parsed_content("preprocessing")
        out = chain({"image": str(path)})["image"]
    ref, box = _literature(raw)
    # raw affine diag(-1, -1, 1): RAS flips the first two axes
    ref_ras = ref[::-1, ::-1, :]
    assert tuple(out.shape) == (1, *ref_ras.shape)
    np.testing.assert_allclose(out[0].numpy(), ref_ras, atol=1e-4)
    # the cropped RAS grid keeps the world position of its first voxel
    first = [box[0].stop - 1, box[1].stop - 1, box[2].start]
    np.testing.assert_allclose(
        np.asarray(out.affine)[:3, 3], nib.affines.apply_affine(raw_img.affine, first), atol=1e-4
    )
