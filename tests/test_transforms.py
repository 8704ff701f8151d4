"""custom.transforms: the augmentation every bundle uses and the transforms its preprocessing adds to MONAI's."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd

from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, NormalizeIntensityd, Orientationd

from custom.transforms import augmentation


def load(keys=("image", "label")):
    """The first steps of every bundle's preprocessing_transforms (load, channel first, RAS, float32, z-score)."""
    keys = list(keys)
    return [
        LoadImaged(keys, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        Orientationd(keys, axcodes="RAS", labels=None, allow_missing_keys=True),
        EnsureTyped("image", dtype=torch.float32),
        NormalizeIntensityd("image", channel_wise=True),
    ]


def training_transforms(patch, labeled=True, crop="random", pos_neg=(1.0, 1.0)):
    keys = ("image", "label") if labeled else ("image",)
    return Compose(load(keys) + augmentation(patch, keys, crop if labeled else "random", pos_neg), map_items=True)


def _write(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


@pytest.fixture()
def case(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(5.0, 2.0, (40, 36, 20)).astype(np.float32)
    label = np.zeros((40, 36, 20), np.uint8)
    label[10:20, 8:16, 5:12] = 1
    affine = np.diag([-0.8, -0.8, 2.0, 1.0])  # LPS-like: Orientationd must flip it to RAS
    return {
        "image": _write(tmp_path / "img.nii.gz", image, affine),
        "label": _write(tmp_path / "lab.nii.gz", label, affine),
    }


def test_training_chain_shapes_and_zscore(case):
    out = training_transforms([16, 16, 16])(dict(case))
    assert out["image"].shape == (1, 16, 16, 16) and out["label"].shape == (1, 16, 16, 16)
    assert out["image"].dtype == torch.float32
    full = Compose(load(["image"]))({"image": case["image"]})["image"]
    assert abs(float(full.mean())) < 1e-4 and abs(float(full.std()) - 1.0) < 1e-3


def test_unlabeled_chain_never_loads_a_label(case):
    out = training_transforms([16, 16, 16], labeled=False, crop="pos_neg")({"image": case["image"]})
    assert set(k for k in out if not k.endswith("_transforms")) == {"image"}


def test_pos_neg_crop_centres_on_foreground(case):
    chain = training_transforms([8, 8, 8], crop="pos_neg", pos_neg=(1.0, 0.0))
    for seed in range(5):
        chain.set_random_state(seed=seed)
        out = chain(dict(case))
        out = out[0] if isinstance(out, list) else out
        assert out["label"].sum() > 0  # every crop holds foreground when neg = 0


def test_rot90_only_for_square_patches():
    names = [type(t).__name__ for t in augmentation([16, 16, 8])]
    assert "RandRotate90d" in names
    names = [type(t).__name__ for t in augmentation([16, 24, 8])]
    assert "RandRotate90d" not in names
    with pytest.raises(ValueError):
        augmentation([16, 16, 16], crop="center")


def test_the_eight_inplane_orientations_are_equally_likely():
    # rotation k = 0..3 and the two flips: each element of the dihedral group of the axial plane with p = 1/8
    from collections import Counter

    from monai.transforms import Compose

    base = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4, 1)  # distinct values: an orientation is visible
    group = set()
    for k in range(4):
        r = torch.rot90(base, k, (1, 2))
        group |= {tuple(r.flatten().tolist()), tuple(torch.flip(r, (1,)).flatten().tolist())}
    assert len(group) == 8
    chain = Compose(augmentation([4, 4, 1], keys=["image"])[2:])  # rotation and flips (pad / crop are identities)
    chain.set_random_state(seed=0)
    n = 8000
    counts = Counter(
        tuple(torch.as_tensor(chain({"image": base.clone()})["image"]).flatten().tolist()) for _ in range(n)
    )
    assert set(counts) == group
    for c in counts.values():  # binomial sd at p = 1/8: sqrt(n p (1-p)) = 30; 5 sd = 150
        assert abs(c - n / 8) < 150, counts


def test_inference_chain_inverts_to_input_geometry(case):
    chain = Compose(load(["image"]))
    data = chain({"image": case["image"]})
    np.testing.assert_allclose(np.diag(data["image"].affine.numpy())[:3], [0.8, 0.8, 2.0], rtol=1e-6)  # RAS inside
    data["pred"] = data["image"].clone()
    back = Invertd(keys="pred", transform=chain, orig_keys="image")(data)["pred"]
    original = nib.load(case["image"])
    assert tuple(back.shape[1:]) == original.shape
    np.testing.assert_allclose(back.affine.numpy(), original.affine, atol=1e-6)


# ------------------------------------------------------------------ transforms the bundles' chains add to MONAI's


def test_spacingd_keeps_monailabel_path_items(case):
    """MONAI Label 0.8.5 puts the string ``image_path`` next to ``image``: MONAI 1.6.1's Spacingd fails on it
    (``'str' object has no attribute 'update'``), ours resamples exactly like MONAI's and keeps the item."""
    import monai.transforms as mt

    from custom.transforms import Spacingd

    load = mt.Compose([mt.LoadImaged("image", image_only=True), mt.EnsureChannelFirstd("image")])
    data = load({"image": case["image"]})
    with pytest.raises(AttributeError, match="update"):
        mt.Spacingd("image", pixdim=(1.0, 1.0, 1.0))({**data, "image_path": case["image"]})
    ours = Spacingd("image", pixdim=(1.0, 1.0, 1.0))({**data, "image_path": case["image"]})
    ref = mt.Spacingd("image", pixdim=(1.0, 1.0, 1.0))(dict(data))
    assert ours["image_path"] == case["image"]
    assert ours["image"].shape == ref["image"].shape == (1, 32, 29, 39)
    assert torch.equal(ours["image"].as_tensor(), ref["image"].as_tensor())


def test_crop_around_label_crops_xy_only_and_inverts(case):
    import monai.transforms as mt

    from custom.transforms import CropAroundLabeld

    load = mt.Compose(
        [
            mt.LoadImaged(["image", "label"], image_only=True, allow_missing_keys=True),
            mt.EnsureChannelFirstd(["image", "label"], allow_missing_keys=True),
        ]
    )
    crop = CropAroundLabeld(["image", "label"], margin=(3, 2, None))
    chain = mt.Compose([load, crop])
    out = chain(dict(case))
    # label box x 10..19, y 8..15 (inclusive) plus the margins; z (20 slices) whole
    assert out["image"].shape == (1, 16, 12, 20) and out["label"].shape == (1, 16, 12, 20)
    assert int(out["label"].sum()) == 10 * 8 * 7
    unlabeled = chain({"image": case["image"]})  # no label: unchanged, nothing traced
    assert unlabeled["image"].shape == (1, 40, 36, 20) and len(unlabeled["image"].applied_operations) == 0
    out["pred"] = out["label"].clone()
    restored = Invertd("pred", transform=chain, orig_keys="label", nearest_interp=True)(out)["pred"]
    assert restored.shape == (1, 40, 36, 20)
    assert int(restored[0, 10:20, 8:16, 5:12].sum()) == 10 * 8 * 7 and int(restored.sum()) == 10 * 8 * 7


def test_protocol_name():
    from custom.transforms import LABEL_CROP_NOTE, protocol_name

    assert protocol_name(False) == "label_free" and protocol_name("false") == "label_free"
    assert protocol_name(True) == LABEL_CROP_NOTE and "uses the label" in LABEL_CROP_NOTE
